"""OpenAI's error shape for every refusal: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from basis.ledger.errors import LedgerUnavailable

log = logging.getLogger("basis.gateway")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
          404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 retry: bool | None = None, type_: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry = retry
        self.type = type_ or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        headers = dict(headers or {})
        if self.retry is not None:
            # The OpenAI SDK retries 409, 429 and 5xx by itself; say so where a retry cannot help.
            headers["x-should-retry"] = "true" if self.retry else "false"
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(LedgerUnavailable)
    async def _ledger_unavailable(_: Request, exc: LedgerUnavailable) -> JSONResponse:
        # Nothing of the command was saved (writer lost, or other writers kept winning its aggregate).
        return APIError(503, f"The ledger is busy; nothing was recorded. Retry the request. ({exc})",
                        code=getattr(exc, "code", "ledger_unavailable"), type_="server_error", retry=True).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
        if first.get("type") == "json_invalid":
            return APIError(400, "We could not parse the JSON body of your request.", code="invalid_json").response()
        param = _loc(tuple(first.get("loc", ())))
        msg = first.get("msg", "invalid value")
        message = f"Invalid value for '{param}': {msg}" if param else f"Invalid request: {msg}"
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return APIError(500, "The server had an error while processing your request.", code="internal_error",
                        type_="server_error").response()

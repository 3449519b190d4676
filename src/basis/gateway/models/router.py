"""GET /v1/models (public): OpenAI's list shape plus limits, multiplier, status and binding."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from basis.gateway.errors import APIError

router = APIRouter(tags=["models"])
CREATED = 1_764_028_800  # 2025-11-25: when the advertised catalog was defined

NOTE = ("Development binding: Gemma 3 270M is a base model, not instruction-tuned; it rambles and often "
        "stops only at the length limit.")


def _entry(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": m["id"], "object": "model", "created": CREATED, "owned_by": "basis",
        "context_window": m["context_window"], "max_output_tokens": m["max_output_tokens"],
        "multiplier_bps": m["multiplier_bps"], "status": m["status"], "workers": m["workers"],
        "binding": {"backing_model": m["backing_model"], "binding_hash": m["binding_hash"]},
        "deadlines": m["deadlines"],  # a contributor's job ends failed past these (docs/worker-protocol.md)
        "description": NOTE if "270m" in m["backing_model"].lower() else None,
    }


@router.get("/v1/models")
def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_entry(m) for m in request.app.state.runtime.models_status()]}


@router.get("/v1/models/{model_id}")
def get_model(model_id: str, request: Request) -> dict[str, Any]:
    for m in request.app.state.runtime.models_status():
        if m["id"] == model_id:
            return _entry(m)
    raise APIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")

"""GET /v1/models (public): OpenAI's list shape plus limits, multiplier, status and binding."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from basis.gateway.errors import APIError

router = APIRouter(tags=["models"])
CREATED = 1_764_028_800  # 2025-11-25: when the advertised catalog was defined

NOTES = {  # by backing model: what a client should expect of the development bindings
    "270m": ("Development binding: Gemma 3 270M is a base model, not instruction-tuned; it rambles and often "
             "stops only at the length limit. Suits /v1/completions (text continuation) better than chat."),
    "smollm2": ("Development binding: SmolLM2-135M-Instruct, a small instruction-tuned model (ChatML template): "
                "short English replies, often wrong on facts."),
}


def _note(backing_model: str) -> str | None:
    name = backing_model.lower()
    return next((text for key, text in NOTES.items() if key in name), None)


def _entry(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": m["id"], "object": "model", "created": CREATED, "owned_by": "basis",
        "context_window": m["context_window"], "max_output_tokens": m["max_output_tokens"],
        "multiplier_bps": m["multiplier_bps"], "status": m["status"], "workers": m["workers"],
        "binding": {"backing_model": m["backing_model"], "binding_hash": m["binding_hash"]},
        "deadlines": m["deadlines"],  # a contributor's job ends failed past these (docs/worker-protocol.md)
        "description": _note(m["backing_model"]),
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

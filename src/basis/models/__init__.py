"""Model bindings shared by gateway and worker (DESIGN 1.3).

Importing this package does not import llama_cpp; a binding loads its GGUF vocabulary on first use.
"""

from basis.models.binding import (
    ChatTemplateError,
    InvalidOutputToken,
    ModelBinding,
    compute_binding_hash,
    normalize_messages,
)
from basis.models.gguf import default_gguf_path, load_vocab
from basis.models.registry import DEV_CATALOG, CatalogError, binding_from_entry, check_context_window, load_bindings
from basis.models.utf8 import IncrementalText, TextMismatch, UTF8Matcher

__all__ = [
    "DEV_CATALOG",
    "CatalogError",
    "ChatTemplateError",
    "IncrementalText",
    "InvalidOutputToken",
    "ModelBinding",
    "TextMismatch",
    "UTF8Matcher",
    "binding_from_entry",
    "check_context_window",
    "compute_binding_hash",
    "default_gguf_path",
    "load_bindings",
    "load_vocab",
    "normalize_messages",
]

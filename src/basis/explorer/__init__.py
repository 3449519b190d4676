"""Block explorer: server-rendered, read-only pages over the views (``router`` to mount on the gateway)."""

from basis.explorer.router import STATIC_PREFIX, router

__all__ = ["STATIC_PREFIX", "router"]

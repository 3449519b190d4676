"""Block explorer: server-rendered, read-only pages over the views.

Mount with ``from basis.explorer.router import router`` and ``app.include_router(router)``: the pages
and their static files (under ``basis.explorer.router.STATIC_PREFIX``) are all routes of that one
router. This package's ``__init__`` imports nothing, so ``basis.explorer.format`` stays light for the CLI.
"""

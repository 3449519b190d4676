"""`basis` command line: each area registers its own typer app."""

from __future__ import annotations

import importlib
import logging
import os

import typer

app = typer.Typer(help="Basis: an OpenAI-compatible inference network that records what it served.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

# (module, name, help) — areas whose module is absent in this build are skipped.
_AREAS = [
    ("basis.cli.ledger", None, None),
    ("basis.cli.serve", None, None),
    ("basis.cli.worker", "worker", "Run a contributor worker (and claim its rewards)."),
    ("basis.cli.contracts", "contracts", "Compile and deploy the Basis contracts."),
    ("basis.cli.settlement", None, None),
    ("basis.cli.status", None, None),
    ("basis.cli.verifier", None, None),
]

for module_name, name, help_text in _AREAS:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        continue
    if name is None:
        module.register(app)
    else:
        app.add_typer(module.app, name=name, help=help_text)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else os.environ.get("BASIS_LOG_LEVEL", "WARNING"))


if __name__ == "__main__":
    app()

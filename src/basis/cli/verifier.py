"""``basis verifier run`` (the trusted verifier as its own process) and ``basis workers
suspend|reinstate ADDRESS`` (the operator's hand, recorded in the ledger). DESIGN 1.6."""

from __future__ import annotations

import asyncio
import json
import re
import threading

import typer
from rich.console import Console

from basis.config import Settings

verifier = typer.Typer(help="The trusted verifier: re-score sampled contributor jobs, record verdicts.",
                       no_args_is_help=True)
workers = typer.Typer(help="Contributor workers: suspend or reinstate by hand (recorded).", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)  # messages stay on one line (scripts grep them)
ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
MAX_REASON = 500


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _address(value: str) -> str:
    if not ADDRESS.match(value or ""):
        _fail(f"{value!r} is not a worker address (0x followed by 40 hex digits)")
    return value.lower()


def _reason(value: str) -> str:
    value = (value or "").strip()
    if not value:
        _fail("--reason must not be empty: it is recorded and published with the decision")
    if len(value) > MAX_REASON:
        _fail(f"--reason is at most {MAX_REASON} characters")
    return value


def _ledger():
    from basis.ledger.service import Ledger

    try:
        return Ledger(Settings())
    except ValueError as exc:  # e.g. a malformed BASIS_DATABASE_URL
        _fail(str(exc))
    except Exception as exc:  # the store cannot be opened or reached
        _fail(f"cannot open the ledger: {exc}", 1)


def _unsettled(ledger, address: str) -> list[str]:
    from basis.ledger.projections import Projector, ViewReader

    projector = Projector(ledger.store, ledger.settings.views_path)
    projector.catch_up()
    projector.stop()
    reader = ViewReader(ledger.settings.views_path)
    try:
        return reader.unsettled_of(address)
    finally:
        reader.close()


@workers.command("suspend")
def workers_suspend(
    address: str = typer.Argument(..., help="The worker's reward address."),
    reason: str = typer.Option("suspended by the operator", "--reason", help="Recorded and published."),
) -> None:
    """Suspend a worker: refused at its next connect, every reward of it not yet settled forfeited."""
    from basis.ledger.errors import LedgerError
    from basis.ledger.verdicts import suspend_worker
    from basis.observability import metrics

    address, reason = _address(address), _reason(reason)
    ledger = _ledger()
    try:
        forfeited = ledger.run(suspend_worker(address, reason, _unsettled(ledger, address)))
    except LedgerError as exc:
        _fail(str(exc), 1)
    finally:
        ledger.close()
    metrics.SUSPENSIONS.labels("operator").inc()
    print(json.dumps({"worker": address, "status": "suspended", "reason": reason, "rewards_forfeited": forfeited}))


@workers.command("reinstate")
def workers_reinstate(
    address: str = typer.Argument(..., help="The worker's reward address."),
    reason: str = typer.Option("reinstated by the operator", "--reason", help="Recorded and published."),
) -> None:
    """Reinstate a suspended worker (its accumulated evidence starts again from zero, and it is on
    probation again: its next probation_jobs jobs are all checked)."""
    from basis.ledger.errors import LedgerError
    from basis.ledger.verdicts import reinstate_worker

    address, reason = _address(address), _reason(reason)
    ledger = _ledger()
    try:
        ledger.run(reinstate_worker(address, reason))
    except LedgerError as exc:
        _fail(str(exc), 1)
    finally:
        ledger.close()
    print(json.dumps({"worker": address, "status": "active", "probation": True, "reason": reason}))


@verifier.command("run")
def verifier_run(
    once: bool = typer.Option(False, "--once", help="One pass over the pending checks, then exit."),
    interval: float = typer.Option(1.0, "--interval", min=0.05, help="Seconds between passes when idle."),
    scorer: str = typer.Option(None, "--scorer", envvar="BASIS_VERIFIER_SCORER",
                               help="MODULE:CALLABLE making the scorer per model (default: llama.cpp over "
                               "each binding's GGUF)."),
    sglang_urls: list[str] = typer.Option(
        None, "--sglang-url", envvar="BASIS_VERIFIER_SGLANG_URL",
        help="[MODEL=]URL of a running sglang server (0.5.6+) that scores MODEL's jobs on a GPU (repeatable; a "
             "bare URL when every advertised model has one backing). Other models: llama.cpp."),
    sglang_api_key: str = typer.Option(None, "--sglang-api-key", envvar="BASIS_SGLANG_API_KEY",
                                       help="API key of the --sglang-url servers (their --api-key)."),
    sglang_top_k: int = typer.Option(None, "--sglang-top-k", envvar="BASIS_VERIFIER_SGLANG_TOP_K",
                                     help="Top logprobs asked per position, 1..1024 (default 64; the claimed "
                                     "distribution is built from them: raise it for hot jobs)."),
    sglang_model_paths: list[str] = typer.Option(
        None, "--sglang-model-path", envvar="BASIS_VERIFIER_SGLANG_MODEL_PATH",
        help="MODEL=PATH: the model_path MODEL's sglang server reports, vouched for by you, when its name does not "
             "name the binding's model (repeatable; the tokenizer is still checked)."),
) -> None:
    """Verify the jobs selected for a check, from the shared store (SQLite under BASIS_HOME, or
    BASIS_DATABASE_URL); verdicts enter the ledger as commands. Stop with Ctrl-C or SIGTERM."""
    from basis.models import load_bindings
    from basis.verifier import Verifier
    from basis.verifier.policy import load_factory, policy_from_env
    from basis.verifier.sglang import SGLangOptionError, build_sglang_scorers, check_top_k

    if sglang_top_k is not None:
        try:
            check_top_k(sglang_top_k)
        except SGLangOptionError as exc:
            _fail(str(exc))
    if scorer is not None and not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", scorer):
        _fail(f"--scorer must be MODULE:CALLABLE, not {scorer!r}")
    if scorer is not None and sglang_urls:
        _fail("--scorer and --sglang-url both choose the scorer: give one")
    if sglang_model_paths and not sglang_urls:
        _fail("--sglang-model-path pins the model of an --sglang-url server: give the server too")
    ledger = _ledger()
    try:
        bindings = load_bindings(list(ledger.pricing.models.values()))
        sglang = None
        if sglang_urls:
            try:
                sglang = build_sglang_scorers(sglang_urls, bindings, api_key=sglang_api_key, top_k=sglang_top_k,
                                              model_paths=sglang_model_paths or ())
            except SGLangOptionError as exc:
                _fail(str(exc))
        # "external": the scorer is given (--scorer, --sglang-url), so a box without llama.cpp still verifies
        policy, models = policy_from_env(bindings, mode="external" if scorer or sglang_urls else "pool")
        if scorer is None and not models:
            _fail("no reference model is installed for any advertised model: nothing can be verified here", 1)
        try:
            factory = sglang or load_factory(scorer, bindings)
        except (ImportError, AttributeError) as exc:
            _fail(f"--scorer {scorer}: {exc}")
        from dataclasses import replace

        worker = Verifier(ledger, ledger.settings.views_path, replace(policy, enabled=True), factory, project=True)

        async def main(work):
            """The sglang servers are asked first, on the loop that scores (their clients live there)."""
            try:
                if sglang is not None:
                    for note in await sglang.check():
                        err.print(f"verifier sglang: {note}", markup=False)
                return await work()
            finally:
                if sglang is not None:
                    await sglang.aclose()

        if once:
            try:
                done = asyncio.run(main(worker.run_once))
            except SGLangOptionError as exc:
                _fail(str(exc), 1)
            finally:
                worker.close()
            print(json.dumps({"verdicts": done, "errors": worker.errors}))
            return
        stop = threading.Event()
        scoring = sglang.describe(models) if sglang is not None else ", ".join(models) or "via --scorer"
        err.print(f"verifier running on {ledger.settings.home} (models: {scoring})")
        try:
            asyncio.run(main(lambda: worker.run(stop, interval)))
        except SGLangOptionError as exc:
            worker.close()
            _fail(str(exc), 1)
        except KeyboardInterrupt:
            stop.set()
    finally:
        ledger.close()


def register(app: typer.Typer) -> None:
    app.add_typer(verifier, name="verifier")
    app.add_typer(workers, name="workers")

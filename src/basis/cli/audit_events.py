"""``basis audit --events FILE [--chain --rpc URL]``: an auditor's replay of a ledger export on their
own machine, with no access to the operator's database and no keys (docs/audit.md).

The export is verified line by line (hash chain, positions, stream versions) and imported into a
fresh temporary store; then every check ``basis audit`` runs on a fresh replay runs on it (receipt
recomputation and signatures, balances, rewards, and whatever the audit module checks besides).
With ``--chain``: the settlement checks against the chain (roots, proofs, vault and distributor
balances), and every ledger anchor the vault logged must equal the export's head at its position.
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from basis.config import Settings
from basis.ledger.account_fold import AccountFold
from basis.ledger.audit import AuditReport, audit
from basis.ledger.export_replay import ExportReplay, StoredStateDecoder
from basis.ledger.projections import ViewReader
from basis.ledger.replay import ExportReading, HeadIndex, read_export
from basis.ledger.snapshot import LedgerSnapshot
from basis.ledger.store import LedgerStore
from basis.ledger.temporary_store import prepare_temporary_store

ACCOUNT_OPENED = "basis:Account.Opened.v1"
ACCOUNTS_AHEAD = 10_000  # account aggregates rebuilt ahead of the checks, at most (about 1 KB each)


def _manifest(w3: Any, vault: str, from_block: int) -> dict[str, Any]:
    """The deployment as the vault itself names it (distributor and token are its immutables)."""
    from eth_utils import to_checksum_address

    from basis.chain.contracts import load_artifacts

    v = w3.eth.contract(address=to_checksum_address(vault), abi=load_artifacts()["CreditVault"].abi)
    return {"chain_id": int(w3.eth.chain_id), "deploy_block": from_block,
            "contracts": {"vault": {"address": vault}, "distributor": {"address": v.functions.DISTRIBUTOR().call()},
                          "token": {"address": v.functions.TOKEN().call()}}}


def _vault_from_export(reader: ViewReader) -> str | None:
    row = reader.db.execute("SELECT vault FROM settlement_batches ORDER BY seq DESC LIMIT 1").fetchone()
    return row[0] if row else None


def _decode_with_msgspec(store: LedgerStore) -> None:
    """The temporary store's states are decoded with msgspec (``StoredStateDecoder``, held equal to
    the store's transcoder by a property test): every state in it was written by this reader, in
    canonical JSON. Whatever reads the store here then decodes in a third of the time: the
    aggregates the money checks rebuild from their streams, the receipt checks (their process
    inherits this store), the key caps and verification checks."""
    transcoder = store.mapper.transcoder
    transcoder.decode = StoredStateDecoder(transcoder.decoder.object_hook)  # type: ignore[attr-defined, method-assign]


def account_views_ahead(store: LedgerStore, snapshot: LedgerSnapshot,
                        limit: int | None = None) -> dict[str, dict[str, int]]:
    """The ``snapshot_view()`` of the store's first ``limit`` account aggregates, rebuilt from their
    streams now, by account id: the money checks compare them with the views once the projection
    is done. Rebuilt here, while the projection's process finishes, they were most of the checks
    run after it (0.4 of 0.5 CPU-s per 120,008 events), which ran alone on one core. At most
    ``limit`` are held (memory stays bounded); the rest, and any whose stream does not replay, are
    rebuilt by the checks themselves, which then report what they always did."""
    limit = ACCOUNTS_AHEAD if limit is None else limit
    views: dict[str, dict[str, int]] = {}
    start = 0
    try:
        while len(views) < limit:
            page = store.recorder.select_notifications(start, 1000, topics=[ACCOUNT_OPENED],
                                                       inclusive_of_start=False)
            for n in page[: limit - len(views)]:
                try:
                    views[str(n.originator_id)] = snapshot.get(n.originator_id).snapshot_view()
                except Exception:  # the check after rebuilds it again, and names the failure
                    continue
            if len(page) < 1000:
                break
            start = page[-1].id
    except Exception:  # a store this broken fails the checks after, which say so
        pass
    return views


@contextmanager
def _fewer_collections(threshold: int = 20_000) -> Iterator[None]:
    """Run the cyclic garbage collector less often. Reading an export allocates a few dicts per line,
    none in a cycle: at the default threshold (700 allocations) the collector ran thousands of times
    for nothing (7 % of the audit's CPU). Collections still run, so memory stays bounded."""
    saved = gc.get_threshold()
    gc.set_threshold(threshold, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def audit_events(files: list[Path], *, signer: str | None = None, chain: bool = False, rpc: str | None = None,
                 vault: str | None = None, manifest: Path | None = None, from_block: int = 0,
                 require_anchored: bool = False, parallel: bool = True,
                 on_progress: Callable[[int, int | None], None] | None = None) -> tuple[AuditReport, dict[str, Any]]:
    """(the audit report, the export's summary). Problems about the export come first, each named at
    its position; ``summary["first_bad_position"]`` is the earliest of them. ``parallel``: project
    the views and check receipt signatures on processes of their own while the export is read."""
    with _fewer_collections():
        return _audit_events(files, signer=signer, chain=chain, rpc=rpc, vault=vault, manifest=manifest,
                             from_block=from_block, require_anchored=require_anchored, parallel=parallel,
                             on_progress=on_progress)


def _audit_events(files: list[Path], *, signer: str | None, chain: bool, rpc: str | None, vault: str | None,
                  manifest: Path | None, from_block: int, require_anchored: bool, parallel: bool,
                  on_progress: Callable[[int, int | None], None] | None) -> tuple[AuditReport, dict[str, Any]]:
    named: list[tuple[int | None, str]] = []
    with tempfile.TemporaryDirectory(prefix="basis-audit-events-") as tmp:
        settings = Settings(home=Path(tmp), database_url=None)
        prepare_temporary_store(settings.events_path)
        store = LedgerStore(settings.event_store_env())
        _decode_with_msgspec(store)
        heads: HeadIndex | None = None
        replay_path = Path(tmp) / "replay.sqlite3"
        replay = ExportReplay(store, replay_path, signer, parallel=parallel, on_progress=on_progress,
                              accounts=ACCOUNTS_AHEAD)
        try:
            reading, heads = read_export(files, store, on_page=replay.on_page, page_states=replay.needs_states,
                                         on_pages_done=replay.pages_done)
            named.extend(reading.problems)
            snapshot = LedgerSnapshot(store)
            rec = store.recorder
            account_views = None
            # (whether the fold can be used is asked first: it reads the store, while the projection's
            # process, which folds the accounts as it projects, finishes)
            if not (reading.problems or reading.irregular or reading.removed) and \
                    AccountFold.pure(rec.datastore.pool.db_name, rec.events_table_name):  # type: ignore[attr-defined]
                account_views = replay.account_views()  # folded on the projection's process as the pages went by
            if account_views is None:
                account_views = account_views_ahead(store, snapshot)  # while the projection's process finishes
            replayed = replay.finish(reading.irregular)
            try:
                if replay.error is not None:
                    raise replay.error
                tally = replay.receipts.result()
                # lines removed as duplicates were checked as they came: check the store's receipts instead
                report = audit(store, None, signer=signer, on_progress=on_progress, replay_path=replay_path,
                               replayed=replayed, receipts=None if reading.removed else tally, snapshot=snapshot,
                               account_views=account_views)
            except Exception as exc:  # a broken export can break the replay itself: say where it stopped
                report = AuditReport(events=reading.events)
                report.problems.append(f"the replay of the export failed: {type(exc).__name__}: {exc}")
            summary = reading.as_dict()
            if chain:
                _audit_chain(store, reading, heads, replay_path, report, named, summary, rpc=rpc, vault=vault,
                             manifest=manifest, from_block=from_block, require_anchored=require_anchored)
        finally:
            replay.close()
            if heads is not None:
                heads.close()
            store.close()
    report.problems[:0] = [message for _, message in named]
    positions = [p for p, _ in named if p is not None]
    if summary.get("first_bad_position") is not None:
        positions.append(summary["first_bad_position"])
    summary["first_bad_position"] = min(positions) if positions else None
    return report, summary


def _audit_chain(store: LedgerStore, reading: ExportReading, heads: HeadIndex, replay_path: Path,
                 report: AuditReport, named: list[tuple[int | None, str]], summary: dict[str, Any], *,
                 rpc: str | None, vault: str | None, manifest: Path | None, from_block: int,
                 require_anchored: bool) -> None:
    from basis.chain.deploy import read_manifest
    from basis.settlement.anchors import chain_anchors, check_anchors
    from basis.settlement.audit import ChainAudit
    from basis.settlement.chain import Chain, connect

    def problem(position: int | None, message: str) -> None:
        named.append((position, f"position {position}: {message}" if position is not None else message))

    if not rpc:
        report.problems.append("--chain: give the chain's JSON-RPC URL with --rpc")
        return
    w3 = connect(rpc)
    if not replay_path.exists():
        report.problems.append("--chain: the export did not replay; nothing to compare with the chain")
        return
    reader = ViewReader(replay_path)
    try:
        if manifest is not None:
            deployment = read_manifest(manifest)
        else:
            if vault is None:
                vault = _vault_from_export(reader)
                if vault is None:
                    report.problems.append("--chain: no settlement in the export and no --vault: nothing to verify")
                    return
                summary["vault_from_export"] = True  # the auditor should check it against /v1/network
            deployment = _manifest(w3, vault, from_block)
        try:
            chain = Chain(w3, deployment)
        except Exception as exc:
            report.problems.append(f"--chain: cannot reach the deployment: {exc}")
            return
        summary["vault"] = chain.vault
        ChainAudit(chain, store, reader, report).run()
        anchors = chain_anchors(chain)
        claims = [(c.line_position, c.position, c.head) for c in reading.claims]
        summary.update(check_anchors(anchors, heads.head, reading.last_position, problem, claims))
        through = summary["anchored_through"]
        summary["unanchored"] = heads.count_after(through)
        if require_anchored and summary["unanchored"]:
            first = heads.first_after(through)
            problem(first, f"after the latest anchor on chain (position {through}): not anchored "
                           f"({summary['unanchored']} line(s) from here on), and --require-anchored was given")
    finally:
        reader.close()

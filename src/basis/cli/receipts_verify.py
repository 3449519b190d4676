"""``basis receipts verify FILE --rpc URL``: anyone checks a JSON-lines file of receipts.

Each line is a receipt as the API returns it (``GET /v1/receipts/{id}``) or as ``basis receipts
export`` writes it: ``core``, ``hash``, ``signature`` and, once settled, ``settlement``
(``batch_id``, ``chain_id``, ...); a ``proof`` beside them is used when present. Checks: the hash
of the core, the amounts, the signature (against ``--signer``, else the gateway's published signer,
else one signer shared by every receipt), and for settled receipts the Merkle proof against the
receipts root read from the distributor **on chain** (proofs from the envelope, else the gateway's,
else recomputed from the batch's leaves the gateway lists). Exits 1 naming every failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def verify_command(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON lines, one receipt per line."),
    rpc: str = typer.Option(..., "--rpc", envvar="BASIS_RPC_URL", help="JSON-RPC URL of the chain."),
    gateway: str | None = typer.Option(None, "--gateway", help="Gateway base URL: published signer, "
                                       "distributor and proofs."),
    distributor: str | None = typer.Option(None, "--distributor", help="RewardDistributor address (default: "
                                           "the gateway's, else the manifest's)."),
    signer: str | None = typer.Option(None, "--signer", help="Expected receipt signer (default: the gateway's)."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Deployment manifest (for the distributor)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON report."),
) -> None:
    from web3 import Web3

    from basis.chain.inclusion import ChainReceipts, GatewayData, check_inclusion, check_signed

    data = GatewayData(_base(gateway)) if gateway else None
    if data is not None:
        network = data.network()
        signer = signer or network.get("gateway_signer")
        distributor = distributor or (network.get("distributor") or {}).get("address")
    if distributor is None:
        from basis.chain.deploy import read_manifest

        try:
            distributor = read_manifest(manifest)["contracts"]["distributor"]["address"]
        except (OSError, ValueError, KeyError) as exc:
            typer.echo(f"error: no distributor address (--distributor, --gateway or a manifest): {exc}", err=True)
            raise typer.Exit(2) from exc
    chain = ChainReceipts(Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 60})), distributor)
    results, failures = [], []
    for n, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            receipt = json.loads(line)
            if not isinstance(receipt, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            failures.append(f"line {n}: not a receipt: {exc}")
            continue
        rc = check_signed(receipt, signer)
        if rc.ok or rc.signer:
            check_inclusion(rc, receipt, chain, data.receipt_proof if data else None)
        results.append({"line": n, **rc.as_dict()})
        failures += [f"line {n} (job {rc.job_id}): {p}" for p in rc.problems]
    signers = {r["signer"] for r in results if r["signer"]}
    if signer is None and len(signers) > 1:
        failures.append(f"receipts are signed by {len(signers)} different keys: {sorted(signers)}")
    if data is not None:
        data.close()
    report = {"ok": not failures, "receipts": len(results), "settled": sum(r["settled"] for r in results),
              "signer": signer or (next(iter(signers)) if len(signers) == 1 else None), "chain_id": chain.chain_id,
              "distributor": chain.address, "failures": failures, "results": results}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(f"{report['receipts']} receipts, {report['settled']} proven on chain {chain.chain_id} "
                   f"(distributor {chain.address}), signer {report['signer']}")
    for f in failures:
        typer.echo(f"FAIL: {f}", err=True)
    if failures:
        raise typer.Exit(1)


def _base(url: str) -> str:
    from basis.worker.network import http_base

    return http_base(url)

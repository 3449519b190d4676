"""`basis contracts`: compile the Solidity contracts and deploy them."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(
    help="Compile and deploy the Basis contracts (token stand-in, CreditVault, RewardDistributor).",
    no_args_is_help=True,
)


@app.command("compile")
def compile_cmd(
    write: bool = typer.Option(False, "--write", help="Regenerate the artifacts shipped in the package."),
    check: bool = typer.Option(
        False, "--check", help="Fail if the shipped artifacts differ from a fresh build."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Ignore the compile cache."),
) -> None:
    """Compile contracts/src with solc-js via scripts/solc (needs `npm ci`)."""
    from basis.chain.compiler import compile_contracts, load_shipped, write_shipped

    arts = compile_contracts(use_cache=not no_cache)
    for name, art in sorted(arts.items()):
        typer.echo(f"{name}: {len(art.bytecode) // 2 - 1} bytes, solc {art.compiler_version}")
    if check:
        try:
            shipped = load_shipped()
        except Exception as exc:
            typer.echo(f"shipped artifacts unreadable: {exc}", err=True)
            raise typer.Exit(1) from exc
        stale = [n for n, a in arts.items() if shipped[n].to_json() != a.to_json()]
        if stale:
            typer.echo(
                f"shipped artifacts are stale: {', '.join(sorted(stale))} "
                "(run `basis contracts compile --write`)",
                err=True,
            )
            raise typer.Exit(1)
        typer.echo("shipped artifacts are up to date")
    if write:
        for p in write_shipped(arts):
            typer.echo(f"wrote {p}")


@app.command("deploy")
def deploy_cmd(
    rpc: str = typer.Option(..., "--rpc", help="JSON-RPC URL of the chain."),
    key_file: Path = typer.Option(
        ..., "--key-file", exists=True, dir_okay=False, help="File holding the deployer's hex private key."
    ),
    token: str | None = typer.Option(
        None, "--token", help="Existing $BASIS token; omitted: deploy the local stand-in (local chains only)."
    ),
    treasury: str | None = typer.Option(None, "--treasury", help="Treasury address (default: deployer)."),
    operator: str | None = typer.Option(None, "--operator", help="Vault operator (default: deployer)."),
    manifest: Path | None = typer.Option(
        None,
        "--manifest",
        help="Where to write the deployment manifest (default: $BASIS_HOME/deployment.json).",
    ),
    mint: int = typer.Option(0, "--mint", help="Stand-in token only: base units to mint to the deployer."),
    root_delay: int = typer.Option(
        0, "--root-delay", min=0,
        help="Seconds a posted rewards root stays pending (revocable by the owner) before claims can use it.",
    ),
) -> None:
    """Deploy (token), RewardDistributor and CreditVault, wire them and write the manifest."""
    from web3 import Web3

    from basis.chain.deploy import DeployError, deploy, read_key_file

    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 60}))
    try:
        result = deploy(
            w3,
            read_key_file(key_file),
            token=token,
            treasury=treasury,
            operator=operator,
            manifest_path=manifest,
            mint_to_deployer=mint,
            root_delay=root_delay,
        )
    except DeployError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(result.manifest, indent=2, sort_keys=True))
    typer.echo(f"manifest written to {result.path}", err=True)


def _bound(rpc: str, manifest: Path | None):
    from web3 import Web3

    from basis.chain.contracts import BasisContracts
    from basis.chain.deploy import read_manifest

    m = read_manifest(manifest)
    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 60}))
    return BasisContracts.from_manifest(w3, m), m


@app.command("roots")
def roots_cmd(
    rpc: str = typer.Option(..., "--rpc", envvar="BASIS_RPC_URL", help="JSON-RPC URL of the chain."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Deployment manifest."),
) -> None:
    """List every rewards root posted on the distributor and its fate (pending, accepted, superseded, revoked)."""
    from dataclasses import asdict

    from basis.chain.roots import chain_time, root_history

    contracts, m = _bound(rpc, manifest)
    rows = [asdict(r) for r in root_history(contracts, int(m.get("deploy_block") or 0))]
    typer.echo(json.dumps({"root_delay": contracts.root_delay(), "chain_time": chain_time(contracts.w3),
                           "accepted_batch": "0x" + contracts.accepted_batch().hex(), "roots": rows}, indent=2))


@app.command("revoke-root")
def revoke_root_cmd(
    batch_id: str = typer.Argument(..., help="0x-hex batch id whose pending rewards root to revoke."),
    rpc: str = typer.Option(..., "--rpc", envvar="BASIS_RPC_URL", help="JSON-RPC URL of the chain."),
    key_file: Path = typer.Option(
        ..., "--key-file", exists=True, dir_okay=False, help="The distributor OWNER's key file."
    ),
    manifest: Path | None = typer.Option(None, "--manifest", help="Deployment manifest."),
) -> None:
    """Owner: revoke a pending rewards root during its delay (claims keep the accepted root)."""
    from basis.chain.contracts import ChainRevert
    from basis.chain.deploy import read_key_file

    contracts, _ = _bound(rpc, manifest)
    try:
        bid = bytes.fromhex(batch_id[2:] if batch_id.startswith("0x") else batch_id)
        result = contracts.revoke_root(contracts.sender(read_key_file(key_file)), bid)
    except (ValueError, ChainRevert) as exc:
        typer.echo(f"error: cannot revoke: {exc}", err=True)
        raise typer.Exit(1) from exc
    ev = result.event("RootRevoked")
    typer.echo(json.dumps({"batch_id": batch_id, "rewards_root": "0x" + bytes(ev.args["rewardsRoot"]).hex(),
                           "tx_hash": result.tx_hash}))

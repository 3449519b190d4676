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
        )
    except DeployError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(result.manifest, indent=2, sort_keys=True))
    typer.echo(f"manifest written to {result.path}", err=True)

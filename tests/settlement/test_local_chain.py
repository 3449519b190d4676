"""`basis up`'s local chain: resumes its state after a clean stop, and refuses to run when an
unclean stop lost the chain the ledger settled on."""

from __future__ import annotations

import signal

import pytest
from eth_account import Account

from basis.chain.anvil import free_port
from basis.settlement import local_chain
from tests.conftest import require_foundry


@pytest.fixture
def home(tmp_path):
    require_foundry()
    return tmp_path


def test_a_clean_stop_resumes_the_same_deployment(home):
    operator = Account.create().address
    first = local_chain.start_local_chain(home, operator, free_port())
    vault = first.manifest["contracts"]["vault"]["address"]
    first.stop()
    again = local_chain.start_local_chain(home, operator, free_port())
    try:
        assert again.manifest["contracts"]["vault"]["address"] == vault
        assert again.manifest["deploy_block"] == first.manifest["deploy_block"]  # not redeployed
    finally:
        again.stop()


def test_lost_chain_state_is_named_and_a_fresh_start_sets_it_aside(home):
    operator = Account.create().address
    chain = local_chain.start_local_chain(home, operator, free_port())
    chain.anvil.process.send_signal(signal.SIGKILL)  # an unclean stop ...
    chain.anvil.process.wait()
    (home / "anvil-state.json").unlink(missing_ok=True)  # ... that lost the chain's state
    chain.anvil.process = None
    with pytest.raises(local_chain.ChainStateLost, match="no longer holds the vault"):
        local_chain.start_local_chain(home, operator, free_port())
    aside = local_chain.set_aside(home)
    assert (aside / "deployment.json").exists() and not (home / "deployment.json").exists()
    fresh = local_chain.start_local_chain(home, operator, free_port())
    fresh.stop()


def test_a_chain_behind_its_ledger_is_refused(home, settings):
    """evm_revert rolls the chain back below the block the ledger's indexer already saw."""
    from types import SimpleNamespace

    from basis.ledger.service import Ledger
    from basis.settlement.chain import connect
    from basis.settlement.deposits import ChainIndexer

    chain = local_chain.start_local_chain(home, Account.create().address, free_port())
    ledger = Ledger(settings)
    try:
        w3 = connect(chain.rpc_url)
        snapshot = chain.anvil.rpc("evm_snapshot")
        for _ in range(3):
            chain.anvil.rpc("evm_mine")
        indexer = ChainIndexer(ledger, w3, chain.manifest)
        indexer.sync()
        runtime = SimpleNamespace(web3=w3, indexer=indexer)
        local_chain.check_ledger_matches_chain(runtime)
        chain.anvil.rpc("evm_revert", [snapshot])
        with pytest.raises(local_chain.ChainStateLost, match="lost recent state"):
            local_chain.check_ledger_matches_chain(runtime)
    finally:
        ledger.close()
        chain.stop()


def test_the_chain_log_lives_in_the_home_and_the_previous_one_is_kept(home):
    """A chain of `basis up` keeps its log beside its state (the operator can read it; a SIGKILLed
    `basis up` leaves no temporary folder behind), and a restart keeps the previous run's log once."""
    operator = Account.create().address
    first = local_chain.start_local_chain(home, operator, free_port())
    first.stop()
    log = (home / "anvil.log").read_text()
    assert "eth_chainId" in log and "Listening on" in log
    again = local_chain.start_local_chain(home, operator, free_port())
    try:
        assert (home / "anvil.log.1").read_text() == log
        assert "eth_chainId" in (home / "anvil.log").read_text()
    finally:
        again.stop()

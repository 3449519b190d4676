// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {StdInvariant} from "forge-std/StdInvariant.sol";

import {BaseTest} from "../utils/BaseTest.sol";
import {VaultHandler} from "./VaultHandler.sol";

contract InvariantsTest is StdInvariant, BaseTest {
    VaultHandler internal handler;

    function setUp() public override {
        super.setUp();
        handler = new VaultHandler(token, vault, distributor, owner, treasury, operatorKey);
        // The handler mints through the token owner.
        targetContract(address(handler));
    }

    /// Tokens held by the vault are exactly the unsettled, unwithdrawn deposits.
    function invariant_vaultBalanceMatchesTotals() public view {
        assertEq(
            token.balanceOf(address(vault)), vault.totalDeposited() - vault.totalSettled() - vault.totalWithdrawn()
        );
        assertEq(vault.totalDeposited(), handler.ghostDeposited());
        assertEq(vault.totalWithdrawn(), handler.ghostWithdrawn());
    }

    /// The distributor never pays out more than it was funded with.
    function invariant_claimedNeverExceedsFunded() public view {
        assertLe(handler.ghostClaimed(), handler.ghostFunded());
        assertEq(token.balanceOf(address(distributor)) + handler.ghostClaimed(), handler.ghostFunded());
        uint256 sum;
        for (uint256 i = 0; i < 3; i++) {
            uint256 c = distributor.claimed(handler.worker(i));
            assertLe(c, handler.cumulative(i));
            assertEq(token.balanceOf(handler.worker(i)), c);
            sum += c;
        }
        assertEq(sum, handler.ghostClaimed());
    }

    function invariant_noReplayNoDoubleClaim() public view {
        assertFalse(handler.voucherReplayed());
        assertFalse(handler.doubleClaimed());
        assertFalse(handler.batchReplayed());
    }

    /// Ledger anchors only move forward: the vault holds the latest one the handler posted.
    function invariant_anchorsOnlyAdvance() public view {
        assertFalse(handler.anchorRewound());
        assertEq(vault.anchoredPosition(), handler.ghostAnchor());
    }
}

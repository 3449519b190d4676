// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {StdInvariant} from "forge-std/StdInvariant.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {BaseTest} from "../utils/BaseTest.sol";
import {RewardDistributor} from "../../src/RewardDistributor.sol";
import {RootDelayHandler} from "./RootDelayHandler.sol";

contract RootDelayInvariantsTest is StdInvariant, BaseTest {
    RootDelayHandler internal handler;
    RewardDistributor internal dist;

    function setUp() public override {
        super.setUp();
        address poster = makeAddr("rd-poster");
        dist = new RewardDistributor(IERC20(address(token)), owner, poster, 1 days);
        handler = new RootDelayHandler(token, dist, owner, poster);
        targetContract(address(handler));
    }

    /// No claim ever pays against a pending or revoked root; revoked (short) roots are never accepted.
    function invariant_noClaimAgainstPendingOrRevoked() public view {
        assertFalse(handler.claimedAgainstPending());
        assertFalse(handler.acceptedShortRoot());
    }

    /// Accepted roots are cumulative and monotone per worker; nobody holds more than the accepted root says.
    function invariant_acceptedRootsMonotone() public view {
        assertFalse(handler.acceptedNonMonotone());
        uint256 sum;
        for (uint256 i = 0; i < 3; i++) {
            uint256 c = dist.claimed(handler.worker(i));
            assertLe(c, handler.acceptedAmount(i));
            assertLe(handler.acceptedAmount(i), handler.earned(i));
            assertEq(token.balanceOf(handler.worker(i)), c);
            sum += c;
        }
        assertEq(sum, handler.ghostClaimed());
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {BaseTest} from "./utils/BaseTest.sol";
import {MerkleHelper} from "./utils/MerkleHelper.sol";
import {RewardDistributor} from "../src/RewardDistributor.sol";

/// @notice Realistic flows for `forge test --match-contract GasTest --gas-report --isolate`.
/// Every measured call is a top-level call, so with --isolate each is its own transaction and
/// the report includes the 21,000 base cost and calldata. Rewards tree: 16 workers (proof of 4).
contract GasTest is BaseTest {
    uint256 internal constant N = 16;
    address[] internal ws;

    function setUp() public override {
        super.setUp();
        for (uint256 i = 0; i < N; i++) ws.push(makeAddr(string.concat("w", vm.toString(i))));
    }

    function _leaves(uint256 scale) internal view returns (bytes32[] memory leaves) {
        leaves = new bytes32[](N);
        for (uint256 i = 0; i < N; i++) leaves[i] = MerkleHelper.rewardLeaf(ws[i], (i + 1) * scale);
    }

    /// deposit, settle (with root post), first claim, repeat claim, withdraw.
    function test_gas_fullFlow() public {
        vm.prank(alice);
        vault.deposit(1_000 ether, ACCOUNT);
        vm.prank(bob);
        vault.deposit(1_000 ether, bytes32(uint256(2) << 128));

        bytes32[] memory l1 = _leaves(1 ether);
        vm.prank(operator);
        vault.settle(
            "batch-1", 136 ether, 100 ether, 0, MerkleHelper.root(l1), RECEIPTS_ROOT, 1_000, keccak256("head 1")
        );

        distributor.claim(ws[3], 4 ether, MerkleHelper.proof(l1, 3)); // first claim

        bytes32[] memory l2 = _leaves(2 ether);
        vm.prank(operator);
        vault.settle(
            "batch-2", 136 ether, 100 ether, 10 ether, MerkleHelper.root(l2), RECEIPTS_ROOT, 2_000, keccak256("head 2")
        );

        distributor.claim(ws[3], 8 ether, MerkleHelper.proof(l2, 3)); // repeat claim

        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _signVoucher(operatorKey, ACCOUNT, alice, 100 ether, 1, expiry);
        vault.withdraw(ACCOUNT, alice, 100 ether, 1, expiry, sig);
    }

    /// A standalone root post by an EOA poster (the distributor used without the vault).
    function test_gas_postRootStandalone() public {
        address poster = makeAddr("poster");
        RewardDistributor d = new RewardDistributor(IERC20(address(token)), owner, poster, 0);
        vm.prank(poster);
        d.postRoot("batch-1", keccak256("r1"), RECEIPTS_ROOT);
        vm.prank(poster);
        d.postRoot("batch-2", keccak256("r2"), RECEIPTS_ROOT);
    }

    /// The same posts with a one-day rewards-root delay: each root pending, then accepted (by anyone)
    /// or revoked (owner).
    function test_gas_postRootWithDelay() public {
        address poster = makeAddr("poster");
        RewardDistributor d = new RewardDistributor(IERC20(address(token)), owner, poster, 1 days);
        vm.prank(poster);
        d.postRoot("batch-1", keccak256("r1"), RECEIPTS_ROOT);
        vm.warp(block.timestamp + 1 days);
        d.acceptRoot("batch-1");
        vm.prank(poster);
        d.postRoot("batch-2", keccak256("r2"), RECEIPTS_ROOT);
        vm.prank(owner);
        d.revokeRoot("batch-2");
        vm.prank(poster);
        d.postRoot("batch-3", keccak256("r3"), RECEIPTS_ROOT);
        vm.warp(block.timestamp + 1 days);
        d.acceptRoot("batch-3");
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

import {BaseTest} from "./utils/BaseTest.sol";
import {MerkleHelper} from "./utils/MerkleHelper.sol";
import {RewardDistributor} from "../src/RewardDistributor.sol";
import {ErrorsLib} from "../src/libraries/Errors.sol";
import {EventsLib} from "../src/libraries/Events.sol";

/// @notice The rewards-root delay: pending roots, acceptance after the delay, owner revocation.
contract RootDelayTest is BaseTest {
    uint256 internal constant DELAY = 1 days;
    address internal poster = makeAddr("poster");
    RewardDistributor internal dist;

    function setUp() public override {
        super.setUp();
        dist = new RewardDistributor(IERC20(address(token)), owner, poster, DELAY);
        vm.prank(owner);
        token.mint(address(dist), 1_000 ether);
    }

    function _post(bytes32 batchId, bytes32 root) internal {
        vm.prank(poster);
        dist.postRoot(batchId, root, RECEIPTS_ROOT);
    }

    function test_constructor_revertsOnTooLongDelay() public {
        uint256 max = dist.MAX_ROOT_DELAY();
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.RootDelayTooLong.selector, max + 1, max));
        new RewardDistributor(IERC20(address(token)), owner, poster, max + 1);
    }

    function test_post_isPendingAndReceiptsRootImmediate() public {
        bytes32[] memory leaves = _rewardLeaves(10 ether, 20 ether);
        bytes32 root = MerkleHelper.root(leaves);
        vm.expectEmit(address(dist));
        emit EventsLib.RootPosted("b1", root, RECEIPTS_ROOT);
        vm.expectEmit(address(dist));
        emit EventsLib.RootPending("b1", root, block.timestamp + DELAY);
        _post("b1", root);
        assertEq(dist.rewardsRoot(), bytes32(0));
        assertEq(dist.receiptsRootOf("b1"), RECEIPTS_ROOT); // evidence: at once
        (bytes32 pRoot, uint48 validAt, uint48 seq) = dist.pendingRootOf("b1");
        assertEq(pRoot, root);
        assertEq(validAt, block.timestamp + DELAY);
        assertEq(seq, 1);
        assertFalse(dist.isRootAcceptable("b1"));
        // No claim against a pending root.
        bytes32[] memory p = MerkleHelper.proof(leaves, 0);
        vm.expectRevert(ErrorsLib.InvalidProof.selector);
        dist.claim(worker1, 10 ether, p);
    }

    function test_accept_onlyAfterDelay() public {
        bytes32[] memory leaves = _rewardLeaves(10 ether, 20 ether);
        bytes32 root = MerkleHelper.root(leaves);
        _post("b1", root);
        vm.warp(block.timestamp + DELAY - 1);
        vm.expectRevert(
            abi.encodeWithSelector(ErrorsLib.RootNotYetValid.selector, block.timestamp + 1, block.timestamp)
        );
        dist.acceptRoot("b1");
        vm.warp(block.timestamp + 1);
        assertTrue(dist.isRootAcceptable("b1"));
        vm.expectEmit(address(dist));
        emit EventsLib.RootAccepted("b1", root);
        vm.prank(stranger); // anyone may accept
        dist.acceptRoot("b1");
        assertEq(dist.rewardsRoot(), root);
        assertEq(dist.acceptedBatch(), bytes32("b1"));
        assertEq(dist.acceptedSeq(), 1);
        dist.claim(worker1, 10 ether, MerkleHelper.proof(leaves, 0));
        assertEq(token.balanceOf(worker1), 10 ether);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.NoPendingRoot.selector, bytes32("b1")));
        dist.acceptRoot("b1");
    }

    function test_revoke_blocksAcceptanceForever() public {
        bytes32[] memory leaves = _rewardLeaves(10 ether, 20 ether);
        bytes32 root = MerkleHelper.root(leaves);
        _post("b1", root);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        dist.revokeRoot("b1");
        vm.expectEmit(address(dist));
        emit EventsLib.RootRevoked("b1", root);
        vm.prank(owner);
        dist.revokeRoot("b1");
        vm.warp(block.timestamp + DELAY);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.NoPendingRoot.selector, bytes32("b1")));
        dist.acceptRoot("b1");
        bytes32[] memory p = MerkleHelper.proof(leaves, 0);
        vm.expectRevert(ErrorsLib.InvalidProof.selector);
        dist.claim(worker1, 10 ether, p);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.NoPendingRoot.selector, bytes32("b1")));
        dist.revokeRoot("b1");
        assertTrue(dist.isBatchPosted("b1")); // the batch id stays used: no replay
    }

    /// A short root is revoked during its delay; the next (correct, cumulative) root pays right.
    function test_shortRootRevoked_thenCorrectRootPaysRight() public {
        bytes32[] memory good1 = _rewardLeaves(10 ether, 20 ether);
        _post("b1", MerkleHelper.root(good1));
        vm.warp(block.timestamp + DELAY);
        dist.acceptRoot("b1");
        dist.claim(worker1, 10 ether, MerkleHelper.proof(good1, 0));

        bytes32[] memory shorted = _rewardLeaves(11 ether, 20 ether); // worker1 earned 15
        _post("b2", MerkleHelper.root(shorted));
        // The claim valid before the post is never blocked by the pending root.
        dist.claim(worker2, 20 ether, MerkleHelper.proof(good1, 1));
        vm.prank(owner);
        dist.revokeRoot("b2");

        bytes32[] memory good3 = _rewardLeaves(15 ether, 20 ether);
        _post("b3", MerkleHelper.root(good3));
        vm.warp(block.timestamp + DELAY);
        dist.acceptRoot("b3");
        uint256 paid = dist.claim(worker1, 15 ether, MerkleHelper.proof(good3, 0));
        assertEq(paid, 5 ether);
        assertEq(token.balanceOf(worker1), 15 ether);
    }

    /// Batches more frequent than the delay: each root matures in turn; an older root cannot be
    /// accepted after a newer one.
    function test_severalPending_acceptedInOrderOnly() public {
        _post("b1", keccak256("r1"));
        vm.warp(block.timestamp + DELAY / 2);
        _post("b2", keccak256("r2"));
        vm.warp(block.timestamp + DELAY / 2);
        // b1 matured, b2 not yet: accept b1.
        dist.acceptRoot("b1");
        assertEq(dist.rewardsRoot(), keccak256("r1"));
        vm.warp(block.timestamp + DELAY);
        _post("b3", keccak256("r3"));
        dist.acceptRoot("b2");
        assertEq(dist.rewardsRoot(), keccak256("r2"));
        vm.warp(block.timestamp + DELAY);
        dist.acceptRoot("b3");
        assertEq(dist.acceptedBatch(), bytes32("b3"));
        // Skipping ahead makes the skipped roots unacceptable.
        _post("b4", keccak256("r4"));
        _post("b5", keccak256("r5"));
        vm.warp(block.timestamp + DELAY);
        dist.acceptRoot("b5");
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.NoPendingRoot.selector, bytes32("b4")));
        dist.acceptRoot("b4");
        assertFalse(dist.isRootAcceptable("b4"));
        assertEq(dist.rewardsRoot(), keccak256("r5"));
    }

    function test_zeroDelay_acceptsAtOnce() public {
        vm.expectEmit(address(distributor));
        emit EventsLib.RootAccepted("b1", keccak256("r1"));
        _settle("b1", 0, 0, 0, keccak256("r1"));
        assertEq(distributor.rewardsRoot(), keccak256("r1"));
        assertEq(distributor.acceptedBatch(), bytes32("b1"));
        (bytes32 pRoot,,) = distributor.pendingRootOf("b1");
        assertEq(pRoot, bytes32(0));
    }

    function testFuzz_noClaimBeforeDelay(uint96 amount, uint32 wait) public {
        vm.assume(amount > 0);
        uint256 w = bound(wait, 0, DELAY - 1);
        bytes32[] memory leaves = _rewardLeaves(uint256(amount), 1);
        _post("b1", MerkleHelper.root(leaves));
        vm.warp(block.timestamp + w);
        vm.expectRevert();
        dist.acceptRoot("b1");
        bytes32[] memory p = MerkleHelper.proof(leaves, 0);
        vm.expectRevert(ErrorsLib.InvalidProof.selector);
        dist.claim(worker1, uint256(amount), p);
    }
}

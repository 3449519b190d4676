// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {BaseTest} from "./utils/BaseTest.sol";
import {MerkleHelper} from "./utils/MerkleHelper.sol";
import {ReturnsFalseToken} from "./mocks/ReturnsFalseToken.sol";
import {RewardDistributor} from "../src/RewardDistributor.sol";
import {ErrorsLib} from "../src/libraries/Errors.sol";
import {EventsLib} from "../src/libraries/Events.sol";

contract RewardDistributorTest is BaseTest {
    address internal poster = makeAddr("poster");
    RewardDistributor internal dist;

    function setUp() public override {
        super.setUp();
        // A standalone distributor with an EOA poster, funded directly.
        dist = new RewardDistributor(IERC20(address(token)), owner, poster, 0);
        vm.prank(owner);
        token.mint(address(dist), 1_000 ether);
    }

    function _post(bytes32 batchId, bytes32 root) internal {
        vm.prank(poster);
        dist.postRoot(batchId, root, RECEIPTS_ROOT);
    }

    // ------------------------------------------------------------- constructor

    function test_constructor_revertsOnZeroToken() public {
        vm.expectRevert(ErrorsLib.ZeroAddress.selector);
        new RewardDistributor(IERC20(address(0)), owner, poster, 0);
    }

    function test_constructor_revertsOnZeroPoster() public {
        vm.expectRevert(ErrorsLib.ZeroAddress.selector);
        new RewardDistributor(IERC20(address(token)), owner, address(0), 0);
    }

    // ---------------------------------------------------------------- postRoot

    function test_postRoot_storesAndEmits() public {
        vm.expectEmit(address(dist));
        emit EventsLib.RootPosted("b1", bytes32(uint256(7)), RECEIPTS_ROOT);
        _post("b1", bytes32(uint256(7)));
        assertEq(dist.rewardsRoot(), bytes32(uint256(7)));
        assertEq(dist.receiptsRootOf("b1"), RECEIPTS_ROOT);
        assertTrue(dist.isBatchPosted("b1"));
        assertFalse(dist.isBatchPosted("b2"));
    }

    function test_postRoot_revertsForNonPoster() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.NotPoster.selector, stranger));
        dist.postRoot("b1", bytes32(uint256(7)), RECEIPTS_ROOT);
        assertEq(dist.rewardsRoot(), bytes32(0));
    }

    function test_postRoot_revertsOnReplayedBatch() public {
        _post("b1", bytes32(uint256(7)));
        vm.prank(poster);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.BatchAlreadyPosted.selector, bytes32("b1")));
        dist.postRoot("b1", bytes32(uint256(8)), keccak256("other"));
        assertEq(dist.rewardsRoot(), bytes32(uint256(7)));
        assertEq(dist.receiptsRootOf("b1"), RECEIPTS_ROOT);
    }

    function test_postRoot_revertsOnZeroReceiptsRoot() public {
        vm.prank(poster);
        vm.expectRevert(ErrorsLib.ZeroRoot.selector);
        dist.postRoot("b1", bytes32(uint256(7)), bytes32(0));
    }

    // ------------------------------------------------------------------- claim

    function test_claim_paysDifference() public {
        bytes32[] memory leaves = _rewardLeaves(10 ether, 20 ether);
        _post("b1", MerkleHelper.root(leaves));

        vm.expectEmit(address(dist));
        emit EventsLib.Claimed(worker1, 10 ether, 10 ether);
        vm.prank(stranger); // anyone may call; funds go to the worker
        uint256 paid = dist.claim(worker1, 10 ether, MerkleHelper.proof(leaves, 0));
        assertEq(paid, 10 ether);
        assertEq(token.balanceOf(worker1), 10 ether);
        assertEq(token.balanceOf(stranger), 0);
        assertEq(dist.claimed(worker1), 10 ether);

        // Next batch raises worker1's cumulative to 25: only 15 more is paid.
        bytes32[] memory leaves2 = _rewardLeaves(25 ether, 20 ether);
        _post("b2", MerkleHelper.root(leaves2));
        paid = dist.claim(worker1, 25 ether, MerkleHelper.proof(leaves2, 0));
        assertEq(paid, 15 ether);
        assertEq(token.balanceOf(worker1), 25 ether);
    }

    function test_claim_revertsOnDoubleClaim() public {
        bytes32[] memory leaves = _rewardLeaves(10 ether, 20 ether);
        _post("b1", MerkleHelper.root(leaves));
        dist.claim(worker1, 10 ether, MerkleHelper.proof(leaves, 0));
        bytes32[] memory p = MerkleHelper.proof(leaves, 0);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.NothingToClaim.selector, 10 ether, 10 ether));
        dist.claim(worker1, 10 ether, p);
        assertEq(token.balanceOf(worker1), 10 ether);
    }

    function test_claim_revertsOnOldLowerCumulative() public {
        bytes32[] memory leaves = _rewardLeaves(10 ether, 20 ether);
        _post("b1", MerkleHelper.root(leaves));
        bytes32[] memory leaves2 = _rewardLeaves(25 ether, 20 ether);
        _post("b2", MerkleHelper.root(leaves2));
        dist.claim(worker1, 25 ether, MerkleHelper.proof(leaves2, 0));
        // The old leaf no longer proves against the current root.
        bytes32[] memory p = MerkleHelper.proof(leaves, 0);
        vm.expectRevert(ErrorsLib.InvalidProof.selector);
        dist.claim(worker1, 10 ether, p);
    }

    function test_claim_revertsOnWrongProof() public {
        bytes32[] memory leaves = _rewardLeaves(10 ether, 20 ether);
        _post("b1", MerkleHelper.root(leaves));
        bytes32[] memory p = MerkleHelper.proof(leaves, 0);
        vm.expectRevert(ErrorsLib.InvalidProof.selector);
        dist.claim(worker1, 11 ether, p); // inflated amount
        p[0] = bytes32(uint256(p[0]) ^ 1);
        vm.expectRevert(ErrorsLib.InvalidProof.selector);
        dist.claim(worker1, 10 ether, p); // tampered proof
        assertEq(token.balanceOf(worker1), 0);
    }

    function test_claim_revertsForAnotherWorker() public {
        bytes32[] memory leaves = _rewardLeaves(10 ether, 20 ether);
        _post("b1", MerkleHelper.root(leaves));
        bytes32[] memory p = MerkleHelper.proof(leaves, 1); // worker2's proof
        vm.expectRevert(ErrorsLib.InvalidProof.selector);
        dist.claim(stranger, 20 ether, p);
        vm.expectRevert(ErrorsLib.InvalidProof.selector);
        dist.claim(worker1, 20 ether, p);
        assertEq(token.balanceOf(stranger), 0);
        assertEq(token.balanceOf(worker1), 0);
    }

    function test_claim_revertsBeforeAnyRoot() public {
        bytes32[] memory leaves = _rewardLeaves(10 ether, 20 ether);
        bytes32[] memory p = MerkleHelper.proof(leaves, 0);
        vm.expectRevert(ErrorsLib.InvalidProof.selector);
        dist.claim(worker1, 10 ether, p);
    }

    function test_claim_revertsWhenUnderfunded() public {
        bytes32[] memory leaves = _rewardLeaves(2_000 ether, 20 ether);
        _post("b1", MerkleHelper.root(leaves));
        bytes32[] memory p = MerkleHelper.proof(leaves, 0);
        vm.expectRevert(); // ERC20InsufficientBalance from the token
        dist.claim(worker1, 2_000 ether, p);
        assertEq(dist.claimed(worker1), 0);
    }

    function test_claim_singleLeafTree() public {
        bytes32[] memory leaves = new bytes32[](1);
        leaves[0] = MerkleHelper.rewardLeaf(worker1, 3 ether);
        _post("b1", MerkleHelper.root(leaves));
        dist.claim(worker1, 3 ether, new bytes32[](0));
        assertEq(token.balanceOf(worker1), 3 ether);
    }

    function test_claim_safeErc20RevertsOnFalseReturn() public {
        ReturnsFalseToken bad = new ReturnsFalseToken();
        RewardDistributor d = new RewardDistributor(IERC20(address(bad)), owner, poster, 0);
        bad.mint(address(d), 100 ether);
        bytes32[] memory leaves = _rewardLeaves(10 ether, 20 ether);
        vm.prank(poster);
        d.postRoot("b1", MerkleHelper.root(leaves), RECEIPTS_ROOT);
        bytes32[] memory p = MerkleHelper.proof(leaves, 0);
        vm.expectRevert(abi.encodeWithSelector(SafeERC20.SafeERC20FailedOperation.selector, address(bad)));
        d.claim(worker1, 10 ether, p);
        assertEq(d.claimed(worker1), 0);
    }

    // ------------------------------------------------------------------- views

    function test_verifyReceipt() public {
        bytes32[] memory leaves = new bytes32[](3);
        leaves[0] = MerkleHelper.receiptLeaf(keccak256("r0"));
        leaves[1] = MerkleHelper.receiptLeaf(keccak256("r1"));
        leaves[2] = MerkleHelper.receiptLeaf(keccak256("r2"));
        vm.prank(poster);
        dist.postRoot("b1", bytes32(0), MerkleHelper.root(leaves));
        for (uint256 i = 0; i < 3; i++) {
            assertTrue(dist.verifyReceipt("b1", keccak256(abi.encodePacked("r", bytes1(uint8(48 + i)))),
                MerkleHelper.proof(leaves, i)));
        }
        assertFalse(dist.verifyReceipt("b1", keccak256("r3"), MerkleHelper.proof(leaves, 0)));
    }

    function test_verifyReceipt_revertsOnUnknownBatch() public {
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.UnknownBatch.selector, bytes32("nope")));
        dist.verifyReceipt("nope", keccak256("r0"), new bytes32[](0));
    }

    function test_verifyReward() public {
        bytes32[] memory leaves = _rewardLeaves(10 ether, 20 ether);
        _post("b1", MerkleHelper.root(leaves));
        assertTrue(dist.verifyReward(worker2, 20 ether, MerkleHelper.proof(leaves, 1)));
        assertFalse(dist.verifyReward(worker2, 21 ether, MerkleHelper.proof(leaves, 1)));
    }

    // ------------------------------------------------------------------- owner

    function test_setPoster() public {
        vm.expectEmit(address(dist));
        emit EventsLib.PosterSet(poster, stranger);
        vm.prank(owner);
        dist.setPoster(stranger);
        assertEq(dist.poster(), stranger);
    }

    function test_setPoster_reverts() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        dist.setPoster(stranger);
        vm.prank(owner);
        vm.expectRevert(ErrorsLib.ZeroAddress.selector);
        dist.setPoster(address(0));
    }

    function test_ownership_isTwoStep() public {
        vm.prank(owner);
        dist.transferOwnership(stranger);
        assertEq(dist.owner(), owner);
        vm.prank(stranger);
        dist.acceptOwnership();
        assertEq(dist.owner(), stranger);
    }

    // -------------------------------------------------------------------- fuzz

    function testFuzz_claim_cumulative(uint96 a1, uint96 a2, uint96 b1, address w) public {
        vm.assume(w != address(0) && w != address(dist));
        uint256 first = uint256(a1) + 1;
        uint256 second = first + uint256(a2);
        vm.prank(owner);
        token.mint(address(dist), second);

        bytes32[] memory leaves = new bytes32[](2);
        leaves[0] = MerkleHelper.rewardLeaf(w, first);
        leaves[1] = MerkleHelper.rewardLeaf(worker2, uint256(b1));
        _post("b1", MerkleHelper.root(leaves));
        uint256 before = token.balanceOf(w);
        dist.claim(w, first, MerkleHelper.proof(leaves, 0));

        leaves[0] = MerkleHelper.rewardLeaf(w, second);
        _post("b2", MerkleHelper.root(leaves));
        bytes32[] memory p = MerkleHelper.proof(leaves, 0);
        if (a2 == 0) {
            vm.expectRevert(abi.encodeWithSelector(ErrorsLib.NothingToClaim.selector, second, first));
            dist.claim(w, second, p);
        } else {
            dist.claim(w, second, p);
        }
        assertEq(token.balanceOf(w) - before, second);
        assertEq(dist.claimed(w), second);
    }

    function testFuzz_claim_wrongAmountReverts(uint256 real, uint256 fake) public {
        vm.assume(real != fake);
        bytes32[] memory leaves = _rewardLeaves(real, 1);
        _post("b1", MerkleHelper.root(leaves));
        bytes32[] memory p = MerkleHelper.proof(leaves, 0);
        vm.expectRevert(ErrorsLib.InvalidProof.selector);
        dist.claim(worker1, fake, p);
    }
}

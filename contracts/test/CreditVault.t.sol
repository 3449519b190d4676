// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {BaseTest} from "./utils/BaseTest.sol";
import {MerkleHelper} from "./utils/MerkleHelper.sol";
import {ReturnsFalseToken} from "./mocks/ReturnsFalseToken.sol";
import {CreditVault} from "../src/CreditVault.sol";
import {RewardDistributor} from "../src/RewardDistributor.sol";
import {ErrorsLib} from "../src/libraries/Errors.sol";
import {EventsLib} from "../src/libraries/Events.sol";

contract CreditVaultTest is BaseTest {
    // ------------------------------------------------------------- constructor

    function test_constructor_wiring() public view {
        assertEq(address(vault.TOKEN()), address(token));
        assertEq(address(vault.DISTRIBUTOR()), address(distributor));
        assertEq(vault.operator(), operator);
        assertEq(vault.treasury(), treasury);
        assertEq(vault.owner(), owner);
        assertEq(distributor.poster(), address(vault));
        (, string memory name, string memory version, uint256 chainId, address verifying,,) = vault.eip712Domain();
        assertEq(name, "BasisCreditVault");
        assertEq(version, "1");
        assertEq(chainId, block.chainid);
        assertEq(verifying, address(vault));
    }

    function test_constructor_revertsOnZeroAddresses() public {
        IERC20 t = IERC20(address(token));
        vm.expectRevert(ErrorsLib.ZeroAddress.selector);
        new CreditVault(IERC20(address(0)), distributor, owner, operator, treasury);
        vm.expectRevert(ErrorsLib.ZeroAddress.selector);
        new CreditVault(t, RewardDistributor(address(0)), owner, operator, treasury);
        vm.expectRevert(ErrorsLib.ZeroAddress.selector);
        new CreditVault(t, distributor, owner, address(0), treasury);
        vm.expectRevert(ErrorsLib.ZeroAddress.selector);
        new CreditVault(t, distributor, owner, operator, address(0));
    }

    function test_typehash_matchesDesign() public view {
        assertEq(
            vault.WITHDRAWAL_TYPEHASH(),
            keccak256("Withdrawal(bytes32 account,address recipient,uint256 amount,uint256 nonce,uint256 expiry)")
        );
    }

    // ----------------------------------------------------------------- deposit

    function test_deposit() public {
        vm.expectEmit(address(vault));
        emit EventsLib.Deposited(alice, ACCOUNT, 100 ether);
        _deposit(alice, 100 ether, ACCOUNT);
        assertEq(token.balanceOf(address(vault)), 100 ether);
        assertEq(vault.totalDeposited(), 100 ether);
        assertEq(vault.available(), 100 ether);
    }

    function test_deposit_revertsOnZero() public {
        vm.prank(alice);
        vm.expectRevert(ErrorsLib.ZeroAmount.selector);
        vault.deposit(0, ACCOUNT);
    }

    function test_deposit_revertsWithoutAllowance() public {
        vm.prank(owner);
        token.mint(stranger, 1 ether);
        vm.prank(stranger);
        vm.expectRevert(); // ERC20InsufficientAllowance
        vault.deposit(1 ether, ACCOUNT);
        assertEq(vault.totalDeposited(), 0);
    }

    function test_deposit_revertsWhenPaused() public {
        vm.prank(owner);
        vault.pause();
        vm.prank(alice);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        vault.deposit(1 ether, ACCOUNT);
    }

    function test_safeErc20_falseReturningTokenReverts() public {
        ReturnsFalseToken bad = new ReturnsFalseToken();
        RewardDistributor d = new RewardDistributor(IERC20(address(bad)), owner, owner, 0);
        CreditVault v = new CreditVault(IERC20(address(bad)), d, owner, operator, treasury);
        bad.mint(alice, 10 ether);
        vm.startPrank(alice);
        bad.approve(address(v), 10 ether);
        vm.expectRevert(abi.encodeWithSelector(SafeERC20.SafeERC20FailedOperation.selector, address(bad)));
        v.deposit(10 ether, ACCOUNT);
        vm.stopPrank();
        assertEq(v.totalDeposited(), 0);
    }

    // ------------------------------------------------------------------ settle

    function test_settle_movesFundsAndPostsRoots() public {
        _deposit(alice, 100 ether, ACCOUNT);
        bytes32[] memory leaves = _rewardLeaves(30 ether, 5 ether);
        bytes32 root = MerkleHelper.root(leaves);
        uint256 treasuryBefore = token.balanceOf(treasury);

        vm.expectEmit(address(vault));
        emit EventsLib.Settled("b1", 30 ether, 50 ether, 5 ether);
        vm.expectEmit(address(distributor));
        emit EventsLib.RootPosted("b1", root, RECEIPTS_ROOT);
        _settle("b1", 30 ether, 50 ether, 5 ether, root);

        assertEq(token.balanceOf(address(vault)), 20 ether);
        assertEq(token.balanceOf(address(distributor)), 35 ether);
        assertEq(token.balanceOf(treasury), treasuryBefore + 50 ether - 5 ether);
        assertEq(vault.totalSettled(), 80 ether);
        assertEq(vault.totalRewardTopUp(), 5 ether);
        assertEq(vault.available(), 20 ether);
        assertEq(distributor.rewardsRoot(), root);
        assertEq(distributor.receiptsRootOf("b1"), RECEIPTS_ROOT);

        distributor.claim(worker1, 30 ether, MerkleHelper.proof(leaves, 0));
        distributor.claim(worker2, 5 ether, MerkleHelper.proof(leaves, 1));
        assertEq(token.balanceOf(address(distributor)), 0);
    }

    function test_settle_zeroAmountsStillPostsRoots() public {
        _settle("b1", 0, 0, 0, bytes32(0));
        assertTrue(distributor.isBatchPosted("b1"));
        assertEq(vault.totalSettled(), 0);
    }

    function test_settle_revertsForNonOperator() public {
        _deposit(alice, 100 ether, ACCOUNT);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.NotOperator.selector, stranger));
        vault.settle("b1", 1 ether, 1 ether, 0, bytes32(0), RECEIPTS_ROOT, 1, LEDGER_HEAD);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.NotOperator.selector, owner));
        vault.settle("b1", 1 ether, 1 ether, 0, bytes32(0), RECEIPTS_ROOT, 1, LEDGER_HEAD);
        assertEq(token.balanceOf(address(vault)), 100 ether);
        assertFalse(distributor.isBatchPosted("b1"));
    }

    function test_settle_revertsOnReplayedBatch() public {
        _deposit(alice, 100 ether, ACCOUNT);
        _settle("b1", 10 ether, 10 ether, 0, bytes32(uint256(1)));
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.BatchAlreadyPosted.selector, bytes32("b1")));
        vault.settle("b1", 10 ether, 10 ether, 0, bytes32(uint256(2)), RECEIPTS_ROOT, 1, LEDGER_HEAD);
        assertEq(token.balanceOf(address(vault)), 80 ether);
        assertEq(vault.totalSettled(), 20 ether);
        assertEq(distributor.rewardsRoot(), bytes32(uint256(1)));
    }

    function test_settle_revertsOnZeroReceiptsRoot() public {
        vm.prank(operator);
        vm.expectRevert(ErrorsLib.ZeroRoot.selector);
        vault.settle("b1", 0, 0, 0, bytes32(0), bytes32(0), 1, LEDGER_HEAD);
    }

    function test_settle_revertsWhenMovingMoreThanDeposits() public {
        _deposit(alice, 100 ether, ACCOUNT);
        // Someone sends tokens straight to the vault: they are not deposits and cannot be settled.
        vm.prank(bob);
        token.transfer(address(vault), 50 ether);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.InsufficientVaultBalance.selector, 101 ether, 100 ether));
        vault.settle("b1", 51 ether, 50 ether, 0, bytes32(0), RECEIPTS_ROOT, 1, LEDGER_HEAD);
    }

    function test_settle_revertsWhenTreasuryDidNotApprove() public {
        vm.prank(treasury);
        token.approve(address(vault), 0);
        vm.prank(operator);
        vm.expectRevert(); // ERC20InsufficientAllowance
        vault.settle("b1", 0, 0, 1 ether, bytes32(0), RECEIPTS_ROOT, 1, LEDGER_HEAD);
        assertFalse(distributor.isBatchPosted("b1"));
    }

    function test_settle_revertsWhenPaused() public {
        vm.prank(operator);
        vault.pause();
        vm.prank(operator);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        vault.settle("b1", 0, 0, 0, bytes32(0), RECEIPTS_ROOT, 1, LEDGER_HEAD);
    }

    // ---------------------------------------------------------------- anchors

    function test_settle_anchorsTheLedger() public {
        assertEq(vault.anchoredPosition(), 0);
        vm.expectEmit(address(vault));
        emit EventsLib.LedgerAnchored("b1", 41, keccak256("h41"));
        vm.prank(operator);
        vault.settle("b1", 0, 0, 0, bytes32(0), RECEIPTS_ROOT, 41, keccak256("h41"));
        assertEq(vault.anchoredPosition(), 41);
        // The packed slot keeps the operator intact.
        assertEq(vault.operator(), operator);
        vm.prank(operator);
        vault.settle("b2", 0, 0, 0, bytes32(0), RECEIPTS_ROOT, 42, keccak256("h42"));
        assertEq(vault.anchoredPosition(), 42);
    }

    function test_settle_revertsOnZeroLedgerHead() public {
        vm.prank(operator);
        vm.expectRevert(ErrorsLib.ZeroLedgerHead.selector);
        vault.settle("b1", 0, 0, 0, bytes32(0), RECEIPTS_ROOT, 1, bytes32(0));
        assertFalse(distributor.isBatchPosted("b1"));
    }

    function test_settle_revertsWhenAnchorDoesNotAdvance() public {
        _settle("b1", 0, 0, 0, bytes32(0)); // anchors position 1
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.AnchorNotAfter.selector, uint64(1), uint64(1)));
        vault.settle("b2", 0, 0, 0, bytes32(0), RECEIPTS_ROOT, 1, LEDGER_HEAD);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.AnchorNotAfter.selector, uint64(0), uint64(1)));
        vault.settle("b2", 0, 0, 0, bytes32(0), RECEIPTS_ROOT, 0, LEDGER_HEAD);
        assertFalse(distributor.isBatchPosted("b2"));
        assertEq(vault.anchoredPosition(), 1);
    }

    function testFuzz_anchorPositionsMustIncrease(uint64 first, uint64 second) public {
        first = uint64(bound(first, 1, type(uint64).max));
        vm.prank(operator);
        vault.settle("b1", 0, 0, 0, bytes32(0), RECEIPTS_ROOT, first, LEDGER_HEAD);
        vm.prank(operator);
        if (second <= first) {
            vm.expectRevert(abi.encodeWithSelector(ErrorsLib.AnchorNotAfter.selector, second, first));
            vault.settle("b2", 0, 0, 0, bytes32(0), RECEIPTS_ROOT, second, LEDGER_HEAD);
            assertEq(vault.anchoredPosition(), first);
        } else {
            vault.settle("b2", 0, 0, 0, bytes32(0), RECEIPTS_ROOT, second, LEDGER_HEAD);
            assertEq(vault.anchoredPosition(), second);
        }
    }

    // ---------------------------------------------------------------- withdraw

    function test_withdraw_withVoucher() public {
        _deposit(alice, 100 ether, ACCOUNT);
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _signVoucher(operatorKey, ACCOUNT, bob, 40 ether, 7, expiry);
        uint256 bobBefore = token.balanceOf(bob);

        vm.expectEmit(address(vault));
        emit EventsLib.Withdrawn(ACCOUNT, bob, 40 ether, 7);
        vm.prank(stranger); // a relayer may submit; funds go to the recipient
        vault.withdraw(ACCOUNT, bob, 40 ether, 7, expiry, sig);

        assertEq(token.balanceOf(bob), bobBefore + 40 ether);
        assertEq(vault.totalWithdrawn(), 40 ether);
        assertTrue(vault.nonceUsed(7));
        assertFalse(vault.nonceUsed(8));
    }

    function test_withdraw_atExpiryIsValid() public {
        _deposit(alice, 100 ether, ACCOUNT);
        uint256 expiry = block.timestamp + 10;
        bytes memory sig = _signVoucher(operatorKey, ACCOUNT, bob, 1 ether, 1, expiry);
        vm.warp(expiry);
        vault.withdraw(ACCOUNT, bob, 1 ether, 1, expiry, sig);
    }

    function test_withdraw_revertsWhenExpired() public {
        _deposit(alice, 100 ether, ACCOUNT);
        uint256 expiry = block.timestamp + 10;
        bytes memory sig = _signVoucher(operatorKey, ACCOUNT, bob, 1 ether, 1, expiry);
        vm.warp(expiry + 1);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.VoucherExpired.selector, expiry, expiry + 1));
        vault.withdraw(ACCOUNT, bob, 1 ether, 1, expiry, sig);
        assertEq(vault.totalWithdrawn(), 0);
        assertFalse(vault.nonceUsed(1));
    }

    function test_withdraw_revertsOnReplay() public {
        _deposit(alice, 100 ether, ACCOUNT);
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _signVoucher(operatorKey, ACCOUNT, bob, 1 ether, 1, expiry);
        vault.withdraw(ACCOUNT, bob, 1 ether, 1, expiry, sig);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.NonceAlreadyUsed.selector, 1));
        vault.withdraw(ACCOUNT, bob, 1 ether, 1, expiry, sig);
        // Same nonce with another (validly signed) amount is rejected too.
        bytes memory sig2 = _signVoucher(operatorKey, ACCOUNT, bob, 2 ether, 1, expiry);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.NonceAlreadyUsed.selector, 1));
        vault.withdraw(ACCOUNT, bob, 2 ether, 1, expiry, sig2);
        assertEq(vault.totalWithdrawn(), 1 ether);
    }

    function test_withdraw_revertsWhenSignedByNonOperator() public {
        _deposit(alice, 100 ether, ACCOUNT);
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _signVoucher(0xBAD, ACCOUNT, bob, 1 ether, 1, expiry);
        vm.expectRevert(ErrorsLib.InvalidVoucherSigner.selector);
        vault.withdraw(ACCOUNT, bob, 1 ether, 1, expiry, sig);
        assertEq(vault.totalWithdrawn(), 0);
    }

    function test_withdraw_revertsOnTamperedFields() public {
        _deposit(alice, 100 ether, ACCOUNT);
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _signVoucher(operatorKey, ACCOUNT, bob, 1 ether, 1, expiry);
        vm.expectRevert(ErrorsLib.InvalidVoucherSigner.selector);
        vault.withdraw(ACCOUNT, stranger, 1 ether, 1, expiry, sig); // other recipient
        vm.expectRevert(ErrorsLib.InvalidVoucherSigner.selector);
        vault.withdraw(ACCOUNT, bob, 2 ether, 1, expiry, sig); // other amount
        vm.expectRevert(ErrorsLib.InvalidVoucherSigner.selector);
        vault.withdraw(bytes32(uint256(1)), bob, 1 ether, 1, expiry, sig); // other account
        vm.expectRevert(ErrorsLib.InvalidVoucherSigner.selector);
        vault.withdraw(ACCOUNT, bob, 1 ether, 1, expiry + 1, sig); // other expiry
        vm.expectRevert(ErrorsLib.InvalidVoucherSigner.selector);
        vault.withdraw(ACCOUNT, bob, 1 ether, 1, expiry, hex"1234"); // malformed signature
    }

    function test_withdraw_revertsAfterOperatorRotation() public {
        _deposit(alice, 100 ether, ACCOUNT);
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _signVoucher(operatorKey, ACCOUNT, bob, 1 ether, 1, expiry);
        address newOperator = vm.addr(0xB0B);
        vm.expectEmit(address(vault));
        emit EventsLib.OperatorSet(operator, newOperator);
        vm.prank(owner);
        vault.setOperator(newOperator);
        vm.expectRevert(ErrorsLib.InvalidVoucherSigner.selector);
        vault.withdraw(ACCOUNT, bob, 1 ether, 1, expiry, sig);
        bytes memory sig2 = _signVoucher(0xB0B, ACCOUNT, bob, 1 ether, 1, expiry);
        vault.withdraw(ACCOUNT, bob, 1 ether, 1, expiry, sig2);
    }

    function test_withdraw_revertsOnZeroAmountOrRecipient() public {
        _deposit(alice, 100 ether, ACCOUNT);
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig0 = _signVoucher(operatorKey, ACCOUNT, bob, 0, 1, expiry);
        vm.expectRevert(ErrorsLib.ZeroAmount.selector);
        vault.withdraw(ACCOUNT, bob, 0, 1, expiry, sig0);
        bytes memory sigZ = _signVoucher(operatorKey, ACCOUNT, address(0), 1 ether, 1, expiry);
        vm.expectRevert(ErrorsLib.ZeroAddress.selector);
        vault.withdraw(ACCOUNT, address(0), 1 ether, 1, expiry, sigZ);
    }

    function test_withdraw_revertsBeyondAvailable() public {
        _deposit(alice, 10 ether, ACCOUNT);
        _settle("b1", 5 ether, 4 ether, 0, bytes32(0));
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _signVoucher(operatorKey, ACCOUNT, bob, 2 ether, 1, expiry);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.InsufficientVaultBalance.selector, 2 ether, 1 ether));
        vault.withdraw(ACCOUNT, bob, 2 ether, 1, expiry, sig);
    }

    function test_withdraw_revertsWhenPaused() public {
        _deposit(alice, 10 ether, ACCOUNT);
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _signVoucher(operatorKey, ACCOUNT, bob, 1 ether, 1, expiry);
        vm.prank(owner);
        vault.pause();
        vm.expectRevert(Pausable.EnforcedPause.selector);
        vault.withdraw(ACCOUNT, bob, 1 ether, 1, expiry, sig);
        vm.prank(owner);
        vault.unpause();
        vault.withdraw(ACCOUNT, bob, 1 ether, 1, expiry, sig);
    }

    // ------------------------------------------------------------- admin roles

    function test_pause_revertsForStranger() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(ErrorsLib.NotPauser.selector, stranger));
        vault.pause();
    }

    function test_unpause_onlyOwner() public {
        vm.prank(operator);
        vault.pause();
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, operator));
        vault.unpause();
        vm.prank(owner);
        vault.unpause();
        assertFalse(vault.paused());
    }

    function test_setOperator_and_setTreasury_reverts() public {
        vm.startPrank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vault.setOperator(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vault.setTreasury(stranger);
        vm.stopPrank();
        vm.startPrank(owner);
        vm.expectRevert(ErrorsLib.ZeroAddress.selector);
        vault.setOperator(address(0));
        vm.expectRevert(ErrorsLib.ZeroAddress.selector);
        vault.setTreasury(address(0));
        vm.stopPrank();
    }

    function test_setTreasury() public {
        vm.expectEmit(address(vault));
        emit EventsLib.TreasurySet(treasury, stranger);
        vm.prank(owner);
        vault.setTreasury(stranger);
        assertEq(vault.treasury(), stranger);
    }

    function test_ownership_isTwoStep() public {
        vm.prank(owner);
        vault.transferOwnership(stranger);
        assertEq(vault.owner(), owner);
        assertEq(vault.pendingOwner(), stranger);
        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, bob));
        vault.acceptOwnership();
        vm.prank(stranger);
        vault.acceptOwnership();
        assertEq(vault.owner(), stranger);
    }

    // -------------------------------------------------------------------- fuzz

    function testFuzz_depositSettleWithdraw(uint96 dep, uint96 toDist, uint96 toTreas, uint96 out, uint64 nonce)
        public
    {
        dep = uint96(bound(dep, 1, 1_000_000 ether));
        toDist = uint96(bound(toDist, 0, dep));
        toTreas = uint96(bound(toTreas, 0, dep - toDist));
        uint256 left = uint256(dep) - toDist - toTreas;
        _deposit(alice, dep, ACCOUNT);
        _settle("b1", toDist, toTreas, 0, bytes32(0));
        if (left > 0) {
            out = uint96(bound(out, 1, left));
            uint256 expiry = block.timestamp + 1;
            bytes memory sig = _signVoucher(operatorKey, ACCOUNT, bob, out, nonce, expiry);
            vault.withdraw(ACCOUNT, bob, out, nonce, expiry, sig);
            assertTrue(vault.nonceUsed(nonce));
        } else {
            out = 0;
        }
        assertEq(token.balanceOf(address(vault)), uint256(dep) - toDist - toTreas - out);
        assertEq(
            token.balanceOf(address(vault)), vault.totalDeposited() - vault.totalSettled() - vault.totalWithdrawn()
        );
    }

    function testFuzz_voucherFromRandomKeyRejected(uint256 key) public {
        key = bound(key, 1, 115792089237316195423570985008687907852837564279074904382605163141518161494336);
        vm.assume(key != operatorKey);
        _deposit(alice, 10 ether, ACCOUNT);
        uint256 expiry = block.timestamp + 1;
        bytes memory sig = _signVoucher(key, ACCOUNT, bob, 1 ether, 1, expiry);
        vm.expectRevert(ErrorsLib.InvalidVoucherSigner.selector);
        vault.withdraw(ACCOUNT, bob, 1 ether, 1, expiry, sig);
    }
}

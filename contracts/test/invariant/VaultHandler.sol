// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Test} from "forge-std/Test.sol";

import {BasisToken} from "../../src/BasisToken.sol";
import {CreditVault} from "../../src/CreditVault.sol";
import {RewardDistributor} from "../../src/RewardDistributor.sol";
import {MerkleHelper} from "../utils/MerkleHelper.sol";

/// @notice Drives the vault and the distributor with random but valid actions, and tries the
/// attacks (voucher replay, double claim, batch replay) recording any that succeed.
contract VaultHandler is Test {
    BasisToken internal token;
    CreditVault internal vault;
    RewardDistributor internal distributor;
    address internal owner;
    address internal treasury;
    uint256 internal operatorKey;

    address[] internal depositors;
    address[3] internal workers;
    uint256[3] public cumulative;
    bytes32[] internal leaves;

    uint256 public batches;
    uint256 public nextNonce;
    bytes32 internal lastBatchId;

    // ghosts
    uint256 public ghostFunded;
    uint256 public ghostClaimed;
    uint256 public ghostDeposited;
    uint256 public ghostWithdrawn;
    bool public voucherReplayed;
    bool public doubleClaimed;
    bool public batchReplayed;
    bool public anchorRewound;
    uint64 public ghostAnchor;

    struct Voucher {
        bytes32 account;
        address recipient;
        uint256 amount;
        uint256 nonce;
        uint256 expiry;
        bytes sig;
    }

    Voucher internal lastVoucher;
    bool internal haveVoucher;

    constructor(
        BasisToken token_,
        CreditVault vault_,
        RewardDistributor distributor_,
        address owner_,
        address treasury_,
        uint256 operatorKey_
    ) {
        token = token_;
        vault = vault_;
        distributor = distributor_;
        owner = owner_;
        treasury = treasury_;
        operatorKey = operatorKey_;
        for (uint256 i = 0; i < 3; i++) {
            depositors.push(makeAddr(string.concat("depositor", vm.toString(i))));
            workers[i] = makeAddr(string.concat("worker", vm.toString(i)));
        }
    }

    function worker(uint256 i) external view returns (address) {
        return workers[i];
    }

    // ------------------------------------------------------------------ actions

    function deposit(uint256 actorSeed, uint256 amount, bytes32 account) external {
        amount = bound(amount, 1, 1_000_000 ether);
        address who = depositors[actorSeed % depositors.length];
        vm.prank(owner);
        token.mint(who, amount);
        vm.startPrank(who);
        token.approve(address(vault), amount);
        vault.deposit(amount, account);
        vm.stopPrank();
        ghostDeposited += amount;
    }

    function settle(uint256 toDist, uint256 toTreas, uint256 topUp, uint64 advance) external {
        uint256 avail = vault.available();
        toDist = bound(toDist, 0, avail);
        toTreas = bound(toTreas, 0, avail - toDist);
        topUp = bound(topUp, 0, 1_000 ether);
        vm.prank(owner);
        token.mint(treasury, topUp);

        uint256 reward = toDist + topUp;
        uint256[3] memory share = [reward / 2, reward / 3, 0];
        share[2] = reward - share[0] - share[1];
        leaves = new bytes32[](3);
        for (uint256 i = 0; i < 3; i++) {
            cumulative[i] += share[i];
            leaves[i] = MerkleHelper.rewardLeaf(workers[i], cumulative[i]);
        }
        bytes32 batchId = keccak256(abi.encode("batch", batches++));
        vm.prank(vm.addr(operatorKey));
        uint64 position = ghostAnchor + uint64(bound(advance, 1, 1_000_000));
        vault.settle(
            batchId,
            toDist,
            toTreas,
            topUp,
            MerkleHelper.root(leaves),
            keccak256(abi.encode(batchId)),
            position,
            keccak256(abi.encode("head", position))
        );
        lastBatchId = batchId;
        ghostAnchor = position;
        ghostFunded += reward;
    }

    function claim(uint256 workerSeed) external {
        if (leaves.length == 0) return;
        uint256 i = workerSeed % 3;
        uint256 already = distributor.claimed(workers[i]);
        if (cumulative[i] <= already) return;
        bytes32[] memory proof = MerkleHelper.proof(leaves, i);
        uint256 paid = distributor.claim(workers[i], cumulative[i], proof);
        ghostClaimed += paid;
        // Immediately try again: must not pay twice.
        try distributor.claim(workers[i], cumulative[i], proof) returns (uint256) {
            doubleClaimed = true;
        } catch {}
    }

    function withdraw(uint256 amount, uint256 recipientSeed, bytes32 account) external {
        uint256 avail = vault.available();
        if (avail == 0) return;
        address recipient = depositors[recipientSeed % depositors.length];
        amount = bound(amount, 1, avail);
        uint256 nonce = nextNonce++;
        uint256 expiry = block.timestamp + 1 hours;
        bytes32 digest = vault.hashWithdrawal(account, recipient, amount, nonce, expiry);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(operatorKey, digest);
        bytes memory sig = abi.encodePacked(r, s, v);
        vault.withdraw(account, recipient, amount, nonce, expiry, sig);
        ghostWithdrawn += amount;
        lastVoucher = Voucher(account, recipient, amount, nonce, expiry, sig);
        haveVoucher = true;
    }

    function replayVoucher() external {
        if (!haveVoucher) return;
        Voucher memory w = lastVoucher;
        try vault.withdraw(w.account, w.recipient, w.amount, w.nonce, w.expiry, w.sig) {
            voucherReplayed = true;
        } catch {}
    }

    function replayBatch() external {
        if (batches == 0) return;
        vm.prank(vm.addr(operatorKey));
        try vault.settle(
            lastBatchId, 0, 0, 0, bytes32(uint256(1)), bytes32(uint256(1)), ghostAnchor + 1, bytes32(uint256(1))
        ) {
            batchReplayed = true;
        } catch {}
    }

    /// A fresh batch that anchors at or below the latest anchored position must be refused.
    function rewindAnchor(uint64 back) external {
        uint64 position = uint64(bound(back, 0, ghostAnchor));
        bytes32 batchId = keccak256(abi.encode("rewind", batches, position));
        vm.prank(vm.addr(operatorKey));
        try vault.settle(batchId, 0, 0, 0, bytes32(0), bytes32(uint256(1)), position, bytes32(uint256(1))) {
            anchorRewound = true;
        } catch {}
    }

    function warp(uint256 secs) external {
        vm.warp(block.timestamp + bound(secs, 0, 2 hours));
    }
}

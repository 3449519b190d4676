// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Test} from "forge-std/Test.sol";

import {BasisToken} from "../../src/BasisToken.sol";
import {RewardDistributor} from "../../src/RewardDistributor.sol";
import {MerkleHelper} from "../utils/MerkleHelper.sol";

/// @notice Posts honest (cumulative) and short rewards roots to a distributor with a delay,
/// revokes the short ones (and sometimes honest ones), accepts, claims and tries to claim against
/// pending or revoked roots, recording any claim that should not have paid.
contract RootDelayHandler is Test {
    BasisToken internal token;
    RewardDistributor internal dist;
    address internal owner;
    address internal poster;
    address[3] internal workers;

    struct Posted {
        bytes32 batchId;
        uint256[3] amounts;
        bool honest;
    }

    Posted[] internal posted;
    uint256[3] public earned; // honest cumulative per worker
    uint256[3] public acceptedAmount; // amounts of the accepted root
    uint256 internal acceptedIndex; // 1-based index into posted (0: none)

    bool public claimedAgainstPending;
    bool public acceptedNonMonotone;
    bool public acceptedShortRoot;
    uint256 public ghostClaimed;

    constructor(BasisToken token_, RewardDistributor dist_, address owner_, address poster_) {
        token = token_;
        dist = dist_;
        owner = owner_;
        poster = poster_;
        for (uint256 i = 0; i < 3; i++) workers[i] = makeAddr(string.concat("rd-worker", vm.toString(i)));
    }

    function worker(uint256 i) external view returns (address) {
        return workers[i];
    }

    function _leaves(uint256[3] memory a) internal view returns (bytes32[] memory l) {
        l = new bytes32[](3);
        for (uint256 i = 0; i < 3; i++) l[i] = MerkleHelper.rewardLeaf(workers[i], a[i]);
    }

    function post(uint256 r0, uint256 r1, uint256 r2, bool short) external {
        earned[0] += bound(r0, 0, 100 ether);
        earned[1] += bound(r1, 0, 100 ether);
        earned[2] += bound(r2, 0, 100 ether);
        uint256[3] memory a = earned;
        bool honest = !short || a[0] == 0;
        if (!honest) a[0] -= 1; // shorts worker 0 by one base unit
        uint256 funded = a[0] + a[1] + a[2];
        uint256 have = token.balanceOf(address(dist)) + ghostClaimed;
        if (funded > have) {
            vm.prank(owner);
            token.mint(address(dist), funded - have);
        }
        bytes32 batchId = keccak256(abi.encode("rd-batch", posted.length));
        vm.prank(poster);
        dist.postRoot(batchId, MerkleHelper.root(_leaves(a)), keccak256(abi.encode(batchId)));
        posted.push(Posted(batchId, a, honest));
        // The operator (owner) catches every short root during its delay.
        if (!honest) {
            vm.prank(owner);
            dist.revokeRoot(batchId);
        }
    }

    function revokeLatest() external {
        if (posted.length == 0) return;
        vm.prank(owner);
        try dist.revokeRoot(posted[posted.length - 1].batchId) {} catch {}
    }

    function accept(uint256 seed) external {
        if (posted.length == 0) return;
        uint256 k = seed % posted.length;
        try dist.acceptRoot(posted[k].batchId) {
            if (!posted[k].honest) acceptedShortRoot = true;
            for (uint256 i = 0; i < 3; i++) {
                if (posted[k].amounts[i] < acceptedAmount[i]) acceptedNonMonotone = true;
                acceptedAmount[i] = posted[k].amounts[i];
            }
            acceptedIndex = k + 1;
        } catch {}
    }

    function claim(uint256 workerSeed) external {
        uint256 i = workerSeed % 3;
        // Try every posted root that is not the accepted one: none may pay.
        for (uint256 k = 0; k < posted.length; k++) {
            if (k + 1 == acceptedIndex) continue;
            bytes32[] memory l = _leaves(posted[k].amounts);
            try dist.claim(workers[i], posted[k].amounts[i], MerkleHelper.proof(l, i)) returns (uint256 paid) {
                // Identical leaves in two roots prove against either: only a leaf of the accepted root pays.
                if (posted[k].amounts[i] != acceptedAmount[i] || acceptedIndex == 0) claimedAgainstPending = true;
                ghostClaimed += paid;
            } catch {}
        }
        if (acceptedIndex == 0) return;
        uint256 already = dist.claimed(workers[i]);
        if (acceptedAmount[i] <= already) return;
        bytes32[] memory leaves = _leaves(posted[acceptedIndex - 1].amounts);
        ghostClaimed += dist.claim(workers[i], acceptedAmount[i], MerkleHelper.proof(leaves, i));
    }

    function warp(uint256 secs) external {
        vm.warp(block.timestamp + bound(secs, 0, 2 days));
    }
}

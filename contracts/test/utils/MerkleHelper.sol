// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @notice Builds OpenZeppelin-compatible (sorted-pair) Merkle trees in tests.
/// Leaves are double-hashed as StandardMerkleTree does; levels pair neighbours and carry an odd
/// last node up. Any such tree verifies with OpenZeppelin's MerkleProof.
library MerkleHelper {
    function rewardLeaf(address worker, uint256 cumulative) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(worker, cumulative))));
    }

    function receiptLeaf(bytes32 receiptHash) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(receiptHash))));
    }

    function _hashPair(bytes32 a, bytes32 b) private pure returns (bytes32) {
        return a < b ? keccak256(abi.encode(a, b)) : keccak256(abi.encode(b, a));
    }

    function _next(bytes32[] memory level) private pure returns (bytes32[] memory up) {
        up = new bytes32[]((level.length + 1) / 2);
        for (uint256 i = 0; i < level.length; i += 2) {
            up[i / 2] = i + 1 < level.length ? _hashPair(level[i], level[i + 1]) : level[i];
        }
    }

    function root(bytes32[] memory leaves) internal pure returns (bytes32) {
        require(leaves.length > 0, "empty tree");
        bytes32[] memory level = leaves;
        while (level.length > 1) level = _next(level);
        return level[0];
    }

    function proof(bytes32[] memory leaves, uint256 index) internal pure returns (bytes32[] memory out) {
        require(index < leaves.length, "index");
        bytes32[] memory tmp = new bytes32[](64);
        uint256 n;
        bytes32[] memory level = leaves;
        while (level.length > 1) {
            uint256 sib = index ^ 1;
            if (sib < level.length) tmp[n++] = level[sib];
            level = _next(level);
            index /= 2;
        }
        out = new bytes32[](n);
        for (uint256 i = 0; i < n; i++) out[i] = tmp[i];
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

import {ErrorsLib} from "./libraries/Errors.sol";
import {EventsLib} from "./libraries/Events.sol";

/// @title RewardDistributor
/// @notice Cumulative Merkle reward claims for Basis contributors.
/// @dev Each settlement batch posts (once per batch id) the root of a tree of
/// `(address worker, uint256 cumulativeReward)` leaves in OpenZeppelin StandardMerkleTree layout
/// and the root of the batch's receipts tree (`(bytes32 receiptHash)` leaves). A worker (or anyone
/// on its behalf) claims `cumulative - claimed[worker]`; funds always go to the worker.
///
/// Storage: `rewardsRoot` (1 slot, rewritten per batch), `receiptsRootOf[batchId]` (1 slot per
/// batch; non-zero doubles as the "batch posted" marker), `claimed[worker]` (1 slot per worker).
/// No running totals are stored: they are derivable from events and would cost every claim an
/// extra SSTORE.
contract RewardDistributor is Ownable2Step {
    using SafeERC20 for IERC20;

    /// @notice The reward token ($BASIS).
    IERC20 public immutable TOKEN;

    /// @notice The current cumulative rewards root.
    bytes32 public rewardsRoot;

    /// @notice The only address allowed to post roots (the CreditVault, which posts in `settle`).
    address public poster;

    /// @notice Receipts root of each posted batch (zero: never posted).
    mapping(bytes32 batchId => bytes32) public receiptsRootOf;

    /// @notice Cumulative amount already paid to each worker.
    mapping(address worker => uint256) public claimed;

    constructor(IERC20 token, address initialOwner, address initialPoster) Ownable(initialOwner) {
        if (address(token) == address(0)) revert ErrorsLib.ZeroAddress();
        TOKEN = token;
        _setPoster(initialPoster);
    }

    // ------------------------------------------------------------------ poster

    /// @notice Posts batch `batchId`: the new cumulative `newRewardsRoot` (zero only while no
    /// reward was ever earned) and the batch's non-zero `receiptsRoot`. Poster only; a batch id
    /// is accepted at most once.
    function postRoot(bytes32 batchId, bytes32 newRewardsRoot, bytes32 receiptsRoot) external {
        if (msg.sender != poster) revert ErrorsLib.NotPoster(msg.sender);
        if (receiptsRoot == bytes32(0)) revert ErrorsLib.ZeroRoot();
        if (receiptsRootOf[batchId] != bytes32(0)) revert ErrorsLib.BatchAlreadyPosted(batchId);

        receiptsRootOf[batchId] = receiptsRoot;
        rewardsRoot = newRewardsRoot;

        emit EventsLib.RootPosted(batchId, newRewardsRoot, receiptsRoot);
    }

    // ------------------------------------------------------------------ claims

    /// @notice Pays `worker` the part of `cumulative` it has not claimed yet.
    /// @dev Anyone may call: the funds go to `worker`. Returns the amount paid.
    function claim(address worker, uint256 cumulative, bytes32[] calldata proof)
        external
        returns (uint256 amount)
    {
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(worker, cumulative))));
        if (!MerkleProof.verifyCalldata(proof, rewardsRoot, leaf)) revert ErrorsLib.InvalidProof();

        uint256 already = claimed[worker];
        if (cumulative <= already) revert ErrorsLib.NothingToClaim(cumulative, already);

        unchecked {
            amount = cumulative - already;
        }
        claimed[worker] = cumulative;

        TOKEN.safeTransfer(worker, amount);

        emit EventsLib.Claimed(worker, amount, cumulative);
    }

    // ------------------------------------------------------------------- views

    /// @notice Whether `receiptHash` is a leaf of batch `batchId`'s receipts tree.
    /// @dev Reverts with `UnknownBatch` when the batch was never posted.
    function verifyReceipt(bytes32 batchId, bytes32 receiptHash, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        bytes32 root = receiptsRootOf[batchId];
        if (root == bytes32(0)) revert ErrorsLib.UnknownBatch(batchId);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(receiptHash))));
        return MerkleProof.verifyCalldata(proof, root, leaf);
    }

    /// @notice Whether `(worker, cumulative)` is a leaf of the current rewards tree.
    function verifyReward(address worker, uint256 cumulative, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(worker, cumulative))));
        return MerkleProof.verifyCalldata(proof, rewardsRoot, leaf);
    }

    /// @notice Whether batch `batchId` was posted.
    function isBatchPosted(bytes32 batchId) external view returns (bool) {
        return receiptsRootOf[batchId] != bytes32(0);
    }

    // ------------------------------------------------------------------- owner

    /// @notice Sets the address allowed to post roots. Owner only.
    function setPoster(address newPoster) external onlyOwner {
        _setPoster(newPoster);
    }

    function _setPoster(address newPoster) internal {
        if (newPoster == address(0)) revert ErrorsLib.ZeroAddress();
        emit EventsLib.PosterSet(poster, newPoster);
        poster = newPoster;
    }
}

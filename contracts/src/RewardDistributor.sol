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
/// @notice Cumulative Merkle reward claims for Basis contributors, with a delay on new rewards roots.
/// @dev Each settlement batch posts (once per batch id) the root of a tree of
/// `(address worker, uint256 cumulativeReward)` leaves in OpenZeppelin StandardMerkleTree layout
/// and the root of the batch's receipts tree (`(bytes32 receiptHash)` leaves). A worker (or anyone
/// on its behalf) claims `cumulative - claimed[worker]`; funds always go to the worker.
///
/// Rewards-root delay (after Morpho's universal rewards distributor): a posted rewards root is
/// first *pending*. Anyone may accept it once `ROOT_DELAY` seconds have passed; until then the
/// owner may revoke it. Claims prove only against the last *accepted* root, so a wrong root can be
/// stopped before anyone draws on it, and a new pending root never blocks a claim that was valid
/// before it. Every post gets a sequence number; a root is accepted only if it is newer than the
/// accepted one, so roots (cumulative by construction) are accepted in posting order, and several
/// may be pending at once (batches settle more often than the delay lasts). With `ROOT_DELAY == 0`
/// a posted root is accepted in the same call. The receipts root is evidence, not money: it is
/// stored at once.
///
/// Storage: `rewardsRoot` and `acceptedBatch` (rewritten per acceptance), `poster` packed with the
/// post/accept sequence numbers, `receiptsRootOf[batchId]` (1 slot per batch; non-zero doubles as
/// the "batch posted" marker), `pendingRootOf[batchId]` (2 slots while pending, deleted on
/// acceptance or revocation; unused without a delay), `claimed[worker]` (1 slot per worker).
contract RewardDistributor is Ownable2Step {
    using SafeERC20 for IERC20;

    /// @notice A rewards root waiting out its delay.
    struct PendingRoot {
        bytes32 root;
        uint48 validAt; // chain time from which it may be accepted
        uint48 seq; // posting order (1-based)
    }

    /// @notice Upper bound on the delay, so a deployment cannot lock rewards away for good.
    uint256 public constant MAX_ROOT_DELAY = 30 days;

    /// @notice The reward token ($BASIS).
    IERC20 public immutable TOKEN;

    /// @notice Seconds a posted rewards root stays pending before it can be accepted.
    uint256 public immutable ROOT_DELAY;

    /// @notice The accepted cumulative rewards root: the one claims prove against.
    bytes32 public rewardsRoot;

    /// @notice The batch whose rewards root is `rewardsRoot` (zero: none accepted yet).
    bytes32 public acceptedBatch;

    /// @notice The only address allowed to post roots (the CreditVault, which posts in `settle`).
    address public poster;
    /// @notice Number of rewards roots posted so far (the last post's sequence number).
    uint48 public postedCount;
    /// @notice Sequence number of the accepted root (0: none).
    uint48 public acceptedSeq;

    /// @notice Receipts root of each posted batch (zero: never posted).
    mapping(bytes32 batchId => bytes32) public receiptsRootOf;

    /// @notice Pending rewards root of a batch (zero root: none pending).
    mapping(bytes32 batchId => PendingRoot) public pendingRootOf;

    /// @notice Cumulative amount already paid to each worker.
    mapping(address worker => uint256) public claimed;

    constructor(IERC20 token, address initialOwner, address initialPoster, uint256 rootDelay)
        Ownable(initialOwner)
    {
        if (address(token) == address(0)) revert ErrorsLib.ZeroAddress();
        if (rootDelay > MAX_ROOT_DELAY) revert ErrorsLib.RootDelayTooLong(rootDelay, MAX_ROOT_DELAY);
        TOKEN = token;
        ROOT_DELAY = rootDelay;
        _setPoster(initialPoster);
    }

    // ------------------------------------------------------------------ poster

    /// @notice Posts batch `batchId`: the new cumulative `newRewardsRoot` (zero only while no
    /// reward was ever earned) and the batch's non-zero `receiptsRoot`. Poster only; a batch id
    /// is accepted at most once. The receipts root is stored at once; the rewards root becomes
    /// pending (accepted at once when `ROOT_DELAY` is zero).
    function postRoot(bytes32 batchId, bytes32 newRewardsRoot, bytes32 receiptsRoot) external {
        if (msg.sender != poster) revert ErrorsLib.NotPoster(msg.sender);
        if (receiptsRoot == bytes32(0)) revert ErrorsLib.ZeroRoot();
        if (receiptsRootOf[batchId] != bytes32(0)) revert ErrorsLib.BatchAlreadyPosted(batchId);

        uint48 seq = postedCount + 1;
        receiptsRootOf[batchId] = receiptsRoot;
        postedCount = seq;
        emit EventsLib.RootPosted(batchId, newRewardsRoot, receiptsRoot);

        if (ROOT_DELAY == 0) {
            _accept(batchId, newRewardsRoot, seq);
        } else {
            uint256 validAt = block.timestamp + ROOT_DELAY;
            // validAt <= now + MAX_ROOT_DELAY fits 48 bits for millions of years.
            // forge-lint: disable-next-line(unsafe-typecast)
            pendingRootOf[batchId] = PendingRoot(newRewardsRoot, uint48(validAt), seq);
            emit EventsLib.RootPending(batchId, newRewardsRoot, validAt);
        }
    }

    /// @notice Accepts batch `batchId`'s pending rewards root once its delay has passed. Anyone
    /// may call. Roots posted before it and still pending can no longer be accepted.
    function acceptRoot(bytes32 batchId) external {
        PendingRoot memory p = pendingRootOf[batchId];
        if (p.seq == 0 || p.seq <= acceptedSeq) revert ErrorsLib.NoPendingRoot(batchId);
        if (block.timestamp < p.validAt) revert ErrorsLib.RootNotYetValid(p.validAt, block.timestamp);

        delete pendingRootOf[batchId];
        _accept(batchId, p.root, p.seq);
    }

    /// @notice Revokes batch `batchId`'s pending rewards root: it can never be accepted. Owner only.
    /// @dev Claims keep proving against the accepted root; the next batch's root (cumulative)
    /// supersedes the revoked one.
    function revokeRoot(bytes32 batchId) external onlyOwner {
        PendingRoot memory p = pendingRootOf[batchId];
        if (p.seq == 0 || p.seq <= acceptedSeq) revert ErrorsLib.NoPendingRoot(batchId);

        delete pendingRootOf[batchId];
        emit EventsLib.RootRevoked(batchId, p.root);
    }

    function _accept(bytes32 batchId, bytes32 root, uint48 seq) internal {
        rewardsRoot = root;
        acceptedBatch = batchId;
        acceptedSeq = seq;
        emit EventsLib.RootAccepted(batchId, root);
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

    /// @notice Whether `(worker, cumulative)` is a leaf of the accepted rewards tree.
    function verifyReward(address worker, uint256 cumulative, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(worker, cumulative))));
        return MerkleProof.verifyCalldata(proof, rewardsRoot, leaf);
    }

    /// @notice Whether batch `batchId`'s rewards root is pending and accepting it would succeed now.
    function isRootAcceptable(bytes32 batchId) external view returns (bool) {
        PendingRoot memory p = pendingRootOf[batchId];
        return p.seq > acceptedSeq && block.timestamp >= p.validAt;
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

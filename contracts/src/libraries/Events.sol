// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title EventsLib
/// @notice Every event emitted by the Basis contracts, in one place.
library EventsLib {
    // ---------------------------------------------------------------- CreditVault

    /// @notice `depositor` paid `amount` tokens into the vault, credited to `account`.
    event Deposited(address indexed depositor, bytes32 indexed account, uint256 amount);

    /// @notice Batch `batchId` was settled: `toDistributor` and `toTreasury` left the vault's
    /// deposits, `rewardTopUp` was pulled from the treasury to fund rewards on granted credit.
    event Settled(
        bytes32 indexed batchId, uint256 toDistributor, uint256 toTreasury, uint256 rewardTopUp
    );

    /// @notice Settlement `batchId` anchored the off-chain ledger: its export's hash-chain head at
    /// `position` is `head` (docs/audit.md).
    event LedgerAnchored(bytes32 indexed batchId, uint64 position, bytes32 head);

    /// @notice Unspent credit of `account` was withdrawn to `recipient` with voucher `nonce`.
    event Withdrawn(bytes32 indexed account, address indexed recipient, uint256 amount, uint256 indexed nonce);

    /// @notice The operator (settles, signs vouchers) changed.
    event OperatorSet(address indexed previousOperator, address indexed newOperator);

    /// @notice The treasury (receives fees, funds rewards on granted credit) changed.
    event TreasurySet(address indexed previousTreasury, address indexed newTreasury);

    // ----------------------------------------------------------- RewardDistributor

    /// @notice Batch `batchId` posted a new cumulative rewards root and its receipts root.
    event RootPosted(bytes32 indexed batchId, bytes32 rewardsRoot, bytes32 receiptsRoot);

    /// @notice `worker` received `amount`, bringing its claimed total to `cumulative`.
    event Claimed(address indexed worker, uint256 amount, uint256 cumulative);

    /// @notice The address allowed to post roots changed.
    event PosterSet(address indexed previousPoster, address indexed newPoster);

    /// @notice Batch `batchId`'s rewards root is pending: claimable only once accepted, from `validAt` on.
    event RootPending(bytes32 indexed batchId, bytes32 rewardsRoot, uint256 validAt);

    /// @notice Batch `batchId`'s rewards root became the root claims prove against.
    event RootAccepted(bytes32 indexed batchId, bytes32 rewardsRoot);

    /// @notice The owner revoked batch `batchId`'s pending rewards root before it was accepted.
    event RootRevoked(bytes32 indexed batchId, bytes32 rewardsRoot);
}

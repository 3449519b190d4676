// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title ErrorsLib
/// @notice Every custom error raised by the Basis contracts, in one place.
library ErrorsLib {
    /// @notice An amount that must be positive was zero.
    error ZeroAmount();
    /// @notice An address that must be set was the zero address.
    error ZeroAddress();
    /// @notice A root that must be set was zero.
    error ZeroRoot();
    /// @notice A settlement's ledger head was zero.
    error ZeroLedgerHead();
    /// @notice A settlement's ledger position is not above the latest anchored one.
    error AnchorNotAfter(uint64 position, uint64 anchoredPosition);
    /// @notice The caller is not the vault operator.
    error NotOperator(address caller);
    /// @notice The caller is not allowed to post roots on the distributor.
    error NotPoster(address caller);
    /// @notice The caller may not pause.
    error NotPauser(address caller);
    /// @notice The settlement batch id was already posted.
    error BatchAlreadyPosted(bytes32 batchId);
    /// @notice The settlement batch id was never posted.
    error UnknownBatch(bytes32 batchId);
    /// @notice The vault holds fewer unsettled deposits than requested.
    error InsufficientVaultBalance(uint256 requested, uint256 available);
    /// @notice The voucher's expiry is in the past (chain time).
    error VoucherExpired(uint256 expiry, uint256 nowTimestamp);
    /// @notice The voucher's nonce was already used.
    error NonceAlreadyUsed(uint256 nonce);
    /// @notice The voucher was not signed by the current operator.
    error InvalidVoucherSigner();
    /// @notice The Merkle proof does not prove (worker, cumulative) under the current root.
    error InvalidProof();
    /// @notice The cumulative amount is not above what the worker already claimed.
    error NothingToClaim(uint256 cumulative, uint256 alreadyClaimed);

    /// @notice The rewards-root delay chosen at deployment is longer than the contract allows.
    error RootDelayTooLong(uint256 delay, uint256 max);
    /// @notice Batch `batchId` has no pending rewards root (never posted, revoked, accepted or superseded).
    error NoPendingRoot(bytes32 batchId);
    /// @notice The pending rewards root of a batch is still inside its delay.
    error RootNotYetValid(uint256 validAt, uint256 nowTimestamp);
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {ErrorsLib} from "./libraries/Errors.sol";
import {EventsLib} from "./libraries/Events.sol";
import {RewardDistributor} from "./RewardDistributor.sol";

/// @title CreditVault
/// @notice Holds $BASIS deposited as inference credit for Basis accounts.
/// @dev
/// - `deposit` credits an account (bytes32: the account UUID's 16 bytes then 16 zero bytes).
/// - `settle` (operator only) closes one settlement batch in ONE transaction: it moves the
///   deposit-backed charges to the distributor (rewards) and the treasury (fees), pulls the
///   treasury-funded reward top-up for granted credit straight from the treasury to the
///   distributor (the treasury approves this vault), and posts the batch's rewards and receipts
///   roots on the distributor. The distributor rejects a batch id it has seen, so a batch settles
///   at most once. The same call anchors the off-chain ledger: (position, head) of its export's
///   hash chain (docs/audit.md), strictly increasing positions, emitted as `LedgerAnchored`.
/// - `withdraw` pays out unspent credit against an EIP-712 `Withdrawal` voucher signed by the
///   current operator; each nonce is usable once, and only until `expiry` (block timestamp).
/// Per-account balances live in the off-chain ledger; the vault tracks totals so that
/// `balance == totalDeposited - totalSettled - totalWithdrawn` can be checked.
contract CreditVault is Ownable2Step, Pausable, ReentrancyGuardTransient, EIP712 {
    using SafeERC20 for IERC20;

    /// @notice EIP-712 type hash of a withdrawal voucher.
    bytes32 public constant WITHDRAWAL_TYPEHASH = keccak256(
        "Withdrawal(bytes32 account,address recipient,uint256 amount,uint256 nonce,uint256 expiry)"
    );

    /// @notice The credit token ($BASIS).
    IERC20 public immutable TOKEN;

    /// @notice The reward distributor that receives rewards and the batch roots.
    RewardDistributor public immutable DISTRIBUTOR;

    /// @notice Settles batches and signs withdrawal vouchers.
    address public operator;

    /// @notice Ledger position of the latest anchor (0: none yet). Packed beside `operator`, whose
    /// slot `settle` reads anyway, so updating it costs a warm write.
    uint64 public anchoredPosition;

    /// @notice Receives fees; funds rewards earned on granted credit (approves this vault).
    address public treasury;

    /// @notice Sum of all deposits.
    uint256 public totalDeposited;

    /// @notice Sum of deposit-backed amounts moved out by settlements.
    uint256 public totalSettled;

    /// @notice Sum of all voucher withdrawals.
    uint256 public totalWithdrawn;

    /// @notice Sum of treasury-funded reward top-ups routed to the distributor (never vault funds).
    uint256 public totalRewardTopUp;

    /// @dev Used voucher nonces, 256 per word.
    mapping(uint256 word => uint256 bits) internal _nonceBitmap;

    modifier onlyOperator() {
        if (msg.sender != operator) revert ErrorsLib.NotOperator(msg.sender);
        _;
    }

    constructor(
        IERC20 token,
        RewardDistributor distributor,
        address initialOwner,
        address initialOperator,
        address initialTreasury
    ) Ownable(initialOwner) EIP712("BasisCreditVault", "1") {
        if (address(token) == address(0) || address(distributor) == address(0)) {
            revert ErrorsLib.ZeroAddress();
        }
        TOKEN = token;
        DISTRIBUTOR = distributor;
        _setOperator(initialOperator);
        _setTreasury(initialTreasury);
    }

    // ------------------------------------------------------------------ users

    /// @notice Pulls `amount` tokens from the caller and credits them to `account`.
    function deposit(uint256 amount, bytes32 account) external nonReentrant whenNotPaused {
        if (amount == 0) revert ErrorsLib.ZeroAmount();
        totalDeposited += amount;
        emit EventsLib.Deposited(msg.sender, account, amount);
        TOKEN.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Withdraws unspent credit of `account` to `recipient` with an operator-signed voucher.
    /// @dev Anyone may submit the voucher; the funds go to `recipient`.
    function withdraw(
        bytes32 account,
        address recipient,
        uint256 amount,
        uint256 nonce,
        uint256 expiry,
        bytes calldata signature
    ) external nonReentrant whenNotPaused {
        if (amount == 0) revert ErrorsLib.ZeroAmount();
        if (recipient == address(0)) revert ErrorsLib.ZeroAddress();
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp > expiry) revert ErrorsLib.VoucherExpired(expiry, block.timestamp);

        bytes32 digest = hashWithdrawal(account, recipient, amount, nonce, expiry);
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
        if (err != ECDSA.RecoverError.NoError || signer != operator) revert ErrorsLib.InvalidVoucherSigner();

        _useNonce(nonce);
        uint256 avail = _available();
        if (amount > avail) revert ErrorsLib.InsufficientVaultBalance(amount, avail);
        totalWithdrawn += amount;

        emit EventsLib.Withdrawn(account, recipient, amount, nonce);
        TOKEN.safeTransfer(recipient, amount);
    }

    // --------------------------------------------------------------- operator

    /// @notice Settles batch `batchId` and posts its roots on the distributor, atomically.
    /// @param toDistributor deposit-backed rewards moved from the vault to the distributor.
    /// @param toTreasury deposit-backed fees moved from the vault to the treasury.
    /// @param rewardTopUp rewards on granted credit, pulled from the treasury to the distributor.
    /// @param rewardsRoot new cumulative rewards root (StandardMerkleTree of (address, uint256)).
    /// @param receiptsRoot root of the batch's receipts tree (StandardMerkleTree of (bytes32)).
    /// @param ledgerPosition a ledger position at or after the batch; above every earlier anchor's.
    /// @param ledgerHead the ledger export's hash-chain head at `ledgerPosition` (docs/audit.md).
    function settle(
        bytes32 batchId,
        uint256 toDistributor,
        uint256 toTreasury,
        uint256 rewardTopUp,
        bytes32 rewardsRoot,
        bytes32 receiptsRoot,
        uint64 ledgerPosition,
        bytes32 ledgerHead
    ) external onlyOperator nonReentrant whenNotPaused {
        uint256 moved = toDistributor + toTreasury;
        uint256 avail = _available();
        if (moved > avail) revert ErrorsLib.InsufficientVaultBalance(moved, avail);

        if (moved != 0) totalSettled += moved;
        if (rewardTopUp != 0) totalRewardTopUp += rewardTopUp;

        emit EventsLib.Settled(batchId, toDistributor, toTreasury, rewardTopUp);

        // Reverts with BatchAlreadyPosted / ZeroRoot: a batch id settles at most once.
        DISTRIBUTOR.postRoot(batchId, rewardsRoot, receiptsRoot);

        // After postRoot, so that a replayed batch still reverts with BatchAlreadyPosted.
        if (ledgerHead == bytes32(0)) revert ErrorsLib.ZeroLedgerHead();
        uint64 previous = anchoredPosition;
        if (ledgerPosition <= previous) revert ErrorsLib.AnchorNotAfter(ledgerPosition, previous);
        anchoredPosition = ledgerPosition;
        emit EventsLib.LedgerAnchored(batchId, ledgerPosition, ledgerHead);

        if (toDistributor != 0) TOKEN.safeTransfer(address(DISTRIBUTOR), toDistributor);
        if (toTreasury != 0) TOKEN.safeTransfer(treasury, toTreasury);
        if (rewardTopUp != 0) TOKEN.safeTransferFrom(treasury, address(DISTRIBUTOR), rewardTopUp);
    }

    /// @notice Pauses deposits, withdrawals and settlement. Owner or operator.
    function pause() external {
        if (msg.sender != owner() && msg.sender != operator) revert ErrorsLib.NotPauser(msg.sender);
        _pause();
    }

    // ------------------------------------------------------------------ owner

    /// @notice Resumes the vault. Owner only.
    function unpause() external onlyOwner {
        _unpause();
    }

    /// @notice Rotates the operator. Vouchers signed by the previous operator stop being valid.
    function setOperator(address newOperator) external onlyOwner {
        _setOperator(newOperator);
    }

    /// @notice Sets the treasury. Owner only.
    function setTreasury(address newTreasury) external onlyOwner {
        _setTreasury(newTreasury);
    }

    // ------------------------------------------------------------------ views

    /// @notice EIP-712 digest of a `Withdrawal` voucher for this vault.
    function hashWithdrawal(bytes32 account, address recipient, uint256 amount, uint256 nonce, uint256 expiry)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            keccak256(abi.encode(WITHDRAWAL_TYPEHASH, account, recipient, amount, nonce, expiry))
        );
    }

    /// @notice Whether voucher nonce `nonce` was used.
    function nonceUsed(uint256 nonce) external view returns (bool) {
        return _nonceBitmap[nonce >> 8] & (uint256(1) << (nonce & 0xff)) != 0;
    }

    /// @notice Deposits not yet settled or withdrawn.
    function available() external view returns (uint256) {
        return _available();
    }

    /// @notice The EIP-712 domain separator (name "BasisCreditVault", version "1").
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // --------------------------------------------------------------- internal

    function _available() internal view returns (uint256) {
        return totalDeposited - totalSettled - totalWithdrawn;
    }

    function _useNonce(uint256 nonce) internal {
        uint256 word = nonce >> 8;
        uint256 bit = uint256(1) << (nonce & 0xff);
        uint256 bits = _nonceBitmap[word];
        if (bits & bit != 0) revert ErrorsLib.NonceAlreadyUsed(nonce);
        _nonceBitmap[word] = bits | bit;
    }

    function _setOperator(address newOperator) internal {
        if (newOperator == address(0)) revert ErrorsLib.ZeroAddress();
        emit EventsLib.OperatorSet(operator, newOperator);
        operator = newOperator;
    }

    function _setTreasury(address newTreasury) internal {
        if (newTreasury == address(0)) revert ErrorsLib.ZeroAddress();
        emit EventsLib.TreasurySet(treasury, newTreasury);
        treasury = newTreasury;
    }
}

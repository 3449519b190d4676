// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Test} from "forge-std/Test.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {BasisToken} from "../../src/BasisToken.sol";
import {CreditVault} from "../../src/CreditVault.sol";
import {RewardDistributor} from "../../src/RewardDistributor.sol";
import {MerkleHelper} from "./MerkleHelper.sol";

abstract contract BaseTest is Test {
    BasisToken internal token;
    RewardDistributor internal distributor;
    CreditVault internal vault;

    address internal owner = makeAddr("owner");
    address internal treasury = makeAddr("treasury");
    address internal alice = makeAddr("alice");
    address internal bob = makeAddr("bob");
    address internal worker1 = makeAddr("worker1");
    address internal worker2 = makeAddr("worker2");
    address internal stranger = makeAddr("stranger");

    uint256 internal operatorKey = 0xA11CE;
    address internal operator;

    bytes32 internal constant ACCOUNT = bytes32(uint256(0x1234) << 128);
    bytes32 internal constant RECEIPTS_ROOT = keccak256("receipts");
    bytes32 internal constant LEDGER_HEAD = keccak256("ledger head");

    /// Ledger position of the next anchor `_settle` posts (strictly increasing, as the vault requires).
    uint64 internal nextAnchor = 1;

    function setUp() public virtual {
        operator = vm.addr(operatorKey);
        vm.label(operator, "operator");
        token = new BasisToken(owner);
        distributor = new RewardDistributor(IERC20(address(token)), owner, owner, 0);
        vault = new CreditVault(IERC20(address(token)), distributor, owner, operator, treasury);
        vm.prank(owner);
        distributor.setPoster(address(vault));

        vm.startPrank(owner);
        token.mint(alice, 1_000_000 ether);
        token.mint(bob, 1_000_000 ether);
        token.mint(treasury, 1_000_000 ether);
        vm.stopPrank();

        vm.prank(alice);
        token.approve(address(vault), type(uint256).max);
        vm.prank(bob);
        token.approve(address(vault), type(uint256).max);
        vm.prank(treasury);
        token.approve(address(vault), type(uint256).max);
    }

    function _deposit(address from, uint256 amount, bytes32 account) internal {
        vm.prank(from);
        vault.deposit(amount, account);
    }

    function _settle(bytes32 batchId, uint256 toDist, uint256 toTreas, uint256 topUp, bytes32 rewardsRoot)
        internal
    {
        vm.prank(operator);
        vault.settle(batchId, toDist, toTreas, topUp, rewardsRoot, RECEIPTS_ROOT, nextAnchor++, LEDGER_HEAD);
    }

    function _signVoucher(
        uint256 key,
        bytes32 account,
        address recipient,
        uint256 amount,
        uint256 nonce,
        uint256 expiry
    ) internal view returns (bytes memory) {
        bytes32 digest = vault.hashWithdrawal(account, recipient, amount, nonce, expiry);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    /// Two-worker rewards tree: returns the leaves (worker1, a1), (worker2, a2).
    function _rewardLeaves(uint256 a1, uint256 a2) internal view returns (bytes32[] memory leaves) {
        leaves = new bytes32[](2);
        leaves[0] = MerkleHelper.rewardLeaf(worker1, a1);
        leaves[1] = MerkleHelper.rewardLeaf(worker2, a2);
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {BaseTest} from "./utils/BaseTest.sol";

contract BasisTokenTest is BaseTest {
    function test_metadata() public view {
        assertEq(token.decimals(), 18);
        assertEq(token.symbol(), "BASIS");
        assertEq(token.owner(), owner);
    }

    function test_mint_byOwner() public {
        vm.prank(owner);
        token.mint(stranger, 5 ether);
        assertEq(token.balanceOf(stranger), 5 ether);
    }

    function test_mint_revertsForNonOwner() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        token.mint(stranger, 1);
    }
}

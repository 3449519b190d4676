// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title BasisToken
/// @notice Local stand-in for $BASIS (18 decimals), mintable by its owner.
/// @dev FOR LOCAL CHAINS AND TESTS ONLY. The real $BASIS token is not deployed; on a public
/// chain the vault and the distributor are deployed against the real token's address instead.
contract BasisToken is ERC20, Ownable {
    constructor(address initialOwner) ERC20("Basis (local stand-in)", "BASIS") Ownable(initialOwner) {}

    /// @notice Mints `amount` base units to `to`. Owner only.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}

"""The caller's own account: balance by credit source and key info, its receipts, its usage."""

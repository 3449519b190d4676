"""The operator's admin API: API keys, their spend caps and rate limits (docs/keys.md)."""

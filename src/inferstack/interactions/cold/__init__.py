"""The cold tier: one merged history row per (user, type)."""

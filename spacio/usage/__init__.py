"""Usage: the tokens and requests each user spends, per space (GET /api/v1/usage)."""

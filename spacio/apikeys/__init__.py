"""API keys: a user's credential for one space with at most a viewer or editor role."""

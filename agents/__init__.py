"""Gate policies and agents that act on the SkipNet environment (filled in by later issues)."""

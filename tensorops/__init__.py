"""tensorops."""

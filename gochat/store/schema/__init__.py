"""Numbered schema deltas (``NNN_name.sql``), applied in order at start."""

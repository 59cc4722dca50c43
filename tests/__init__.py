"""The trial suite of GoChat for Twisted."""

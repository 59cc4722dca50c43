"""GoChat for Twisted: an instant-messaging server wire-compatible with GoChat."""

__version__ = "0.1.0"

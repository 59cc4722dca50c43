"""The HTTP API of the Go server (register, login, friends, groups) on twisted.web.

It owns request parsing and JSON responses; every rule about users and groups
is a store call. It never touches a WebSocket connection.
"""

from gochat.api.resource import build_site

__all__ = ["build_site"]

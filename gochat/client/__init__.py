"""The Python client library: HTTP calls and a WebSocket client that does the
clientId/ACK/retransmit dance, tracks its seq and syncs on login and on gaps.

It speaks only the wire contract (DESIGN.md); it shares the codec with the
server but none of its logic. The tests, the benchmark and the terminal client
use it.
"""

from gochat.client.http import ApiError, HttpApi
from gochat.client.ws import GoChatClient, SendError, connect, system_event

__all__ = ["ApiError", "GoChatClient", "HttpApi", "SendError", "connect", "system_event"]

"""The WebSocket gateway: Autobahn protocol per client, and the heartbeat checker.

It owns framing and the socket; every decision about a frame belongs to
:class:`gochat.logic.Session`. It must not touch the store.
"""

from gochat.gateway.heartbeat import HeartbeatChecker
from gochat.gateway.protocol import GatewayFactory, GatewayProtocol

__all__ = ["GatewayFactory", "GatewayProtocol", "HeartbeatChecker"]

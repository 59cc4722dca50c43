"""Every reach into Twisted's internals, in one place.

``transport.write`` only queues: the bytes leave when the reactor next polls
and finds the socket writable, after one ``epoll_ctl`` to ask and before
another to stop asking. A group fan-out writes to thousands of connections
in one turn, and for each the two extra system calls and the wait cost more
than the send itself: 10,000-member group rounds went out 20 to 40 ms later.
:func:`write_now` sends at once when nothing is queued before it. It reads
``tcp.Server``'s buffers (``dataBuffer``, ``_tempDataBuffer``) and socket,
which are not public; written against Twisted 26.10 (``pyproject.toml``
pins the range), and a new Twisted release is checked here, and only here.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Server

__all__ = ["write_now"]


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` as ``transport.write`` would, sending what the socket takes at once.

    Only a plain TCP connection with nothing queued sends directly (a TLS
    one encrypts first, and queued bytes must go first); what the socket
    does not take, or any error, is left to ``transport.write`` and the
    reactor, which send the rest or find the connection lost as they always do.
    """
    if (
        type(transport) is Server
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:  # full (EAGAIN) or gone: the reactor's write finds out
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)

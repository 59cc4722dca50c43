"""Raw HTTP/1.1 over a real socket: requests twisted.web.client would not send."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor


class RawHttp(protocol.Protocol):
    """Sends bytes as given; collects the answer until the server closes."""

    def __init__(self, data: bytes, half_close: bool = False) -> None:
        self.data = data
        self.half_close = half_close
        self.received = b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.done.callback(self.received)


@defer.inlineCallbacks
def raw_http(node: Any, data: bytes) -> defer.Deferred:
    port = int(node.http_url.rsplit(":", 1)[1])
    proto = RawHttp(data)
    yield endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
    answer = yield proto.done
    return answer


def parse_response(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return status, json.loads(body) if body else {}


def request(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

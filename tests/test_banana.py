"""gochat._twisted.Broker decodes Banana as Twisted's own decoder does, by offset.

Whatever the items and however the bytes are cut into reads, the Broker
hands PB the same expressions and refuses the same bad input; and it reads
a read of many items without copying the rest of the read per item.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.spread import banana, pb
from twisted.trial import unittest

from gochat._twisted import Broker

# what node-to-node calls carry: ints (PB sends big ones as longs), bytes, lists
items = st.recursive(
    st.one_of(st.integers(-(2**70), 2**70), st.binary(max_size=300), st.floats(allow_nan=False)),
    lambda inner: st.lists(inner, max_size=8),
    max_leaves=40,
)


def encoded(obj: Any) -> bytes:
    """``obj`` as a PB connection sends it (dialect ``pb``)."""
    out: list[bytes] = []
    sender = banana.Banana()
    sender.connectionMade = lambda: None  # type: ignore[method-assign]
    sender.setPrefixLimit(64)
    sender.currentDialect = b"pb"

    class Transport:
        def write(self, data: bytes) -> None:
            out.append(data)

    sender.transport = Transport()
    sender.sendEncoded(obj)
    return b"".join(out)


def prefix(n: int) -> bytes:
    out: list[bytes] = []
    banana.int2b128(n, out.append)
    return b"".join(out)


class Decoder:
    """A decoder of ``cls``'s dataReceived, past the dialect handshake, recording expressions."""

    def __init__(self, cls: type) -> None:
        self.proto = cls()
        self.proto.setPrefixLimit(64)
        self.proto.currentDialect = b"pb"
        self.got: list[Any] = []
        self.proto.expressionReceived = self.got.append

    def feed(self, data: bytes, cuts: list[int]) -> Any:
        """Feed ``data`` in reads cut at ``cuts``; the expressions, or the error raised."""
        edges = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
        try:
            for a, b in zip(edges, edges[1:], strict=False):
                if b > a:
                    self.proto.dataReceived(data[a:b])
        except Exception as exc:  # the connection would be dropped
            return (type(exc), self.got)
        return self.got


class SameAsBanana(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(items, min_size=1, max_size=6), st.lists(st.integers(0, 10**6), max_size=12))
    def test_the_same_expressions_however_the_reads_are_cut(self, objs, cuts):
        data = b"".join(encoded(obj) for obj in objs)
        ours = Decoder(Broker).feed(data, cuts)
        self.assertEqual(ours, Decoder(pb.Broker).feed(data, cuts))
        self.assertEqual(ours, objs)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200), st.lists(st.integers(0, 1000), max_size=5))
    def test_the_same_outcome_for_any_bytes(self, data, cuts):
        self.assertEqual(Decoder(Broker).feed(data, cuts), Decoder(pb.Broker).feed(data, cuts))

    def test_bad_input_is_refused_as_banana_refuses_it(self):
        for data in (
            b"\x01" * 65 + b"\x82",  # a prefix longer than 64 bytes
            b"\x01" * 65,  # and before its type byte arrives
            prefix(banana.SIZE_LIMIT + 1) + b"\x82",  # too long a string
            prefix(banana.SIZE_LIMIT + 1) + b"\x80",  # too long a list
            b"\x01\x8f",  # no such type
        ):
            with self.assertRaises(Exception) as ours:
                Decoder(Broker).proto.dataReceived(data)
            with self.assertRaises(Exception) as theirs:
                Decoder(pb.Broker).proto.dataReceived(data)
            self.assertIs(type(ours.exception), type(theirs.exception), data)

    def test_a_read_of_many_items_is_not_copied_per_item(self):
        data = encoded([bytes([i % 256]) * 40 for i in range(1000)])
        copied = {Broker: 0, pb.Broker: 0}
        for cls in copied:

            class Counting(bytes):
                """Bytes that count the bytes of every slice taken of them (and of those)."""

                def __getitem__(self, key: Any) -> Any:
                    value = bytes.__getitem__(self, key)
                    if not isinstance(key, slice):
                        return value
                    copied[cls] += len(value)  # noqa: B023
                    return Counting(value)

                def __radd__(self, other: bytes) -> Counting:
                    return Counting(other + bytes(self))

            decoder = Decoder(cls)
            decoder.proto.dataReceived(Counting(data))
            self.assertEqual(decoder.got, [[bytes([i % 256]) * 40 for i in range(1000)]])
        self.assertLess(copied[Broker], 2 * len(data))  # the items, once
        self.assertGreater(copied[pb.Broker], 100 * len(data))  # the rest of the read, per item

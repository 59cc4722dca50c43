"""gochat._twisted.Broker speaks PB's encodings as Twisted does, with less work per item.

Whatever the items and however the bytes are cut into reads, the Broker
hands PB the same expressions and refuses the same bad input; and it reads
a read of many items without copying the rest of the read per item. It
writes the same Banana bytes as Twisted for any expression, and jellies and
unjellies to the same expressions and objects (plain data in one pass, the
rest by Twisted's jelly).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.spread import banana, jelly, pb
from twisted.trial import unittest

from gochat._twisted import Broker

# what node-to-node calls carry: ints (PB sends big ones as longs), bytes, lists
items = st.recursive(
    st.one_of(st.integers(-(2**70), 2**70), st.binary(max_size=300), st.floats(allow_nan=False)),
    lambda inner: st.lists(inner, max_size=8),
    max_leaves=40,
)


def encoded(obj: Any, cls: type = banana.Banana, dialect: bytes | None = b"pb") -> bytes:
    """``obj`` as a connection of ``cls`` sends it (dialect ``pb``: PB's vocabulary)."""
    out: list[bytes] = []
    sender = cls()
    sender.connectionMade = lambda: None  # type: ignore[method-assign]
    sender.setPrefixLimit(64)
    sender.currentDialect = dialect

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


# what a call's expression holds, with PB's vocabulary words among its strings
expressions = st.recursive(
    st.one_of(
        st.integers(-(2**300), 2**300),
        st.binary(max_size=300),
        st.sampled_from([b"list", b"message", b"answer", b"tuple", b"None"]),
        st.floats(allow_nan=False),
        st.booleans(),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=8), st.tuples(inner, inner)),
    max_leaves=40,
)


class EncodesAsBanana(unittest.TestCase):
    """Broker.sendEncoded writes Banana's bytes, or raises Banana's error."""

    def outcome(self, obj: Any, cls: type, dialect: bytes | None) -> Any:
        try:
            return encoded(obj, cls, dialect)
        except Exception as exc:
            return type(exc)

    @settings(max_examples=300, deadline=None)
    @given(expressions, st.sampled_from([b"pb", None]))
    def test_the_same_bytes_for_any_expression(self, obj, dialect):
        ours = self.outcome(obj, Broker, dialect)
        self.assertEqual(ours, self.outcome(obj, banana.Banana, dialect))
        self.assertIsInstance(ours, bytes)  # a prefix of 64 bytes holds 2**300

    def test_the_same_errors(self):
        for obj in (
            b"x" * (banana.SIZE_LIMIT + 1),
            [0] * (banana.SIZE_LIMIT + 1),
            [b"ok", 2 ** (64 * 7)],  # past the prefix limit
            [object()],
            {"a": 1},
        ):
            ours = self.outcome(obj, Broker, b"pb")
            self.assertTrue(isinstance(ours, type) and issubclass(ours, Exception), obj)
            self.assertIs(ours, self.outcome(obj, banana.Banana, b"pb"))

    def test_a_call_of_plain_data_writes_no_length_bit_by_bit(self):
        calls = []
        original = banana.int2b128

        def counting(integer: int, stream: Any) -> None:
            calls.append(integer)
            original(integer, stream)

        self.patch(banana, "int2b128", counting)
        call = [b"message", 7, b"root", b"DeliverPackedRuns", 1, [b"tuple", [b"x" * 900] * 3]]
        ours = encoded(call, Broker)
        self.assertEqual(calls, [])
        self.assertEqual(ours, encoded(call, banana.Banana))
        self.assertEqual(len(calls), 12)  # Twisted's: one per length and int


plain = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.binary(max_size=50),
        st.sampled_from([b"list", b"unicode", b"None"]),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(
            st.one_of(st.integers(), st.text(max_size=5), st.binary(max_size=5)), inner, max_size=4
        ),
    ),
    max_leaves=30,
)


def broker() -> Broker:
    return Broker(isClient=True)


def twisted_jelly(obj: Any) -> Any:
    try:
        return jelly.jelly(obj, jelly.globalSecurity, None, pb.Broker(isClient=True))
    except Exception as exc:
        return type(exc)


def twisted_unjelly(sexp: Any) -> Any:
    try:
        return jelly.unjelly(sexp, jelly.globalSecurity, None, pb.Broker(isClient=True))
    except Exception as exc:
        return type(exc)


def ours(method: Any, value: Any) -> Any:
    try:
        return method(value)
    except Exception as exc:
        return type(exc)


def shape(obj: Any) -> Any:
    """``obj`` with what has no equality of its own (jelly's placeholders) as its type."""
    if type(obj) in (list, tuple):
        return type(obj)(map(shape, obj))
    if type(obj) is dict:
        return {k: shape(v) for k, v in obj.items()}
    if obj is None or type(obj) in (bool, int, float, str, bytes, type):
        return obj
    return type(obj)


class JelliesAsTwisted(unittest.TestCase):
    """Broker.serialize and unserialize give what Twisted's jelly and unjelly give."""

    @settings(max_examples=300, deadline=None)
    @given(plain)
    def test_plain_data_jellies_and_comes_back_the_same(self, obj):
        sexp = ours(broker().serialize, obj)
        self.assertEqual(sexp, twisted_jelly(obj))
        self.assertEqual(ours(broker().unserialize, sexp), twisted_unjelly(sexp))
        self.assertEqual(ours(broker().unserialize, sexp), obj)

    def test_shared_cyclic_and_other_objects_are_jellied_by_twisted(self):
        shared = [b"a"]
        cyclic: list[Any] = [b"b"]
        cyclic.append(cyclic)
        for obj in (
            [shared, shared],
            (shared, {1: shared}),
            cyclic,
            {1, 2},
            "\udc80",  # not encodable as UTF-8
            jelly.InsecureJelly,
            pb.Referenceable(),
        ):
            self.assertEqual(ours(broker().serialize, obj), twisted_jelly(obj), obj)
        back = broker().unserialize(broker().serialize([shared, shared]))
        self.assertIs(back[0], back[1])

    @settings(max_examples=300, deadline=None)
    @given(
        st.recursive(
            st.one_of(
                st.sampled_from(
                    [
                        b"list",
                        b"tuple",
                        b"dictionary",
                        b"unicode",
                        b"None",
                        b"boolean",
                        b"true",
                        b"false",
                        b"reference",
                        b"dereference",
                        b"\xff",
                        b"os.system",
                    ]
                ),
                st.integers(-3, 3),
                st.binary(max_size=4),
            ),
            lambda inner: st.lists(inner, max_size=4),
            max_leaves=20,
        )
    )
    def test_any_expression_unjellies_as_twisted_unjellies_it(self, sexp):
        self.assertEqual(shape(ours(broker().unserialize, sexp)), shape(twisted_unjelly(sexp)))

    def test_plain_data_does_not_go_through_jelly_per_object(self):
        walked = []
        original = jelly._Jellier.jelly

        def counting(self: Any, obj: Any) -> Any:
            walked.append(obj)
            return original(self, obj)

        self.patch(jelly._Jellier, "jelly", counting)
        args = ([[b"bases", b"pairs", b""] for _ in range(5)],)
        sexp = broker().serialize(args)
        self.assertEqual(walked, [])
        self.assertEqual(sexp, twisted_jelly(args))
        self.assertEqual(len(walked), 22)  # Twisted's: once per object

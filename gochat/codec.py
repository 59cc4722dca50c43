"""The one codec for ``Input`` and ``Output`` frames.

Everything that turns wire bytes into protobuf objects or back lives here, so
the gateway, the logic and the client agree byte for byte. Push frames are
built from one serialization of the message shared by all recipients: only
the seq differs, and protobuf lets a field be appended to prebuilt bytes.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Collection, Iterator, Sequence
from itertools import accumulate
from typing import cast

from google.protobuf.message import DecodeError

from gochat import codes
from gochat.pb import pb

__all__ = [
    "DecodeError",
    "decode_input",
    "decode_up",
    "encode_output",
    "ack_frame",
    "push_frame",
    "push_frame_from_base",
    "PushFrames",
    "push_seq",
    "message_base",
    "sync_frame",
    "error_frame",
    "batch_payloads",
    "split_outputs",
    "batch_element_head",
]


def decode_input(payload: bytes) -> pb.Input:
    """Parse one client frame; raises :class:`DecodeError` on garbage."""
    frame = pb.Input()
    frame.ParseFromString(payload)
    return frame


def decode_up(data: bytes) -> pb.UpMsg:
    """Parse an ``UpMsg``, dropping fields the contract does not define.

    The message is stored from the parsed fields but pushed from its
    serialization, which would carry a sender's extra fields to every
    recipient while sync (from the database) does not: push and sync must be
    the same message. Raises :class:`DecodeError` on garbage.
    """
    up = pb.UpMsg()
    up.ParseFromString(data)
    up.DiscardUnknownFields()
    return up


def encode_output(cmd: int, code: int = codes.OK, data: bytes = b"", msg: str = "") -> bytes:
    # The stubs type protobuf enum fields as their enum class; its values are
    # plain ints at runtime, and callers pass ints (``pb.CT_*`` or parsed fields).
    out = pb.Output(type=cast("pb.CmdType", cmd), code=code, data=data)
    if code != codes.OK:
        out.CodeMsg = msg or codes.MESSAGES.get(code, "")
    return out.SerializeToString()


def ack_frame(ack_type: int, code: int = codes.OK, client_id: int = 0, seq: int = 0) -> bytes:
    """``Output{CT_ACK, code, ACKMsg{type, clientId, seq}}``."""
    if code == codes.OK and 0 <= ack_type < 128 and 0 <= client_id < 2**64 and 0 <= seq < 2**64:
        # One per upstream message: the same bytes protobuf would write
        # (fields in order, zeros left out), without building two messages.
        ack = (
            (b"\x08" + _SMALL_VARINTS[ack_type] if ack_type else b"")
            + (b"\x10" + _varint(client_id) if client_id else b"")
            + (b"\x18" + _varint(seq) if seq else b"")
        )
        return _ACK_OK_PREFIX + (b"\x22" + _varint(len(ack)) + ack if ack else b"")
    ack_msg = pb.ACKMsg(type=cast("pb.ACKType", ack_type), clientId=client_id, seq=seq)
    return encode_output(pb.CT_ACK, code, ack_msg.SerializeToString())


def error_frame(code: int, cmd: int = pb.CT_UnKnow) -> bytes:
    return encode_output(cmd, code)


def sync_frame(messages: list[pb.Message], has_more: bool, code: int = codes.OK) -> bytes:
    body = pb.SyncOutputMsg(messages=messages, has_more=has_more)
    return encode_output(pb.CT_Sync, code, body.SerializeToString())


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


#: Every varint below 2**14 prebuilt: seqs, lengths and ids of a push are
#: mostly that small, and a lookup is several times cheaper than the loop.
_SMALL_VARINTS = [_varint_slow(i) for i in range(1 << 14)]


def _varint(value: int) -> bytes:
    if value < 16384:
        return _SMALL_VARINTS[value]
    return _varint_slow(value)


# Output{type: CT_Message (field 1 varint), code: 200 (field 2 varint)} prefix.
_PUSH_PREFIX = b"\x08" + _varint(pb.CT_Message) + b"\x10" + _varint(codes.OK)
_SEQ_TAG = b"\x30"  # Message.seq: field 6, varint
#: a varint's first byte when more follow: the low 7 bits of the value
_LOW7 = [bytes((0x80 | i,)) for i in range(128)]


def consecutive_varints(first: int, count: int) -> list[bytes]:
    """The varints of ``first``, ``first + 1``, ... (``count`` of them), built by C loops.

    Past 16,383 a varint is its value's low 7 bits (with the "more" bit)
    followed by the varint of the rest, and the rest is the same for 128
    values in a row: each such stretch is one ``map``.
    """
    last = first + count - 1
    if last < 16384:
        return _SMALL_VARINTS[first : last + 1]
    out: list[bytes] = []
    value = first
    while value <= last:
        end = min(last, value | 127)
        if value < 16384:
            out += _SMALL_VARINTS[value : min(end, 16383) + 1]
            value = min(end, 16383) + 1
            continue
        out += map(
            operator.add,
            _LOW7[value & 127 : (end & 127) + 1],
            [_varint(value >> 7)] * (end - value + 1),
        )
        value = end + 1
    return out


# Output{type: CT_ACK, code: 200} prefix.
_ACK_OK_PREFIX = b"\x08" + _varint(pb.CT_ACK) + b"\x10" + _varint(codes.OK)


def message_base(msg: pb.Message) -> bytes:
    """Serialize a message without its seq, for :func:`push_frame_from_base`."""
    if msg.seq == 0:  # upstream messages arrive with their seq cleared
        return msg.SerializeToString()
    copy = pb.Message()
    copy.CopyFrom(msg)
    copy.seq = 0
    return copy.SerializeToString()


def push_frame_from_base(base: bytes, seq: int) -> bytes:
    """``Output{CT_Message, 200, PushMsg{Message(base) with seq}}`` without re-serializing."""
    return PushFrames(base).frame(seq)


class PushFrames:
    """The push frames of one message for many recipients: one serialization.

    Every length in the frame depends only on how many bytes the seq's varint
    takes, so the bytes before the seq are built once per varint size and a
    recipient's frame is that prefix plus its seq.
    """

    __slots__ = ("base", "_heads")

    def __init__(self, base: bytes) -> None:
        self.base = base
        self._heads: dict[int, bytes] = {}

    def head(self, size: int) -> bytes:
        """The frame's bytes before a seq whose varint takes ``size`` bytes."""
        head = self._heads.get(size)
        return head if head is not None else self._head(size)

    def _head(self, size: int) -> bytes:
        head = self._heads[size] = run_heads((self.base,), size)[0]
        return head

    def frame(self, seq: int) -> bytes:
        tail = _SMALL_VARINTS[seq] if seq < 16384 else _varint_slow(seq)
        head = self._heads.get(len(tail))
        if head is None:
            head = self._head(len(tail))
        return head + tail


def run_heads(bases: Sequence[bytes], size: int) -> list[bytes]:
    """Each base's frame bytes before a seq whose varint takes ``size`` bytes.

    ``Output{CT_Message, 200, data: PushMsg{msg: Message(base) + seq tag}}``
    up to the seq: every length in it depends only on the base and ``size``.
    A run's heads are built on every node that pushes it, once per message
    and varint size, so they are made by one comprehension (the lengths
    looked up in the varint table while they fit), not calls per message.
    """
    k = 1 + size  # the seq's tag and varint
    fits = not bases or max(map(len, bases)) + k + 4 < 16384
    varint = _SMALL_VARINTS.__getitem__ if fits else _varint
    prefix = _PUSH_PREFIX + b"\x22"  # Output.data: field 4, bytes
    return [
        # PushMsg.msg (field 1, bytes) holds the message and the seq's tag
        prefix + varint(1 + len(varint(m)) + m) + b"\x0a" + varint(m) + base + _SEQ_TAG
        for base in bases
        for m in (len(base) + k,)
    ]


_UNSET: list[bytes] = []  # not yet looked at (None: no wire form)


class PushRun:
    """The push frames of consecutive messages for recipients whose seqs for them run on.

    A batch of messages to one group gives each member consecutive seqs, so a
    member's frames of those messages are the messages' heads (shared by all
    members whose seqs take as many varint bytes) each followed by the next
    seq: one ``map`` per member, not a frame built per push in Python.
    Built from the messages' bases (:func:`message_base`), as the writer's
    node and every node it sends the run to have them.
    """

    __slots__ = ("bases", "_heads", "_wire")

    def __init__(self, bases: list[bytes]) -> None:
        self.bases = bases
        self._heads: dict[int, list[bytes]] = {}
        #: (varint size, header table) -> [header + head, tail, header + head, tail, ...]
        self._wire: dict[tuple[int, int], list[bytes] | None] = {}

    def _heads_for(self, size: int) -> list[bytes]:
        heads = self._heads.get(size)
        if heads is None:
            heads = self._heads[size] = run_heads(self.bases, size)
        return heads

    def _tails(self, first: int) -> tuple[list[bytes], int, int] | None:
        """The seqs' varints, their first size, and how many take it (the rest one more).

        Every member's run crosses a varint size once (127 to 128, ...);
        ``None`` when the seqs span more than two sizes.
        """
        tails = consecutive_varints(first, len(self.bases))
        size = len(tails[0])
        if len(tails[-1]) == size:
            return tails, size, len(tails)
        if len(tails[-1]) == size + 1:
            return tails, size, (1 << (7 * size)) - first
        return None

    def frames(self, first: int) -> list[bytes]:
        """Frames of every message, the first with seq ``first``, the next ``first + 1``..."""
        split = self._tails(first)
        if split is None:
            return [PushFrames(base).frame(first + i) for i, base in enumerate(self.bases)]
        tails, size, k = split
        heads = self._heads_for(size)
        if k < len(tails):
            heads = heads[:k] + self._heads_for(size + 1)[k:]
        return list(map(operator.add, heads, tails))

    def _wire_parts(self, size: int, headers: list[bytes]) -> list[bytes] | None:
        """[header + head, tail slot, ...] for seqs of ``size`` varint bytes (kept)."""
        key = (size, id(headers))
        parts = self._wire.get(key, _UNSET)
        if parts is _UNSET:
            heads = self._heads_for(size)
            if max(map(len, heads)) + size >= len(headers):
                parts = None
            else:
                parts = [b""] * (2 * len(heads))
                parts[::2] = [headers[len(head) + size] + head for head in heads]
            self._wire[key] = parts
        return parts

    def wire(self, first: int, headers: list[bytes], skip: Collection[int] = ()) -> bytes | None:
        """Every frame, as :meth:`frames`, each behind its ``headers[len(frame)]``, as one bytes.

        What a WebSocket connection writes for one recipient: the headers
        and heads are joined once per run, so a recipient costs a slice
        assignment of its seqs and one ``join``. ``None`` when a frame is as
        long as ``headers`` (or the seqs span more than two varint sizes).
        The messages at the indexes in ``skip`` are left out (the
        recipient's device sent them), their seqs with them.

        It runs once per recipient and run on every node, so the usual case
        of :meth:`_tails` and :meth:`_wire_parts` (seqs below 16,384, the
        parts already built) is written out here: three Python calls fewer.
        """
        count = len(self.bases)
        last = first + count - 1
        if last < 16384:
            tails = _SMALL_VARINTS[first : last + 1]
        else:
            tails = consecutive_varints(first, count)
        size = len(tails[0])
        parts = self._wire.get((size, id(headers)), _UNSET)
        if parts is _UNSET:
            parts = self._wire_parts(size, headers)
        if parts is None:
            return None
        if len(tails[-1]) != size:  # the later messages' heads are those for the longer seqs
            if len(tails[-1]) != size + 1:
                return None
            longer = self._wire_parts(size + 1, headers)
            if longer is None:
                return None
            k = (1 << (7 * size)) - first
            parts = parts[: 2 * k] + longer[2 * k :]
        parts[1::2] = tails
        if skip:
            parts = parts.copy()  # the kept list is not cut
            for i in sorted(skip, reverse=True):
                del parts[2 * i : 2 * i + 2]
        return b"".join(parts)


#: (user id, seq) pairs of a push to many users of one node, as node-to-node
#: calls carry them: two little-endian uint64s a pair.
_PAIR = struct.Struct("<QQ")
PAIR_SIZE = _PAIR.size


def pack_pairs(flat: list[int]) -> bytes:
    """``[user_id, seq, user_id, seq, ...]`` packed for :func:`iter_pairs` (one call)."""
    return struct.pack(f"<{len(flat)}Q", *flat)


def iter_pairs(data: bytes) -> Iterator[tuple[int, int]]:
    """The (user_id, seq) pairs of :func:`pack_pairs`; ``len(data)`` is a multiple of 16."""
    return _PAIR.iter_unpack(data)


_COUNT = struct.Struct("<I")


def pack_bases(bases: Sequence[bytes]) -> bytes:
    """A run's message bases as one bytes: their count and lengths (uint32s), then the bases.

    One PB string instead of one item a message: PB encodes and decodes
    items one by one, in Python, and jelly checks each one's type. That was
    about 5 % of a three-node cluster's instructions (see the capacity docs).
    """
    return struct.pack(f"<{len(bases) + 1}I", len(bases), *map(len, bases)) + b"".join(bases)


def unpack_bases(data: bytes, most: int) -> list[bytes]:
    """The bases of :func:`pack_bases`, 1 to ``most`` of them, none empty; ValueError if not."""
    if len(data) < _COUNT.size:
        raise ValueError("packed bases are cut short")
    (count,) = _COUNT.unpack_from(data)
    if not 0 < count <= most:
        raise ValueError(f"a run has 1 to {most} messages, not {count}")
    pos = _COUNT.size * (count + 1)
    if len(data) < pos:
        raise ValueError("packed bases are cut short")
    sizes = struct.unpack_from(f"<{count}I", data, _COUNT.size)
    if 0 in sizes or pos + sum(sizes) != len(data):
        raise ValueError("packed bases' lengths do not add up to their bytes")
    ends = list(accumulate(sizes, initial=pos))
    return list(map(data.__getitem__, map(slice, ends[:-1], ends[1:])))


def push_frame(msg: pb.Message) -> bytes:
    """The push frame for one message, seq included."""
    return encode_output(pb.CT_Message, codes.OK, pb.PushMsg(msg=msg).SerializeToString())


def push_seq(frame: bytes) -> int:
    """The seq of the message in a push frame (for frames that came from another node)."""
    out = pb.Output.FromString(frame)
    return pb.PushMsg.FromString(out.data).msg.seq


def read_frame(
    session_type: int, peer_id: int, seq: int, reader_id: int, code: int = codes.OK
) -> bytes:
    """``Output{CT_Read, code, ReadMsg}``: a read position, as its receiver names it."""
    body = pb.ReadMsg(
        session_type=cast("pb.SessionType", session_type),
        peer_id=peer_id,
        seq=seq,
        reader_id=reader_id,
    )
    return encode_output(pb.CT_Read, code, body.SerializeToString())


def typing_frame(session_type: int, peer_id: int, sender_id: int) -> bytes:
    """``Output{CT_Typing, 200, TypingMsg}``: someone is typing (never stored)."""
    body = pb.TypingMsg(
        session_type=cast("pb.SessionType", session_type), peer_id=peer_id, sender_id=sender_id
    )
    return encode_output(pb.CT_Typing, codes.OK, body.SerializeToString())


# -- OutputBatch framing (GoChat c58f9fc's newest clients) ------------------

#: The ``OutputBatch.outputs`` tag (field 1, bytes). A plain ``Output`` never
#: starts with it (its field 1 is a varint), a non-empty batch always does.
BATCH_TAG = 0x0A
_BATCH_TAG = b"\x0a"


#: ``0x0A`` + the varint of every length below 2**14: an element's head, prebuilt.
_ELEMENT_HEADS = [_BATCH_TAG + v for v in _SMALL_VARINTS]


def batch_element_head(length: int) -> bytes:
    """The bytes before an ``Output`` of ``length`` bytes inside an ``OutputBatch``."""
    if length < 16384:
        return _ELEMENT_HEADS[length]
    return _BATCH_TAG + _varint_slow(length)


def batch_payloads(outputs: list[bytes], max_outputs: int, max_bytes: int) -> list[bytes]:
    """Serialized ``OutputBatch`` payloads holding ``outputs`` in order.

    A batch holds at most ``max_outputs`` elements and, unless a single
    output is larger on its own, at most ``max_bytes`` bytes, so a client's
    read limit is not exceeded by a fan-out. Built by hand: each element is
    the tag, its length and the bytes, exactly what protobuf writes.
    """
    batches: list[bytes] = []
    parts: list[bytes] = []
    count = size = 0
    for output in outputs:
        n = len(output)
        length = _SMALL_VARINTS[n] if n < 16384 else _varint_slow(n)
        element = 1 + len(length) + n
        if parts and (count >= max_outputs or size + element > max_bytes):
            batches.append(b"".join(parts))
            parts = []
            count = size = 0
        parts.append(_BATCH_TAG)
        parts.append(length)
        parts.append(output)
        count += 1
        size += element
    if parts:
        batches.append(b"".join(parts))
    return batches


def split_outputs(payload: bytes) -> list[bytes]:
    """The serialized ``Output`` messages of one server frame, batched or not.

    Readers call this on every frame and need not be told which framing the
    node writes; raises :class:`DecodeError` on a batch that does not parse.
    """
    if not payload or payload[0] != BATCH_TAG:
        return [payload]
    return list(pb.OutputBatch.FromString(payload).outputs)

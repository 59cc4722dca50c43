"""The one codec for ``Input`` and ``Output`` frames.

Everything that turns wire bytes into protobuf objects or back lives here, so
the gateway, the logic and the client agree byte for byte. Push frames are
built from one serialization of the message shared by all recipients: only
the seq differs, and protobuf lets a field be appended to prebuilt bytes.
"""

from __future__ import annotations

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
    out = pb.Output(type=cmd, code=code, data=data)
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
    ack_msg = pb.ACKMsg(type=ack_type, clientId=client_id, seq=seq)
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

    def _head(self, size: int) -> bytes:
        message_len = len(self.base) + 1 + size
        push_len = 1 + len(_varint(message_len)) + message_len
        head = (
            _PUSH_PREFIX
            + b"\x22"  # Output.data: field 4, bytes
            + _varint(push_len)
            + b"\x0a"  # PushMsg.msg: field 1, bytes
            + _varint(message_len)
            + self.base
            + _SEQ_TAG
        )
        self._heads[size] = head
        return head

    def frame(self, seq: int) -> bytes:
        tail = _SMALL_VARINTS[seq] if seq < 16384 else _varint_slow(seq)
        head = self._heads.get(len(tail))
        if head is None:
            head = self._head(len(tail))
        return head + tail


def push_frame(msg: pb.Message) -> bytes:
    """The push frame for one message, seq included."""
    return encode_output(pb.CT_Message, codes.OK, pb.PushMsg(msg=msg).SerializeToString())


def push_seq(frame: bytes) -> int:
    """The seq of the message in a push frame (for frames that came from another node)."""
    out = pb.Output.FromString(frame)
    return pb.PushMsg.FromString(out.data).msg.seq

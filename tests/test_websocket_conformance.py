"""RFC 6455 as any server must follow it, checked over a raw socket."""

from __future__ import annotations

import struct

from twisted.internet import defer

from gochat import codes
from gochat.pb import pb
from tests.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    build_frame,
)
from tests.util import NodeTestCase

PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class Conformance(NodeTestCase):
    @defer.inlineCallbacks
    def assert_failed_with(self, frames: list[bytes], code: int):
        proto = yield self.raw()
        for data in frames:
            proto.send(data)
        got = yield proto.closing_code()
        self.assertEqual(got, code)
        yield proto.closed
        yield self.assert_node_still_serves()

    @defer.inlineCallbacks
    def assert_node_still_serves(self):
        self.checks = getattr(self, "checks", 0) + 1
        _, token = yield self.node.user(f"check{self.checks}")
        proto = yield self.raw()
        code, _ = yield proto.login(token)
        self.assertEqual(code, codes.OK)

    @defer.inlineCallbacks
    def test_handshake_then_silence_then_pong_with_the_same_payload(self):
        proto = yield self.raw()
        self.assertEqual(proto.status, 101)
        payload = b"are you there \x00\xff"
        proto.send(build_frame(OP_PING, payload))
        # The first frame after the handshake is the pong: nothing came unsolicited.
        frame = yield proto.next_frame()
        self.assertEqual((frame.opcode, frame.fin, frame.payload), (OP_PONG, True, payload))

    @defer.inlineCallbacks
    def test_reserved_bits_fail_the_connection(self):
        for rsv in (1, 2, 4):
            yield self.assert_failed_with(
                [build_frame(OP_BINARY, b"\x08\x02", rsv=rsv)], PROTOCOL_ERROR
            )

    @defer.inlineCallbacks
    def test_reserved_opcodes_fail_the_connection(self):
        for opcode in (3, 7, 0xB, 0xF):
            yield self.assert_failed_with([build_frame(opcode, b"x")], PROTOCOL_ERROR)

    @defer.inlineCallbacks
    def test_fragmented_control_frame_fails_the_connection(self):
        yield self.assert_failed_with([build_frame(OP_PING, b"half", fin=False)], PROTOCOL_ERROR)

    @defer.inlineCallbacks
    def test_fragmented_close_frame_fails_the_connection(self):
        yield self.assert_failed_with(
            [build_frame(OP_CLOSE, close_payload(1000), fin=False)], PROTOCOL_ERROR
        )

    @defer.inlineCallbacks
    def test_control_frame_over_125_bytes_fails_the_connection(self):
        yield self.assert_failed_with([build_frame(OP_PING, b"p" * 126)], PROTOCOL_ERROR)

    @defer.inlineCallbacks
    def test_stray_continuation_frame_fails_the_connection(self):
        yield self.assert_failed_with([build_frame(OP_CONT, b"orphan")], PROTOCOL_ERROR)

    @defer.inlineCallbacks
    def test_new_message_inside_a_fragmented_one_fails_the_connection(self):
        yield self.assert_failed_with(
            [build_frame(OP_BINARY, b"a", fin=False), build_frame(OP_BINARY, b"b")],
            PROTOCOL_ERROR,
        )

    @defer.inlineCallbacks
    def test_unmasked_client_frame_fails_the_connection(self):
        yield self.assert_failed_with([build_frame(OP_BINARY, b"\x10", mask=False)], PROTOCOL_ERROR)

    @defer.inlineCallbacks
    def test_invalid_utf8_text_fails_the_connection_with_1007(self):
        yield self.assert_failed_with([build_frame(OP_TEXT, b"ok \xc3\x28 bad")], INVALID_PAYLOAD)

    @defer.inlineCallbacks
    def test_invalid_utf8_split_over_fragments_fails_with_1007(self):
        yield self.assert_failed_with(
            [build_frame(OP_TEXT, b"\xe2\x82", fin=False), build_frame(OP_CONT, b"(", fin=True)],
            INVALID_PAYLOAD,
        )

    @defer.inlineCallbacks
    def test_valid_text_frame_gets_parameter_illegal(self):
        proto = yield self.raw()
        proto.send(build_frame(OP_TEXT, "héllo".encode()))
        out = yield proto.next_data_frame()
        self.assertEqual((out.type, out.code), (pb.CT_UnKnow, codes.PARAM_ILLEGAL))

    @defer.inlineCallbacks
    def test_invalid_close_codes_fail_with_1002(self):
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
            yield self.assert_failed_with(
                [build_frame(OP_CLOSE, close_payload(code))], PROTOCOL_ERROR
            )

    @defer.inlineCallbacks
    def test_one_byte_close_payload_fails_with_1002(self):
        yield self.assert_failed_with([build_frame(OP_CLOSE, b"\x03")], PROTOCOL_ERROR)

    @defer.inlineCallbacks
    def test_close_reason_with_invalid_utf8_fails_with_1007(self):
        yield self.assert_failed_with(
            [build_frame(OP_CLOSE, close_payload(1000, b"\xff\xfe"))], INVALID_PAYLOAD
        )

    @defer.inlineCallbacks
    def test_valid_close_is_echoed(self):
        for code in (1000, 1001, 3000, 4999):
            proto = yield self.raw()
            proto.send(build_frame(OP_CLOSE, close_payload(code, b"bye")))
            got = yield proto.closing_code()
            self.assertEqual(got, code)
            yield proto.closed

    @defer.inlineCallbacks
    def test_empty_close_is_answered_with_a_close(self):
        proto = yield self.raw()
        proto.send(build_frame(OP_CLOSE, b""))
        frame = yield proto.next_frame()
        self.assertEqual(frame.opcode, OP_CLOSE)
        self.assertIn(frame.close_code, (None, 1000))
        yield proto.closed

    @defer.inlineCallbacks
    def test_fragmented_binary_message_is_reassembled(self):
        proto = yield self.raw()
        heartbeat_then_sync = pb.Input(type=pb.CT_Sync).SerializeToString()
        proto.send(build_frame(OP_BINARY, heartbeat_then_sync[:1], fin=False))
        proto.send(build_frame(OP_PING, b"between"))  # control frames may interleave
        proto.send(build_frame(OP_CONT, heartbeat_then_sync[1:], fin=True))
        pong = yield proto.next_frame()
        self.assertEqual((pong.opcode, pong.payload), (OP_PONG, b"between"))
        out = yield proto.next_data_frame()
        self.assertEqual((out.type, out.code), (pb.CT_Sync, codes.NOT_LOGGED_IN))

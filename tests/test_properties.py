"""Property-based tests (hypothesis): whatever arrives, nothing escapes and every
answer is a documented code.

Three layers are fed: the ``Input`` decoder; the whole gateway (Autobahn's
frame parser, our overrides and the session) through a string transport after
a real handshake; and a logged-in session over a real SQLite store with
well-formed messages carrying wrong values.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gochat import codec
from gochat.gateway import GatewayFactory
from gochat.logic.session import RATE_STRIKES
from gochat.pb import pb
from tests.rawws import OP_CLOSE, build_frame, open_on_string_transport
from tests.test_logic import LogicTestCase, frame

DOCUMENTED = {200, 1000, 1001, 1002, 1003, 1004, 1005, 1010, 1011, 1012, 1013}
CLOSE_CODES = {1000, 1001, 1002, 1007, 1009}
U64 = st.integers(min_value=0, max_value=2**64 - 1)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse unmasked server frames; fails the test on anything malformed."""
    out = []
    while data:
        assert len(data) >= 2, data
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        assert data[1] & 0x80 == 0, "server frames are never masked"
        offset = 2
        if length == 126:
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        assert len(data) >= offset + length
        out.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return out


class DecoderProperties(LogicTestCase):
    @SETTINGS
    @given(payload=st.binary(max_size=4096))
    def test_decoder_returns_an_input_or_raises_decode_error(self, payload):
        try:
            decoded = codec.decode_input(payload)
        except codec.DecodeError:
            return
        self.assertIsInstance(decoded, pb.Input)


wrong_message = st.builds(
    pb.Message,
    session_type=st.integers(min_value=-3, max_value=5),
    receiver_id=U64,
    sender_id=st.one_of(st.just(0), U64),
    message_type=st.integers(min_value=-3, max_value=9),
    content=st.binary(max_size=256),
    seq=U64,
    send_time=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
wrong_inputs = st.one_of(
    st.builds(
        lambda m, cid: frame(pb.CT_Message, pb.UpMsg(msg=m, clientId=cid)),
        wrong_message,
        st.one_of(st.integers(min_value=0, max_value=8), U64),
    ),
    st.builds(lambda s: frame(pb.CT_Sync, pb.SyncInputMsg(seq=s)), U64),
    st.builds(
        lambda t, c, s: frame(pb.CT_ACK, pb.ACKMsg(type=t, clientId=c, seq=s)),
        st.integers(min_value=-2, max_value=6),
        U64,
        U64,
    ),
    st.builds(
        lambda tok, dev, ack: frame(
            pb.CT_Login, pb.LoginMsg(token=tok, device_id=dev, push_ack=ack)
        ),
        st.binary(max_size=300),
        st.text(max_size=200),
        st.booleans(),
    ),
    st.builds(
        lambda cmd, data: pb.Input(type=cmd, data=data).SerializeToString(),
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
        st.binary(max_size=128),
    ),
    st.binary(max_size=256),
)


class GatewayProperties(LogicTestCase):
    """The gateway protocol on a string transport, after a real handshake."""

    def open(self) -> tuple[Any, StringTransport]:
        return open_on_string_transport(GatewayFactory(self.hub, max_frame=1024))

    def check_output(self, proto: Any, transport: StringTransport) -> None:
        for opcode, payload in server_frames(transport.value()):
            self.assertIn(opcode, (0x2, 0x8, 0xA), "binary, close or pong only")
            if opcode == 0x2:
                self.assertIn(pb.Output.FromString(payload).code, DOCUMENTED)
            elif opcode == OP_CLOSE and payload:
                self.assertIn(struct.unpack("!H", payload[:2])[0], CLOSE_CODES)
        proto.connectionLost(Failure(ConnectionError("test over")))
        self.assertEqual(self.hub.sessions, set())

    @SETTINGS
    @given(data=st.binary(max_size=4096))
    def test_arbitrary_bytes_after_the_handshake(self, data):
        proto, transport = self.open()
        proto.dataReceived(data)
        self.check_output(proto, transport)

    @SETTINGS
    @given(
        frames=st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=15),
                st.binary(max_size=300),
                st.booleans(),
                st.integers(min_value=0, max_value=7),
            ),
            max_size=8,
        )
    )
    def test_arbitrary_well_framed_frames(self, frames):
        proto, transport = self.open()
        for opcode, payload, fin, rsv in frames:
            proto.dataReceived(build_frame(opcode, payload, fin=fin, rsv=rsv))
        self.check_output(proto, transport)

    @SETTINGS
    @given(inputs=st.lists(wrong_inputs, max_size=10))
    def test_wrong_messages_in_binary_frames(self, inputs):
        proto, transport = self.open()
        for payload in inputs:
            proto.dataReceived(build_frame(0x2, payload))
        self.check_output(proto, transport)


class LoggedInProperties(LogicTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_wrong_messages_to_a_logged_in_session(self):
        alice, _ = yield self.user("700")
        bob, _ = yield self.user("701")
        conn = yield self.logged_in(alice, "prop")
        conn.mark_read()

        @SETTINGS
        @given(payload=wrong_inputs)
        def feed(payload: bytes) -> None:
            conn.session.frame_received(payload)  # raises into hypothesis if anything escapes

        feed()
        yield self.hub.wait_idle()
        # A marker message: once its ACK arrives, the session is alive and caught up.
        self.assertFalse(conn.session.closed)
        nxt = conn.session.device.accepted + 1
        marker = pb.Message(session_type=pb.ST_Single, receiver_id=bob, content=b"marker")
        conn.session.frame_received(frame(pb.CT_Message, pb.UpMsg(msg=marker, clientId=nxt)))
        seen = []
        while True:
            out = yield conn.next_output()
            seen.append(out)
            if out.type == pb.CT_ACK:
                ack = pb.ACKMsg.FromString(out.data)
                # A wrong CT_ACK input of type AT_Up is answered 1001 with its own
                # clientId, so only a success ACK marks the marker.
                if ack.type == pb.AT_Up and ack.clientId == nxt and out.code == 200:
                    break
        latest = yield self.store.latest_seq(alice)
        self.assertEqual(ack.seq, latest)  # the marker is alice's newest message
        self.assertLessEqual({o.code for o in seen}, DOCUMENTED)

    def test_rate_limited_replies_are_documented_and_end_in_a_close(self):
        self.hub.config.msg_burst = 1
        self.hub.config.msg_rate = 0.001

        @SETTINGS
        @given(inputs=st.lists(wrong_inputs, min_size=1, max_size=20))
        def flood(inputs: list[bytes]) -> None:
            conn = self.connect()
            conn.session.frame_received(frame(pb.CT_Heartbeat))  # uses the burst
            for payload in inputs:
                conn.session.frame_received(payload)
            for out in conn.unread():
                self.assertEqual(out.code, 1013)
            for _ in range(RATE_STRIKES + 1):
                conn.session.frame_received(frame(pb.CT_Heartbeat))
            self.assertEqual(conn.closed, "message rate limit exceeded")

        flood()

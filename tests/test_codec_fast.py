"""The codec's hand-built frames (ACKs, pushes from a shared prefix) are the
bytes protobuf itself would produce, or decode to the same message."""

from __future__ import annotations

import itertools

from twisted.trial import unittest

from gochat import codec
from gochat.pb import pb

U64 = 2**64 - 1


class AckFrames(unittest.TestCase):
    def test_ok_acks_are_byte_identical_to_protobuf(self):
        for ack_type, client_id, seq in itertools.product(
            (0, pb.AT_Up, pb.AT_Push, pb.AT_Login), (0, 1, 127, 128, 16384, U64), (0, 1, 300, U64)
        ):
            expected = pb.Output(
                type=pb.CT_ACK,
                code=200,
                data=pb.ACKMsg(type=ack_type, clientId=client_id, seq=seq).SerializeToString(),
            ).SerializeToString()
            self.assertEqual(codec.ack_frame(ack_type, 200, client_id, seq), expected)

    def test_error_acks_carry_the_code_message(self):
        out = pb.Output.FromString(codec.ack_frame(pb.AT_Up, 1011, 5))
        self.assertEqual((out.type, out.code, bool(out.CodeMsg)), (pb.CT_ACK, 1011, True))
        self.assertEqual(pb.ACKMsg.FromString(out.data).clientId, 5)


class PushFrames(unittest.TestCase):
    def test_every_varint_size_of_the_seq_decodes_to_the_message(self):
        msg = pb.Message(
            session_type=pb.ST_Group,
            receiver_id=2**40,
            sender_id=3,
            message_type=pb.MT_Text,
            content=b"x" * 200,
            send_time=1_700_000_000_000,
        )
        frames = codec.PushFrames(codec.message_base(msg))
        for seq in (1, 127, 128, 16383, 16384, 2**21, 2**35, U64):
            out = pb.Output.FromString(frames.frame(seq))
            expected = pb.Message()
            expected.CopyFrom(msg)
            expected.seq = seq
            self.assertEqual((out.type, out.code), (pb.CT_Message, 200))
            self.assertEqual(pb.PushMsg.FromString(out.data).msg, expected)

    def test_frames_of_messages_of_any_length_decode_to_the_message(self):
        # lengths whose varints take one, two and three bytes, across the table's end
        for size in (1, 100, 123, 124, 16360, 16372, 16380, 20_000):
            msg = pb.Message(sender_id=3, content=b"c" * size)
            run = codec.PushRun([codec.message_base(msg)] * 2)
            for first in (1, 127, 2**20):
                for seq, frame in enumerate(run.frames(first), first):
                    out = pb.Output.FromString(frame)
                    expected = pb.Message()
                    expected.CopyFrom(msg)
                    expected.seq = seq
                    self.assertEqual(pb.PushMsg.FromString(out.data).msg, expected, (size, seq))

    def test_message_base_leaves_the_seq_out(self):
        msg = pb.Message(sender_id=1, seq=99)
        self.assertEqual(pb.Message.FromString(codec.message_base(msg)).seq, 0)
        self.assertEqual(msg.seq, 99)  # the caller's message is not changed


class PushRuns(unittest.TestCase):
    def test_a_run_of_frames_is_each_message_with_the_next_seq(self):
        pushes = [
            codec.PushFrames(codec.message_base(pb.Message(sender_id=i, content=b"m" * (i * 40))))
            for i in range(1, 5)
        ]
        run = codec.PushRun([p.base for p in pushes])
        # within one varint size, across 127/128 and 16383/16384, and past the table
        for first in (1, 100, 125, 126, 127, 128, 16380, 16381, 16383, 2**21 - 2, 2**40):
            self.assertEqual(
                run.frames(first), [p.frame(first + i) for i, p in enumerate(pushes)], first
            )
            again = run.frames(first)  # from the heads kept for this varint size
            self.assertEqual(again, [p.frame(first + i) for i, p in enumerate(pushes)], first)

    def test_consecutive_varints_are_each_values_varint_across_every_boundary(self):
        for first in (0, 1, 120, 16250, 16383, 16384, 2**21 - 130, 2**35 - 5, U64 - 300):
            for count in (1, 2, 129, 300):
                if first + count - 1 > U64:
                    continue
                self.assertEqual(
                    codec.consecutive_varints(first, count),
                    [codec._varint_slow(v) for v in range(first, first + count)],
                    (first, count),
                )

    def test_a_runs_wire_is_each_frame_behind_its_header(self):
        from gochat.gateway.protocol import _HEADS

        pushes = [
            codec.PushFrames(codec.message_base(pb.Message(sender_id=i, content=b"m" * (i * 40))))
            for i in range(1, 5)
        ]
        run = codec.PushRun([p.base for p in pushes])
        # within one varint size, and across 127/128, 16383/16384 and 2**21
        for first in (1, 120, 125, 127, 16380, 16381, 2**21 - 10, 2**21 - 2, 2**40):
            for _ in range(2):  # built, then from what it kept
                frames = [p.frame(first + i) for i, p in enumerate(pushes)]
                self.assertEqual(
                    run.wire(first, _HEADS), b"".join(_HEADS[len(f)] + f for f in frames), first
                )
                for skip in ({0}, {1, 3}, {3}):  # what the recipient's device sent
                    kept = [f for i, f in enumerate(frames) if i not in skip]
                    self.assertEqual(
                        run.wire(first, _HEADS, skip), b"".join(_HEADS[len(f)] + f for f in kept)
                    )

    def test_a_run_over_more_than_two_varint_sizes_or_with_too_long_a_frame_has_no_wire(self):
        from gochat.gateway.protocol import _HEADS

        base = codec.message_base(pb.Message(sender_id=1))
        many = codec.PushRun([base] * 16300)
        self.assertIsNone(many.wire(127, _HEADS))  # seqs of one, two and three bytes
        self.assertEqual(
            many.frames(127), [codec.PushFrames(base).frame(127 + i) for i in range(16300)]
        )
        long = codec.PushRun([codec.message_base(pb.Message(content=b"x" * len(_HEADS)))])
        self.assertIsNone(long.wire(5, _HEADS))  # a header the table does not hold

    def test_a_runs_heads_are_each_messages_own_whatever_the_lengths(self):
        # message and push lengths of one, two and three varint bytes, and the
        # bases long enough that the lookup table no longer holds their lengths
        sizes = (0, 1, 120, 123, 124, 125, 126, 127, 128, 16370, 16376, 16377, 16378, 16390)
        for size in (1, 2, 3, 10):
            bases = [b"b" * n for n in sizes]
            self.assertEqual(
                codec.run_heads(bases, size),
                [codec.PushFrames(base).head(size) for base in bases],
                size,
            )
            for n in sizes:  # one base alone takes the same path as in a run
                self.assertEqual(
                    codec.run_heads([b"c" * n], size), [codec.PushFrames(b"c" * n).head(size)]
                )
        self.assertEqual(codec.run_heads([], 1), [])


class PackedBases(unittest.TestCase):
    def test_bases_come_back_as_they_went_whatever_their_bytes(self):
        bases = [b"a", bytes(range(256)), b"\x00" * 70_000, "é😀".encode()]
        packed = codec.pack_bases(bases)
        self.assertEqual(len(packed), 4 * 5 + sum(map(len, bases)))
        self.assertEqual(codec.unpack_bases(packed, 10), bases)

    def test_what_is_not_packed_bases_is_refused(self):
        good = codec.pack_bases([b"one", b"two"])
        for data in (
            b"",
            b"\x01\x00",  # cut inside the count
            codec.pack_bases([]),  # no message
            good[:-1],  # the last base cut short
            good + b"x",  # bytes beyond the bases
            good[:6],  # cut inside the lengths
            codec.pack_bases([b"one", b""]),  # an empty base
            b"\xff\xff\xff\xff",  # four billion bases announced, none sent
        ):
            with self.assertRaises(ValueError, msg=repr(data)):
                codec.unpack_bases(data, 10)
        with self.assertRaises(ValueError):
            codec.unpack_bases(codec.pack_bases([b"x"] * 11), 10)  # more than allowed

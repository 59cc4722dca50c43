"""The wire schema: generated modules match ``proto/gochat.proto``, numbers match DESIGN.md §4."""

from __future__ import annotations

import os
import tempfile

from twisted.trial import unittest

from gochat.pb import pb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: DESIGN.md section 4, field by field: (name, number, type).
MESSAGES = {
    "Input": [("type", 1, "enum"), ("data", 2, "bytes")],
    "Output": [
        ("type", 1, "enum"),
        ("code", 2, "int32"),
        ("CodeMsg", 3, "string"),
        ("data", 4, "bytes"),
    ],
    "OutputBatch": [("outputs", 1, "bytes")],
    "LoginMsg": [
        ("token", 1, "bytes"),
        ("device_id", 2, "string"),
        ("push_ack", 3, "bool"),
        ("notices", 4, "bool"),
    ],
    "HeartbeatMsg": [],
    "UpMsg": [("msg", 1, "message"), ("clientId", 2, "uint64")],
    "PushMsg": [("msg", 1, "message")],
    "SyncInputMsg": [("seq", 1, "uint64")],
    "SyncOutputMsg": [("messages", 1, "message"), ("has_more", 2, "bool")],
    "Message": [
        ("session_type", 1, "enum"),
        ("receiver_id", 2, "uint64"),
        ("sender_id", 3, "uint64"),
        ("message_type", 4, "enum"),
        ("content", 5, "bytes"),
        ("seq", 6, "uint64"),
        ("send_time", 7, "int64"),
    ],
    "ACKMsg": [("type", 1, "enum"), ("clientId", 2, "uint64"), ("seq", 3, "uint64")],
    # this project's additions (new messages only; the Go ones keep their numbers)
    "ReadMsg": [
        ("session_type", 1, "enum"),
        ("peer_id", 2, "uint64"),
        ("seq", 3, "uint64"),
        ("reader_id", 4, "uint64"),
    ],
    "TypingMsg": [
        ("session_type", 1, "enum"),
        ("peer_id", 2, "uint64"),
        ("sender_id", 3, "uint64"),
    ],
}

ENUMS = {
    "SessionType": [("ST_UnKnow", 0), ("ST_Single", 1), ("ST_Group", 2)],
    "MessageType": [("MT_UnKnow", 0), ("MT_Text", 1), ("MT_Picture", 2), ("MT_Voice", 3)]
    + [("MT_System", 10)],
    "ACKType": [("AT_UnKnow", 0), ("AT_Up", 1), ("AT_Push", 2), ("AT_Login", 3)],
    "CmdType": [
        ("CT_UnKnow", 0),
        ("CT_Login", 1),
        ("CT_Heartbeat", 2),
        ("CT_Message", 3),
        ("CT_ACK", 4),
        ("CT_Sync", 5),
        ("CT_Read", 6),
        ("CT_Typing", 7),
    ],
}

TYPE_NAMES = {
    1: "double",
    2: "float",
    3: "int64",
    4: "uint64",
    5: "int32",
    8: "bool",
    9: "string",
    11: "message",
    12: "bytes",
    13: "uint32",
    14: "enum",
}


class GeneratedModules(unittest.TestCase):
    def test_committed_modules_match_a_fresh_protoc_run(self):
        from grpc_tools import protoc

        out = tempfile.mkdtemp(prefix="gochat-proto-")
        proto_dir = os.path.join(ROOT, "proto")
        status = protoc.main(
            [
                "protoc",
                f"-I{proto_dir}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                os.path.join(proto_dir, "gochat.proto"),
            ]
        )
        self.assertEqual(status, 0)
        for name in ("gochat_pb2.py", "gochat_pb2.pyi"):
            with open(os.path.join(out, name), "rb") as f:
                fresh = f.read()
            with open(os.path.join(ROOT, "gochat", "pb", name), "rb") as f:
                committed = f.read()
            self.assertEqual(committed, fresh, f"{name} is stale: run `tox -e proto`")


class FieldNumbers(unittest.TestCase):
    def test_package_is_pb_and_syntax_proto3(self):
        self.assertEqual(pb.DESCRIPTOR.package, "pb")
        with open(os.path.join(ROOT, "proto", "gochat.proto"), encoding="utf-8") as f:
            self.assertIn('syntax = "proto3";', f.read())

    def test_messages_have_the_go_server_field_numbers(self):
        found = {
            name: [(f.name, f.number, TYPE_NAMES[f.type]) for f in desc.fields]
            for name, desc in pb.DESCRIPTOR.message_types_by_name.items()
        }
        self.assertEqual(found, MESSAGES)

    def test_enums_have_the_go_server_values(self):
        found = {
            name: [(v.name, v.number) for v in desc.values]
            for name, desc in pb.DESCRIPTOR.enum_types_by_name.items()
        }
        self.assertEqual(found, ENUMS)

    def test_repeated_fields(self):
        self.assertTrue(pb.SyncOutputMsg.DESCRIPTOR.fields_by_name["messages"].is_repeated)
        self.assertTrue(pb.OutputBatch.DESCRIPTOR.fields_by_name["outputs"].is_repeated)
        self.assertFalse(pb.Message.DESCRIPTOR.fields_by_name["content"].is_repeated)

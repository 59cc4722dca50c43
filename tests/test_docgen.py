"""The generated reference tables: the proto parser agrees with the compiled
descriptors, and the option table lists every option with its variable."""

from __future__ import annotations

import os

from twisted.trial import unittest

from gochat import docgen
from gochat.config import Options, env_name
from gochat.pb import pb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def proto_types() -> list[docgen.ProtoType]:
    with open(os.path.join(ROOT, "proto", "gochat.proto"), encoding="utf-8") as f:
        return docgen.parse_proto(f.read())


class ProtoParser(unittest.TestCase):
    def test_every_message_and_enum_of_the_descriptor_with_its_field_numbers(self):
        parsed = {t.name: t for t in proto_types()}
        descriptor = pb.DESCRIPTOR
        expected = {
            **{
                name: {f.name: f.number for f in m.fields}
                for name, m in descriptor.message_types_by_name.items()
            },
            **{
                name: {v.name: v.number for v in e.values}
                for name, e in descriptor.enum_types_by_name.items()
            },
        }
        self.assertEqual(
            {name: {f.name: f.number for f in t.fields} for name, t in parsed.items()}, expected
        )

    def test_kinds_types_and_repetition(self):
        parsed = {t.name: t for t in proto_types()}
        self.assertEqual(parsed["CmdType"].kind, "enum")
        fields = {f.name: f for f in parsed["SyncOutputMsg"].fields}
        self.assertEqual((fields["messages"].type, fields["messages"].repeated), ("Message", True))
        self.assertEqual((fields["has_more"].type, fields["has_more"].repeated), ("bool", False))
        self.assertEqual(parsed["HeartbeatMsg"].fields, [])

    def test_comments_stay_with_what_they_describe(self):
        parsed = {t.name: t for t in proto_types()}
        notices = {f.name: f for f in parsed["LoginMsg"].fields}["notices"]
        self.assertIn("CT_Read", notices.comment)
        self.assertIn("read", parsed["ReadMsg"].comment)
        self.assertEqual(parsed["Input"].comment, "")

    def test_a_small_file(self):
        text = (
            '// the header\nsyntax = "proto3";\n\n'
            "// kinds\nenum K {\n  A = 0;\n  B = 2; // two\n}\n"
            "message M {\n  repeated K ks = 3;\n  // the name\n  string name = 1;\n}\n"
            "message Empty {}\n"
        )
        k, m, empty = docgen.parse_proto(text)
        self.assertEqual((k.kind, k.name, k.comment), ("enum", "K", "kinds"))
        self.assertEqual(
            [(f.name, f.number, f.comment) for f in k.fields], [("A", 0, ""), ("B", 2, "two")]
        )
        self.assertEqual(
            [(f.name, f.type, f.number, f.repeated, f.comment) for f in m.fields],
            [("ks", "K", 3, True, ""), ("name", "string", 1, False, "the name")],
        )
        self.assertEqual((empty.name, empty.fields), ("Empty", []))

    def test_reference_links_message_types_and_lists_numbers(self):
        text = docgen.proto_reference(proto_types())
        self.assertIn(".. _proto-UpMsg:", text)
        self.assertIn(":ref:`Message <proto-Message>`", text)
        self.assertIn("   * - ``CT_Typing``\n     - 7\n", text)


class OptionTable(unittest.TestCase):
    def test_every_option_with_its_variable_and_default(self):
        text = docgen.options_reference()
        for name, _short, default, _doc in Options.optParameters:
            self.assertIn(f"``--{name}``", text)
            self.assertIn(f"``{env_name(name)}``", text)
            if default is not None:
                self.assertIn(f"``{default}``", text)

    def test_the_environment_does_not_change_the_documented_defaults(self):
        self.patch(os, "environ", {**os.environ, "GOCHAT_SYNC_LIMIT": "7"})
        self.assertNotIn("``7``", docgen.options_reference())

    def test_markup_in_help_text_is_escaped(self):
        self.assertEqual(docgen._escape("a *b* `c` |d| e_"), r"a \*b\* \`c\` \|d\| e\_")


class OwnWords(unittest.TestCase):
    def test_the_docs_name_no_contract_outside_the_project(self):
        found = []
        for folder, _dirs, files in os.walk(os.path.join(ROOT, "docs")):
            for name in files:
                if name.endswith((".rst", ".py")):
                    with open(os.path.join(folder, name), encoding="utf-8") as f:
                        if "DESIGN.md" in f.read():
                            found.append(name)
        self.assertEqual(found, [])

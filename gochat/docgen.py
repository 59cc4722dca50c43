"""Generated reference tables for the documentation (``docs/``).

The protobuf messages and their field numbers come from ``proto/gochat.proto``
and the configuration options from :class:`gochat.config.Options`, so the
reference cannot drift from the code. Only the Sphinx extension in
``docs/_ext`` calls this module; the node never imports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gochat.config import Options, env_name


@dataclass
class ProtoField:
    name: str
    type: str
    number: int
    repeated: bool = False
    comment: str = ""


@dataclass
class ProtoType:
    """A message (fields) or an enum (values, whose ``type`` is empty)."""

    kind: str  # "message" or "enum"
    name: str
    comment: str = ""
    fields: list[ProtoField] = field(default_factory=list)


_BLOCK = re.compile(r"^(message|enum)\s+(\w+)\s*\{\s*(\}?)")
_MESSAGE_FIELD = re.compile(r"^(repeated\s+)?([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;")
_ENUM_VALUE = re.compile(r"^(\w+)\s*=\s*(\d+)\s*;")


def parse_proto(text: str) -> list[ProtoType]:
    """The top-level messages and enums of a proto3 file, with their comments.

    Only what ``gochat.proto`` uses: no nesting, no ``oneof``, no options on
    fields. A comment on the lines above a definition, or at the end of its
    line, is kept with it.
    """
    types: list[ProtoType] = []
    current: ProtoType | None = None
    pending: list[str] = []
    for raw in text.splitlines():
        line, _, trailing = raw.partition("//")
        line, trailing = line.strip(), trailing.strip()
        if not line:
            if trailing:
                pending.append(trailing)
            elif current is None:
                pending = []
            continue
        comment = " ".join([*pending, trailing]).strip()
        pending = []
        if current is None:
            match = _BLOCK.match(line)
            if match:
                current = ProtoType(match.group(1), match.group(2), comment)
                types.append(current)
                if match.group(3):  # `message HeartbeatMsg {}`
                    current = None
            continue
        if line.startswith("}"):
            current = None
            continue
        if current.kind == "message":
            match = _MESSAGE_FIELD.match(line)
            if match:
                current.fields.append(
                    ProtoField(
                        match.group(3),
                        match.group(2),
                        int(match.group(4)),
                        repeated=bool(match.group(1)),
                        comment=comment,
                    )
                )
        else:
            match = _ENUM_VALUE.match(line)
            if match:
                current.fields.append(
                    ProtoField(match.group(1), "", int(match.group(2)), comment=comment)
                )
    return types


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """An RST ``list-table`` (cells may hold any inline markup)."""
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0] or ' '}")
        lines.extend(f"     - {cell or ' '}" for cell in row[1:])
    lines.append("")
    return lines


def _title(text: str, char: str) -> list[str]:
    return [text, char * len(text), ""]


def proto_reference(types: list[ProtoType]) -> str:
    """RST sections, enums first, each with a table of names and numbers."""
    out: list[str] = []
    for kind, heading in (("enum", "Enums"), ("message", "Messages")):
        out += _title(heading, "-")
        for t in (t for t in types if t.kind == kind):
            out += [f".. _proto-{t.name}:", ""]
            out += _title(t.name, "~")
            if t.comment:
                out += [t.comment, ""]
            if not t.fields:
                out += ["No fields.", ""]
            elif kind == "enum":
                out += _table(
                    ["value", "number", "notes"],
                    [[f"``{f.name}``", str(f.number), f.comment] for f in t.fields],
                )
            else:
                out += _table(
                    ["field", "number", "type", "notes"],
                    [
                        [
                            f"``{f.name}``",
                            str(f.number),
                            ("repeated " if f.repeated else "") + _type_ref(f.type, types),
                            f.comment,
                        ]
                        for f in t.fields
                    ],
                )
    return "\n".join(out)


def _type_ref(name: str, types: list[ProtoType]) -> str:
    if any(t.name == name for t in types):
        return f":ref:`{name} <proto-{name}>`"
    return f"``{name}``"


def options_reference() -> str:
    """Every ``twistd gochat`` option: its variable, its default, what it does."""
    rows = []
    for name, _short, default, doc in Options.optParameters:
        shown = "—" if default is None else f"``{default}``"
        name, doc = str(name), str(doc or "")
        rows.append([f"``--{name}``", f"``{env_name(name)}``", shown, _escape(doc)])
    for name, _short, doc in getattr(Options, "optFlags", []):
        rows.append([f"``--{name}``", f"``{env_name(name)}=1``", "off", _escape(doc)])
    return "\n".join(_table(["option", "variable", "default", "meaning"], rows))


def _escape(text: str) -> str:
    """Keep option help (plain text) from being read as RST markup."""
    return re.sub(r"([*`|_\\])", r"\\\1", text)

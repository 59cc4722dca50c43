"""The web chat page: static files served at ``/`` of the HTTP site.

It owns the page's files (``static/``) and the protobuf schema the page loads,
derived from the generated ``gochat.pb`` module so it can never drift from the
wire contract. It touches nothing else: the page talks to the node only through
the public HTTP API and ``/ws``, like any other client.
"""

from __future__ import annotations

import json
import os
from typing import Any

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor, FileDescriptor
from twisted.web import resource, static
from twisted.web.server import Request

from gochat.pb import pb

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

# protobuf.js generates its codecs with ``new Function``, hence 'unsafe-eval';
# everything else is same-origin only, and no inline script runs.
SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self' 'unsafe-eval'; style-src 'self'; "
        b"img-src 'self'; connect-src 'self'; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
}

_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}


def protobufjs_schema(file: FileDescriptor = pb.DESCRIPTOR) -> dict[str, Any]:
    """The file's messages and enums as a protobuf.js JSON descriptor (proto3).

    Field names keep their ``.proto`` spelling (``receiver_id``), as in DESIGN.md.
    """

    def enum_json(enum: EnumDescriptor) -> dict[str, Any]:
        return {"values": {value.name: value.number for value in enum.values}}

    def field_json(field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            kind = field.message_type.full_name
        elif field.enum_type is not None:
            kind = field.enum_type.full_name
        else:
            kind = _SCALARS[field.type]
        out: dict[str, Any] = {"type": kind, "id": field.number}
        if field.is_repeated:
            out["rule"] = "repeated"
        return out

    def message_json(message: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"fields": {f.name: field_json(f) for f in message.fields}}
        nested = {e.name: enum_json(e) for e in message.enum_types}
        nested.update({m.name: message_json(m) for m in message.nested_types})
        if nested:
            out["nested"] = nested
        return out

    body: dict[str, Any] = {name: enum_json(e) for name, e in file.enum_types_by_name.items()}
    body.update({name: message_json(m) for name, m in file.message_types_by_name.items()})
    # Type references are fully qualified ("pb.Message"): resolved from the root.
    return {"nested": {file.package: {"nested": body}}}


class StaticFiles(static.File):
    """Files of the page, with security headers and no directory listings."""

    childNotFound: resource.Resource  # type: ignore[assignment] # a page, not NoResource
    indexNames: list[str] = []  # no index.html under /static/: the page lives at /

    def render(self, request: Request) -> Any:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        # Revalidate on every load: a node upgrade must not leave a stale page.
        request.setHeader(b"cache-control", b"no-cache")
        return super().render(request)

    def directoryListing(self) -> resource.Resource:  # noqa: N802 - Twisted's name
        return self.childNotFound


def mount(root: resource.Resource, not_found: resource.Resource) -> None:
    """Serve the page at ``/`` and its files under ``/static/`` of ``root``.

    ``not_found`` answers unknown files, so the site keeps one 404 shape.
    """
    files = StaticFiles(STATIC_DIR)
    files.childNotFound = not_found
    files.putChild(
        b"gochat-proto.json",
        static.Data(json.dumps(protobufjs_schema()).encode(), "application/json"),
    )
    page = StaticFiles(os.path.join(STATIC_DIR, "index.html"))
    page.childNotFound = not_found
    root.putChild(b"", page)
    root.putChild(b"static", files)

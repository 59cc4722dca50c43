"""Sphinx directives that render tables generated from the code.

``.. gochat-proto::`` renders the messages, enums and field numbers of
``proto/gochat.proto``; ``.. gochat-options::`` renders every option of
``twistd gochat``. Both delegate to :mod:`gochat.docgen`, which is tested.
"""

from __future__ import annotations

import os
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


class _RstDirective(SphinxDirective):
    """Parse generated reStructuredText in place of the directive."""

    def generate(self) -> str:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        text = self.generate()
        container = nodes.section()
        container.document = self.state.document
        lines = StringList(text.splitlines(), source=f"<{self.name}>")
        self.state.nested_parse(lines, self.content_offset, container, match_titles=True)
        return list(container.children)


class ProtoDirective(_RstDirective):
    def generate(self) -> str:
        from gochat import docgen

        root = os.path.dirname(os.path.abspath(self.env.srcdir))
        path = os.path.join(root, "proto", "gochat.proto")
        self.env.note_dependency(path)
        with open(path, encoding="utf-8") as f:
            return docgen.proto_reference(docgen.parse_proto(f.read()))


class OptionsDirective(_RstDirective):
    def generate(self) -> str:
        from gochat import docgen

        return docgen.options_reference()


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("gochat-proto", ProtoDirective)
    app.add_directive("gochat-options", OptionsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

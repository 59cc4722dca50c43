"""README.rst keeps its promises: it is short, every link in it points at a
file of the checkout, and its Python snippet runs against a real node, twice
in a row, printing both messages."""

from __future__ import annotations

import os
import re
import sys

from twisted.internet import defer, utils
from twisted.trial import unittest

from tests.util import NodeTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.rst")


def readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def literal_blocks(text: str) -> list[str]:
    """The ``::`` literal blocks of an RST text, dedented."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].rstrip().endswith("::"):
            i += 1
            body: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
                body.append(lines[i][4:])
                i += 1
            blocks.append("\n".join(body).strip("\n") + "\n")
        else:
            i += 1
    return blocks


def snippet() -> str:
    (code,) = [b for b in literal_blocks(readme()) if "task.react(main)" in b]
    return code


class Shape(unittest.TestCase):
    def test_at_most_about_200_lines(self):
        self.assertLessEqual(len(readme().splitlines()), 200)

    def test_every_link_points_at_a_file_of_the_checkout(self):
        targets = re.findall(r"`[^`<]*<([^>]+)>`_", readme())
        self.assertGreater(len(targets), 10)
        missing = [
            t for t in targets if "://" not in t and not os.path.exists(os.path.join(ROOT, t))
        ]
        self.assertEqual(missing, [])

    def test_names_no_contract_outside_the_project(self):
        self.assertNotIn("DESIGN.md", readme())


class Snippet(NodeTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def run_snippet(self) -> defer.Deferred:
        code = snippet()
        code = code.replace("http://127.0.0.1:9090", self.node.http_url)
        code = code.replace("ws://127.0.0.1:9091/ws", self.node.ws_url)
        env = dict(os.environ, PYTHONPATH=ROOT)
        out, err, status = yield utils.getProcessOutputAndValue(
            sys.executable, ["-c", code], env=env, path=ROOT
        )
        self.assertEqual(status, 0, err.decode())
        return out.decode()

    @defer.inlineCallbacks
    def test_the_snippet_shows_both_messages_arriving_and_runs_again(self):
        for _ in range(2):  # fresh phone numbers: a second run does not hit 409
            out = yield self.run_snippet()
            self.assertRegex(
                out, r"^bob got 'hello bob' from user \d+\nbob got 'hello group' in group \d+\n$"
            )

    def test_the_snippet_talks_to_the_default_ports(self):
        code = snippet()
        self.assertIn('"http://127.0.0.1:9090"', code)
        self.assertIn('"ws://127.0.0.1:9091/ws"', code)

"""The suite's temporary files go with the process that made them (see ``tests/__init__``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from twisted.trial import unittest

_CHILD = """
import os, tempfile
import tests
d = tempfile.mkdtemp(prefix="gochat-test-")
open(os.path.join(d, "gochat.db"), "wb").write(b"x" * 4096)
print(d)
print(os.environ["TMPDIR"])
"""


class TemporaryFiles(unittest.TestCase):
    def test_a_test_process_removes_its_temporary_files_at_exit(self) -> None:
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": top}
        env.pop("TMPDIR", None)  # as a fresh test run starts
        out = subprocess.run(
            [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        made, root = out
        self.assertTrue(made.startswith(root + os.sep), (made, root))
        self.assertFalse(os.path.exists(made))
        self.assertFalse(os.path.exists(root))

    def test_this_process_makes_them_under_its_own_root(self) -> None:
        self.assertTrue(os.path.basename(tempfile.gettempdir()).startswith("gochat-tests-"))
        self.assertEqual(os.environ["TMPDIR"], tempfile.gettempdir())

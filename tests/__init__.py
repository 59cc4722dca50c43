"""The trial suite of GoChat for Twisted.

Every temporary file and directory the suite makes (nodes' data dirs with
their SQLite databases, certificates, logs, the node processes' own) goes
under one directory per test process, removed when that process exits, so
a run leaves nothing of its some 550 directories (200 MB) behind in
``/tmp``. The node processes the tests start inherit it through ``TMPDIR``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile


def _own_temp_root() -> None:
    root = tempfile.mkdtemp(prefix="gochat-tests-")
    tempfile.tempdir = root
    os.environ["TMPDIR"] = root
    pid = os.getpid()

    def remove() -> None:
        if os.getpid() == pid:  # not in a child that inherited the handler
            shutil.rmtree(root, ignore_errors=True)

    atexit.register(remove)


_own_temp_root()

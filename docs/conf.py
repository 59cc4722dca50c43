"""Sphinx configuration for the GoChat for Twisted documentation.

The tables that must not drift from the code (protobuf messages and field
numbers, configuration options) are generated at build time by the local
extension in ``_ext/gochat_docs.py``; it imports the package from the
checkout, so the docs build needs no install of the project.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
sys.path.insert(0, os.path.dirname(HERE))

project = "GoChat for Twisted"
author = "the GoChat for Twisted authors"
copyright = "the GoChat for Twisted authors"  # noqa: A001 - Sphinx's name

extensions = ["gochat_docs"]

root_doc = "index"
exclude_patterns = ["_build"]
# Every reference must resolve (-n) and every warning fails the build (-W).
nitpicky = True
highlight_language = "none"
html_theme = "alabaster"
html_static_path: list[str] = []

# The docs are built offline: the link checker checks only links inside the
# documentation tree; every external address is skipped.
linkcheck_ignore = [r"https?://", r"wss?://", r"mailto:"]
linkcheck_anchors = False

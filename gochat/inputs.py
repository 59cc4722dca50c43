"""Rules for untrusted text and ids, shared by the HTTP API and the WebSocket login.

Transport-free: each check returns a short reason (or ``None``) and the
caller turns it into its own error (HTTP 400 with a JSON ``msg``, or an
``Output`` code 1001). Rules:

- text never holds a lone surrogate (it cannot be encoded as UTF-8, so a
  database driver would fail on it) or NUL (PostgreSQL refuses it), and,
  unless ``controls`` is allowed, no other control character (C0, DEL, C1);
- lengths are counted in characters, as ``VARCHAR(n)`` counts them;
- an id is a JSON integer (not a bool) or a string of ASCII digits, within
  1..2**63-1 (signed 64-bit in every supported database).
"""

from __future__ import annotations

import re
from typing import Any

MAX_ID = 2**63 - 1
#: Limits of the people and groups endpoints, in characters.
NICKNAME_MAX = 32
GROUP_NAME_MAX = 64

#: C0 controls, DEL and C1 controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ASCII_DIGITS = re.compile("[0-9]{1,19}")


def text_problem(
    value: object, max_len: int, min_len: int = 1, controls: bool = False
) -> str | None:
    """Why ``value`` is not acceptable text, or ``None`` when it is.

    ``value`` is untrusted (a decoded JSON value may be of any type).
    ``controls=True`` admits control characters other than NUL (a password
    may hold a tab); NUL and lone surrogates are never admitted.
    """
    if not isinstance(value, str):
        return "must be a string"
    if len(value) < min_len:
        return "is empty" if min_len == 1 else f"is shorter than {min_len} characters"
    if len(value) > max_len:
        return f"is longer than {max_len} characters"
    if _SURROGATE.search(value):
        return "holds a lone surrogate (not valid Unicode)"
    if "\x00" in value:
        return "holds a NUL character"
    if not controls and _CONTROL.search(value):
        return "holds a control character"
    return None


def parse_id_value(value: Any) -> int | None:
    """The id in ``value`` (a JSON integer or an ASCII decimal string), else ``None``."""
    if type(value) is int:  # noqa: E721 - bool is an int subclass and is no id
        number = value
    elif isinstance(value, str) and _ASCII_DIGITS.fullmatch(value):
        number = int(value)
    else:
        return None
    return number if 0 < number <= MAX_ID else None

"""Structured logs: every ``twisted.logger`` event as one JSON object per line.

``twistd -n gochat --log-format json`` (or ``twistd --logger
gochat.logs.json_observer gochat``) replaces twistd's text log with
:func:`json_observer`. Each line holds ``time`` (ISO 8601, UTC), ``level``,
``namespace``, ``message`` (the formatted text), ``traceback`` for failures,
and the event's own structured fields (``uid``, ``peer``, ``name`` …), so a
log shipper can index them without parsing prose.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent

#: Where :func:`json_observer` writes; ``None`` is stdout. Set by ``--log-file``.
_target: str | None = None


def use_json(path: str | None) -> None:
    """Choose the file (``None``: stdout) that :func:`json_observer` writes to."""
    global _target
    _target = path


def _safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def event_as_line(event: dict[str, Any]) -> str:
    """One log event as a JSON line (newline included)."""
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and not key.startswith("_"):
            record[key] = _safe(value)
    return json.dumps(record, ensure_ascii=False) + "\n"


def json_file_observer(out: IO[str]) -> FileLogObserver:
    return FileLogObserver(out, event_as_line)


def json_observer() -> ILogObserver:
    """twistd ``--logger`` factory: JSON lines to ``--log-file`` or stdout."""
    if _target is None or _target == "-":
        out: IO[str] = sys.stdout
    else:
        out = open(_target, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives with the process
    return json_file_observer(out)

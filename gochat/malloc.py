"""The C allocator's settings for a long-running node (glibc; a no-op elsewhere).

glibc raises its mmap threshold to the size of the largest block freed so
far (up to 32 MiB), so after the first argon2 hash (19 MiB) every later one
comes from a thread's heap, and each thread that ever hashed keeps its 19 MiB
forever. A fixed threshold stops that: blocks of 1 MiB or more are mapped and
unmapped on free, as they were before the first free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

#: Blocks this large are always their own mapping, returned at ``free``.
MMAP_THRESHOLD = 1024 * 1024
#: Freed memory at the top of a heap beyond this is given back at once.
TRIM_THRESHOLD = 1024 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def tune() -> bool:
    """Fix the mmap and trim thresholds; True when the allocator took them."""
    if _LIBC is None:
        return False
    # mallopt returns 1 on success (ctypes declares foreign results untyped).
    ok: bool = _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    took: bool = _LIBC.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return took and ok


def trim() -> bool:
    """Give every arena's free pages back to the system; True if any were."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


#: Seconds between trims: each takes a few milliseconds on the reactor thread.
TRIM_INTERVAL = 30.0


class TrimService(service.Service):
    """Trims every ``interval`` seconds, so memory freed after a burst goes back."""

    def __init__(self, reactor: IReactorTime, interval: float = TRIM_INTERVAL) -> None:
        self.reactor = reactor
        self.interval = interval
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        if _LIBC is not None:
            self._loop = task.LoopingCall(trim)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=False)

    def stopService(self) -> Any:  # noqa: N802
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

"""Bounded least-recently-used caches for the store.

The store reads them on the database thread (inside a transaction) and
changes them only on the reactor thread (when a transaction has committed),
so a read never reorders: a transaction reports what it used and the reactor
thread marks those entries used. A read from the other thread is one dict
lookup, atomic under the GIL.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A mapping that keeps at most ``limit`` weight, dropping the least recently used.

    ``weigh`` gives an entry's weight (1 each by default; a group's member
    list weighs its length, so the bound is in member ids, not groups). An
    entry heavier than the whole limit is not kept.
    """

    def __init__(self, limit: int, weigh: Callable[[V], int] | None = None) -> None:
        if limit < 1:
            raise ValueError("a cache holds at least one entry")
        self.limit = limit
        self._weigh = weigh
        self._data: OrderedDict[K, V] = OrderedDict()
        self.weight = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: K, default: V | None = None) -> V | None:
        """Look ``key`` up without marking it used (safe from any thread)."""
        return self._data.get(key, default)

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """The entries of ``keys`` that are cached, unmarked (one lookup each, no call)."""
        data = self._data
        return {key: data[key] for key in keys if key in data}

    def touch(self, keys: Iterable[K]) -> None:
        """Mark entries used (the most recent last); unknown keys are ignored."""
        move = self._data.move_to_end
        for key in keys:
            try:
                move(key)
            except KeyError:
                pass

    def put(self, key: K, value: V) -> None:
        self.update(((key, value),))

    def update(self, items: Iterable[tuple[K, V]] | dict[K, V]) -> None:
        """Insert or replace entries as the most recently used; evict past the limit."""
        data = self._data
        weigh = self._weigh
        pairs = items.items() if isinstance(items, dict) else items
        if weigh is None:
            if isinstance(items, dict):
                # a batch's new seqs, once per member: by C loops, no statement a key
                data.update(items)
                deque(map(data.move_to_end, items), maxlen=0)
            else:
                for key, value in pairs:
                    data[key] = value
                    data.move_to_end(key)
            self.weight = len(data)
        else:
            for key, value in pairs:
                old = data.pop(key, None)
                if old is not None:
                    self.weight -= weigh(old)
                w = weigh(value)
                if w > self.limit:
                    continue
                data[key] = value
                self.weight += w
        self._evict()

    def _evict(self) -> None:
        data = self._data
        weigh = self._weigh
        while self.weight > self.limit:
            _, value = data.popitem(last=False)
            self.weight -= 1 if weigh is None else weigh(value)
            self.evictions += 1

    def pop(self, key: K) -> V | None:
        value = self._data.pop(key, None)
        if value is not None:
            self.weight -= 1 if self._weigh is None else self._weigh(value)
        return value

    def clear(self) -> None:
        self._data.clear()
        self.weight = 0

"""The message writer: upstream messages committed in batches, in order.

One transaction is in flight at a time; messages that arrive meanwhile wait
and go together in the next one, which starts once as long again as the last
commit took has passed (:data:`PACE`). That keeps every device's messages in
clientId order, lets a transient failure stop a device's later messages from
being stored before the failed one, and turns a burst of messages into a few
large transactions instead of many small ones.

While the database is slow (or the router holds batches back) the queue
grows; past :attr:`MessageWriter.high_water` messages or
:attr:`MessageWriter.high_water_bytes` bytes the writer says so
(``on_backlog(True)``) and the hub stops reading from the clients, until the
queue is down to half of both (``on_backlog(False)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gochat.store import Store, UpItem, UpResult

#: Queued messages (waiting for a transaction) past which reading stops: ten
#: full batches, a few seconds of a busy node's commits.
HIGH_WATER = 10_000
#: A batch that starts with a message to a group this big (or to a group
#: not cached yet, which may be as big) waits this long for more: its
#: members' seqs and runs cost the same for one message as for fifty (a
#: 10,000-member group's take about 30 ms, 90 ms the first time), and the
#: messages of one round of a busy group arrive over a few milliseconds (as
#: PostgreSQL's ``commit_delay`` lets commits gather).
GATHER_ROWS = 1000
GATHER_DELAY = 0.003
#: Queued upstream bytes past which reading stops (256 messages of 64 KiB).
HIGH_WATER_BYTES = 16 * 1024 * 1024
#: A batch starts no sooner than PACE times the last commit's duration after
#: the last batch started (at most PACE_MAX later). Every batch costs each
#: recipient connection a write and a system call whatever its size, so a
#: writer that starts the next batch the moment the last one commits cuts a
#: busy node's messages into as many small batches as it can; pacing lets
#: them gather while the pushes of the last batch go out. A message waits
#: at most one commit's time more than it would have (it waits for one
#: anyway), and an idle or lightly loaded node, whose commits take a
#: millisecond or two, hardly at all.
PACE = 2.0
PACE_MAX = 0.05


class MessageWriter:
    log = Logger()
    high_water = HIGH_WATER
    high_water_bytes = HIGH_WATER_BYTES
    #: :data:`PACE` (0: the next batch may start as soon as the last committed)
    pace = PACE

    def __init__(
        self,
        store: Store,
        on_result: Callable[[UpItem, Any, UpResult], None],
        on_failure: Callable[[UpItem, Any], None],
        max_batch: int = 1000,
        key: Callable[[Any], Any] = id,
        on_batch_end: Callable[[], None] | None = None,
        may_start: Callable[[], bool] = lambda: True,
        on_backlog: Callable[[bool], None] | None = None,
        max_rows: int = 256_000,
        clock: IReactorTime | None = None,
    ) -> None:
        self.store = store
        #: the store's estimate of an item's rows (a test's store may have none)
        self._weigh = getattr(store, "rows_estimate", None)
        #: with a clock, an idle writer starts its batch at the end of the
        #: reactor turn, not on the first message: what arrived on the other
        #: connections in the same turn joins it (after GATHER_DELAY when
        #: the first is to a big group)
        self.clock = clock
        self._start_call: Any = None
        #: when the last batch started, and when it may start the next (pacing)
        self._started_at = 0.0
        self._next_at = 0.0
        self.on_result = on_result
        #: called once every outcome of a committed batch went out
        self.on_batch_end = on_batch_end
        #: False holds the next batch back (the pushes of earlier ones still
        #: wait); :meth:`resume` is called once it turns True again
        self.may_start = may_start
        self.on_failure = on_failure
        self.max_batch = max_batch
        #: Recipient rows a batch may hold (as the store estimates them): a
        #: transaction's rows and push lists are all in memory until it
        #: commits, ~100 bytes a row, and 1,000 messages to a 10,000-member
        #: group would be ten million of them.
        self.max_rows = max_rows
        #: Which queued items come from the same device as a failed one.
        self.key = key
        #: called with True once the queue passes a high-water mark, False once
        #: it is back under half of both
        self.on_backlog = on_backlog
        self.backlogged = False
        self.queued_bytes = 0
        self.queue_peak = 0  # the most messages ever queued (for tests and logs)
        self._queue: list[tuple[UpItem, Any, int]] = []
        self._busy = False
        self._idle_waiters: list[defer.Deferred[None]] = []

    def submit(self, item: UpItem, owner: Any, size: int = 0, gather: bool = False) -> None:
        """Queue ``item`` (``size`` bytes on the wire); ``owner`` is handed back with the outcome.

        ``gather``: a batch it starts waits :data:`GATHER_DELAY` for more, as
        for a big group (another node forwarded it: the rest of its round is
        on the way from the other nodes).

        ``key(owner)`` names the device: when a batch fails, queued items with
        the key of a failed one fail too, so none is stored before it.
        """
        queue = self._queue
        queue.append((item, owner, size))
        self.queued_bytes += size
        if not self._busy and self._start_call is None and self.may_start():
            if self.clock is None:
                self._flush()
                return
            weigh = self._weigh
            big = gather or (weigh is not None and weigh(item, None, GATHER_ROWS) >= GATHER_ROWS)
            delay = max(GATHER_DELAY if big else 0, self._next_at - self.clock.seconds())
            self._start_call = self.clock.callLater(delay, self._start)
        n = len(queue)
        if n > self.queue_peak:
            self.queue_peak = n
        if not self.backlogged and (
            n >= self.high_water or self.queued_bytes >= self.high_water_bytes
        ):
            self._set_backlogged(True)

    def _set_backlogged(self, backlogged: bool) -> None:
        self.backlogged = backlogged
        self.log.info(
            "writer queue {state}: {n} messages, {b} bytes waiting",
            state="over its high-water mark, reading paused" if backlogged else "drained",
            n=len(self._queue),
            b=self.queued_bytes,
        )
        if self.on_backlog is not None:
            self.on_backlog(backlogged)

    def _dequeued(self, entries: list[tuple[UpItem, Any, int]]) -> None:
        self.queued_bytes -= sum(entry[2] for entry in entries)
        if (
            self.backlogged
            and len(self._queue) <= self.high_water // 2
            and self.queued_bytes <= self.high_water_bytes // 2
        ):
            self._set_backlogged(False)

    def _start(self) -> None:
        self._start_call = None
        if not self._busy and self._queue and self.may_start():
            self._flush()

    def resume(self) -> None:
        """Start the queued batch that :attr:`may_start` held back, once the pace allows."""
        if self._busy or not self._queue or not self.may_start():
            return
        clock = self.clock
        if clock is not None:
            wait = self._next_at - clock.seconds()
            if wait > 0:
                if self._start_call is None:
                    self._start_call = clock.callLater(wait, self._start)
                return
        self._flush()

    @property
    def pending(self) -> int:
        return len(self._queue) + (1 if self._busy else 0)

    def _batch_size(self) -> int:
        """Queued items for the next batch: at most max_batch, and max_rows (at least one)."""
        weigh = self._weigh
        if weigh is None:
            return self.max_batch
        count = rows = 0
        seen: set[int] = set()
        for entry in self._queue[: self.max_batch]:
            rows += weigh(entry[0], seen)
            if count and rows > self.max_rows:
                break
            count += 1
        return count

    def _flush(self) -> None:
        if self.clock is not None:
            self._started_at = self.clock.seconds()
        size = self._batch_size()
        batch = self._queue[:size]
        del self._queue[:size]
        self._busy = True
        self._dequeued(batch)
        d = self.store.commit_messages([entry[0] for entry in batch])
        d.addCallbacks(self._committed, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _committed(self, results: list[UpResult], batch: list[tuple[UpItem, Any, int]]) -> None:
        # When the pace allows it at once, the next transaction starts before
        # this batch's ACKs and pushes go out, so the database thread commits
        # while the reactor pushes. It holds only later messages, so every
        # device's order is kept.
        self._paced()
        started_next = bool(self._queue)
        if started_next:
            self._next(None)
        try:
            for (item, owner, _), result in zip(batch, results, strict=True):
                try:
                    self.on_result(item, owner, result)
                except Exception:
                    self.log.failure("delivering the outcome of clientId {cid}", cid=item.client_id)
            if self.on_batch_end is not None:
                try:
                    self.on_batch_end()
                except Exception:
                    self.log.failure("finishing a committed batch")
        finally:
            if not started_next:
                self._next(None)  # idle waiters fire only after the outcomes went out

    def _failed(self, failure: Failure, batch: list[tuple[UpItem, Any, int]]) -> None:
        self.log.error(
            "storing {n} messages failed, ACKed 1004: {error}",
            n=len(batch),
            error=failure.getErrorMessage(),
        )
        self._paced()
        key = self.key
        owners = {key(entry[1]) for entry in batch}
        # Later messages of the same devices must not be stored before these.
        later = [entry for entry in self._queue if key(entry[1]) in owners]
        self._queue = [entry for entry in self._queue if key(entry[1]) not in owners]
        self._dequeued(later)
        for item, owner, _ in batch + later:
            try:
                self.on_failure(item, owner)
            except Exception:
                self.log.failure("reporting failure of clientId {cid}", cid=item.client_id)
        self._next(None)

    def _paced(self) -> None:
        """A batch is over: the next may start once its commit's duration passed again."""
        clock = self.clock
        if clock is not None:
            now = clock.seconds()
            self._next_at = self._started_at + min(PACE_MAX, self.pace * (now - self._started_at))

    def _next(self, _: Any) -> None:
        self._busy = False
        if self._queue:
            self.resume()
        else:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def wait_idle(self) -> defer.Deferred[None]:
        """A Deferred that fires once nothing is queued or in flight (for shutdown)."""
        if not self._busy and not self._queue:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        return d

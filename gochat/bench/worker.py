"""The load-generating side: many logged-in sockets in one process.

A :class:`Worker` opens its share of the clients, logs them in, sends what
its scenario says and counts every push: per receiver, a bitmap over the
receiver's seqs tells a new delivery from a duplicate, and the timestamp
the sender put in the content gives the send->push latency. The runner
drives one worker in its own process, or several in child processes
(``python -m gochat.bench.worker``) over JSON lines on stdin/stdout.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import resource
import struct
import sys
import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from twisted.internet import defer, task
from twisted.internet.interfaces import IProcessTransport, ITransport
from twisted.internet.protocol import ProcessProtocol, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from gochat.bench.stats import BUCKETS, RESOLUTION, Histogram, bucket
from gochat.bench.wire import HandshakeError, login_input, message_input, open_socket
from gochat.codec import DecodeError, split_outputs
from gochat.pb import pb

CONNECT_PARALLEL = 256  # handshakes in flight per worker
TICK = 0.1  # seconds between progress checks
_CONTENT = struct.Struct("<dI")  # client send time, round / message number

#: ``Output{type: CT_Message, code: 200, data: ...}``: a push, read by hand below.
_PUSH_OK = bytes((0x08, pb.CT_Message, 0x10, 0xC8, 0x01, 0x22))

_Output = pb.Output.FromString
_Push = pb.PushMsg.FromString
_CT_MESSAGE = pb.CT_Message
_Ack = pb.ACKMsg.FromString
_CT_ACK = pb.CT_ACK
_AT_LOGIN = pb.AT_Login
_BATCH = b"\x0a"
_unpack = _CONTENT.unpack_from
_now = time.time


def raise_nofile(needed: int) -> int:
    """Raise this process's open-file limit to fit ``needed`` sockets; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if soft >= want:
        return soft
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root only
            return want
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _view_classes() -> tuple[Any, Any]:
    """Narrow views of a push ``Output``: one of ``data.msg.{content, seq}``, and one of many.

    Protobuf lets the same bytes be read with a narrower message type. The
    second view reads pushes joined end to end: a singular message field
    met again is merged, so their ``data.msg`` become one message whose
    repeated ``content`` and ``seq`` hold every push's, in order, from one
    parse and no object per push. The other fields are declared as plain
    singular ones (each push's overwrites the last), since upb keeps fields
    it does not know aside at a cost; field 15 (:data:`_PAD`) is what
    :meth:`Conn.run` writes over each WebSocket header.
    """
    fdp = descriptor_pb2.FileDescriptorProto(
        name="gochat_bench_view.proto", package="gochat_bench_view", syntax="proto3"
    )
    field = descriptor_pb2.FieldDescriptorProto
    single, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    varint, blob, sub = field.TYPE_UINT64, field.TYPE_BYTES, field.TYPE_MESSAGE

    def add(name: str, fields: Sequence[tuple[str, int, int, int, str]]) -> None:
        message = fdp.message_type.add(name=name)
        for fname, number, kind, label, type_name in fields:
            f = message.field.add(name=fname, number=number, type=kind, label=label)
            if type_name:
                f.type_name = type_name

    for prefix, label in (("", single), ("Many", repeated)):
        add(
            prefix + "MessageView",
            [
                ("session_type", 1, varint, single, ""),
                ("receiver_id", 2, varint, single, ""),
                ("sender_id", 3, varint, single, ""),
                ("message_type", 4, varint, single, ""),
                ("content", 5, blob, label, ""),
                ("seq", 6, varint, label, ""),
                ("send_time", 7, field.TYPE_INT64, single, ""),
            ],
        )
        message_view = f".gochat_bench_view.{prefix}MessageView"
        add(prefix + "PushView", [("msg", 1, sub, single, message_view)])
        push_view = f".gochat_bench_view.{prefix}PushView"
        add(
            prefix + "OutputView",
            [
                ("type", 1, varint, single, ""),
                ("code", 2, varint, single, ""),
                ("code_msg", 3, blob, single, ""),
                ("data", 4, sub, single, push_view),
                ("pad", 15, varint, single, ""),
            ],
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    one, many = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"gochat_bench_view.{name}"))
        for name in ("OutputView", "ManyOutputView")
    )
    return one, many


_ONE_VIEW, _MANY_VIEW = _view_classes()
_PushView = _ONE_VIEW.FromString
_ManyPushes = _MANY_VIEW.FromString
_REPEAT_PUSH_OK = itertools.repeat(_PUSH_OK)
#: what :meth:`Conn.run` writes over a frame's 2-byte WebSocket header:
#: field 15 of the views, a varint 0
_PAD = b"\x78\x00"


def _bucket_floors() -> list[float]:
    """``floors[b]``: the least latency (s) that :func:`bucket` puts in bucket ``b`` or above."""
    floors = [-math.inf]
    for b in range(1, BUCKETS):
        x = math.expm1(b / RESOLUTION) / 1e6
        while bucket(x) >= b:
            x = math.nextafter(x, -math.inf)
        while bucket(x) < b:
            x = math.nextafter(x, math.inf)
        floors.append(x)
    return floors


_FLOORS = _bucket_floors()


def _count_latencies(hist: list[int], latencies: list[float], lo: int, hi: int) -> None:
    """Count ``latencies[lo:hi]`` (in ascending order) into their buckets of ``hist``.

    A read's pushes were sent within a few milliseconds of each other and
    span a few buckets: each bucket's share is found by bisecting at its
    floor, a C search per bucket rather than a logarithm per push.
    """
    first = bucket(latencies[lo])
    last = bucket(latencies[hi - 1])
    if first == last:
        hist[first] += hi - lo
        return
    if last - first > hi - lo:  # spread thin: one by one is cheaper
        for latency in latencies[lo:hi]:
            hist[bucket(latency)] += 1
        return
    floors = _FLOORS
    for b in range(first, last):
        end = bisect_left(latencies, floors[b + 1], lo, hi)
        hist[b] += end - lo
        lo = end
    hist[last] += hi - lo


@functools.lru_cache(maxsize=256)
def _stamps(n: int) -> struct.Struct:
    """The contents of ``n`` pushes joined: (send time, number) ``n`` times."""
    return struct.Struct("<" + "dI" * n)


class NotUnderstood(Exception):
    """The server answered nothing a GoChat client understands, or nothing in time."""


class Conn:
    """One benchmark client: a socket, its user, and what it has seen."""

    __slots__ = (
        "worker",
        "sock",
        "user_id",
        "token",
        "peer",
        "base",
        "seen",
        "next_cid",
        "inflight",
        "logged_in",
        "rounds_left",
        "url",
    )

    def __init__(self, worker: Worker, user_id: int, token: str, peer: int = 0) -> None:
        self.worker = worker
        self.sock: Any = None
        self.user_id = user_id
        self.token = token
        self.peer = peer  # single chat: whom this client sends to
        self.base = 0  # the user's seq at login: pushes carry base+1, base+2, ...
        self.seen = bytearray(256)
        self.next_cid = 1
        self.inflight: dict[int, float] = {}
        self.logged_in: defer.Deferred[int] | None = None  # fires with the login ACK's code
        self.rounds_left = 0
        self.url: str | None = None  # a node of its own (a cluster run), else the worker's

    def frames(self, payloads: list[bytes]) -> None:
        """One read's frames; each run of new pushes in increasing seq order is counted in bulk.

        A member of a big group reads dozens of pushes at a time, and the
        client must cost less than the node it measures: the run is parsed
        in one go (see :func:`_view_classes`), checked against the seen-bitmap
        and timed by C loops, not push by push.
        """
        n = len(payloads)
        # a sender's read holds its ACK among the pushes: the pushes on
        # either side are still runs
        pushes = list(map(bytes.startswith, payloads, _REPEAT_PUSH_OK))
        start = 0
        while start < n:
            try:
                stop = pushes.index(False, start)
            except ValueError:
                stop = n
            if stop - start > 1:
                run = payloads[start:stop]
                if not self._count_run(_ManyPushes(b"".join(run)).data.msg, stop - start):
                    for payload in run:
                        self.frame(payload)
            elif stop > start:
                self.frame(payloads[start])
            if stop < n:
                self.frame(payloads[stop])
            start = stop + 1

    def _count_run(self, merged: Any, n: int) -> bool:
        """Count ``n`` pushes read as one ``merged`` message; False unless new and in order.

        Their seqs are consecutive, or increasing with a few gaps (a sender's
        own device gets its group's run without the messages it sent).
        """
        seqs = list(merged.seq)
        contents = list(merged.content)
        if len(seqs) != n or len(contents) != n:  # a push without a seq or content
            return False
        base = self.base
        first = seqs[0] - base
        end = seqs[-1] - base + 1
        stamps = b"".join(contents)
        seen = self.seen
        if (
            first <= 0
            or end - first > 4 * n
            or len(stamps) != _CONTENT.size * n
            or (len(seen) > first and seen.count(1, first, end))
        ):
            return False
        consecutive = end - first == n
        if consecutive:
            if seqs != list(range(seqs[0], seqs[0] + n)):
                return False
        elif seqs != sorted(set(seqs)):  # not strictly increasing
            return False
        if end > len(seen):
            seen.extend(bytes(end - len(seen)))
        if consecutive:
            seen[first:end] = b"\x01" * n
        else:
            for seq in seqs:
                seen[seq - base] = 1
        w = self.worker
        now = _now()
        w.last_delivery = now
        w.received += n
        sent = sorted(_stamps(n).unpack(stamps)[::2])
        _count_latencies(w.push_hist, [now - t for t in sent[::-1]], 0, n)
        return True

    def run(self, buf: bytes, step: int, n: int) -> bool:
        """``n`` frames of ``step`` bytes (see ``BenchSocket.on_run``): counted at once if pushes.

        Every frame must start with the bytes of a push (checked column by
        column with slices); the headers are then overwritten with a field
        the view reads and drops (:data:`_PAD`), so the read is parsed as
        it came, with no list of payloads.
        """
        prefix = _PUSH_OK
        if step < 2 + len(prefix):
            return False
        for j in range(len(prefix)):
            if buf[2 + j :: step] != prefix[j : j + 1] * n:
                return False
        data = bytearray(buf)
        data[::step] = _PAD[:1] * n
        data[1::step] = _PAD[1:] * n
        return self._count_run(_ManyPushes(data).data.msg, n)

    def frame(self, payload: bytes) -> None:
        if payload.startswith(_PUSH_OK):
            self.pushed(_PushView(payload).data.msg)
            return
        try:
            if payload[:1] == _BATCH:  # an OutputBatch: GoChat c58f9fc, --output-batch
                for output in split_outputs(payload):
                    if output.startswith(_PUSH_OK):
                        self.pushed(_PushView(output).data.msg)
                    else:
                        self.output(_Output(output))
                return
            self.output(_Output(payload))
        except DecodeError:
            self.garbled(payload)

    def garbled(self, payload: bytes) -> None:
        """A frame that is no GoChat ``Output``: the server is not one we understand."""
        w = self.worker
        w.garbled += 1
        if self.logged_in is not None:
            d, self.logged_in = self.logged_in, None
            d.errback(NotUnderstood(f"the server's answer is not a GoChat frame: {payload[:16]!r}"))

    def login_timed_out(self, timeout: float) -> None:
        if self.logged_in is not None:
            d, self.logged_in = self.logged_in, None
            d.errback(NotUnderstood(f"no login ACK within {timeout:g} s"))

    def output(self, out: Any) -> None:
        if out.type == _CT_MESSAGE:
            self.pushed(_Push(out.data).msg)
        elif out.type == _CT_ACK:
            ack = _Ack(out.data)
            if ack.type == _AT_LOGIN:
                self.base = ack.seq
                d, self.logged_in = self.logged_in, None
                if d is not None:
                    d.callback(out.code)
                return
            self.worker.acked_one(self, ack.clientId, out.code)

    def pushed(self, msg: Any) -> None:
        w = self.worker
        i = msg.seq - self.base
        seen = self.seen
        if i >= len(seen):
            seen.extend(bytes(i + 1))
        now = _now()
        w.last_delivery = now
        if i <= 0 or seen[i]:
            w.duplicated += 1
            return
        seen[i] = 1
        w.received += 1
        content = msg.content
        if len(content) >= 12:
            w.push_hist[bucket(now - _unpack(content)[0])] += 1

    def send_message(self, receiver: int, group: bool, number: int) -> None:
        cid = self.next_cid
        self.next_cid = cid + 1
        now = _now()
        self.inflight[cid] = now
        self.sock.send(
            message_input(
                self.user_id, receiver, group, cid, _CONTENT.pack(now, number), int(now * 1000)
            )
        )

    def lost(self, reason: Any) -> None:
        self.worker.disconnected += 1
        if self.logged_in is not None:
            d, self.logged_in = self.logged_in, None
            d.errback(reason)


class Worker:
    """One process's share of a scenario."""

    def __init__(self, reactor: Any, config: dict[str, Any]) -> None:
        self.reactor = reactor
        self.config = config
        self.scenario = config["scenario"]
        self.conns: list[Conn] = []
        self.senders: list[Conn] = []
        self.failed = 0
        self.garbled = 0  # frames that were no GoChat Output
        self._give_up: str | None = None  # set once the server is not understood
        self.errors: list[str] = []
        self.disconnected = 0
        self.sent = 0
        self.acked = 0
        self.ack_errors = 0
        self.received = 0
        self.duplicated = 0
        self.expected = 0
        self.to_send = 0
        self.first_send = 0.0
        self.last_delivery = 0.0
        self.last_ack = 0.0
        self.push_hist = [0] * BUCKETS
        self.ack_hist = Histogram()
        self.finished: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._cpu0 = 0.0
        self._ticker: task.LoopingCall | None = None
        self._pacer: task.LoopingCall | None = None
        self._last_change = 0.0
        self._pace_started = 0.0
        self._last_seen = (-1, -1)
        self._build()

    def _build(self) -> None:
        cfg = self.config
        if self.scenario == "group":
            rounds = cfg["rounds"]
            senders_total = cfg["senders_total"]
            for uid, token, is_sender, *node in cfg["members"]:
                conn = Conn(self, uid, token)
                conn.url = node[0] if node else None
                self.conns.append(conn)
                # every sender's message reaches every online member but its sender
                self.expected += (senders_total - (1 if is_sender else 0)) * rounds
                if is_sender:
                    conn.rounds_left = rounds
                    self.senders.append(conn)
            self.to_send = len(self.senders) * rounds
        elif self.scenario == "single":
            messages = cfg["messages"]
            for uid, token, peer in cfg["members"]:
                conn = Conn(self, uid, token, peer)
                self.conns.append(conn)
                if peer:
                    conn.rounds_left = messages
                    self.senders.append(conn)
                else:
                    self.expected += messages
            self.to_send = len(self.senders) * messages
        else:  # connections: ``count`` clients cycling over the given users
            users = cfg["members"]
            for i in range(cfg["count"]):
                uid, token = users[i % len(users)][:2]
                self.conns.append(Conn(self, uid, token))

    # -- connect and log in ------------------------------------------------

    def connect(self) -> defer.Deferred[dict[str, Any]]:
        """Open and log in every client; fires with ``{"connected", "failed"}``."""
        raise_nofile(len(self.conns))
        sem = defer.DeferredSemaphore(CONNECT_PARALLEL)
        url = self.config["ws"]
        started = _now()
        cpu0 = cpu_seconds()

        timeout = self.config.get("timeout", 60.0)

        @defer.inlineCallbacks
        def one(conn: Conn) -> Any:
            timer = None
            try:
                if self._give_up is not None:
                    # One client found the server not understood: the rest
                    # would only wait as long again.
                    raise NotUnderstood(self._give_up)
                sock = yield open_socket(
                    self.reactor, conn.url or url, conn.frames, timeout, conn.run
                )
                conn.sock = sock
                sock.on_lost = conn.lost
                conn.logged_in = defer.Deferred()
                timer = self.reactor.callLater(timeout, conn.login_timed_out, timeout)
                sock.send(login_input(conn.token))
                code = yield conn.logged_in
                if code != 200:
                    raise RuntimeError(f"login refused with code {code}")
            except Exception as exc:
                self.failed += 1
                if isinstance(exc, NotUnderstood | HandshakeError) and self._give_up is None:
                    self._give_up = f"{exc} from {url}"
                if len(self.errors) < 5:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                if conn.sock is not None:
                    conn.sock.on_lost = None
                    conn.sock.close()
                conn.sock = None
            finally:
                if timer is not None and timer.active():
                    timer.cancel()

        def done(_: Any) -> dict[str, Any]:
            self.conns = [c for c in self.conns if c.sock is not None]
            self.senders = [c for c in self.senders if c.sock is not None]
            return {
                "connected": len(self.conns),
                "failed": self.failed,
                "errors": self.errors,
                "connect_s": _now() - started,
                "cpu_s": cpu_seconds() - cpu0,
            }

        return defer.gatherResults([sem.run(one, c) for c in self.conns]).addCallback(done)

    # -- the run -------------------------------------------------------------

    def start(self, t0: float) -> None:
        """Begin sending at wall-clock time ``t0`` (the same for every process)."""
        self._cpu0 = cpu_seconds()
        self._last_change = _now()
        self.reactor.callLater(max(0.0, t0 - _now()), self._begin, t0)
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.clock = self.reactor
        self._ticker.start(TICK, now=False)

    def _begin(self, t0: float) -> None:
        self.first_send = _now()
        cfg = self.config
        if self.scenario == "group":
            interval = cfg["interval"]
            if interval > 0:
                for r in range(cfg["rounds"]):
                    self.reactor.callLater(
                        max(0.0, t0 + r * interval - _now()), self._group_round, r
                    )
            else:
                self._group_round(0)
        elif self.scenario == "single":
            rate = cfg["rate"]
            if rate > 0:
                self._pace_started = _now()
                self._pacer = task.LoopingCall(self._pace, rate)
                self._pacer.clock = self.reactor
                self._pacer.start(0.002)
            else:
                window = cfg["window"] or cfg["messages"]
                for conn in self.senders:
                    for _ in range(min(window, conn.rounds_left)):
                        self._send_single(conn)

    def _group_round(self, number: int) -> None:
        gid = self.config["group_id"]
        for conn in self.senders:
            if conn.rounds_left > 0:
                conn.rounds_left -= 1
                self.sent += 1
                conn.send_message(gid, True, number)

    def _send_single(self, conn: Conn) -> None:
        conn.rounds_left -= 1
        self.sent += 1
        conn.send_message(conn.peer, False, self.sent)

    def _pace(self, rate: float) -> None:
        due = int((_now() - self._pace_started) * rate) - self.sent
        window = self.config["window"] or 1 << 30
        while due > 0 and self.sent < self.to_send:
            progressed = False
            for conn in self.senders:
                if due <= 0:
                    break
                if conn.rounds_left > 0 and len(conn.inflight) < window:
                    self._send_single(conn)
                    due -= 1
                    progressed = True
            if not progressed:
                break
        if self.sent >= self.to_send and self._pacer is not None and self._pacer.running:
            self._pacer.stop()

    def acked_one(self, conn: Conn, cid: int, code: int) -> None:
        sent_at = conn.inflight.pop(cid, None)
        if sent_at is None:
            return  # a second ACK for the same clientId
        now = _now()
        self.last_ack = now
        self.acked += 1
        self.ack_hist.record(now - sent_at)
        if code != 200:
            self.ack_errors += 1
        if conn.rounds_left > 0:
            cfg = self.config
            if self.scenario == "group" and cfg["interval"] <= 0:
                conn.rounds_left -= 1
                self.sent += 1
                conn.send_message(cfg["group_id"], True, cfg["rounds"] - conn.rounds_left - 1)
            elif self.scenario == "single" and cfg["rate"] <= 0:
                self._send_single(conn)

    def progress(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "duplicated": self.duplicated,
            "acked": self.acked,
            "expected": self.expected,
            "to_send": self.to_send,
        }

    def _tick(self) -> None:
        now = _now()
        seen = (self.received + self.duplicated, self.acked)
        if seen != self._last_seen:
            self._last_seen = seen
            self._last_change = now
        complete = self.received >= self.expected and self.acked >= self.to_send
        idle = now - self._last_change
        if (complete and idle >= self.config.get("settle", 0.3)) or idle >= self.config.get(
            "timeout", 60.0
        ):
            self._finish()

    def _finish(self) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self._pacer is not None and self._pacer.running:
            self._pacer.stop()
        if not self.finished.called:
            self.finished.callback(self.result())

    def result(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "received": self.received,
            "duplicated": self.duplicated,
            "sent": self.sent,
            "to_send": self.to_send,
            "acked": self.acked,
            "ack_errors": self.ack_errors,
            "disconnected": self.disconnected,
            "first_send": self.first_send,
            "last_delivery": self.last_delivery,
            "last_ack": self.last_ack,
            "ack_hist": self.ack_hist.counts,
            "push_hist": self.push_hist,
            "cpu_s": cpu_seconds() - self._cpu0,
        }

    def stop(self) -> defer.Deferred[list[tuple[bool, None]]]:
        """Close every client; fires once they are all gone."""
        waits: list[defer.Deferred[None]] = []
        for conn in self.conns:
            sock = conn.sock
            if sock is not None and sock.transport is not None:
                d: defer.Deferred[None] = defer.Deferred()
                sock.on_lost = lambda _, d=d: d.callback(None)
                waits.append(d)
                sock.close()
        return defer.DeferredList(waits)


# -- child processes --------------------------------------------------------


class ProcessWorker(ProcessProtocol):
    """The runner's handle on a worker in a child process; same calls as :class:`Worker`."""

    #: set by ``spawnProcess`` in ``__init__``
    transport: IProcessTransport

    def __init__(self, reactor: Any, config: dict[str, Any]) -> None:
        self.reactor = reactor
        self.config = config
        self._buf = b""
        self._stopping = False
        self._ready: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.finished: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._ended: defer.Deferred[None] = defer.Deferred()
        self._progress: dict[str, Any] = {
            "received": 0,
            "duplicated": 0,
            "acked": 0,
            "expected": 0,
            "to_send": 0,
        }
        env = dict(os.environ)
        self.process = reactor.spawnProcess(
            self, sys.executable, [sys.executable, "-m", "gochat.bench.worker"], env=env
        )

    def _write(self, message: dict[str, Any]) -> None:
        self.transport.write(json.dumps(message).encode() + b"\n")

    def connect(self) -> defer.Deferred[dict[str, Any]]:
        self._write({"cmd": "setup", "config": self.config})
        return self._ready

    def start(self, t0: float) -> None:
        self._write({"cmd": "start", "t0": t0})

    def progress(self) -> dict[str, Any]:
        return self._progress

    def stop(self) -> defer.Deferred[None]:
        if self._ended.called:
            return defer.succeed(None)
        self._stopping = True
        self._write({"cmd": "stop"})
        return self._ended

    def outReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's API
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            event = json.loads(line)
            kind = event.pop("event")
            if kind == "ready":
                self._ready.callback(event)
            elif kind == "progress":
                self._progress = event
            elif kind == "result":
                self.finished.callback(event)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        sys.stderr.write(data.decode(errors="replace"))

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        if not self._stopping:  # it ended before the runner asked it to
            error = RuntimeError(f"benchmark worker exited: {reason.getErrorMessage()}")
            for d in (self._ready, self.finished):
                if not d.called:
                    d.errback(error)
        self._ended.callback(None)


class _Commands(LineReceiver):
    """The child side: commands in on stdin, events out on stdout."""

    delimiter = b"\n"
    MAX_LENGTH = 256 * 1024 * 1024
    #: stdio, connected before any command arrives
    transport: ITransport

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.worker: Worker | None = None
        self._reporter: task.LoopingCall | None = None

    def emit(self, event: str, **fields: Any) -> None:
        self.transport.write(json.dumps({"event": event, **fields}).encode() + b"\n")

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        message = json.loads(line)
        cmd = message["cmd"]
        if cmd == "setup":
            self.worker = Worker(self.reactor, message["config"])
            self.worker.connect().addCallback(lambda info: self.emit("ready", **info))
        elif cmd == "start":
            assert self.worker is not None
            self.worker.start(message["t0"])
            self._reporter = task.LoopingCall(
                lambda: self.emit("progress", **self._worker().progress())
            )
            self._reporter.start(0.25)
            self.worker.finished.addCallback(self._finished)
        elif cmd == "stop":
            d = self.worker.stop() if self.worker is not None else defer.succeed(None)
            d.addBoth(lambda _: self.reactor.stop())

    def _finished(self, result: dict[str, Any]) -> None:
        if self._reporter is not None and self._reporter.running:
            self._reporter.stop()
        self.emit("progress", **self._worker().progress())
        self.emit("result", **result)

    def _worker(self) -> Worker:
        """The worker "setup" made: "start" comes after it."""
        assert self.worker is not None
        return self.worker

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if self.reactor.running:
            self.reactor.stop()  # the runner went away


def main() -> None:
    from gochat._twisted import install_lean_reactor

    install_lean_reactor()
    from twisted.internet import reactor, stdio

    stdio.StandardIO(_Commands(reactor))
    reactor.run()


if __name__ == "__main__":
    main()

"""The scenarios: set up users over HTTP, drive the workers, build the report.

Setup uses only the Go server's HTTP calls, form-encoded with the ``token``
header (``POST /register``, ``POST /group/create``), so the same run can be
pointed at the Go original.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from twisted.internet import defer, task

from gochat.bench import callgrind
from gochat.bench.stats import Histogram, format_table
from gochat.bench.worker import ProcessWorker, Worker, cpu_seconds
from gochat.client.http import HttpApi

REGISTER_PARALLEL = 16


@dataclass
class Target:
    http: str = "http://127.0.0.1:9090"
    ws: str = "ws://127.0.0.1:9091/ws"
    pid: int | None = None  # the node's process id, when it runs on this machine
    processes: int = 1
    timeout: float = 60.0  # seconds without progress before the run is called over
    password: str = "bench-password"
    progress: bool = True
    #: Create users and the group straight in this database (the node's own,
    #: on this machine) instead of over HTTP; tokens signed with setup_secret.
    setup_db: str | None = None
    setup_secret: str | None = None
    #: A cluster run: every node's WebSocket URL (members are placed round
    #: robin) and process id (node CPU is their sum).
    ws_nodes: list[str] | None = None
    pids: list[int] | None = None
    #: The node runs under callgrind with this --callgrind-out-file: count its
    #: instructions over the run (gochat.bench.callgrind).
    callgrind: str | None = None
    #: A cluster run under callgrind: each node's --callgrind-out-file, in
    #: ``pids`` order (instructions are their sum, and each node's).
    callgrind_each: list[str] | None = None


# -- the node's /proc ---------------------------------------------------------


def _stat_cpu_seconds(path: str) -> float | None:
    """utime + stime of a /proc ``stat`` file, in seconds; None once it is gone."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_cpu_seconds(pid: int | None) -> float | None:
    return None if pid is None else _stat_cpu_seconds(f"/proc/{pid}/stat")


def node_reactor_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds of the node's main thread: its reactor. The rest of
    :func:`node_cpu_seconds` is the database threads' (adbapi's pool)."""
    return None if pid is None else _stat_cpu_seconds(f"/proc/{pid}/task/{pid}/stat")


def nodes_cpu_seconds(target: Target) -> float | None:
    """CPU seconds of the target's node, or the sum over a cluster's nodes."""
    if not target.pids:
        return node_cpu_seconds(target.pid)
    times = [node_cpu_seconds(pid) for pid in target.pids]
    return None if None in times else sum(t for t in times if t is not None)


def node_rss_kb(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fanout_buckets(text: str) -> dict[float, float]:
    """``{upper bound: cumulative count}`` of ``gochat_fanout_seconds`` in Prometheus text."""
    found: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith('gochat_fanout_seconds_bucket{le="'):
            le, _, count = line[len('gochat_fanout_seconds_bucket{le="') :].partition('"} ')
            found[float(le)] = float(count)
    return found


def fanout_quantiles(
    before: dict[float, float], after: dict[float, float]
) -> tuple[float | None, float | None]:
    """p50 and p99 (as bucket upper bounds, ms) of the batches timed between two readings."""
    counts = sorted((le, n - before.get(le, 0.0)) for le, n in after.items())
    if not counts or counts[-1][1] <= 0:
        return None, None
    total = counts[-1][1]

    def at(q: float) -> float:
        return next(le for le, n in counts if n >= q * total) * 1000

    return at(0.5), at(0.99)


@defer.inlineCallbacks
def read_metrics(reactor: Any, http: str) -> Any:
    """The node's ``/metrics`` text ("" if it has none: a Go node)."""
    from twisted.web.client import Agent, readBody

    try:
        d = Agent(reactor).request(b"GET", http.rstrip("/").encode() + b"/metrics")
        response = yield bounded(d, reactor, 10.0, "GET /metrics")
        if response.code != 200:
            return ""
        body = yield readBody(response)
    except Exception:
        return ""
    return body.decode("utf-8", "replace")


@defer.inlineCallbacks
def read_fanout(reactor: Any, http: str) -> Any:
    """The node's fan-out histogram from its ``/metrics`` ({} if it has none: a Go node)."""
    text = yield read_metrics(reactor, http)
    return fanout_buckets(text) if text else {}


def metric_samples(text: str, name: str, label: str) -> dict[str, float]:
    """``{value of label: sample}`` of counter ``name`` in ``/metrics`` text."""
    out: dict[str, float] = {}
    prefix = f'{name}{{{label}="'
    for line in text.splitlines():
        if line.startswith(prefix):
            value, _, rest = line[len(prefix) :].partition('"')
            out[value] = float(rest.rsplit(" ", 1)[1])
    return out


def metric_total(text: str, name: str) -> float:
    """The sum of every sample of counter ``name`` (all its labels) in ``/metrics`` text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return ""


# -- setup over HTTP -----------------------------------------------------------


class SetupError(Exception):
    """The server's HTTP API did not do what a GoChat server does, or not in time."""


def bounded(
    d: defer.Deferred[Any], reactor: Any, timeout: float | None, what: str
) -> defer.Deferred[Any]:
    """``d`` failing with one clear :class:`SetupError` after ``timeout`` s or on any error."""
    expired = []
    timer = None
    if timeout:

        def expire() -> None:
            expired.append(True)
            d.cancel()  # the HTTP client wraps the CancelledError: remember why

        timer = reactor.callLater(timeout, expire)

    def settled(result: Any) -> Any:
        if timer is not None and timer.active():
            timer.cancel()
        return result

    def failed(failure: Any) -> Any:
        if expired:
            raise SetupError(f"{what}: no answer within {timeout:g} s")
        if failure.check(SetupError):
            return failure
        raise SetupError(f"{what}: {failure.getErrorMessage()}")

    return d.addBoth(settled).addErrback(failed)


def first_error(failure: Any) -> Any:
    """The first failure of a ``gatherResults``, not its ``FirstError`` wrapper."""
    if failure.check(defer.FirstError):
        return failure.value.subFailure
    return failure


@defer.inlineCallbacks
def register_users(
    api: HttpApi,
    count: int,
    password: str,
    out: TextIO | None = None,
    reactor: Any = None,
    timeout: float | None = None,
) -> Any:
    """Register ``count`` fresh users; fires with ``[(user_id, token), ...]``.

    With ``reactor`` and ``timeout``, a sign-up that gets no answer in time
    (a server that accepts and never replies) fails the run with a
    :class:`SetupError` instead of waiting forever.
    """
    prefix = f"b{int(time.time()):x}{random.getrandbits(16):04x}"
    sem = defer.DeferredSemaphore(REGISTER_PARALLEL)
    done = [0]
    what = f"POST {api.base_url}/register"

    inflight: set[defer.Deferred[Any]] = set()
    stopped: list[bool] = []

    @defer.inlineCallbacks
    def one(i: int) -> Any:
        if stopped:
            raise SetupError(f"{what}: stopped")
        d = api.register(f"{prefix}{i:06d}", password, f"bench{i}")
        inflight.add(d)

        def forget(result: Any) -> Any:
            inflight.discard(d)
            return result

        d.addBoth(forget)
        data = yield bounded(d, reactor, timeout, what) if reactor is not None else d
        done[0] += 1
        if out is not None and out.isatty() and (done[0] % 50 == 0 or done[0] == count):
            out.write(f"\rregistering users {done[0]:,}/{count:,}")
            out.flush()
        try:
            return int(data.get("id") or data.get("user_id")), str(data["token"])
        except (AttributeError, KeyError, TypeError, ValueError):
            raise SetupError(f"{what}: the answer has no id and token: {data!r:.200}") from None

    try:
        users = yield defer.gatherResults(
            [sem.run(one, i) for i in range(count)], consumeErrors=True
        ).addErrback(first_error)
    except Exception:
        # The run is over: queued sign-ups do not start, those in flight stop.
        stopped.append(True)
        for d in list(inflight):
            d.cancel()
        raise
    if out is not None:
        out.write(f"{chr(10) if out.isatty() else ''}registered {count:,} users\n")
    return users


# -- driving workers -------------------------------------------------------------


def make_workers(reactor: Any, configs: list[dict[str, Any]], processes: int) -> list[Any]:
    if processes <= 1:
        return [Worker(reactor, configs[0])]
    return [ProcessWorker(reactor, config) for config in configs]


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """Round-robin, so senders and receivers spread evenly over the processes."""
    return [items[i::parts] for i in range(parts)]


class ProgressBar:
    def __init__(self, out: TextIO, workers: list[Any], what: str) -> None:
        self.out = out
        self.workers = workers
        self.what = what
        self.started = time.time()
        # On a terminal the bar redraws in place; in a log, one line at the end.
        self.live = out.isatty()

    def tick(self) -> None:
        if self.live:
            self.draw()

    def draw(self) -> None:
        states = [w.progress() for w in self.workers]
        got = sum(s["received"] for s in states)
        want = sum(s["expected"] for s in states) or 1
        acked = sum(s["acked"] for s in states)
        to_send = sum(s["to_send"] for s in states)
        width = 30
        filled = min(width, int(width * got / want))
        rate = got / max(1e-9, time.time() - self.started)
        self.out.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {got:,}/{want:,} {self.what}"
            f"  {acked:,}/{to_send:,} ACKed  {rate:,.0f}/s "
        )
        self.out.flush()

    def end(self) -> None:
        self.draw()
        self.out.write("\n")
        self.out.flush()


@defer.inlineCallbacks
def drive(reactor: Any, target: Target, configs: list[dict[str, Any]]) -> Any:
    """Connect every worker, run the scenario, fire with the merged figures."""
    workers = make_workers(reactor, configs, target.processes)
    try:
        infos = yield defer.gatherResults([w.connect() for w in workers], consumeErrors=True)
        failed = sum(i["failed"] for i in infos)
        if failed:
            errors = [e for i in infos for e in i["errors"]]
            raise RuntimeError(f"{failed} clients could not connect and log in: {errors[:3]}")
        load = load_average()
        counted = _counted(target)
        for pid, _ in counted:
            callgrind.start(pid)
        fanout0 = yield read_fanout(reactor, target.http)
        node_cpu0 = nodes_cpu_seconds(target)
        each0 = [node_cpu_seconds(pid) for pid in target.pids or ()]
        reactor0 = [node_reactor_cpu_seconds(pid) for pid in target.pids or ()]
        own_cpu0 = cpu_seconds()
        wall0 = time.time()
        t0 = wall0 + 0.2
        for w in workers:
            w.start(t0)
        bar = None
        if target.progress:
            bar = ProgressBar(sys.stderr, workers, "deliveries")
            ticker = task.LoopingCall(bar.tick)
            ticker.clock = reactor
            ticker.start(0.25, now=False)
        try:
            results = yield defer.gatherResults([w.finished for w in workers], consumeErrors=True)
        finally:
            if bar is not None:
                ticker.stop()
                bar.end()
        wall = time.time() - wall0
        node_cpu1 = nodes_cpu_seconds(target)
        each1 = [node_cpu_seconds(pid) for pid in target.pids or ()]
        reactor1 = [node_reactor_cpu_seconds(pid) for pid in target.pids or ()]
        instructions_each = [callgrind.stop(pid, out) for pid, out in counted]
        fanout1 = yield read_fanout(reactor, target.http)
        fanout_p50, fanout_p99 = fanout_quantiles(fanout0, fanout1)
        pids: Sequence[int | None] = target.pids or [target.pid]
        node_rss = [node_rss_kb(pid) for pid in pids]
        client_cpu = sum(r["cpu_s"] for r in results)
        if target.processes > 1:
            client_cpu += cpu_seconds() - own_cpu0  # the runner's own share
        report = merge(results)
        report.update(
            processes=max(1, target.processes),
            client_cpu_s=client_cpu,
            client_cpu_pct=100.0 * client_cpu / wall,
            # None also when the node's /proc went away during the run
            node_cpu_s=None if node_cpu0 is None or node_cpu1 is None else node_cpu1 - node_cpu0,
            node_cpu_pct=None
            if node_cpu0 is None or node_cpu1 is None
            else 100.0 * (node_cpu1 - node_cpu0) / wall,
            # a cluster's nodes one by one (the group's home does more than the others)
            node_cpu_each_s=[
                None if a is None or b is None else round(b - a, 2)
                for a, b in zip(each0, each1, strict=True)
            ],
            # of which each node's reactor thread (the rest: its database threads)
            node_reactor_cpu_each_s=[
                None if a is None or b is None else round(b - a, 2)
                for a, b in zip(reactor0, reactor1, strict=True)
            ],
            load=load,
            # the node's resident memory at the end of the run (summed over a cluster)
            node_rss_end_kb=None if None in node_rss else sum(r for r in node_rss if r),
            # the node's own part: first message of a batch in -> its last push out
            node_fanout_p50_ms=fanout_p50,
            node_fanout_p99_ms=fanout_p99,
        )
        if instructions_each:
            instructions = sum(instructions_each)
            report.update(
                node_instructions=instructions,
                node_instructions_each=instructions_each,
                node_instructions_per_delivery=instructions / max(1, report["received"]),
            )
        return report
    finally:
        yield defer.DeferredList([w.stop() for w in workers])


def _counted(target: Target) -> list[tuple[int, str]]:
    """(process id, callgrind out file) of every node whose instructions are counted."""
    if target.callgrind_each is not None:
        if not target.pids or len(target.pids) != len(target.callgrind_each):
            raise ValueError("callgrind_each needs one process id per out file (pids)")
        return list(zip(target.pids, target.callgrind_each, strict=True))
    if target.callgrind:
        if target.pid is None:
            raise ValueError("--callgrind needs --pid (the node's process id)")
        return [(target.pid, target.callgrind)]
    return []


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the workers' counts and histograms."""
    total = {
        k: sum(r[k] for r in results)
        for k in (
            "expected",
            "received",
            "duplicated",
            "sent",
            "acked",
            "ack_errors",
            "disconnected",
        )
    }
    firsts = [r["first_send"] for r in results if r["first_send"]]
    first = min(firsts) if firsts else 0.0
    last_delivery = max(r["last_delivery"] for r in results)
    last_ack = max(r["last_ack"] for r in results)
    elapsed = max(last_delivery, last_ack) - first if first else 0.0
    ack_hist, push_hist = Histogram(), Histogram()
    for r in results:
        ack_hist.merge(r["ack_hist"])
        push_hist.merge(r["push_hist"])
    ack_span = last_ack - first if first and last_ack else 0.0
    return {
        **total,
        "lost": max(0, total["expected"] - total["received"]),
        "elapsed_ms": elapsed * 1000.0,
        "deliveries_per_s": total["received"] / elapsed if elapsed > 0 else 0.0,
        "messages_per_s": total["acked"] / ack_span if ack_span > 0 else 0.0,
        "ack_p50_ms": ack_hist.percentile(50),
        "ack_p99_ms": ack_hist.percentile(99),
        "push_p50_ms": push_hist.percentile(50),
        "push_p99_ms": push_hist.percentile(99),
    }


# -- scenarios -------------------------------------------------------------------


@defer.inlineCallbacks
def run_group(
    reactor: Any,
    target: Target,
    members: int = 500,
    online: int = 500,
    senders: int = 500,
    rounds: int = 10,
    interval: float = 1.0,
) -> Any:
    """G members, O online, S of them send one message per round, R rounds."""
    if not 2 <= members:
        raise ValueError("--members must be at least 2")
    if not 1 <= senders <= online <= members:
        raise ValueError("need 1 <= --senders <= --online <= --members")
    if rounds < 1:
        raise ValueError("--rounds must be at least 1")
    out = sys.stderr if target.progress else None
    started = time.time()
    if target.setup_db:
        from gochat.bench import setup

        if not target.setup_secret:
            raise ValueError("--setup-db needs --setup-secret (the node's token signing key)")
        users = yield setup.create_users(target.setup_db, target.setup_secret, members)
        signed_up = time.time()
        group_id = yield setup.create_group(
            target.setup_db, users[0][0], [uid for uid, _ in users[1:]]
        )
    else:
        api = HttpApi(target.http, reactor)
        users = yield register_users(api, members, target.password, out, reactor, target.timeout)
        signed_up = time.time()
        owner_token = users[0][1]
        what = f"POST {api.base_url}/group/create"
        create = api.create_group(owner_token, "bench", [uid for uid, _ in users[1:]])
        group = yield bounded(create, reactor, target.timeout, what)
        try:
            group_id = int(group["id"])
        except (KeyError, TypeError, ValueError):
            raise SetupError(f"{what}: the answer has no group id: {group!r:.200}") from None
    grouped = time.time()
    if out is not None:
        how = "in the database" if target.setup_db else "over HTTP"
        out.write(
            f"{members:,} users {how} in {signed_up - started:.1f} s,"
            f" their group in {grouped - signed_up:.1f} s\n"
        )
    # (user id, token, sends?[, its node's URL]) for each member online
    plan: list[tuple[int, str, bool] | tuple[int, str, bool, str]]
    if target.ws_nodes:
        nodes = target.ws_nodes
        plan = [
            (uid, token, i < senders, nodes[i % len(nodes)])
            for i, (uid, token) in enumerate(users[:online])
        ]
    else:
        plan = [(uid, token, i < senders) for i, (uid, token) in enumerate(users[:online])]
    parts = split(plan, max(1, target.processes))
    configs = [
        {
            "scenario": "group",
            "ws": target.ws,
            "members": part,
            "group_id": group_id,
            "rounds": rounds,
            "interval": interval,
            "senders_total": senders,
            "timeout": target.timeout,
        }
        for part in parts
    ]
    report = yield drive(reactor, target, configs)
    report = {
        "scenario": f"group {members}/{online}/{senders} x {rounds} rounds, interval {interval} s",
        "params": {
            "members": members,
            "online": online,
            "senders": senders,
            "rounds": rounds,
            "interval": interval,
            "processes": target.processes,
        },
        "setup": "database" if target.setup_db else "http",
        "sign_up_s": signed_up - started,
        "group_create_s": grouped - signed_up,
        **report,
    }
    return report


@defer.inlineCallbacks
def run_single(
    reactor: Any,
    target: Target,
    pairs: int = 100,
    messages: int = 100,
    window: int = 0,
    rate: float = 0.0,
) -> Any:
    """P pairs; in each, one user sends M messages to the other, pipelined."""
    if pairs < 1 or messages < 1:
        raise ValueError("--pairs and --messages must be at least 1")
    api = HttpApi(target.http, reactor)
    out = sys.stderr if target.progress else None
    users = yield register_users(api, 2 * pairs, target.password, out, reactor, target.timeout)
    plan = []
    for i in range(pairs):
        (a, a_token), (b, b_token) = users[2 * i], users[2 * i + 1]
        plan.append((a, a_token, b))  # sends to b
        plan.append((b, b_token, 0))  # receives
    processes = max(1, target.processes)
    pair_parts = split([plan[i : i + 2] for i in range(0, len(plan), 2)], processes)
    configs = [
        {
            "scenario": "single",
            "ws": target.ws,
            "members": [m for pair in part for m in pair],
            "messages": messages,
            "window": window,
            "rate": rate / processes,
            "timeout": target.timeout,
        }
        for part in pair_parts
    ]
    report = yield drive(reactor, target, configs)
    paced = f"{rate:g} msg/s" if rate else "as fast as possible"
    win = f"window {window}" if window else "all at once"
    return {
        "scenario": f"single {pairs} pairs x {messages} messages, {win}, {paced}",
        "params": {
            "pairs": pairs,
            "messages": messages,
            "window": window,
            "rate": rate,
            "processes": target.processes,
        },
        **report,
    }


@defer.inlineCallbacks
def run_connections(
    reactor: Any, target: Target, count: int = 20000, users: int = 100, hold: float = 2.0
) -> Any:
    """Open and log in ``count`` idle clients; the node's RSS per connection."""
    if count < 1 or users < 1:
        raise ValueError("--count and --users must be at least 1")
    api = HttpApi(target.http, reactor)
    out = sys.stderr if target.progress else None
    registered = yield register_users(
        api, min(users, count), target.password, out, reactor, target.timeout
    )
    processes = max(1, target.processes)
    shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    configs = [
        {
            "scenario": "connections",
            "ws": target.ws,
            "members": registered,
            "count": share,
            "timeout": target.timeout,
        }
        for share in shares
    ]
    workers = make_workers(reactor, configs, processes)
    load = load_average()
    rss0 = node_rss_kb(target.pid)
    cpu0, node0 = cpu_seconds(), node_cpu_seconds(target.pid)
    wall0 = time.time()
    try:
        if out is not None:
            out.write(f"opening {count:,} connections over {processes} process(es)\n")
        infos = yield defer.gatherResults([w.connect() for w in workers], consumeErrors=True)
        elapsed = time.time() - wall0
        yield task.deferLater(reactor, hold, lambda: None)  # let the node settle
        rss1 = node_rss_kb(target.pid)
        node1 = node_cpu_seconds(target.pid)
        wall = time.time() - wall0
    finally:
        yield defer.DeferredList([w.stop() for w in workers])
    connected = sum(i["connected"] for i in infos)
    client_cpu = cpu_seconds() - cpu0
    if processes > 1:
        client_cpu += sum(i["cpu_s"] for i in infos)
    report: dict[str, Any] = {
        "scenario": f"connections {count:,} idle clients ({min(users, count)} users)",
        "params": {"count": count, "users": users, "hold": hold, "processes": processes},
        "connections": connected,
        "failed": sum(i["failed"] for i in infos),
        "errors": [e for i in infos for e in i["errors"]][:5],
        "elapsed_ms": elapsed * 1000.0,
        "node_rss_before_kb": rss0,
        "node_rss_after_kb": rss1,
        "rss_per_connection_kb": (rss1 - rss0) / connected if rss0 and rss1 and connected else None,
        "processes": processes,
        "client_cpu_s": client_cpu,
        "client_cpu_pct": 100.0 * client_cpu / wall,
        "node_cpu_s": None if node0 is None or node1 is None else node1 - node0,
        "node_cpu_pct": None if node0 is None or node1 is None else 100.0 * (node1 - node0) / wall,
        "load": load,
    }
    return report


def write_report(report: dict[str, Any], json_path: str | None, out: TextIO) -> None:
    out.write(format_table(report) + "\n")
    if json_path:
        text = json.dumps(report, indent=2, sort_keys=True) + "\n"
        if json_path == "-":
            out.write(text)
        else:
            with open(json_path, "w") as f:
                f.write(text)

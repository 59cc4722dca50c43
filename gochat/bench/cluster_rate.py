"""Messages per second of a cluster against one node alone, with the same script.

    python -m gochat.bench.cluster_rate --db postgresql://postgres@127.0.0.1/gochat_bench \\
        --redis redis://127.0.0.1:6379/0 --nodes 1,2,3 --scenario group
    python -m gochat.bench.cluster_rate ... --nodes 3 --scenario single

``--nodes`` is a node count or a list of them: each count gets a cluster of
its own, one after the other, and a line of figures (``group``: deliveries/s
and node CPU per 1,000 deliveries, all nodes' CPU added up, so a cluster that
spends more per delivery than one node shows it).

``--callgrind`` (group) starts every node under valgrind's callgrind and adds
the instructions the nodes executed for the run's deliveries, in all and node
by node: a figure that does not move with the machine's load, as seconds of
CPU on a shared machine do (see ``gochat.bench.callgrind``). The nodes run
about 20 times slower, so their batches are larger than without it.

It starts ``--nodes`` real ``twistd gochat`` processes on free loopback ports
(one shared database, one Redis key prefix of its own), creates its users
directly in the database with tokens signed by the shared secret (so argon2
does not dominate the setup), connects WebSocket clients round-robin over the
nodes, and measures:

``single``  ``--pairs`` senders each pipelining ``--messages`` one-to-one
            messages to a receiver on the next node; rate = messages received
            per second, from the first send to the last push.
``group``   the seed's group scenario (``gochat-bench group``, by default
            500 members, all online, 500 senders, ``--messages`` 10 rounds at
            ``--interval`` 0) with the members placed round robin over the
            nodes and driven by the benchmark's own workers
            (``--processes``); every push is counted once, losses and
            duplicates reported.

It owns nothing but its own processes, Redis prefix and users; a number from
a busy machine is only comparable with one taken right beside it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import uuid
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, protocol, task

if TYPE_CHECKING:
    from gochat.client.ws import GoChatClient

READY = re.compile(r"GoChat node ready: .* cluster node (\w+) at (\S+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Node(protocol.ProcessProtocol):
    """A node process logging to its own file (a pipe the benchmark drains slowly would
    stall the node); ready once that file says so."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.ws = ""
        self.http = ""
        #: its callgrind out file, when it runs under callgrind
        self.callgrind: str | None = None
        self.transport: Any = None
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        self.ended.callback(None)

    @defer.inlineCallbacks
    def ready(self, reactor: Any, timeout: float = 60) -> Any:
        deadline = reactor.seconds() + timeout
        while True:
            if os.path.exists(self.log_path):
                with open(self.log_path, encoding="utf-8", errors="replace") as f:
                    if READY.search(f.read()):
                        return self
            if self.ended.called or reactor.seconds() > deadline:
                raise RuntimeError(f"node did not start; see {self.log_path}")
            yield task.deferLater(reactor, 0.1, lambda: None)


@defer.inlineCallbacks
def start_nodes(reactor: Any, args: argparse.Namespace, work: str, prefix: str, count: int) -> Any:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    nodes: list[_Node] = []
    for i in range(count):
        ws, http, rpc = _free_port(), _free_port(), _free_port()
        data_dir = os.path.join(work, f"node{i}")
        os.makedirs(data_dir)
        node = _Node(os.path.join(data_dir, "node.log"))
        node.ws = f"ws://127.0.0.1:{ws}/ws"
        argv = [
            twistd, "-n", "--pidfile=", f"--logfile={node.log_path}", "gochat",
            f"--ws=tcp:{ws}:interface=127.0.0.1",
            f"--http=tcp:{http}:interface=127.0.0.1",
            f"--rpc=tcp:{rpc}:interface=127.0.0.1",
            f"--db={args.db}", f"--redis={args.redis}", f"--redis-prefix={prefix}",
            f"--cluster-secret-file={os.path.join(work, 'cluster.secret')}",
            f"--secret-file={os.path.join(work, 'token.key')}",
            f"--data-dir={data_dir}",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOCHAT_")}
        node.http = f"http://127.0.0.1:{http}"
        exe = twistd
        if args.callgrind:
            node.callgrind = os.path.join(data_dir, "callgrind.out")
            exe = _valgrind()
            argv = [
                exe, "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={node.callgrind}", sys.executable, *argv,
            ]  # fmt: skip
        node.transport = reactor.spawnProcess(node, exe, argv, env=env, path=data_dir)
        nodes.append(node)
        if i == 0:  # the first one migrates the schema
            yield node.ready(reactor, _ready_timeout(args))
    yield defer.gatherResults([n.ready(reactor, _ready_timeout(args)) for n in nodes])
    return nodes


def _valgrind() -> str:
    path = shutil.which("valgrind")
    if path is None or shutil.which("callgrind_control") is None:
        raise SystemExit("cluster_rate: --callgrind needs valgrind and callgrind_control")
    return path


def _ready_timeout(args: argparse.Namespace) -> float:
    """Seconds a node may take to start: minutes under valgrind."""
    return 600.0 if args.callgrind else 60.0


@defer.inlineCallbacks
def make_users(args: argparse.Namespace, n: int, run: str, secret: bytes) -> Any:
    from gochat.auth import TokenSigner
    from gochat.store import Database, Store, engine_from_url

    db = Database(engine_from_url(args.db, ""))
    store = Store(db)
    yield db.migrate()
    signer = TokenSigner(secret)
    accounts = yield store.create_users(
        [(f"bench-{run}-{i}", f"b{i}", "!") for i in range(n)]  # no password login
    )
    return store, db, [a.user_id for a in accounts], [signer.issue(a) for a in accounts]


@defer.inlineCallbacks
def connect_all(nodes: list[_Node], tokens: list[str], placement: list[int]) -> Any:
    from gochat.client import connect

    clients: list[GoChatClient] = []
    for start in range(0, len(tokens), 50):  # a few dozen logins at a time
        batch = [
            connect(nodes[placement[i]].ws, tokens[i], retransmit_timeout=30.0)
            for i in range(start, min(start + 50, len(tokens)))
        ]
        clients.extend((yield defer.gatherResults(batch)))
    return clients


@defer.inlineCallbacks
def wait_until(reactor: Any, check: Any, timeout: float) -> Any:
    """True once ``check()`` holds; False when ``timeout`` passed first (pushes were lost)."""
    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            return False
        yield task.deferLater(reactor, 0.01, lambda: None)
    return True


@defer.inlineCallbacks
def run_single(
    reactor: Any, args: argparse.Namespace, nodes: list[_Node], run: str, secret: bytes
) -> Any:
    pairs = args.pairs
    store, db, ids, tokens = yield make_users(args, 2 * pairs, run, secret)
    k = len(nodes)
    # sender i on node i % k, its receiver on the next node (the same one when k == 1)
    placement = [(i % k) if i < pairs else ((i - pairs) % k + 1) % k for i in range(2 * pairs)]
    clients = yield connect_all(nodes, tokens, placement)
    senders, receivers = clients[:pairs], clients[pairs:]
    total = pairs * args.messages
    started = reactor.seconds()
    acks = []
    for s, r_id in zip(senders, ids[pairs:], strict=True):
        for m in range(args.messages):
            acks.append(s.send_text(r_id, f"m{m}"))
    yield defer.gatherResults(acks)
    acked = reactor.seconds()
    complete = yield wait_until(
        reactor, lambda: sum(len(r.received) for r in receivers) >= total, args.timeout
    )
    elapsed = reactor.seconds() - started
    pushed = sum(len(r.received) for r in receivers)
    yield close_all(clients)
    db.close()
    return {
        "scenario": "single",
        "nodes": k,
        "messages": total,
        "pushed": pushed,
        "complete": complete,
        "seconds": round(elapsed, 3),
        "messages_per_second": round(pushed / elapsed, 1),
        "acked_per_second": round(total / (acked - started), 1),
    }


@defer.inlineCallbacks
def run_group(
    reactor: Any, args: argparse.Namespace, nodes: list[_Node], run: str, secret: bytes, work: str
) -> Any:
    from gochat.bench import runner

    target = runner.Target(
        http=nodes[0].http,
        ws=nodes[0].ws,
        ws_nodes=[n.ws for n in nodes],
        pids=[n.transport.pid for n in nodes],
        processes=args.processes,
        timeout=args.timeout,
        progress=False,
        setup_db=args.db,
        setup_secret=os.path.join(work, "token.key"),
        callgrind_each=[n.callgrind or "" for n in nodes] if args.callgrind else None,
    )
    report = yield runner.run_group(
        reactor, target, args.members, args.members, args.senders, args.messages, args.interval
    )
    deliveries = report["received"]
    cpu = report["node_cpu_s"]
    return {
        "scenario": "group",
        "nodes": len(nodes),
        "members": args.members,
        "senders": args.senders,
        "rounds": args.messages,
        "deliveries": deliveries,
        "lost": report["lost"],
        "duplicated": report["duplicated"],
        "seconds": round(report["elapsed_ms"] / 1000, 3),
        "deliveries_per_second": round(report["deliveries_per_s"], 1),
        "node_cpu_s": round(cpu, 2),
        # the load tool shares the machine's cores with the nodes
        "client_cpu_s": round(report["client_cpu_s"], 2),
        "node_cpu_each_s": report["node_cpu_each_s"],
        "node_reactor_cpu_each_s": report["node_reactor_cpu_each_s"],
        "node_cpu_ms_per_1000": round(1e6 * cpu / deliveries, 3) if deliveries else None,
        "push_p50_ms": round(report["push_p50_ms"], 1),
        "push_p99_ms": round(report["push_p99_ms"], 1),
        "ack_p50_ms": round(report["ack_p50_ms"], 1),
        "ack_p99_ms": round(report["ack_p99_ms"], 1),
        **(
            {
                "node_instructions_each": report["node_instructions_each"],
                "node_instructions_per_delivery": round(report["node_instructions_per_delivery"]),
            }
            if args.callgrind
            else {}
        ),
    }


def close_all(clients: list[GoChatClient]) -> defer.Deferred[list[Any]]:
    return defer.gatherResults(
        [c.close() for c in clients if c.proto is not None], consumeErrors=True
    )


@defer.inlineCallbacks
def run_cluster(reactor: Any, args: argparse.Namespace, count: int) -> Any:
    """Start ``count`` nodes on a Redis prefix of their own, run the scenario, stop them."""
    run = uuid.uuid4().hex[:8]
    prefix = args.redis_prefix or f"gochat-bench-{run}:"
    work = tempfile.mkdtemp(prefix="gochat-bench-")
    secret = os.urandom(32).hex().encode()
    with open(os.path.join(work, "cluster.secret"), "wb") as f:
        f.write(os.urandom(24).hex().encode())
    with open(os.path.join(work, "token.key"), "wb") as f:
        f.write(secret)
    nodes = yield start_nodes(reactor, args, work, prefix, count)
    try:
        if args.scenario == "single":
            result = yield run_single(reactor, args, nodes, run, secret)
        else:
            result = yield run_group(reactor, args, nodes, run, secret, work)
        if args.scenario == "group":
            from gochat.bench.runner import metric_samples, metric_total, read_metrics

            texts = yield defer.gatherResults([read_metrics(reactor, n.http) for n in nodes])
            # messages a node sent to their group's home to be written (group affinity)
            result["forwarded"] = int(
                sum(metric_total(t, "gochat_forwarded_messages_total") for t in texts)
            )
            # node-to-node calls made, by method, all nodes together
            calls: dict[str, int] = {}
            for text in texts:
                for method, n in metric_samples(text, "gochat_rpc_calls_total", "method").items():
                    calls[method] = calls.get(method, 0) + int(n)
            result["rpc_calls"] = ",".join(f"{m}:{n}" for m, n in sorted(calls.items()))
            # transactions of messages committed, all nodes together (a round's are its batches)
            result["batches"] = int(
                sum(
                    metric_samples(t, "gochat_store_interaction_seconds_count", "name").get(
                        "commit_messages", 0
                    )
                    for t in texts
                )
            )
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for node in nodes:
            node.transport.signalProcess("TERM")
        yield defer.gatherResults([n.ended for n in nodes])
    return result


def node_counts(text: str) -> list[int]:
    """``3`` or ``1,2,3``: the cluster sizes to run, in order."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a node count or a list") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("node counts are at least 1")
    return counts


def cpu_growth(results: list[dict[str, Any]], figure: str = "node_cpu_ms_per_1000") -> float | None:
    """Node CPU per delivery (or another ``figure``) of the largest cluster over the smallest's.

    With several runs of each size, the median of each size's runs is compared.
    """
    per: dict[int, list[float]] = {}
    for r in results:
        cost = r.get(figure)
        if cost:
            per.setdefault(r["nodes"], []).append(cost)
    if len(per) < 2:
        return None
    return statistics.median(per[max(per)]) / statistics.median(per[min(per)])


def medians(results: list[dict[str, Any]]) -> list[str]:
    """One line per cluster size: the median of its runs' rate and CPU per delivery."""
    lines = []
    for count in sorted({r["nodes"] for r in results}):
        runs = [r for r in results if r["nodes"] == count]
        rate = statistics.median(r["deliveries_per_second"] for r in runs)
        costs = [r["node_cpu_ms_per_1000"] for r in runs if r.get("node_cpu_ms_per_1000")]
        cost = f"{statistics.median(costs):.3f}" if costs else "-"
        if len(costs) > 1:  # one run of a size can be far from the others
            cost += " (runs " + ", ".join(f"{c:.3f}" for c in sorted(costs)) + ")"
        counted = [
            r["node_instructions_per_delivery"]
            for r in runs
            if "node_instructions_per_delivery" in r
        ]
        lines.append(
            f"median of {len(runs)}: nodes={count} deliveries_per_second={rate:.1f}"
            f" node_cpu_ms_per_1000={cost}"
            + (
                f" node_instructions_per_delivery={statistics.median(counted):.0f}"
                if counted
                else ""
            )
        )
    return lines


@defer.inlineCallbacks
def main_async(reactor: Any, argv: list[str]) -> Any:
    args = parse(argv)
    results = []
    # the sizes in turn, --repeat times: a slow minute of the machine hits them alike
    for _ in range(args.repeat):
        for count in args.nodes:
            result = yield run_cluster(reactor, args, count)
            results.append(result)
            print(" ".join(f"{key}={value}" for key, value in result.items()), flush=True)
    if args.repeat > 1 and args.scenario == "group":
        for line in medians(results):
            print(line)
    growth = cpu_growth(results) if args.scenario == "group" else None
    if growth is not None:
        print(f"node CPU per delivery, {max(args.nodes)} nodes vs {min(args.nodes)}: x{growth:.2f}")
    counted = cpu_growth(results, "node_instructions_per_delivery") if args.callgrind else None
    if counted is not None:
        print(
            f"node instructions per delivery, {max(args.nodes)} nodes vs {min(args.nodes)}:"
            f" x{counted:.2f}"
        )
    bad = [r for r in results if r.get("lost") or r.get("duplicated") or r.get("complete") is False]
    if bad:
        raise SystemExit("cluster_rate: lost or duplicated deliveries")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", required=True, help="postgresql://… or mysql://… (shared)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--nodes", type=node_counts, default=[3], help="a count, or a list: 1,2,3")
    p.add_argument("--scenario", choices=("single", "group"), default="group")
    p.add_argument("--pairs", type=int, default=50, help="single: sender/receiver pairs")
    p.add_argument(
        "--messages", type=int, default=None, help="per sender [single: 40; group: 10 rounds]"
    )
    p.add_argument("--members", type=int, default=500, help="group: members, all online")
    p.add_argument("--senders", type=int, default=500, help="group: members that send")
    p.add_argument("--interval", type=float, default=0.0, help="group: seconds between rounds")
    p.add_argument("--processes", type=int, default=2, help="group: client processes")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for pushes")
    p.add_argument(
        "--repeat", type=int, default=1, help="run the sizes in turn this many times (medians)"
    )
    p.add_argument(
        "--callgrind",
        action="store_true",
        help="group: run the nodes under valgrind's callgrind and count their instructions",
    )
    p.add_argument(
        "--redis-prefix", default=None, help="the nodes' Redis key prefix [a new one per cluster]"
    )
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.messages is None:
        args.messages = 40 if args.scenario == "single" else 10
    if args.callgrind and args.scenario != "group":
        parser().error("--callgrind counts the group scenario only")
    return args


def main(argv: list[str] | None = None) -> None:
    task.react(main_async, [sys.argv[1:] if argv is None else argv])


if __name__ == "__main__":
    main()

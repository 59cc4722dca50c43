"""Messages per second of a cluster against one node alone, with the same script.

    python -m gochat.bench.cluster_rate --db postgresql://postgres@127.0.0.1/gochat_bench \\
        --redis redis://127.0.0.1:6379/0 --nodes 3 --scenario single
    python -m gochat.bench.cluster_rate ... --nodes 1 --scenario single

It starts ``--nodes`` real ``twistd gochat`` processes on free loopback ports
(one shared database, one Redis key prefix of its own), creates its users
directly in the database with tokens signed by the shared secret (so argon2
does not dominate the setup), connects WebSocket clients round-robin over the
nodes, and measures:

``single``  ``--pairs`` senders each pipelining ``--messages`` one-to-one
            messages to a receiver on the next node; rate = messages received
            per second, from the first send to the last push.
``group``   a group of ``--members`` spread over the nodes; ``--senders``
            members each send ``--messages``; rate = group messages per second
            until every member holds every message, and deliveries (one per
            member per message) per second.

It owns nothing but its own processes, Redis prefix and users; a number from
a busy machine is only comparable with one taken right beside it.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import tempfile
import uuid
from typing import Any

from twisted.internet import defer, protocol, task

READY = re.compile(r"GoChat node ready: .* cluster node (\w+) at (\S+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Node(protocol.ProcessProtocol):
    """A node process logging to its own file (a pipe the benchmark drains slowly would
    stall the node); ready once that file says so."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.ws = ""
        self.transport: Any = None
        self.ended: defer.Deferred = defer.Deferred()

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
def start_nodes(reactor: Any, args: argparse.Namespace, work: str, prefix: str) -> Any:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    nodes = []
    for i in range(args.nodes):
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
        node.transport = reactor.spawnProcess(node, twistd, argv, env=env, path=data_dir)
        nodes.append(node)
        if i == 0:  # the first one migrates the schema
            yield node.ready(reactor)
    yield defer.gatherResults([n.ready(reactor) for n in nodes])
    return nodes


@defer.inlineCallbacks
def make_users(args: argparse.Namespace, n: int, run: str, secret: bytes) -> Any:
    from gochat.auth import TokenSigner
    from gochat.store import Database, Store, engine_from_url

    db = Database(engine_from_url(args.db, ""))
    store = Store(db)
    yield db.migrate()
    signer = TokenSigner(secret)
    accounts = []
    for i in range(n):
        account = yield store.create_account(f"bench-{run}-{i}", f"b{i}", "!")  # no password
        accounts.append(account)
    return store, db, [a.user_id for a in accounts], [signer.issue(a) for a in accounts]


@defer.inlineCallbacks
def connect_all(nodes: list, tokens: list[str], placement: list[int]) -> Any:
    from gochat.client import connect

    clients = []
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
def run_single(reactor: Any, args: argparse.Namespace, nodes: list, run: str, secret: bytes) -> Any:
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
def run_group(reactor: Any, args: argparse.Namespace, nodes: list, run: str, secret: bytes) -> Any:
    store, db, ids, tokens = yield make_users(args, args.members, run, secret)
    gid = yield store.create_group(ids[0], "bench", ids[1:])
    k = len(nodes)
    clients = yield connect_all(nodes, tokens, [i % k for i in range(len(ids))])
    senders = clients[: args.senders]
    total = args.senders * args.messages
    started = reactor.seconds()
    sends = [s.send_text(gid, f"g{m}", group=True) for m in range(args.messages) for s in senders]
    yield defer.gatherResults(sends)
    complete = yield wait_until(reactor, lambda: all(c.seq >= total for c in clients), args.timeout)
    elapsed = reactor.seconds() - started
    yield close_all(clients)
    db.close()
    return {
        "scenario": "group",
        "nodes": k,
        "members": len(ids),
        "messages": total,
        "complete": complete,
        "seconds": round(elapsed, 3),
        "messages_per_second": round(total / elapsed, 1),
        "deliveries_per_second": round(total * len(ids) / elapsed, 1),
    }


def close_all(clients: list) -> defer.Deferred:
    return defer.gatherResults(
        [c.close() for c in clients if c.proto is not None], consumeErrors=True
    )


@defer.inlineCallbacks
def main_async(reactor: Any, argv: list[str]) -> Any:
    args = parser().parse_args(argv)
    run = uuid.uuid4().hex[:8]
    prefix = f"gochat-bench-{run}:"
    work = tempfile.mkdtemp(prefix="gochat-bench-")
    secret = os.urandom(32).hex().encode()
    with open(os.path.join(work, "cluster.secret"), "wb") as f:
        f.write(os.urandom(24).hex().encode())
    with open(os.path.join(work, "token.key"), "wb") as f:
        f.write(secret)
    nodes = yield start_nodes(reactor, args, work, prefix)
    try:
        scenario = run_single if args.scenario == "single" else run_group
        result = yield scenario(reactor, args, nodes, run, secret)
        load = os.getloadavg()
        result["load_average"] = [round(x, 2) for x in load]
        print(" ".join(f"{key}={value}" for key, value in result.items()))
    finally:
        for node in nodes:
            node.transport.signalProcess("TERM")
        yield defer.gatherResults([n.ended for n in nodes])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", required=True, help="postgresql://… or mysql://… (shared)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--scenario", choices=("single", "group"), default="single")
    p.add_argument("--pairs", type=int, default=50, help="single: sender/receiver pairs")
    p.add_argument("--messages", type=int, default=40, help="messages per sender")
    p.add_argument("--members", type=int, default=500, help="group: members")
    p.add_argument("--senders", type=int, default=5, help="group: members that send")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for pushes")
    return p


def main(argv: list[str] | None = None) -> None:
    task.react(main_async, [sys.argv[1:] if argv is None else argv])


if __name__ == "__main__":
    main()

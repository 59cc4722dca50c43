"""``gochat-bench group|single|connections|capacity|standard|cluster``: the command line."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from typing import Any

from twisted.internet import defer, task

from gochat.bench import runner
from gochat.bench.stats import capacity, format_capacity, node_qps_from_result


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http", default="http://127.0.0.1:9090", help="the node's HTTP API URL")
    p.add_argument("--ws", default="ws://127.0.0.1:9091/ws", help="the node's WebSocket URL")
    p.add_argument(
        "--processes", type=int, default=1, help="client processes to spread the clients over"
    )
    p.add_argument("--pid", type=int, help="the node's process id (CPU and RSS from /proc)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-': stdout)")
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds without progress that end the run"
    )
    p.add_argument("--password", default="bench-password", help="password of the bench users")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--callgrind",
        metavar="OUT",
        help="the node runs under valgrind --tool=callgrind --instr-atstart=no"
        " --callgrind-out-file=OUT: count its instructions over the run (needs --pid)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gochat-bench", description="The GoChat load test (压测) against a running node."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("group", help="group chat: G members, O online, S senders, R rounds")
    _common(g)
    g.add_argument("--members", type=int, default=500)
    g.add_argument("--online", type=int, default=500)
    g.add_argument("--senders", type=int, default=500)
    g.add_argument("--rounds", type=int, default=10)
    g.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between rounds; 0: each sender sends its next as soon as the last is ACKed",
    )
    g.add_argument(
        "--setup-db",
        metavar="URL",
        help="create the users and group straight in the node's database (sqlite:PATH, ...)",
    )
    g.add_argument(
        "--setup-secret", metavar="PATH", help="with --setup-db: the node's token signing key"
    )

    s = sub.add_parser("single", help="one-to-one chat, pipelined")
    _common(s)
    s.add_argument("--pairs", type=int, default=100)
    s.add_argument("--messages", type=int, default=100, help="messages each sender sends")
    s.add_argument(
        "--window", type=int, default=0, help="unACKed messages per sender (0: all at once)"
    )
    s.add_argument("--rate", type=float, default=0.0, help="total messages/s (0: no pacing)")

    c = sub.add_parser("connections", help="idle logged-in clients; the node's RSS per connection")
    _common(c)
    c.add_argument("--count", type=int, default=20000)
    c.add_argument("--users", type=int, default=100, help="distinct users the clients log in as")
    c.add_argument("--hold", type=float, default=2.0, help="seconds to hold before reading RSS")

    k = sub.add_parser("capacity", help="peak QPS = PV x 80%% / (86400 x 20%%), and nodes needed")
    k.add_argument("--pv", type=float, required=True, help="page views (messages) per day")
    source = k.add_mutually_exclusive_group(required=True)
    source.add_argument("--node-qps", type=float, help="measured single-node QPS")
    source.add_argument("--from", dest="from_json", metavar="PATH", help="a --json result")
    k.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-': stdout)")

    st = sub.add_parser(
        "standard", help="start a local node and run the standard scenarios (tox -e bench)"
    )
    st.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    st.add_argument("--processes", type=int, default=2)
    st.add_argument("--json-dir", metavar="DIR", help="write each scenario's JSON here")
    st.add_argument("--pv", type=float, default=30_000_000, help="PV for the capacity line")
    st.add_argument("--no-progress", action="store_true")
    # main() hands "cluster ..." to cluster_rate before parsing: listed for --help only
    sub.add_parser(
        "cluster",
        help="1, 2, 3 nodes on PostgreSQL + Redis: node CPU per delivery"
        " (its options: gochat-bench cluster --help)",
        add_help=False,
    )
    return parser


def _target(args: argparse.Namespace) -> runner.Target:
    return runner.Target(
        http=args.http,
        ws=args.ws,
        pid=args.pid,
        processes=args.processes,
        timeout=args.timeout,
        password=args.password,
        progress=not args.no_progress,
        setup_db=getattr(args, "setup_db", None),
        setup_secret=getattr(args, "setup_secret", None),
        callgrind=args.callgrind,
    )


def run_capacity(args: argparse.Namespace, out: Any = sys.stdout) -> dict[str, Any]:
    if args.from_json:
        with open(args.from_json) as f:
            node_qps = node_qps_from_result(json.load(f))
    else:
        node_qps = args.node_qps
    result = capacity(args.pv, node_qps)
    out.write(format_capacity(result) + "\n")
    if args.json:
        text = json.dumps(result, indent=2) + "\n"
        if args.json == "-":
            out.write(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    return result


@defer.inlineCallbacks
def run_scenario(reactor: Any, args: argparse.Namespace) -> Any:
    target = _target(args)
    if args.command == "group":
        report = yield runner.run_group(
            reactor, target, args.members, args.online, args.senders, args.rounds, args.interval
        )
    elif args.command == "single":
        report = yield runner.run_single(
            reactor, target, args.pairs, args.messages, args.window, args.rate
        )
    else:
        report = yield runner.run_connections(reactor, target, args.count, args.users, args.hold)
    runner.write_report(report, args.json, sys.stdout)
    return report


STANDARD = [
    # (name, command line after the subcommand, quick variant)
    ("group", ["--members", "500", "--online", "500", "--senders", "500", "--rounds", "10",
               "--interval", "0"],
     ["--members", "50", "--online", "50", "--senders", "50", "--rounds", "3", "--interval", "0"]),
    ("single", ["--pairs", "100", "--messages", "1000"],
     ["--pairs", "10", "--messages", "50"]),
    ("single", ["--pairs", "10", "--messages", "500", "--rate", "1000"],
     ["--pairs", "5", "--messages", "40", "--rate", "200"]),
    ("connections", ["--count", "20000"], ["--count", "500"]),
    # the big group: users and group made in the node's database (--setup-db)
    ("group", ["--members", "10000", "--online", "2000", "--senders", "50", "--rounds", "10",
               "--interval", "1", "--setup-db"],
     ["--members", "1000", "--online", "200", "--senders", "10", "--rounds", "3",
      "--interval", "1", "--setup-db"]),
]  # fmt: skip


def connections_that_fit(wanted: int) -> int:
    """As many of ``wanted`` as the node's open-file limit leaves room for.

    The node needs one descriptor per connection plus a few dozen of its own
    (listening ports, database files, the reactor); an unprivileged process
    cannot go past the hard limit it inherits.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard - 100 >= wanted:
        return wanted
    fit = max(1, hard - 100)
    sys.stderr.write(
        f"the open-file hard limit is {hard}: running {fit} connections instead of {wanted}\n"
    )
    return fit


@defer.inlineCallbacks
def run_standard(reactor: Any, args: argparse.Namespace) -> Any:
    """Each scenario against a local node; the connections one gets a fresh node."""
    from gochat.bench.node import start_local_node

    parser = build_parser()
    reports = []
    node = None
    try:
        for index, (name, full, quick) in enumerate(STANDARD):
            if node is None or name == "connections" or "--setup-db" in full:
                if node is not None:
                    node.stop()
                node = start_local_node()
                sys.stderr.write(f"node pid {node.pid}: {node.http} {node.ws} ({node.data_dir})\n")
            argv = [name, *(quick if args.quick else full)]
            if name == "connections" and not args.quick:
                argv[argv.index("--count") + 1] = str(connections_that_fit(20000))
            if "--setup-db" in argv:
                db = "sqlite:" + os.path.join(node.data_dir, "gochat.db")
                secret = os.path.join(node.data_dir, "secret.key")
                argv[argv.index("--setup-db") + 1 : argv.index("--setup-db") + 1] = [db]
                argv += ["--setup-secret", secret]
            argv += ["--http", node.http, "--ws", node.ws, "--pid", str(node.pid)]
            argv += ["--processes", str(args.processes)]
            if args.json_dir:
                os.makedirs(args.json_dir, exist_ok=True)
                argv += ["--json", os.path.join(args.json_dir, f"{index}-{name}.json")]
            if args.no_progress:
                argv.append("--no-progress")
            sys.stdout.write(f"\n$ gochat-bench {' '.join(argv)}\n")
            report = yield run_scenario(reactor, parser.parse_args(argv))
            reports.append(report)
    finally:
        if node is not None:
            node.stop()
    group = reports[0]
    sys.stdout.write(f"\n$ gochat-bench capacity --pv {args.pv:.0f} --node-qps "
                     f"{group['deliveries_per_s']:.0f}\n")  # fmt: skip
    sys.stdout.write(format_capacity(capacity(args.pv, round(group["deliveries_per_s"]))) + "\n")
    bad = [
        r["scenario"] for r in reports if r.get("lost") or r.get("duplicated") or r.get("failed")
    ]
    if bad:
        raise SystemExit(f"gochat-bench: losses, duplicates or failures in: {'; '.join(bad)}")
    return reports


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cluster"]:  # its own options: python -m gochat.bench.cluster_rate --help
        from gochat.bench import cluster_rate

        cluster_rate.main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    if args.command == "capacity":
        try:
            run_capacity(args)
        except (ValueError, OSError) as exc:
            raise SystemExit(f"gochat-bench: {exc}") from None
        return

    def run(reactor: Any) -> defer.Deferred[Any]:
        if args.command == "standard":
            d = run_standard(reactor, args)
        else:
            d = run_scenario(reactor, args)

        def failed(failure: Any) -> None:
            if failure.check(SystemExit):
                raise failure.value
            sys.stderr.write(f"gochat-bench: {failure.getErrorMessage()}\n")
            raise SystemExit(1)

        return d.addErrback(failed)

    task.react(run)


if __name__ == "__main__":
    main()

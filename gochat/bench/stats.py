"""Latency histograms, the capacity formula and the report (table and JSON)."""

from __future__ import annotations

import math
from typing import Any

#: Buckets per natural-log unit of microseconds: about 2.5 % wide, so a
#: percentile read from the histogram is within 2.5 % of the exact one, and
#: histograms from several processes add up.
RESOLUTION = 40
BUCKETS = 1024


def bucket(seconds: float) -> int:
    """The bucket of a latency in a :class:`Histogram`'s counts."""
    us = seconds * 1e6
    b = int(math.log(us + 1.0) * RESOLUTION) if us > 0 else 0
    return b if b < BUCKETS else BUCKETS - 1


class Histogram:
    """Log-bucketed latencies, cheap to record and to merge across processes."""

    __slots__ = ("counts",)

    def __init__(self, counts: list[int] | None = None) -> None:
        self.counts = list(counts) if counts is not None else [0] * BUCKETS

    def record(self, seconds: float) -> None:
        self.counts[bucket(seconds)] += 1

    def merge(self, other: Histogram | list[int]) -> None:
        counts = other.counts if isinstance(other, Histogram) else other
        for i, c in enumerate(counts):
            if c:
                self.counts[i] += c

    @property
    def total(self) -> int:
        return sum(self.counts)

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile in milliseconds (``None`` when empty)."""
        total = self.total
        if not total:
            return None
        rank = max(1, math.ceil(total * p / 100.0))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                # the middle of the bucket, back from log space
                return (math.exp((i + 0.5) / RESOLUTION) - 1.0) / 1000.0
        return None  # pragma: no cover - rank <= total


def peak_qps(pv: float) -> float:
    """The seed's formula: 80 % of the daily page views arrive in 20 % of the day."""
    return pv * 0.8 / (86400 * 0.2)


def capacity(pv: float, node_qps: float) -> dict[str, Any]:
    """Peak QPS and the nodes needed to serve it, with the working as text."""
    if pv <= 0:
        raise ValueError("--pv must be positive")
    if node_qps <= 0:
        raise ValueError("the single-node QPS must be positive")
    peak = peak_qps(pv)
    nodes = math.ceil(round(peak / node_qps, 9))
    working = [
        f"peak QPS = PV x 80% / (86400 x 20%) = {pv:,.0f} x 0.8 / 17280 = {peak:,.1f}",
        f"nodes    = peak QPS / single-node QPS = {peak:,.1f} / {node_qps:,.1f}"
        f" = {peak / node_qps:,.2f} -> {nodes}",
    ]
    return {"pv": pv, "peak_qps": peak, "node_qps": node_qps, "nodes": nodes, "working": working}


def node_qps_from_result(result: dict[str, Any]) -> float:
    """The single-node QPS a benchmark result measured (deliveries/s for a group run)."""
    for key in ("deliveries_per_s", "messages_per_s"):
        value = result.get(key)
        if value:
            return float(value)
    raise ValueError("the result holds no deliveries_per_s or messages_per_s")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def format_table(report: dict[str, Any]) -> str:
    """The end-of-run table a reader compares between runs."""
    rows: list[tuple[str, str]] = [("scenario", report["scenario"])]
    if "expected" in report:
        rows += [
            ("expected deliveries", f"{report['expected']:,}"),
            ("received", f"{report['received']:,}"),
            ("lost", f"{report['lost']:,}"),
            ("duplicated", f"{report['duplicated']:,}"),
            ("messages sent / ACKed", f"{report['sent']:,} / {report['acked']:,}"),
            ("ACK errors", f"{report['ack_errors']:,}"),
            ("elapsed (first send -> last delivery)", f"{report['elapsed_ms']:,.0f} ms"),
            ("deliveries/s", f"{report['deliveries_per_s']:,.0f}"),
            ("messages/s (ACKed)", f"{report['messages_per_s']:,.0f}"),
            ("ACK latency p50 / p99", f"{_ms(report['ack_p50_ms'])} / {_ms(report['ack_p99_ms'])}"),
            (
                "send->push latency p50 / p99",
                f"{_ms(report['push_p50_ms'])} / {_ms(report['push_p99_ms'])}",
            ),
        ]
    if report.get("node_fanout_p99_ms") is not None:
        rows.append(
            (
                "node fan-out p50 / p99 (its /metrics)",
                f"<= {report['node_fanout_p50_ms']:g} ms / <= {report['node_fanout_p99_ms']:g} ms",
            )
        )
    if report.get("setup"):
        rows.append(
            (
                f"set-up ({report['setup']})",
                f"users {report['sign_up_s']:.1f} s, group {report['group_create_s']:.2f} s",
            )
        )
    if report.get("node_rss_end_kb") is not None:
        rows.append(("node RSS at the end", f"{report['node_rss_end_kb'] / 1024:,.1f} MB"))
    if "connections" in report:
        rows += [
            ("connections logged in", f"{report['connections']:,}"),
            ("failed", f"{report['failed']:,}"),
            ("connect + login time", f"{report['elapsed_ms']:,.0f} ms"),
        ]
        if report.get("node_rss_before_kb") is not None:
            rows += [
                (
                    "node RSS before / after",
                    f"{report['node_rss_before_kb']:,} KB / {report['node_rss_after_kb']:,} KB",
                ),
                ("node RSS per connection", f"{report['rss_per_connection_kb']:.2f} KB"),
            ]
    rows.append(
        (
            "client CPU",
            f"{report['client_cpu_s']:.1f} s over {report['processes']} process(es)"
            f" = {report['client_cpu_pct']:.0f}% of one core",
        )
    )
    if report.get("node_cpu_s") is not None:
        rows.append(
            (
                "node CPU",
                f"{report['node_cpu_s']:.1f} s = {report['node_cpu_pct']:.0f}% of one core",
            )
        )
    if report.get("node_instructions") is not None:
        rows.append(
            (
                "node instructions",
                f"{report['node_instructions']:,}"
                f" = {report['node_instructions_per_delivery']:,.0f} per delivery (callgrind)",
            )
        )
    if report.get("load"):
        rows.append(("load average before", report["load"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def format_capacity(result: dict[str, Any]) -> str:
    return "\n".join(result["working"])

"""Prometheus metrics of a node, defined once and shared by every part.

Parts import the metric they update; ``/metrics`` serves the registry.
A custom registry keeps several nodes in one test process apart.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
#: process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …
PROCESS = ProcessCollector(registry=REGISTRY)

STORE_LATENCY = Histogram(
    "gochat_store_interaction_seconds",
    "Time spent in a named database interaction",
    ["name"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
STORE_ERRORS = Counter(
    "gochat_store_errors_total",
    "Failed database interactions (not refusals a client caused: a taken phone, an unknown id)",
    ["name"],
    registry=REGISTRY,
)
CONNECTIONS = Gauge("gochat_connections", "Open WebSocket connections", registry=REGISTRY)
LOGINS = Counter("gochat_logins_total", "Login attempts by result", ["result"], registry=REGISTRY)
UPSTREAM = Counter(
    "gochat_upstream_messages_total", "Upstream messages by ACK code", ["code"], registry=REGISTRY
)
ACK_LATENCY = Histogram(
    "gochat_ack_latency_seconds",
    "From receiving an upstream message to sending its ACK",
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
FANOUT_LATENCY = Histogram(
    "gochat_fanout_seconds",
    "From receiving the first message of a committed batch to its last push handed to the"
    " connections (written at the end of that reactor turn; a big block's as it is built)",
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5),
)
PUSHES = Counter("gochat_pushes_total", "Pushes by where they went", ["where"], registry=REGISTRY)
HEARTBEAT_CLOSES = Counter(
    "gochat_heartbeat_closes_total", "Connections closed for idleness", registry=REGISTRY
)
REFUSED = Counter(
    "gochat_refused_total",
    "Frames, requests and connections refused to protect the node, by reason",
    ["reason"],
    registry=REGISTRY,
)
PUSH_RETRANSMITS = Counter(
    "gochat_push_retransmits_total",
    "Pushes sent again to push_ack devices that had not acknowledged them",
    registry=REGISTRY,
)
PUSHES_ABANDONED = Counter(
    "gochat_pushes_abandoned_total",
    "Unacknowledged pushes the node stopped retransmitting (the device syncs), by reason",
    ["reason"],
    registry=REGISTRY,
)
UNACKED_PUSHES = Gauge(
    "gochat_unacked_pushes", "Pushes held for retransmission, node-wide", registry=REGISTRY
)
PUSH_WINDOWS = Gauge(
    "gochat_push_windows", "Connections with unacknowledged pushes", registry=REGISTRY
)
RPC_CALLS = Counter(
    "gochat_rpc_calls_total",
    "Node-to-node calls made, by method",
    ["method"],
    registry=REGISTRY,
)
RPC_FAILURES = Counter(
    "gochat_rpc_failures_total",
    "Node-to-node calls that failed, by method",
    ["method"],
    registry=REGISTRY,
)
RPC_SERVED = Counter(
    "gochat_rpc_served_total",
    "Node-to-node calls this node answered, by method",
    ["method"],
    registry=REGISTRY,
)
FORWARDED = Counter(
    "gochat_forwarded_messages_total",
    "Group messages sent to their group's home node to be written there (cluster), by outcome:"
    " answered there, or written here after the call failed",
    ["outcome"],
    registry=REGISTRY,
)
RPC_REFUSED = Counter(
    "gochat_rpc_refused_logins_total",
    "Peers refused at the PB login (wrong or missing cluster secret)",
    registry=REGISTRY,
)
PRESENCE_ERRORS = Counter(
    "gochat_presence_errors_total", "Redis presence operations that failed", registry=REGISTRY
)

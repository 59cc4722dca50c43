"""The node's options: parsed, taken from ``GOCHAT_*`` variables, validated.

Defaults follow the Go server (DESIGN.md section 2). An invalid value stops
the start with one line (:class:`ConfigError`), never a traceback.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, cast

from twisted.python import usage

from gochat.store.engines import DatabaseURLError, engine_from_url


class ConfigError(usage.UsageError):
    """An option has a value the node cannot run with."""


def env_name(option: str) -> str:
    return "GOCHAT_" + option.upper().replace("-", "_")


@dataclass
class Config:
    http: str = "tcp:9090"
    ws: str = "tcp:9091"
    rpc: str = "tcp:9092:interface=127.0.0.1"
    advertise: str | None = None
    db: str | None = None
    redis: str | None = None
    redis_prefix: str = "gochat:"
    presence_lease: float = 15.0
    data_dir: str = "./gochat-data"
    secret_file: str | None = None
    cluster_secret_file: str | None = None
    heartbeat_timeout: float = 600.0
    heartbeat_interval: float = 60.0
    login_timeout: float = 10.0
    sync_limit: int = 50
    max_frame: int = 64 * 1024
    token_ttl: float = 7 * 86400.0
    max_connections: int = 20000
    max_unauthenticated: int = 1000
    max_send_buffer: int = 4 * 1024 * 1024
    msg_rate: float = 1000.0
    msg_burst: int = 5000
    auth_rate: float = 20.0
    auth_burst: int = 10
    register_rate: float = 600.0
    register_burst: int = 1000
    cluster_ca: str | None = None
    cluster_cert: str | None = None
    cluster_key: str | None = None
    push_retry_timeout: float = 5.0
    push_retries: int = 3
    push_window: int = 512
    log_format: str = "text"
    log_file: str | None = None
    max_unauthenticated_per_address: int = 100
    http_read_timeout: float = 10.0
    hash_threads: int = 2
    cache_users: int = 100_000
    cache_group_members: int = 200_000
    output_batch: bool = False
    legacy_jwt_key_file: str | None = None

    @property
    def db_url(self) -> str:
        return self.db or "sqlite:" + os.path.join(self.data_dir, "gochat.db")

    @property
    def cluster(self) -> bool:
        """Cluster mode: presence in Redis, PB between nodes, a shared server database."""
        return self.redis is not None

    @property
    def secret_path(self) -> str:
        return self.secret_file or os.path.join(self.data_dir, "secret.key")

    @property
    def legacy_jwt_key_path(self) -> str | None:
        """GoChat's sign key: the option, else the one ``gochat-admin import-gochat`` left."""
        if self.legacy_jwt_key_file:
            return self.legacy_jwt_key_file
        default = os.path.join(self.data_dir, "gochat-jwt.key")
        return default if os.path.exists(default) else None


_PARAMS = [
    ["http", None, Config.http, "HTTP API endpoint (Twisted endpoint description)"],
    ["ws", None, Config.ws, "WebSocket gateway endpoint, path /ws"],
    ["rpc", None, Config.rpc, "Perspective Broker endpoint for other nodes (with --redis)"],
    ["advertise", None, None, "host:port other nodes use to reach --rpc"],
    ["db", None, None, "sqlite:PATH, postgresql://… or mysql://… [sqlite:DATA-DIR/gochat.db]"],
    ["redis", None, None, "redis://host:port/db; turns on cluster mode"],
    ["redis-prefix", None, Config.redis_prefix, "prefix of every Redis key of this cluster"],
    ["presence-lease", None, "15", "seconds a node's presence outlives its last renewal"],
    ["data-dir", None, Config.data_dir, "directory for the SQLite file and generated secrets"],
    ["secret-file", None, None, "token signing key [generated in DATA-DIR/secret.key]"],
    ["cluster-secret-file", None, None, "credential nodes use to log in to each other"],
    ["heartbeat-timeout", None, "600", "seconds of silence before a connection is closed"],
    ["heartbeat-interval", None, "60", "seconds between heartbeat checks"],
    ["login-timeout", None, "10", "seconds a connection has to log in"],
    ["sync-limit", None, "50", "messages per sync page"],
    ["max-frame", None, "65536", "largest WebSocket message in bytes"],
    ["token-ttl", None, "604800", "seconds a token from /register or /login stays valid"],
    ["max-connections", None, "20000", "WebSocket connections per node; more are refused (503)"],
    ["max-unauthenticated", None, "1000", "WebSocket connections not yet logged in (503 past it)"],
    [
        "max-send-buffer",
        None,
        "4194304",
        "bytes queued to a non-reading client before it is dropped",
    ],
    ["msg-rate", None, "1000", "frames per second a connection may send (1013 past it)"],
    ["msg-burst", None, "5000", "frames a connection may send at once above --msg-rate"],
    ["auth-rate", None, "20", "/login attempts a minute per address, charged before the check"],
    ["auth-burst", None, "10", "/login attempts an address may have at once; success refunds"],
    ["register-rate", None, "600", "/register calls per minute per client address (429)"],
    ["register-burst", None, "1000", "/register calls an address may make at once"],
    ["cluster-ca", None, None, "CA certificate (PEM): PB between nodes over TLS, peers verified"],
    ["cluster-cert", None, None, "this node's certificate (PEM) signed by --cluster-ca"],
    ["cluster-key", None, None, "private key (PEM) of --cluster-cert [in the same file]"],
    ["push-retry-timeout", None, "5", "seconds a push_ack device has to acknowledge a push"],
    ["push-retries", None, "3", "resends of an unacknowledged push before the device must sync"],
    ["push-window", None, "512", "unacknowledged pushes kept per push_ack device"],
    ["log-format", None, "text", "text (twistd's own) or json (one JSON object per line)"],
    ["log-file", None, None, "with --log-format json: file to append to [stdout]"],
    [
        "max-unauthenticated-per-address",
        None,
        "100",
        "connections one address may hold waiting to log in once the pool is 3/4 full (503)",
    ],
    [
        "http-read-timeout",
        None,
        "10",
        "seconds an HTTP client has to send a whole request (headers and body)",
    ],
    ["hash-threads", None, "2", "threads hashing passwords (19 MiB each while hashing)"],
    ["cache-users", None, "100000", "users whose seq and existence the store keeps in memory"],
    ["cache-group-members", None, "200000", "group member ids the store keeps in memory"],
    [
        "legacy-jwt-key-file",
        None,
        None,
        "GoChat's jwt.sign_key: its tokens stay valid until exp [DATA-DIR/gochat-jwt.key]",
    ],
]

_FLAGS = [
    ["output-batch", None, "write every WebSocket frame as an OutputBatch (GoChat c58f9fc)"],
]
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _long_names(table: list[list[str | None]]) -> list[str]:
    """The long names of an ``optParameters``/``optFlags`` table (only short names may be None)."""
    return [cast(str, row[0]) for row in table]


class Options(usage.Options):
    """``twistd gochat`` options; every one also reads ``GOCHAT_<NAME>``."""

    synopsis = "[options]"
    longdesc = "Run a GoChat node: HTTP API, WebSocket gateway and storage."
    optParameters = _PARAMS
    optFlags = _FLAGS

    def __init__(self) -> None:
        super().__init__()
        for name in _long_names(_PARAMS):
            value = os.environ.get(env_name(name))
            if value is not None and value != "":
                self[name] = value
        self._flag_env: dict[str, str] = {}
        for name in _long_names(_FLAGS):
            value = os.environ.get(env_name(name))
            if value is not None:
                self._flag_env[name] = value
        self.config: Config | None = None

    def postOptions(self) -> None:  # noqa: N802
        try:
            _flags_from_env(self, self._flag_env)
        except ConfigError as exc:
            sys.stderr.write(f"gochat: error: {exc}\n")
            raise SystemExit(2) from None
        self._post_options()

    def _post_options(self) -> None:
        try:
            self.config = build_config(self)
        except ConfigError as exc:
            # One clear line rather than twistd's whole usage text.
            sys.stderr.write(f"gochat: error: {exc}\n")
            raise SystemExit(2) from None
        parent = getattr(self, "parent", None)
        if self.config.log_format == "json" and parent is not None and not parent.get("logger"):
            # twistd resolves --logger after its subcommand's options, so the
            # JSON observer can be chosen here (see gochat.logs).
            from gochat import logs

            logs.use_json(self.config.log_file)
            parent["logger"] = "gochat.logs.json_observer"


def _flags_from_env(opts: dict[str, Any], env: dict[str, str]) -> None:
    """``GOCHAT_OUTPUT_BATCH=1`` turns a flag on (unless given on the command line)."""
    for name, raw in env.items():
        value = raw.strip().lower()
        if value in _TRUE:
            opts[name] = 1
        elif value not in _FALSE:
            raise ConfigError(f"{env_name(name)}: {raw!r} is not one of 1/0, true/false, on/off")


def _number(
    opts: dict[str, Any], name: str, kind: type[int] | type[float], minimum: float
) -> float:
    raw = opts[name]
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"--{name}: {raw!r} is not {what}") from None
    if value < minimum or value != value:  # NaN check
        raise ConfigError(f"--{name}: must be at least {minimum}, got {raw!r}")
    return value


def _endpoint(opts: dict[str, Any], name: str) -> str:
    from twisted.internet import endpoints, reactor

    desc: str = opts[name]
    try:
        endpoints.serverFromString(reactor, desc)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"--{name}: {desc!r} is not an endpoint description ({exc})") from None
    return desc


def build_config(opts: dict[str, Any]) -> Config:
    """Validate parsed options into a :class:`Config`; raises :class:`ConfigError`."""
    config = Config(
        http=_endpoint(opts, "http"),
        ws=_endpoint(opts, "ws"),
        rpc=_endpoint(opts, "rpc"),
        advertise=opts["advertise"] or None,
        db=opts["db"] or None,
        redis=opts["redis"] or None,
        redis_prefix=opts["redis-prefix"],
        presence_lease=_number(opts, "presence-lease", float, 0.5),
        data_dir=opts["data-dir"],
        secret_file=opts["secret-file"] or None,
        cluster_secret_file=opts["cluster-secret-file"] or None,
        heartbeat_timeout=_number(opts, "heartbeat-timeout", float, 1),
        heartbeat_interval=_number(opts, "heartbeat-interval", float, 0.1),
        login_timeout=_number(opts, "login-timeout", float, 0.1),
        sync_limit=int(_number(opts, "sync-limit", int, 1)),
        max_frame=int(_number(opts, "max-frame", int, 256)),
        token_ttl=_number(opts, "token-ttl", float, 1),
        max_connections=int(_number(opts, "max-connections", int, 1)),
        max_unauthenticated=int(_number(opts, "max-unauthenticated", int, 1)),
        max_send_buffer=int(_number(opts, "max-send-buffer", int, 64 * 1024)),
        msg_rate=_number(opts, "msg-rate", float, 0.1),
        msg_burst=int(_number(opts, "msg-burst", int, 1)),
        auth_rate=_number(opts, "auth-rate", float, 0.1),
        auth_burst=int(_number(opts, "auth-burst", int, 1)),
        register_rate=_number(opts, "register-rate", float, 0.1),
        register_burst=int(_number(opts, "register-burst", int, 1)),
        cluster_ca=opts["cluster-ca"] or None,
        cluster_cert=opts["cluster-cert"] or None,
        cluster_key=opts["cluster-key"] or None,
        push_retry_timeout=_number(opts, "push-retry-timeout", float, 0.05),
        push_retries=int(_number(opts, "push-retries", int, 0)),
        push_window=int(_number(opts, "push-window", int, 1)),
        log_format=opts["log-format"],
        log_file=opts["log-file"] or None,
        max_unauthenticated_per_address=int(
            _number(opts, "max-unauthenticated-per-address", int, 1)
        ),
        http_read_timeout=_number(opts, "http-read-timeout", float, 0.1),
        hash_threads=int(_number(opts, "hash-threads", int, 1)),
        cache_users=int(_number(opts, "cache-users", int, 1)),
        cache_group_members=int(_number(opts, "cache-group-members", int, 1)),
        output_batch=bool(opts.get("output-batch")),
        legacy_jwt_key_file=opts.get("legacy-jwt-key-file") or None,
    )
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"--log-format: {config.log_format!r} is not text or json")
    if config.log_file is not None and config.log_format != "json":
        raise ConfigError("--log-file: only with --log-format json (twistd --logfile for text)")
    if config.sync_limit > 1000:
        raise ConfigError("--sync-limit: at most 1000 messages per page")
    if config.max_frame > 64 * 1024 * 1024:
        raise ConfigError("--max-frame: at most 64 MiB")
    try:
        engine_from_url(config.db_url, config.data_dir)
    except DatabaseURLError as exc:
        raise ConfigError(f"--db: {exc}") from None
    _check_cluster_tls(config)
    _check_legacy_jwt_key(config)
    if config.redis is not None:
        _check_cluster(config)
    if config.advertise is not None:
        host, _, port = config.advertise.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--advertise: {config.advertise!r} is not host:port")
    return config


def _check_cluster_tls(config: Config) -> None:
    """``--cluster-ca`` and ``--cluster-cert`` go together and must load."""
    if config.cluster_ca is None and config.cluster_cert is None:
        if config.cluster_key is not None:
            raise ConfigError("--cluster-key: needs --cluster-ca and --cluster-cert")
        return
    if config.cluster_ca is None or config.cluster_cert is None:
        raise ConfigError("--cluster-ca and --cluster-cert: give both for PB over TLS")
    if not config.rpc.startswith("tcp"):
        # The cluster CA's mutual TLS is layered on a plain listening endpoint.
        raise ConfigError(f"--rpc {config.rpc!r}: with --cluster-ca give a tcp: description")
    from gochat.tls import ClusterTLSError, load_cluster_tls

    try:
        load_cluster_tls(config.cluster_ca, config.cluster_cert, config.cluster_key)
    except ClusterTLSError as exc:
        raise ConfigError(str(exc)) from None


def _check_legacy_jwt_key(config: Config) -> None:
    if config.legacy_jwt_key_file is None:
        return
    from gochat.auth import load_legacy_key

    try:
        load_legacy_key(config.legacy_jwt_key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--legacy-jwt-key-file: {exc}") from None


def _check_cluster(config: Config) -> None:
    from gochat.presence.redis import parse_redis_url
    from gochat.rpc.server import SecretError, load_cluster_secret

    try:
        parse_redis_url(config.redis or "")
    except ValueError as exc:
        raise ConfigError(f"--redis: {exc}") from None
    if engine_from_url(config.db_url, config.data_dir).single_writer:
        raise ConfigError(
            "--db: cluster mode (--redis) needs postgresql://… or mysql://…; SQLite serves"
            " seqs from one process's memory and cannot be shared by nodes"
        )
    if config.cluster_secret_file is None:
        raise ConfigError("--cluster-secret-file is required in cluster mode (--redis)")
    try:
        load_cluster_secret(config.cluster_secret_file)
    except SecretError as exc:
        raise ConfigError(f"--cluster-secret-file: {exc}") from None
    if not 0.5 <= config.presence_lease <= 20:
        # A dead node's entries go within lease * 4/3: at most 30 s with 20.
        raise ConfigError("--presence-lease: must be between 0.5 and 20 seconds")
    if not config.redis_prefix:
        raise ConfigError("--redis-prefix: must not be empty")
    if config.advertise is None and rpc_host(config.rpc) is None:
        raise ConfigError(
            f"--advertise: needed because --rpc {config.rpc!r} names no single interface"
        )


def rpc_host(description: str) -> str | None:
    """The host peers can reach an ``--rpc`` endpoint on, if its description names one."""
    for part in description.split(":")[1:]:
        if part.startswith("interface="):
            host = part[len("interface=") :].replace("\\:", ":")
            return None if host in ("", "0.0.0.0", "::") else host
    return None

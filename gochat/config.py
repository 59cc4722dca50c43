"""The node's options: parsed, taken from ``GOCHAT_*`` variables, validated.

Defaults follow the Go server (DESIGN.md section 2). An invalid value stops
the start with one line (:class:`ConfigError`), never a traceback.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

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
    data_dir: str = "./gochat-data"
    secret_file: str | None = None
    cluster_secret_file: str | None = None
    heartbeat_timeout: float = 600.0
    heartbeat_interval: float = 60.0
    login_timeout: float = 10.0
    sync_limit: int = 50
    max_frame: int = 64 * 1024
    token_ttl: float = 7 * 86400.0

    @property
    def db_url(self) -> str:
        return self.db or "sqlite:" + os.path.join(self.data_dir, "gochat.db")

    @property
    def secret_path(self) -> str:
        return self.secret_file or os.path.join(self.data_dir, "secret.key")


_PARAMS = [
    ["http", None, Config.http, "HTTP API endpoint (Twisted endpoint description)"],
    ["ws", None, Config.ws, "WebSocket gateway endpoint, path /ws"],
    ["rpc", None, Config.rpc, "Perspective Broker endpoint for other nodes (with --redis)"],
    ["advertise", None, None, "host:port other nodes use to reach --rpc"],
    ["db", None, None, "sqlite:PATH, postgresql://… or mysql://… [sqlite:DATA-DIR/gochat.db]"],
    ["redis", None, None, "redis://host:port/db; turns on cluster mode"],
    ["data-dir", None, Config.data_dir, "directory for the SQLite file and generated secrets"],
    ["secret-file", None, None, "token signing key [generated in DATA-DIR/secret.key]"],
    ["cluster-secret-file", None, None, "credential nodes use to log in to each other"],
    ["heartbeat-timeout", None, "600", "seconds of silence before a connection is closed"],
    ["heartbeat-interval", None, "60", "seconds between heartbeat checks"],
    ["login-timeout", None, "10", "seconds a connection has to log in"],
    ["sync-limit", None, "50", "messages per sync page"],
    ["max-frame", None, "65536", "largest WebSocket message in bytes"],
    ["token-ttl", None, "604800", "seconds a token from /register or /login stays valid"],
]


class Options(usage.Options):
    """``twistd gochat`` options; every one also reads ``GOCHAT_<NAME>``."""

    synopsis = "[options]"
    longdesc = "Run a GoChat node: HTTP API, WebSocket gateway and storage."
    optParameters = _PARAMS

    def __init__(self) -> None:
        super().__init__()
        for name, _short, _default, _doc in _PARAMS:
            value = os.environ.get(env_name(name))
            if value is not None and value != "":
                self[name] = value
        self.config: Config | None = None

    def postOptions(self) -> None:  # noqa: N802
        try:
            self.config = build_config(self)
        except ConfigError as exc:
            # One clear line rather than twistd's whole usage text.
            sys.stderr.write(f"gochat: error: {exc}\n")
            raise SystemExit(2) from None


def _number(opts: dict, name: str, kind: type, minimum: float) -> float:
    raw = opts[name]
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"--{name}: {raw!r} is not {what}") from None
    if value < minimum or value != value:  # NaN check
        raise ConfigError(f"--{name}: must be at least {minimum}, got {raw!r}")
    return value


def _endpoint(opts: dict, name: str) -> str:
    from twisted.internet import endpoints, reactor

    desc = opts[name]
    try:
        endpoints.serverFromString(reactor, desc)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"--{name}: {desc!r} is not an endpoint description ({exc})") from None
    return desc


def build_config(opts: dict) -> Config:
    """Validate parsed options into a :class:`Config`; raises :class:`ConfigError`."""
    config = Config(
        http=_endpoint(opts, "http"),
        ws=_endpoint(opts, "ws"),
        rpc=_endpoint(opts, "rpc"),
        advertise=opts["advertise"] or None,
        db=opts["db"] or None,
        redis=opts["redis"] or None,
        data_dir=opts["data-dir"],
        secret_file=opts["secret-file"] or None,
        cluster_secret_file=opts["cluster-secret-file"] or None,
        heartbeat_timeout=_number(opts, "heartbeat-timeout", float, 1),
        heartbeat_interval=_number(opts, "heartbeat-interval", float, 0.1),
        login_timeout=_number(opts, "login-timeout", float, 0.1),
        sync_limit=int(_number(opts, "sync-limit", int, 1)),
        max_frame=int(_number(opts, "max-frame", int, 256)),
        token_ttl=_number(opts, "token-ttl", float, 1),
    )
    if config.sync_limit > 1000:
        raise ConfigError("--sync-limit: at most 1000 messages per page")
    if config.max_frame > 64 * 1024 * 1024:
        raise ConfigError("--max-frame: at most 64 MiB")
    try:
        engine_from_url(config.db_url, config.data_dir)
    except DatabaseURLError as exc:
        raise ConfigError(f"--db: {exc}") from None
    if config.redis is not None and not config.redis.startswith("redis://"):
        raise ConfigError(f"--redis: {config.redis!r} is not a redis://host:port/db URL")
    if config.advertise is not None:
        host, _, port = config.advertise.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--advertise: {config.advertise!r} is not host:port")
    return config

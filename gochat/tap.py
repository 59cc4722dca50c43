"""``twistd gochat``: the options and the service tree of a node, built in one place."""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from prometheus_client.twisted import MetricsResource
from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger

from gochat import metrics
from gochat.api import build_site
from gochat.api.health import HealthResource
from gochat.api.people import SEARCH_BURST, SEARCH_RATE
from gochat.auth import Passwords, TokenSigner, load_or_create_secret
from gochat.config import Config, Options, rpc_host
from gochat.gateway import GatewayFactory, HeartbeatChecker
from gochat.logic import Hub, HubConfig
from gochat.presence import LocalPresence
from gochat.ratelimit import RateLimiter
from gochat.store import Database, Store, engine_from_url

REDIS_START_TIMEOUT = 10.0  # seconds a cluster node waits for Redis at start

__all__ = ["Options", "makeService", "GoChatService"]

SWITCH_INTERVAL = 0.0005  # seconds; see GoChatService.__init__


class GoChatService(service.MultiService):
    """Opens the store, then listens; stops in the reverse order.

    Listening waits for the schema so no client reaches a half-made database.
    A node that cannot start (database unreachable, port taken) says so in one
    line and exits with status 1.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        passwords: Passwords | None = None,
        exit_on_failure: bool = True,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.exit_on_failure = exit_on_failure
        self.ports: dict[str, Any] = {}
        self.ready: defer.Deferred = defer.Deferred()

        # The database threads give the GIL up for each statement and wait up
        # to a switch interval to get it back from a busy reactor; 5 ms (the
        # default) turns a commit behind a burst of pushes into seconds.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.engine = engine_from_url(config.db_url, config.data_dir)
        self.database = Database(self.engine)
        self.store = Store(self.database)
        os.makedirs(config.data_dir, exist_ok=True)
        self.signer = TokenSigner(load_or_create_secret(config.secret_path), ttl=config.token_ttl)
        self.passwords = passwords or Passwords()
        self.presence: Any = LocalPresence()
        self.peers: Any = None
        if config.cluster:
            self._build_cluster()
        self.hub = Hub(
            self.store,
            self.signer,
            reactor,
            HubConfig(
                login_timeout=config.login_timeout,
                sync_limit=config.sync_limit,
                max_frame=config.max_frame,
                msg_rate=config.msg_rate,
                msg_burst=config.msg_burst,
                push_retry_timeout=config.push_retry_timeout,
                push_retries=config.push_retries,
                push_window=config.push_window,
            ),
            presence=self.presence,
            remote=self.peers,
        )
        self.ws_factory = GatewayFactory(
            self.hub,
            max_frame=config.max_frame,
            max_connections=config.max_connections,
            max_unauthenticated=config.max_unauthenticated,
            max_send_buffer=config.max_send_buffer,
            reactor=reactor,
        )
        self.auth_limiter = RateLimiter(config.auth_rate / 60.0, config.auth_burst, reactor)
        self.register_limiter = RateLimiter(
            config.register_rate / 60.0, config.register_burst, reactor
        )
        # /user/search: every search costs, so phone numbers cannot be enumerated.
        self.search_limiter = RateLimiter(SEARCH_RATE / 60.0, SEARCH_BURST, reactor)
        self.site = build_site(
            self.store,
            self.signer,
            self.passwords,
            WebSocketResource(self.ws_factory),
            auth_limiter=self.auth_limiter,
            register_limiter=self.register_limiter,
            hub=self.hub,
            search_limiter=self.search_limiter,
        )
        self.site.resource.putChild(b"metrics", MetricsResource(registry=metrics.REGISTRY))
        self.site.resource.putChild(
            b"healthz", HealthResource(self.database, self.hub.presence, reactor)
        )
        HeartbeatChecker(
            self.hub, reactor, config.heartbeat_timeout, config.heartbeat_interval
        ).setServiceParent(self)

    def _build_cluster(self) -> None:
        """Redis presence, the PB peer pool, and group-cache invalidation between nodes."""
        from gochat.presence.redis import RedisPresence
        from gochat.rpc import PeerPool, load_cluster_secret

        config = self.config
        assert config.redis is not None and config.cluster_secret_file is not None
        self.cluster_secret = load_cluster_secret(config.cluster_secret_file)
        self.cluster_tls = None
        if config.cluster_ca is not None and config.cluster_cert is not None:
            from gochat.tls import load_cluster_tls

            self.cluster_tls = load_cluster_tls(
                config.cluster_ca, config.cluster_cert, config.cluster_key
            )
        presence = RedisPresence(
            config.redis, self.reactor, prefix=config.redis_prefix, lease=config.presence_lease
        )
        self.presence = presence
        self.peers = PeerPool(
            presence.node_id,
            self.cluster_secret,
            presence.address_of,
            self.reactor,
            wrap_endpoint=self.cluster_tls.wrap_client_endpoint if self.cluster_tls else None,
        )
        # A membership change here is published; one published anywhere drops our copy.
        self.store.on_group_changed = presence.publish_group_changed
        presence.on_group_changed = self.store.forget_group
        presence.on_groups_resubscribed = self.store.forget_all_groups

    @defer.inlineCallbacks
    def _start_cluster(self) -> Any:
        """Listen on --rpc, then join presence (the address must answer before it is published)."""
        from gochat.rpc import build_rpc_factory

        config = self.config
        try:
            endpoint = endpoints.serverFromString(self.reactor, config.rpc)
            factory = build_rpc_factory(self.hub, self.cluster_secret, self.presence)
            if self.cluster_tls is not None:
                factory = self.cluster_tls.wrap_server_factory(factory)
            port = yield endpoint.listen(factory)
        except Exception as exc:
            raise StartError(f"--rpc {config.rpc}: {exc}") from exc
        self.ports["rpc"] = port
        self.peers.setServiceParent(self)
        self.presence.address = config.advertise or f"{rpc_host(config.rpc)}:{port.getHost().port}"
        self.presence.setServiceParent(self)
        try:
            yield self.presence.registered.addTimeout(REDIS_START_TIMEOUT, self.reactor)
        except defer.TimeoutError:
            raise StartError(
                f"--redis {config.redis}: no answer within {REDIS_START_TIMEOUT:.0f}s"
            ) from None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        d = self._start()
        d.addCallbacks(self.ready.callback, self._cannot_start)

    @defer.inlineCallbacks
    def _start(self) -> Any:
        try:
            yield self.database.migrate()
        except Exception as exc:
            raise StartError(f"database {self.engine.describe()}: {exc}") from exc
        if self.config.cluster:
            yield self._start_cluster()
        for name, desc, factory in (
            ("ws", self.config.ws, self.ws_factory),
            ("http", self.config.http, self.site),
        ):
            try:
                endpoint = endpoints.serverFromString(self.reactor, desc)
                self.ports[name] = yield endpoint.listen(factory)
            except Exception as exc:
                raise StartError(f"--{name} {desc}: {exc}") from exc
        self.log.info(
            "GoChat node ready: HTTP {http}, WebSocket {ws}, database {db}{cluster}",
            http=self.config.http,
            ws=self.config.ws,
            db=self.engine.describe(),
            cluster=(
                f", cluster node {self.presence.node_id} at {self.presence.address}"
                if self.config.cluster
                else ""
            ),
        )
        return self

    def _cannot_start(self, failure: Any) -> None:
        message = str(failure.value) if failure.check(StartError) else repr(failure.value)
        message = " ".join(message.split())  # drivers' messages span lines; keep one
        if not self.exit_on_failure:
            self.ready.errback(failure)
            return
        # twistd has replaced sys.stderr with the log by now; the operator's
        # terminal (or service manager) should still see the one line.
        stderr = sys.__stderr__ or sys.stderr
        stderr.write(f"gochat: cannot start: {message}\n")
        stderr.flush()
        self.log.error("cannot start: {message}", message=message)
        if IReactorCore.providedBy(self.reactor):
            self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
            self.reactor.stop()

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        """Drain, in an order that never ACKs a message it then loses.

        Stop accepting; stop reading frames (what is not read is not ACKed, so
        clients resend it elsewhere); let the transaction in flight commit and
        its ACKs go out; close every WebSocket with 1001 going away, which also
        takes the users out of presence; only then stop the children (presence,
        heartbeat) and close the database.
        """
        self.hub.draining = True
        for port in self.ports.values():
            yield port.stopListening()
        yield self.hub.wait_idle()
        self.hub.router.flush()  # committed messages still owed their pushes
        closed = [
            session.conn.is_closed
            for session in self.hub.sessions
            if isinstance(getattr(session.conn, "is_closed", None), defer.Deferred)
        ]
        for session in list(self.hub.sessions):
            session.close("server shutting down", going_away=True)
        if closed:
            # Autobahn drops a peer that does not answer the close within its
            # closeHandshakeTimeout, so this wait is bounded.
            yield defer.DeferredList(closed, consumeErrors=True)
        self.hub.pushes.stop()
        yield super().stopService()  # presence leaves the cluster, peer connections close
        self.database.close()


class StartError(Exception):
    """A one-line reason the node could not start."""


#: Allocations between young-generation collections (CPython's default: 700).
#: A pipelining client keeps hundreds of thousands of messages in flight, and
#: at 700 the collector ran about a thousand times a run of 100,000 messages,
#: scanning them again each time: 0.7 s of a 4.4 s run. Cyclic garbage is rare
#: here (a few frames at a connection's close) and waits a little longer.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect less often, and never again scan what the node holds from its start."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def makeService(options: Options) -> GoChatService:  # noqa: N802 - twistd's name
    config = options.config
    assert config is not None
    try:
        service = GoChatService(config)
    except (OSError, ValueError) as exc:
        # An unusable data dir or secret file: one line, not a traceback.
        sys.stderr.write(f"gochat: cannot start: {exc}\n")
        raise SystemExit(1) from None
    tune_gc()
    return service

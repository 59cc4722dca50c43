"""``twistd gochat``: the options and the service tree of a node, built in one place."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any, cast

from autobahn.twisted.resource import WebSocketResource
from prometheus_client.twisted import MetricsResource
from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.web import resource

from gochat import malloc, metrics
from gochat.api import build_site
from gochat.api.health import HealthResource
from gochat.api.people import SEARCH_BURST, SEARCH_RATE
from gochat.api.resource import set_read_timeout
from gochat.auth import (
    LegacyTokenSigner,
    Passwords,
    TokenSigner,
    load_legacy_key,
    load_or_create_secret,
)
from gochat.config import Config, Options, rpc_host
from gochat.gateway import GatewayFactory, HeartbeatChecker
from gochat.logic import Hub, HubConfig
from gochat.presence import LocalPresence
from gochat.ratelimit import RateLimiter
from gochat.store import Database, Store, engine_from_url

REDIS_START_TIMEOUT = 10.0  # seconds a cluster node waits for Redis at start

__all__ = ["Options", "makeService", "GoChatService"]

#: Seconds a thread may hold the GIL while another waits (CPython's default:
#: 5 ms). The database threads give the GIL up for each statement and wait up
#: to this long to get it back from a busy reactor; at 5 ms a commit behind a
#: burst of pushes takes seconds. Process-wide, so set by :func:`makeService`.
SWITCH_INTERVAL = 0.0005


class StartError(Exception):
    """A one-line reason the node could not start."""


class StoreService(service.Service):
    """The database as a service: the schema is brought up to date at start,
    the pool is closed at stop (the node stops it last, after the drain)."""

    def __init__(self, database: Database, describe: str) -> None:
        self.database = database
        self.describe = describe

    @defer.inlineCallbacks
    def startService(self) -> Any:  # noqa: N802
        super().startService()
        try:
            yield self.database.migrate()
        except Exception as exc:
            self.running = False
            raise StartError(f"database {self.describe}: {exc}") from exc

    def stopService(self) -> None:  # noqa: N802
        super().stopService()
        self.database.close()


class ListeningService(service.Service):
    """One listening port, from an endpoint description.

    Unlike :class:`twisted.application.internet.StreamServerEndpointService`,
    :meth:`startService` returns the listening Deferred, so the node starts
    its next child only once this port is open, and a port that cannot be
    opened fails the start with the option's name and description.
    """

    def __init__(
        self,
        option: str,
        description: str,
        factory: Any,
        reactor: Any,
        wrap: Callable[[Any], Any] | None = None,
    ) -> None:
        self.option = option
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.wrap = wrap
        self.port: Any = None

    @defer.inlineCallbacks
    def startService(self) -> Any:  # noqa: N802
        super().startService()
        try:
            endpoint = endpoints.serverFromString(self.reactor, self.description)
            factory = self.wrap(self.factory) if self.wrap is not None else self.factory
            self.port = yield endpoint.listen(factory)
        except Exception as exc:
            self.running = False
            raise StartError(f"--{self.option} {self.description}: {exc}") from exc
        return self.port

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            yield port.stopListening()


class GoChatService(service.MultiService):
    """A node: its parts are child services, started in order, each once the
    one before it is up, and stopped in an order that loses nothing.

    Start: the store (schema up to date), then in a cluster the PB port,
    presence (the PB address must answer before presence publishes it) and
    the peer pool, the heartbeat checker, and last the WebSocket and HTTP
    ports, so no client reaches a half-made database. A node that cannot
    start says so in one line and (under twistd) exits with status 1,
    removing the pid file and the data directory if this start made them.

    Stop: see :meth:`stopService`.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        passwords: Passwords | None = None,
        exit_on_failure: bool = True,
        hub_config: HubConfig | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.exit_on_failure = exit_on_failure
        self.ready: defer.Deferred[Any] = defer.Deferred()
        #: paths this start made, removed again if it fails (see makeService)
        self.created: list[str] = []
        if not os.path.isdir(config.data_dir):
            # 0700: it holds the SQLite database (password hashes) and the signing secret.
            os.makedirs(config.data_dir, mode=0o700)
            self.created.append(config.data_dir)

        self.engine = engine_from_url(config.db_url, config.data_dir)
        self.database = Database(self.engine)
        self.store = Store(
            self.database,
            cache_users=config.cache_users,
            cache_group_members=config.cache_group_members,
        )
        self.signer = TokenSigner(load_or_create_secret(config.secret_path), ttl=config.token_ttl)
        self.passwords = passwords or Passwords(threads=config.hash_threads)
        if config.legacy_jwt_key_path is not None:
            # Tokens GoChat issued keep working until they expire.
            legacy_key = load_legacy_key(config.legacy_jwt_key_path)
            self.signer = LegacyTokenSigner(self.signer, legacy_key)
        self.presence: Any = LocalPresence()
        self.peers: Any = None
        if config.cluster:
            self._build_cluster()
        self.hub = Hub(
            self.store,
            self.signer,
            reactor,
            hub_config or hub_config_from(config),
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
            max_unauthenticated_per_address=config.max_unauthenticated_per_address,
            output_batch=config.output_batch,
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
            cast(resource.Resource, WebSocketResource(self.ws_factory)),  # an IResource
            auth_limiter=self.auth_limiter,
            register_limiter=self.register_limiter,
            on_logout_all=self._logged_out_everywhere,
            hub=self.hub,
            search_limiter=self.search_limiter,
        )
        set_read_timeout(self.site, config.http_read_timeout)
        self.site.resource.putChild(b"metrics", MetricsResource(registry=metrics.REGISTRY))
        self.site.resource.putChild(
            b"healthz", HealthResource(self.database, self.hub.presence, reactor)
        )

        # The service tree: the order of addService is the start order.
        self._add("store", StoreService(self.database, self.engine.describe()))
        self._add("passwords", self.passwords.service())
        if config.cluster:
            from gochat.rpc import build_rpc_factory

            self._add(
                "rpc",
                ListeningService(
                    "rpc",
                    config.rpc,
                    build_rpc_factory(self.hub, self.cluster_secret, self.presence),
                    reactor,
                    wrap=self.cluster_tls.wrap_server_factory if self.cluster_tls else None,
                ),
            )
            # Stopped in reverse: the peer connections close while presence
            # still takes its Redis round trips to leave the cluster.
            self._add("presence", cast(service.Service, self.presence))
            self._add("peers", cast(service.Service, self.peers))
        self._add(
            "heartbeat",
            HeartbeatChecker(
                self.hub, reactor, config.heartbeat_timeout, config.heartbeat_interval
            ),
        )
        self._add("malloc-trim", malloc.TrimService(reactor))
        self._add("ws", ListeningService("ws", config.ws, self.ws_factory, reactor))
        self._add("http", ListeningService("http", config.http, self.site, reactor))

    def _add(self, name: str, child: service.Service) -> None:
        child.setName(name)
        child.setServiceParent(self)

    @property
    def ports(self) -> dict[str, Any]:
        """The open listening ports by option name (``http``, ``ws``, ``rpc``)."""
        return {
            child.option: child.port
            for child in self
            if isinstance(child, ListeningService) and child.port is not None
        }

    def _logged_out_everywhere(self, user_id: int, generation: int) -> None:
        """After ``/logout_all``: close the user's sessions here, and on every node of a cluster."""
        self.hub.revoke_tokens(user_id, generation)
        publish = getattr(self.presence, "publish_logout", None)
        if publish is not None:
            publish(user_id, generation)

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
        presence.on_logout = self.hub_revoke_tokens

    def hub_revoke_tokens(self, user_id: int, generation: int) -> None:
        """A node published a ``/logout_all`` (built before the hub exists, hence late-bound)."""
        self.hub.revoke_tokens(user_id, generation)

    def startService(self) -> None:  # noqa: N802
        service.Service.startService(self)
        d = self._start()
        d.addCallbacks(self.ready.callback, self._cannot_start)

    @defer.inlineCallbacks
    def _start(self) -> Any:
        for child in self:
            if not self.running:
                # Stopped while starting (SIGTERM during the migration): open nothing more.
                raise StartError("stopped while starting")
            try:
                yield defer.maybeDeferred(child.startService)
            except StartError:
                raise
            except Exception as exc:
                raise StartError(f"{child.name}: {exc}") from exc
            if child.name == "rpc":
                port = child.port.getHost().port
                self.presence.address = (
                    self.config.advertise or f"{rpc_host(self.config.rpc)}:{port}"
                )
            elif child.name == "presence":
                try:
                    yield self.presence.registered.addTimeout(REDIS_START_TIMEOUT, self.reactor)
                except defer.TimeoutError:
                    raise StartError(
                        f"--redis {self.config.redis}: no answer within {REDIS_START_TIMEOUT:.0f}s"
                    ) from None
        self.log.info(
            "GoChat node ready: web page {web}, HTTP {http} on {http_address},"
            " WebSocket {ws} on {ws_address}, database {db}{cluster}",
            web=self.web_url(),
            http=self.config.http,
            http_address=self._address("http"),
            ws=self.config.ws,
            ws_address=self._address("ws"),
            db=self.engine.describe(),
            cluster=(
                f", cluster node {self.presence.node_id} at {self.presence.address}"
                if self.config.cluster
                else ""
            ),
        )
        return self

    def _address(self, name: str) -> str:
        """Where a port listens (``host:port``, or a Unix socket's path): with
        ``tcp:0`` the log names the port the system chose."""
        port = self.ports.get(name)
        address = port.getHost() if port is not None else None
        if isinstance(address, IPv4Address | IPv6Address):
            return f"{address.host}:{address.port}"
        return str(getattr(address, "name", address))

    def web_url(self) -> str:
        """Where a browser finds the web chat page (``/`` of the HTTP port)."""
        port = self.ports.get("http")
        address = port.getHost() if port is not None else None
        if not isinstance(address, IPv4Address | IPv6Address):
            return f"/ on {self.config.http}"
        host = address.host
        if host in ("0.0.0.0", "::", ""):
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.config.http.startswith("ssl:") else "http"
        return f"{scheme}://{host}:{address.port}/"

    def _cannot_start(self, failure: Any) -> None:
        message = str(failure.value) if failure.check(StartError) else repr(failure.value)
        message = " ".join(message.split())  # drivers' messages span lines; keep one
        if not self.exit_on_failure:
            self.ready.errback(failure)
            return
        if not self.running:
            return  # stopped while starting: the reactor is already on its way down
        # twistd has replaced sys.stderr with the log by now; the operator's
        # terminal (or service manager) should still see the one line.
        stderr = sys.__stderr__ or sys.stderr
        stderr.write(f"gochat: cannot start: {message}\n")
        stderr.flush()
        self.log.error("cannot start: {message}", message=message)
        if IReactorCore.providedBy(self.reactor):
            # twistd stops this service (closing what did start) as the
            # reactor stops; then what this start made goes, and the status is 1.
            self.reactor.addSystemEventTrigger("after", "shutdown", self._exit_after_failure)
            self.reactor.stop()

    def _exit_after_failure(self) -> None:
        remove_created(self.created)
        os._exit(1)

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        """Drain, in an order that never ACKs a message it then loses.

        Stop accepting (every listening port closes); stop reading frames
        (what is not read is not ACKed, so clients resend it elsewhere); let
        the transaction in flight commit and its ACKs go out; close every
        WebSocket with 1001 going away, which also takes the users out of
        presence; only then stop the other children one by one, last first:
        the heartbeat checker, the peer connections, presence (the node
        leaves the cluster), and last the store, which closes the database.
        """
        service.Service.stopService(self)
        self.hub.draining = True
        children = [child for child in reversed(list(self)) if child.running]
        for child in children:
            if isinstance(child, ListeningService):
                yield child.stopService()
        yield self.hub.wait_idle()
        self.hub.router.flush()  # committed messages still owed their pushes
        self.hub.flush_acks()
        closed = [
            is_closed
            for session in self.hub.sessions
            if isinstance(is_closed := getattr(session.conn, "is_closed", None), defer.Deferred)
        ]
        for session in list(self.hub.sessions):
            session.close("server shutting down", going_away=True)
        if closed:
            # Autobahn drops a peer that does not answer the close within its
            # closeHandshakeTimeout, so this wait is bounded.
            yield defer.DeferredList(closed, consumeErrors=True)
        self.hub.pushes.stop()
        for child in children:
            if not isinstance(child, ListeningService):
                yield defer.maybeDeferred(child.stopService)


def hub_config_from(config: Config) -> HubConfig:
    """The logic's settings out of the node's options."""
    return HubConfig(
        login_timeout=config.login_timeout,
        sync_limit=config.sync_limit,
        max_frame=config.max_frame,
        msg_rate=config.msg_rate,
        msg_burst=config.msg_burst,
        push_retry_timeout=config.push_retry_timeout,
        push_retries=config.push_retries,
        push_window=config.push_window,
    )


def remove_created(paths: list[str]) -> None:
    """Remove files and directories a failed start made (newest first)."""
    for path in reversed(paths):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


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
    """The node for ``twistd gochat``; also sets what is process-wide (GIL, collector)."""
    config = options.config
    assert config is not None
    made_data_dir = not os.path.isdir(config.data_dir)
    try:
        node = GoChatService(config)
    except (OSError, ValueError) as exc:
        # An unusable data dir or secret file: one line, not a traceback.
        if made_data_dir:
            remove_created([config.data_dir])
        sys.stderr.write(f"gochat: cannot start: {exc}\n")
        raise SystemExit(1) from None
    parent = getattr(options, "parent", None)
    pidfile = parent.get("pidfile") if parent is not None else None
    if pidfile and not os.path.exists(pidfile):
        node.created.insert(0, os.path.abspath(pidfile))  # twistd writes it after this
    sys.setswitchinterval(SWITCH_INTERVAL)
    tune_gc()
    malloc.tune()
    return node

"""Presence in Redis (cluster mode), behind the same interface as LocalPresence.

Keys, all under a prefix (``--redis-prefix``) so clusters and tests can share
one Redis:

``node:<id>``        this node's RPC address, under a lease (``PX``) renewed
                     every lease/3; a node that stops renewing drops out
``nodes``            every node id that registered (what the sweeper walks, and
                     the list group affinity picks each group's home from)
``user:<uid>``       set of node ids holding a connection of the user
``nodeusers:<id>``   set of user ids a node holds (so its entries can be swept)
``device:<uid>:<d>`` node of the newest login of a device (a late kick is ignored)
``groups`` channel   ids of groups whose membership changed (cache invalidation),
                     ``logout:<uid>:<generation>`` after a ``/logout_all``, and
                     ``nodes`` when a node joins or leaves (read ``nodes`` again)

Lookups ignore a node whose lease is gone, at once; every node also sweeps
dead nodes' entries out of the user sets on each renewal, so an entry of a
dead node is gone within lease + lease/3. A renewal that finds the lease
missing (the lease lapsed, or Redis was flushed or restarted empty), or that
follows any failed write, re-registers every connection this node holds.

It owns these keys and nothing else: it never sends a push itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import txredisapi
from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gochat import metrics

OP_TIMEOUT = 5.0  # seconds a Redis command may take before it counts as failed
DEVICE_TTL = 86400  # seconds a device's newest-login record is kept (far beyond any race)

_REGISTER = """
local p, n = ARGV[1], ARGV[2]
redis.call('SET', p .. 'node:' .. n, ARGV[3], 'PX', ARGV[4])
redis.call('SADD', p .. 'nodes', n)
local key = p .. 'nodeusers:' .. n
local keep = {}
for i = 5, #ARGV do keep[ARGV[i]] = true end
for _, u in ipairs(redis.call('SMEMBERS', key)) do
  if not keep[u] then
    redis.call('SREM', p .. 'user:' .. u, n)
    redis.call('SREM', key, u)
  end
end
for i = 5, #ARGV do
  redis.call('SADD', p .. 'user:' .. ARGV[i], n)
  redis.call('SADD', key, ARGV[i])
end
return #ARGV - 4
"""

_ONLINE = """
local p, n, u = ARGV[1], ARGV[2], ARGV[3]
redis.call('SADD', p .. 'user:' .. u, n)
redis.call('SADD', p .. 'nodeusers:' .. n, u)
return redis.call('EXISTS', p .. 'node:' .. n)
"""

_OFFLINE = """
local p, n, u = ARGV[1], ARGV[2], ARGV[3]
redis.call('SREM', p .. 'user:' .. u, n)
redis.call('SREM', p .. 'nodeusers:' .. n, u)
return 1
"""

_NODES_FOR = """
local p, me = ARGV[1], ARGV[2]
local address, users, order = {}, {}, {}
for u in string.gmatch(ARGV[3], '[^,]+') do
  for _, n in ipairs(redis.call('SMEMBERS', p .. 'user:' .. u)) do
    if n ~= me then
      local a = address[n]
      if a == nil then
        a = redis.call('GET', p .. 'node:' .. n)
        address[n] = a
      end
      if a then
        if users[n] == nil then
          users[n] = {}
          table.insert(order, n)
        end
        table.insert(users[n], u)
      end
    end
  end
end
local out = {}
for _, n in ipairs(order) do
  table.insert(out, n)
  table.insert(out, address[n])
  table.insert(out, table.concat(users[n], ','))
end
return out
"""

_SWEEP = """
local p = ARGV[1]
local removed = {}
for _, n in ipairs(redis.call('SMEMBERS', p .. 'nodes')) do
  if redis.call('EXISTS', p .. 'node:' .. n) == 0 then
    for _, u in ipairs(redis.call('SMEMBERS', p .. 'nodeusers:' .. n)) do
      redis.call('SREM', p .. 'user:' .. u, n)
    end
    redis.call('DEL', p .. 'nodeusers:' .. n)
    redis.call('SREM', p .. 'nodes', n)
    table.insert(removed, n)
  end
end
return removed
"""


#: published on the channel when a node joins or leaves
NODES_CHANGED = "nodes"


def parse_redis_url(url: str) -> tuple[str, int, int]:
    """``redis://host:port/db`` → ``(host, port, db)``; raises ValueError."""
    parsed = urlparse(url)
    if parsed.scheme != "redis":
        raise ValueError(f"{url!r} is not a redis://host:port/db URL")
    db_part = parsed.path.lstrip("/") or "0"
    if not db_part.isdigit():
        raise ValueError(f"{url!r}: the database must be a number")
    return parsed.hostname or "127.0.0.1", parsed.port or 6379, int(db_part)


def new_node_id() -> str:
    """A fresh id per process start: a restarted node is a new node to its peers."""
    return uuid.uuid4().hex[:16]


class RedisPresence(service.Service):
    """Which nodes hold each user, and where each node listens, in Redis."""

    log = Logger()

    def __init__(
        self,
        url: str,
        clock: IReactorTime,
        node_id: str | None = None,
        prefix: str = "gochat:",
        lease: float = 15.0,
    ) -> None:
        self.host, self.port, self.dbid = parse_redis_url(url)
        self.clock = clock
        self.node_id = node_id or new_node_id()
        self.prefix = prefix
        self.lease = lease
        #: ``host:port`` other nodes dial; set before the service starts
        self.address: str | None = None
        self.local: set[int] = set()
        #: node id → RPC address, as last seen in Redis
        self.addresses: dict[str, str] = {}
        #: the live nodes' ids, sorted, as of the last renewal (group affinity
        #: picks each group's home among them), and a count of their changes
        self.nodes: tuple[str, ...] = ()
        self.nodes_version = 0
        #: called with a group id when a node published a membership change
        self.on_group_changed: Callable[[int], Any] | None = None
        #: called when the invalidation channel was (re)subscribed: changes may have been missed
        self.on_groups_resubscribed: Callable[[], Any] | None = None
        #: called with ``(user_id, generation)`` when a node published a /logout_all
        self.on_logout: Callable[[int, int], Any] | None = None
        self.registered: defer.Deferred[Any] = defer.Deferred()
        self._dirty = True  # the next renewal re-registers everything
        self._redis: Any = None
        self._subscriber: Any = None
        self._loop: task.LoopingCall | None = None
        self._lookups: list[tuple[list[int], defer.Deferred[Any]]] = []
        self._lookup_call: Any = None

    @property
    def channel(self) -> str:
        return self.prefix + "groups"

    # -- service -------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802
        if self.address is None:
            raise RuntimeError("RedisPresence.address must be set before it starts")
        super().startService()
        self._redis = txredisapi.lazyConnectionPool(
            self.host,
            self.port,
            dbid=self.dbid,
            poolsize=2,
            reconnect=True,
            connectTimeout=OP_TIMEOUT,
            # No replyTimeout: txredisapi drops the whole connection when one reply is
            # late, which under load fails every command in flight. Each call here
            # has its own timeout instead (_call).
            convertNumbers=False,
        )
        self._subscriber = _subscribe(self)
        self._loop = task.LoopingCall(self._renew)
        self._loop.clock = self.clock
        self._loop.start(self.lease / 3, now=True).addErrback(
            lambda f: self.log.failure("presence renewal loop stopped", f)
        )

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        """Leave the cluster: drop the lease and every entry of this node."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        try:
            yield self._call(
                self._redis.delete(self._key("node", self.node_id))
                .addCallback(lambda _: self._redis.eval(_SWEEP, [], [self.prefix]))
                .addCallback(lambda _: self._redis.publish(self.channel, NODES_CHANGED))
            )
        except Exception as exc:
            self.log.warn("presence: could not leave cleanly: {exc}", exc=exc)
        if self._subscriber is not None:
            yield self._subscriber.disconnect()
        if self._redis is not None:
            yield self._redis.disconnect()

    # -- Presence interface ---------------------------------------------------

    def user_online(self, user_id: int) -> defer.Deferred[Any]:
        """Never fails: a write Redis missed is repaired by the next renewal."""
        self.local.add(user_id)
        d = self._script(_ONLINE, str(user_id))

        def done(lease_exists: Any) -> None:
            if not int(lease_exists):
                self._dirty = True  # the lease is gone: re-register at the next renewal

        return d.addCallbacks(done, self._write_failed)

    def user_offline(self, user_id: int) -> defer.Deferred[Any]:
        self.local.discard(user_id)
        return self._script(_OFFLINE, str(user_id)).addCallbacks(lambda _: None, self._write_failed)

    def nodes_for(self, user_ids: list[int]) -> defer.Deferred[Any]:
        """``{node_id: [user_id, ...]}`` of live nodes other than this one.

        Lookups made in one reactor turn (a committed batch pushes many
        messages at once) share one Redis script call.
        """
        if not user_ids:
            return defer.succeed({})
        d: defer.Deferred[Any] = defer.Deferred()
        self._lookups.append((user_ids, d))
        if self._lookup_call is None:
            self._lookup_call = self.clock.callLater(0, self._look_up)
        return d

    def _look_up(self) -> None:
        self._lookup_call = None
        lookups, self._lookups = self._lookups, []
        wanted = sorted({u for ids, _ in lookups for u in ids})
        # The users as one argument: a group block's lookup names every member,
        # and an argument each cost the node more to encode than Redis to run.
        names = ",".join(map(str, wanted))
        d = self._call(self._redis.eval(_NODES_FOR, [], [self.prefix, self.node_id, names]))

        def answer(flat: list[Any]) -> None:
            per_node: dict[str, list[int]] = {}
            for i in range(0, len(flat), 3):
                node, address, users = _text(flat[i]), _text(flat[i + 1]), _text(flat[i + 2])
                self.addresses[node] = address
                per_node[node] = list(map(int, users.split(",")))
            if len(lookups) == 1:  # the usual turn: the answer names only its users
                lookups[0][1].callback(per_node)
                return
            holders: dict[int, list[str]] = {}
            for node, user_ids in per_node.items():
                for uid in user_ids:
                    holders.setdefault(uid, []).append(node)
            for ids, waiter in lookups:
                found: dict[str, list[int]] = {}
                for uid in ids:
                    for node in holders.get(uid, ()):
                        found.setdefault(node, []).append(uid)
                waiter.callback(found)

        def failed(failure: Any) -> None:
            metrics.PRESENCE_ERRORS.inc()
            for _, waiter in lookups:
                waiter.errback(failure)

        d.addCallbacks(answer, failed)

    def ping(self) -> defer.Deferred[Any]:
        """Fails when Redis does not answer in time (``/healthz`` asks)."""
        return self._call(self._redis.ping())

    def claim_device(self, user_id: int, device_id: str) -> defer.Deferred[Any]:
        """Record that the newest login of (user, device) is here. Never fails."""
        d = self._call(
            self._redis.set(self._device_key(user_id, device_id), self.node_id, expire=DEVICE_TTL)
        )
        return d.addCallbacks(lambda _: None, self._write_failed)

    def device_holder(self, user_id: int, device_id: str) -> defer.Deferred[Any]:
        """The node of the newest login of (user, device); ``None`` if unknown."""
        d = self._call(self._redis.get(self._device_key(user_id, device_id)))
        return d.addCallbacks(lambda v: None if v is None else _text(v), lambda _: None)

    def _device_key(self, user_id: int, device_id: str) -> str:
        return f"{self.prefix}device:{user_id}:{device_id}"

    def address_of(self, node_id: str) -> defer.Deferred[Any]:
        """The RPC address of a live node (``None`` when its lease is gone)."""
        known = self.addresses.get(node_id)
        if known is not None:
            return defer.succeed(known)
        d = self._call(self._redis.get(self._key("node", node_id)))
        return d.addCallback(lambda v: None if v is None else _text(v))

    def publish_group_changed(self, group_id: int) -> defer.Deferred[Any]:
        """Tell every node (this one too) to drop its cached members of ``group_id``."""
        d = self._call(self._redis.publish(self.channel, str(group_id)))
        return d.addErrback(
            lambda f: self.log.failure("presence: publishing group {gid} change", f, gid=group_id)
        )

    def publish_logout(self, user_id: int, generation: int) -> defer.Deferred[Any]:
        """Tell every node to close the user's sessions with tokens older than ``generation``.

        Best effort: a node that misses it keeps such a session until its
        token expires; every new login and HTTP call is refused anyway.
        """
        d = self._call(self._redis.publish(self.channel, f"logout:{user_id}:{generation}"))
        return d.addErrback(
            lambda f: self.log.failure("presence: publishing logout of {uid}", f, uid=user_id)
        )

    # -- internals -----------------------------------------------------------

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def _call(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        return d.addTimeout(OP_TIMEOUT, self.clock)

    def _script(self, script: str, *args: str) -> defer.Deferred[Any]:
        return self._call(self._redis.eval(script, [], [self.prefix, self.node_id, *args]))

    def _write_failed(self, failure: Any) -> None:
        self._dirty = True
        metrics.PRESENCE_ERRORS.inc()
        self.log.warn(
            "presence: Redis write failed ({error}); re-registering at the next renewal",
            error=failure.getErrorMessage(),
        )

    @defer.inlineCallbacks
    def _renew(self) -> Any:
        try:
            if not self._dirty:
                renewed = yield self._call(
                    self._redis.set(
                        self._key("node", self.node_id),
                        self.address,
                        pexpire=int(self.lease * 1000),
                        only_if_exists=True,
                    )
                )
                if renewed is None:
                    self.log.warn(
                        "presence: lease of {node} was gone; re-registering", node=self.node_id
                    )
                    self._dirty = True
            if self._dirty:
                self._dirty = False
                count = yield self._script(
                    _REGISTER,
                    self.address or "",
                    str(int(self.lease * 1000)),
                    *(str(u) for u in sorted(self.local)),
                )
                self.log.info(
                    "presence: node {node} at {address} registered {n} users",
                    node=self.node_id,
                    address=self.address,
                    n=count,
                )
                # the other nodes look at the list of nodes again now, not at their next renewal
                yield self._call(self._redis.publish(self.channel, NODES_CHANGED))
            removed = yield self._call(self._redis.eval(_SWEEP, [], [self.prefix]))
            for node in removed or ():
                self.addresses.pop(_text(node), None)
                self.log.info("presence: swept dead node {node}", node=_text(node))
            yield self._refresh_nodes()
            if not self.registered.called:
                self.registered.callback(self)
        except Exception as exc:
            self._dirty = True
            metrics.PRESENCE_ERRORS.inc()
            self.log.warn("presence: renewal failed: {exc!r}", exc=exc)

    @defer.inlineCallbacks
    def _refresh_nodes(self) -> Any:
        """Read the live nodes' ids again (see :attr:`nodes`)."""
        live = yield self._call(self._redis.smembers(self.prefix + "nodes"))
        nodes = tuple(sorted(_text(n) for n in live or ()))
        if nodes != self.nodes:
            self.nodes = nodes
            self.nodes_version += 1

    def _group_message(self, message: Any) -> None:
        text = _text(message)
        if text == NODES_CHANGED:
            self._refresh_nodes().addErrback(
                lambda f: self.log.warn(
                    "presence: reading the list of nodes failed: {e}", e=f.getErrorMessage()
                )
            )
            return
        if text.startswith("logout:"):
            self._logout_message(text)
            return
        try:
            group_id = int(text)
        except ValueError:
            self.log.warn("presence: bad group invalidation {m!r}", m=message)
            return
        if self.on_group_changed is not None:
            self.on_group_changed(group_id)

    def _logout_message(self, text: str) -> None:
        try:
            _, user_id, generation = text.split(":")
            uid, gen = int(user_id), int(generation)
        except ValueError:
            self.log.warn("presence: bad logout message {m!r}", m=text)
            return
        if self.on_logout is not None:
            self.on_logout(uid, gen)

    def _resubscribed(self) -> None:
        if self.on_groups_resubscribed is not None:
            self.on_groups_resubscribed()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc] # untyped library
    """Listens to the group invalidation channel; re-subscribes on every reconnect."""

    owner: RedisPresence

    @defer.inlineCallbacks
    def connectionMade(self) -> Any:  # noqa: N802
        yield super().connectionMade()
        owner = self.factory.owner
        try:
            yield self.subscribe(owner.channel)
        except Exception as exc:
            owner.log.warn("presence: subscribing to {ch} failed: {exc}", ch=owner.channel, exc=exc)
            self.transport.loseConnection()
            return
        # Anything published while we were not listening is lost: drop every cached group.
        owner._resubscribed()

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:  # noqa: N802
        self.factory.owner._group_message(message)


def _subscribe(owner: RedisPresence) -> Any:
    from twisted.internet import reactor

    factory = txredisapi.SubscriberFactory()
    factory.protocol = _Subscriber
    factory.owner = owner
    factory.maxDelay = 5
    factory.startConnecting(
        endpoints.HostnameEndpoint(reactor, owner.host, owner.port, timeout=OP_TIMEOUT)
    )
    return factory

"""Resources of the HTTP API and the site that mounts them with ``/ws``.

Requests are form-encoded (what the Go clients send) or JSON. Every response
is ``{"code", "msg", "data"}`` with an HTTP status that fits.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import ITCPTransport, ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.server import Request

from gochat import metrics, web
from gochat.auth import BadToken, Claims, Passwords, TokenSigner, check_account, is_legacy_hash
from gochat.inputs import GROUP_NAME_MAX, NICKNAME_MAX, parse_id_value, text_problem
from gochat.ratelimit import RateLimiter
from gochat.store import Conflict, NotFound, Store

MAX_BODY = 64 * 1024
MAX_PHONE = 32
MAX_PASSWORD = 256
MAX_NAME = 64
MAX_GROUP_MEMBERS = 10000
#: A body this many times over MAX_BODY is not read to its end: the connection is dropped.
DISCARD_FACTOR = 16


class ApiError(Exception):
    def __init__(self, status: int, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg
        self.retry_after = retry_after


def _json_body(status: int, msg: str) -> bytes:
    return json.dumps({"code": status, "msg": msg, "data": {}}).encode()


class BoundedRequest(server.Request):
    """A request whose body is never buffered past ``max_body`` bytes.

    twisted.web reads the whole body before ``render``, with or without a
    Content-Length, so the limit is enforced here as the bytes arrive: an
    oversized body is discarded as it comes and answered 413 once complete; a
    declared length or a chunked stream far over the limit gets its 413 at
    once and the connection is closed.
    """

    max_body = MAX_BODY
    _body_seen = 0
    _too_large = False
    _hung_up = False

    def gotLength(self, length: int | None) -> None:  # noqa: N802 - twisted.web's API
        if length is not None and length > self.max_body:
            self._too_large = True
            super().gotLength(0)
            if length > self.max_body * DISCARD_FACTOR:
                self._hang_up()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if self._hung_up:
            return
        self._body_seen += len(data)
        if self._body_seen > self.max_body:
            if not self._too_large:
                self._too_large = True
                self.content = io.BytesIO()  # drop what was kept so far
            if self._body_seen > self.max_body * DISCARD_FACTOR:
                self._hang_up()
            return
        if not self._too_large:
            super().handleContentChunk(data)

    def _hang_up(self) -> None:
        self._hung_up = True
        metrics.REFUSED.labels("body_too_large").inc()
        body = _json_body(413, f"request body over {self.max_body} bytes")
        # the channel is connected: its request is still reading the body
        cast(ITransport, self.channel.transport).write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"content-type: application/json; charset=utf-8\r\n"
            b"connection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.channel.loseConnection()

    def process(self) -> None:
        if self._hung_up:
            return
        if self._too_large:
            metrics.REFUSED.labels("body_too_large").inc()
            # Site.buildProtocol sets it; twisted.web's HTTPChannel does not declare it
            self.site = self.channel.site  # type: ignore[attr-defined]
            self.setHeader(b"connection", b"close")
            write_json(self, 413, f"request body over {self.max_body} bytes")
            return
        super().process()


#: Seconds an HTTP client has to send a whole request (--http-read-timeout).
READ_TIMEOUT = 10.0
#: Seconds a client cut at its read deadline has to take the 408 before it is aborted.
ABORT_AFTER = 5.0


class ReadDeadlineChannel(http.HTTPChannel):
    """An HTTP channel that gives each request ``site.read_timeout`` seconds to arrive.

    twisted.web's own timeout is an idle timeout, reset by every byte, so a
    client sending its headers a byte a second (slowloris) holds a connection
    for ever. Here the clock runs from the connection's start (and, on a
    keep-alive connection, from the end of the previous response) until the
    whole request, headers and body, is read; a ``/ws`` upgrade is a read
    request too, after which the WebSocket gateway's own timers apply. A
    client past the deadline gets 408 (or, if it sent nothing, is closed).
    """

    _deadline: Any = None
    _request_started = False

    def connectionMade(self) -> None:  # noqa: N802 - twisted.web's API
        super().connectionMade()
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._request_started = False
        timeout = getattr(getattr(self, "site", None), "read_timeout", READ_TIMEOUT)
        self._deadline = self.callLater(timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._deadline is not None and data:
            self._request_started = True
        super().dataReceived(data)

    def allContentReceived(self) -> None:  # noqa: N802
        self._disarm()  # read in time; answering it is not the client's to hurry
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:  # noqa: N802
        if self.persistent:
            self._arm()  # before the buffered next request, which may complete at once
        super().requestDone(request)

    def _too_slow(self) -> None:
        self._deadline = None
        # HTTP runs over TCP (or TLS over TCP), whose transports can abort
        transport = cast("ITCPTransport | None", self.transport)
        if transport is None:
            return
        metrics.REFUSED.labels("http_read_timeout").inc()
        if self._request_started:
            body = _json_body(408, "request not received within the read timeout")
            transport.write(
                b"HTTP/1.1 408 Request Timeout\r\n"
                b"content-type: application/json; charset=utf-8\r\n"
                b"connection: close\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
        # The channel's own loseConnection: it also unregisters the channel
        # as the transport's producer, without which the transport waits.
        self.loseConnection()
        # A client that does not read the 408 either is not waited for.
        self._deadline = self.callLater(ABORT_AFTER, transport.abortConnection)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._disarm()
        super().connectionLost(reason)


def set_read_timeout(site: server.Site, seconds: float) -> None:
    """Give every request on ``site`` ``seconds`` to arrive (see :class:`ReadDeadlineChannel`)."""
    # Twisted declares the default (a factory function) where any channel class
    # goes, and read_timeout is ours, read back by the channel with getattr.
    site.protocol = ReadDeadlineChannel  # type: ignore[method-assign,assignment]
    site.read_timeout = seconds  # type: ignore[attr-defined]


def write_json(request: Request, status: int, msg: str, data: Any = None) -> None:
    body = json.dumps({"code": status, "msg": msg, "data": data if data is not None else {}})
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.write(body.encode())
    request.finish()


class Params:
    """Request parameters from the query string, a form body or a JSON body.

    Every accessor is strict (see :mod:`gochat.inputs`): bad text or a bad id
    is a 400 naming the parameter, never a 500 from the database.
    """

    def __init__(self, request: Request) -> None:
        self.values: dict[str, list[Any]] = {}
        #: parameters that came as a JSON list: not acceptable as a single value
        self._lists: set[str] = set()
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        for key, values in (request.args or {}).items():
            try:
                self.values[key.decode()] = [v.decode() for v in values]
            except UnicodeDecodeError:
                raise ApiError(400, "parameters must be UTF-8") from None
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype == b"application/json":
            body = request.content.read(MAX_BODY + 1) if request.content else b""
            if len(body) > MAX_BODY:
                raise ApiError(413, f"request body over {MAX_BODY} bytes")
            if body.strip():
                try:
                    parsed = json.loads(body)
                except (ValueError, UnicodeDecodeError):
                    raise ApiError(400, "body is not valid JSON") from None
                if not isinstance(parsed, dict):
                    raise ApiError(400, "JSON body must be an object")
                for key, value in parsed.items():
                    if isinstance(value, list):
                        self._lists.add(key)
                        self.values[key] = value
                    else:
                        self.values[key] = [value]

    def _scalar(self, name: str) -> Any:
        """The parameter's last value (``None`` when absent); a JSON list is a 400."""
        values = self.values.get(name)
        if name in self._lists:
            raise ApiError(400, f"parameter {name} must be a single value, not a list")
        if not values:
            return None
        return values[-1]

    def text(
        self,
        name: str,
        max_len: int,
        required: bool = True,
        min_len: int = 1,
        controls: bool = False,
    ) -> str:
        """A text parameter checked by :func:`check_text` (``controls``: see there)."""
        value = self._scalar(name)
        if value is None or value == "":
            if required:
                raise ApiError(400, f"missing parameter {name}")
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ApiError(400, f"parameter {name} must be a string")
        return check_text(str(value), name, max_len, min_len, controls)

    def id(self, name: str) -> int:
        """A single id: a JSON integer or an ASCII decimal string in 1..2**63-1."""
        value = self._scalar(name)
        if value is None or value == "":
            raise ApiError(400, f"missing parameter {name}")
        return parse_id(value, name)

    def ids(self, name: str) -> list[int]:
        """Ids given repeated, as a JSON list, or comma-separated; each as strict as :meth:`id`."""
        raw = self.values.get(name)
        if raw is None:
            raw = self.values.get(name + "[]", [])
        out: list[int] = []
        for value in raw:
            if isinstance(value, str) and "," in value:
                out.extend(parse_id(part, name) for part in value.split(","))
            elif value != "":
                out.append(parse_id(value, name))
        return out


def check_name(value: str, name: str, max_len: int) -> str:
    """A display name (nickname, group name): :func:`check_text`, and not blank."""
    check_text(value, name, max_len)
    if not value.strip():
        raise ApiError(400, f"parameter {name} must not be blank")
    return value


def check_text(
    value: str, name: str, max_len: int, min_len: int = 1, controls: bool = False
) -> str:
    """``value`` if it is acceptable text for parameter ``name``, else a 400.

    No lone surrogates, no NUL, no control characters (unless ``controls``:
    then only NUL is refused), ``min_len``..``max_len`` characters. Every text
    an endpoint stores goes through this (nicknames, group names, ...).
    """
    problem = text_problem(value, max_len, min_len, controls)
    if problem is not None:
        raise ApiError(400, f"parameter {name} {problem}")
    return value


def parse_id(value: Any, name: str) -> int:
    """An id from a JSON integer or an ASCII decimal string in 1..2**63-1, else a 400."""
    number = parse_id_value(value)
    if number is None:
        raise ApiError(400, f"parameter {name} must be a decimal id in 1..2^63-1")
    return number


class Endpoint(resource.Resource):
    """One API call; ``handler(request, params, user_id)`` returns data or a Deferred."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        method: bytes,
        handler: Callable[..., Any],
        signer: TokenAuth | None = None,
    ) -> None:
        super().__init__()
        if signer is not None and not isinstance(signer, TokenAuth):
            # A bare TokenSigner would skip the account check (revoked tokens).
            raise TypeError("Endpoint needs a TokenAuth (build_root's auth), not a TokenSigner")
        self.method = method
        self.handler = handler
        self.signer = signer  # set: the call needs a token

    def render(self, request: Request) -> Any:
        # traversal set postpath (the stubs allow None before it)
        if any(cast(list[bytes], request.postpath)):  # /register/anything is not /register
            write_json(request, 404, "not found")
            return server.NOT_DONE_YET
        if request.method != self.method:
            request.setHeader(b"allow", self.method)
            write_json(request, 405, f"use {self.method.decode()}")
            return server.NOT_DONE_YET
        d = defer.maybeDeferred(self._call, request)
        d.addCallbacks(
            lambda data: write_json(request, 200, "success", data),
            lambda f: self._error(request, f),
        )
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return server.NOT_DONE_YET

    @defer.inlineCallbacks
    def _call(self, request: Request) -> Any:
        user_id = 0
        if self.signer is not None:
            user_id = yield self._authenticate(request)
        result = yield self.handler(request, Params(request), user_id)
        return result

    @defer.inlineCallbacks
    def _authenticate(self, request: Request) -> Any:
        token = request.getHeader(b"token")
        if not token:
            auth = request.getHeader(b"authorization") or b""
            scheme, _, value = auth.partition(b" ")
            if scheme.lower() == b"bearer":
                token = value.strip()
        if not token:
            raise ApiError(401, "missing token")
        try:
            claims = yield self.signer.authenticate(token)  # type: ignore[union-attr]
        except BadToken as exc:
            raise ApiError(401, f"bad token: {exc}") from None
        return claims.user_id

    def _error(self, request: Request, failure: Any) -> None:
        if request.finished or request._disconnected:
            return
        exc = failure.value
        if isinstance(exc, ApiError):
            if exc.retry_after is not None:
                request.setHeader(b"retry-after", str(math.ceil(exc.retry_after)).encode())
            write_json(request, exc.status, exc.msg)
        elif isinstance(exc, defer.CancelledError):
            return
        else:
            self.log.failure(
                "{method} {uri} failed", failure, method=request.method, uri=request.uri
            )
            write_json(request, 500, "server error")


class TokenAuth:
    """Checks a token's signature and expiry, then its account binding in the store.

    Every authenticated endpoint takes one of these, so a token of a user that
    does not exist, of a re-created account or revoked by ``/logout_all`` is
    a 401 on every call.
    """

    def __init__(self, signer: TokenSigner, store: Store) -> None:
        self.signer = signer
        self.store = store

    @defer.inlineCallbacks
    def authenticate(self, token: str | bytes) -> Any:
        """Fires with the token's :class:`~gochat.auth.Claims`, or fails with BadToken."""
        claims: Claims = self.signer.verify(token)
        account = yield self.store.account(claims.user_id)
        check_account(claims, account)
        return claims


class Api:
    """The handlers of the Go server's calls."""

    def __init__(
        self,
        store: Store,
        signer: TokenSigner,
        passwords: Passwords,
        auth_limiter: RateLimiter | None = None,
        register_limiter: RateLimiter | None = None,
        on_logout_all: Callable[[int, int], Any] | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.passwords = passwords
        self.auth_limiter = auth_limiter  # failed logins: password guessing
        self.register_limiter = register_limiter  # sign-ups
        #: ``(user_id, new generation)`` after /logout_all: close the user's live sessions
        self.on_logout_all = on_logout_all

    @staticmethod
    def _address(request: Request) -> str:
        # The TCP peer, not a header the client sets.
        return getattr(request.getClientAddress(), "host", None) or "unknown"

    @staticmethod
    def _refuse(limiter: RateLimiter, address: str, reason: str) -> ApiError:
        metrics.REFUSED.labels(reason).inc()
        return ApiError(429, "too many attempts, slow down", limiter.retry_after(address))

    @defer.inlineCallbacks
    def register(self, request: Request, params: Params, _: int) -> Any:
        limiter = self.register_limiter
        if limiter is not None and not limiter.allow(address := self._address(request)):
            raise self._refuse(limiter, address, "register_rate")
        phone = params.text("phone_number", MAX_PHONE)
        password = params.text("password", MAX_PASSWORD, controls=True)
        nickname = check_name(params.text("nickname", NICKNAME_MAX), "nickname", NICKNAME_MAX)
        hashed = yield self.passwords.hash(password)
        try:
            account = yield self.store.create_account(phone, nickname, hashed)
        except Conflict:
            raise ApiError(409, "phone number already registered") from None
        return {"token": self.signer.issue(account), "id": str(account.user_id)}

    @defer.inlineCallbacks
    def login(self, request: Request, params: Params, _: int) -> Any:
        # Every attempt takes a token from the address's bucket BEFORE the
        # password is checked, so concurrent guesses cannot all be evaluated
        # against one remaining token; a successful login gives it back, so a
        # guesser is stopped while a load test logging in thousands of users
        # one after another from one address is not.
        phone = params.text("phone_number", MAX_PHONE)
        password = params.text("password", MAX_PASSWORD, controls=True)
        limiter = self.auth_limiter
        address = self._address(request)
        if limiter is not None and not limiter.allow(address):
            raise self._refuse(limiter, address, "auth_rate")
        row = yield self.store.login_record(phone)
        if row is None:
            # Hash anyway so an unknown number takes as long as a wrong password.
            yield self.passwords.hash(password)
            raise ApiError(401, "wrong phone number or password")
        account, stored = row
        ok = yield self.passwords.verify(stored, password)
        if not ok:
            raise ApiError(401, "wrong phone number or password")
        if is_legacy_hash(stored):
            # Imported from GoChat: verified once, now replaced by argon2id.
            rehashed = yield self.passwords.hash(password)
            yield self.store.set_password_hash(account.user_id, rehashed)
        if limiter is not None:
            limiter.refund(address)
        return {"token": self.signer.issue(account), "user_id": str(account.user_id)}

    @defer.inlineCallbacks
    def logout_all(self, request: Request, params: Params, user_id: int) -> Any:
        """Revoke every token of the caller (this one too) and close their live sessions."""
        try:
            account = yield self.store.bump_token_generation(user_id)
        except NotFound:
            raise ApiError(401, "bad token: no such user") from None
        if self.on_logout_all is not None:
            self.on_logout_all(user_id, account.token_generation)
        return {}

    @defer.inlineCallbacks
    def add_friend(self, request: Request, params: Params, user_id: int) -> Any:
        friend_id = params.id("friend_id")
        if friend_id == user_id:
            raise ApiError(400, "cannot befriend yourself")
        try:
            yield self.store.add_friend(user_id, friend_id)
        except NotFound as exc:
            raise ApiError(404, str(exc)) from None
        return {}

    @defer.inlineCallbacks
    def create_group(self, request: Request, params: Params, user_id: int) -> Any:
        name = check_name(params.text("name", GROUP_NAME_MAX), "name", GROUP_NAME_MAX)
        ids = params.ids("ids")
        if len(set(ids)) > MAX_GROUP_MEMBERS:
            raise ApiError(400, f"a group holds at most {MAX_GROUP_MEMBERS} members")
        try:
            group_id = yield self.store.create_group(user_id, name, ids)
        except NotFound as exc:
            raise ApiError(404, str(exc)) from None
        return {"id": str(group_id)}

    @defer.inlineCallbacks
    def group_users(self, request: Request, params: Params, user_id: int) -> Any:
        group_id = params.id("group_id")
        members = yield self.store.group_members(group_id)
        if not members:
            raise ApiError(404, f"group {group_id} not found")
        if user_id not in members:
            raise ApiError(403, "not a member of this group")
        return {"ids": [str(m) for m in members]}


class Root(resource.Resource):
    """``/``: API calls as children; unknown paths are a JSON 404."""

    def getChild(self, path: bytes, request: Request) -> resource.Resource:  # noqa: N802
        return NotFoundResource()

    def render(self, request: Request) -> bytes:
        """A folder such as ``/friend`` is no call either."""
        return NotFoundResource().render(request)


class NotFoundResource(resource.Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return json.dumps({"code": 404, "msg": "not found", "data": {}}).encode()


def build_root(
    store: Store,
    signer: TokenSigner,
    passwords: Passwords,
    auth_limiter: RateLimiter | None = None,
    register_limiter: RateLimiter | None = None,
    on_logout_all: Callable[[int, int], Any] | None = None,
    hub: Any = None,
    search_limiter: RateLimiter | None = None,
) -> Root:
    api = Api(store, signer, passwords, auth_limiter, register_limiter, on_logout_all)
    auth = TokenAuth(signer, store)  # every authenticated Endpoint takes this
    root = Root()
    root.putChild(b"register", Endpoint(b"POST", api.register))
    root.putChild(b"login", Endpoint(b"POST", api.login))
    friend = Root()
    friend.putChild(b"add", Endpoint(b"POST", api.add_friend, auth))
    root.putChild(b"friend", friend)
    group = Root()
    group.putChild(b"create", Endpoint(b"POST", api.create_group, auth))
    root.putChild(b"group", group)
    group_user = Root()
    group_user.putChild(b"list", Endpoint(b"GET", api.group_users, auth))
    root.putChild(b"group_user", group_user)
    if hub is not None:
        from gochat.api.people import PeopleApi, mount_people

        mount_people(root, friend, group, PeopleApi(store, hub, search_limiter), auth)
    root.putChild(b"logout_all", Endpoint(b"POST", api.logout_all, auth))
    return root


def build_site(
    store: Store,
    signer: TokenSigner,
    passwords: Passwords,
    ws_resource: resource.Resource | None = None,
    auth_limiter: RateLimiter | None = None,
    register_limiter: RateLimiter | None = None,
    on_logout_all: Callable[[int, int], Any] | None = None,
    hub: Any = None,
    search_limiter: RateLimiter | None = None,
) -> server.Site:
    root = build_root(
        store,
        signer,
        passwords,
        auth_limiter,
        register_limiter,
        on_logout_all,
        hub,
        search_limiter,
    )
    if ws_resource is not None:
        root.putChild(b"ws", ws_resource)
    web.mount(root, NotFoundResource())
    site = server.Site(root, requestFactory=BoundedRequest)
    site.displayTracebacks = False
    set_read_timeout(site, READ_TIMEOUT)
    return site

"""Resources of the HTTP API and the site that mounts them with ``/ws``.

Requests are form-encoded (what the Go clients send) or JSON. Every response
is ``{"code", "msg", "data"}`` with an HTTP status that fits.
"""

from __future__ import annotations

import io
import json
import math
import unicodedata
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.server import Request

from gochat import metrics, web
from gochat.auth import BadToken, Passwords, TokenSigner
from gochat.ratelimit import RateLimiter
from gochat.store import Conflict, NotFound, Store
from gochat.store.store import MAX_ID

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
        self.channel.transport.write(
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
            self.site = self.channel.site
            self.setHeader(b"connection", b"close")
            write_json(self, 413, f"request body over {self.max_body} bytes")
            return
        super().process()


def write_json(request: Request, status: int, msg: str, data: Any = None) -> None:
    body = json.dumps({"code": status, "msg": msg, "data": data if data is not None else {}})
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.write(body.encode())
    request.finish()


class Params:
    """Request parameters from the query string, a form body or a JSON body."""

    def __init__(self, request: Request) -> None:
        self.values: dict[str, list[Any]] = {}
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
                    self.values[key] = value if isinstance(value, list) else [value]

    def text(self, name: str, max_len: int, required: bool = True) -> str:
        values = self.values.get(name)
        if not values or values[-1] is None or str(values[-1]) == "":
            if required:
                raise ApiError(400, f"missing parameter {name}")
            return ""
        value = values[-1]
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ApiError(400, f"parameter {name} must be a string")
        value = str(value)
        if len(value) > max_len:
            raise ApiError(400, f"parameter {name} longer than {max_len} characters")
        return value

    def id(self, name: str) -> int:
        return parse_id(self.text(name, 20), name)

    def ids(self, name: str) -> list[int]:
        raw = self.values.get(name)
        if raw is None:
            raw = self.values.get(name + "[]", [])
        out = []
        for value in raw:
            for part in str(value).split(","):
                if part.strip():
                    out.append(parse_id(part.strip(), name))
        return out


def check_name(value: str, name: str, max_len: int) -> str:
    """A display name: 1 to ``max_len`` characters, no control characters, not blank."""
    if not 1 <= len(value) <= max_len:
        raise ApiError(400, f"parameter {name} must be 1 to {max_len} characters")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ApiError(400, f"parameter {name} must not contain control characters")
    if not value.strip():
        raise ApiError(400, f"parameter {name} must not be blank")
    return value


def parse_id(value: str, name: str) -> int:
    if not value.isdigit():
        raise ApiError(400, f"parameter {name} must be a decimal id")
    number = int(value)
    if not 0 < number <= MAX_ID:
        raise ApiError(400, f"parameter {name} is out of range")
    return number


class Endpoint(resource.Resource):
    """One API call; ``handler(request, params, user_id)`` returns data or a Deferred."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        method: bytes,
        handler: Callable[..., Any],
        signer: TokenSigner | None = None,
    ) -> None:
        super().__init__()
        self.method = method
        self.handler = handler
        self.signer = signer  # set: the call needs a token

    def render(self, request: Request) -> Any:
        if any(request.postpath):  # /register/anything is not /register
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

    def _call(self, request: Request) -> Any:
        user_id = 0
        if self.signer is not None:
            user_id = self._authenticate(request)
        return self.handler(request, Params(request), user_id)

    def _authenticate(self, request: Request) -> int:
        token = request.getHeader(b"token")
        if not token:
            auth = request.getHeader(b"authorization") or b""
            scheme, _, value = auth.partition(b" ")
            if scheme.lower() == b"bearer":
                token = value.strip()
        if not token:
            raise ApiError(401, "missing token")
        try:
            return self.signer.verify(token)  # type: ignore[union-attr]
        except BadToken as exc:
            raise ApiError(401, f"bad token: {exc}") from None

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


class Api:
    """The handlers of the Go server's calls."""

    def __init__(
        self,
        store: Store,
        signer: TokenSigner,
        passwords: Passwords,
        auth_limiter: RateLimiter | None = None,
        register_limiter: RateLimiter | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.passwords = passwords
        self.auth_limiter = auth_limiter  # failed logins: password guessing
        self.register_limiter = register_limiter  # sign-ups

    @staticmethod
    def _address(request: Request) -> str:
        # The TCP peer, not a header the client sets.
        return getattr(request.getClientAddress(), "host", None) or "unknown"

    @staticmethod
    def _refuse(limiter: RateLimiter, address: str, reason: str) -> ApiError:
        metrics.REFUSED.labels(reason).inc()
        return ApiError(429, "too many attempts, slow down", limiter.retry_after(address))

    def _failed_login(self, request: Request) -> None:
        """Charge a failed login to the caller's address."""
        if self.auth_limiter is not None:
            self.auth_limiter.allow(self._address(request))

    @defer.inlineCallbacks
    def register(self, request: Request, params: Params, _: int) -> Any:
        limiter = self.register_limiter
        if limiter is not None and not limiter.allow(address := self._address(request)):
            raise self._refuse(limiter, address, "register_rate")
        phone = params.text("phone_number", MAX_PHONE)
        password = params.text("password", MAX_PASSWORD)
        nickname = params.text("nickname", MAX_NAME)
        hashed = yield self.passwords.hash(password)
        try:
            user_id = yield self.store.create_user(phone, nickname, hashed)
        except Conflict:
            raise ApiError(409, "phone number already registered") from None
        return {"token": self.signer.issue(user_id), "id": str(user_id)}

    @defer.inlineCallbacks
    def login(self, request: Request, params: Params, _: int) -> Any:
        # Only failed attempts use up the budget, so a guesser is stopped while
        # a load test logging in thousands of users from one address is not.
        limiter = self.auth_limiter
        if limiter is not None and limiter.exhausted(address := self._address(request)):
            raise self._refuse(limiter, address, "auth_rate")
        phone = params.text("phone_number", MAX_PHONE)
        password = params.text("password", MAX_PASSWORD)
        row = yield self.store.get_user_by_phone(phone)
        if row is None:
            # Hash anyway so an unknown number takes as long as a wrong password.
            yield self.passwords.hash(password)
            self._failed_login(request)
            raise ApiError(401, "wrong phone number or password")
        user_id, stored = row
        ok = yield self.passwords.verify(stored, password)
        if not ok:
            self._failed_login(request)
            raise ApiError(401, "wrong phone number or password")
        return {"token": self.signer.issue(user_id), "user_id": str(user_id)}

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
        name = params.text("name", 128)
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
    hub: Any = None,
    search_limiter: RateLimiter | None = None,
) -> Root:
    api = Api(store, signer, passwords, auth_limiter, register_limiter)
    root = Root()
    root.putChild(b"register", Endpoint(b"POST", api.register))
    root.putChild(b"login", Endpoint(b"POST", api.login))
    friend = Root()
    friend.putChild(b"add", Endpoint(b"POST", api.add_friend, signer))
    root.putChild(b"friend", friend)
    group = Root()
    group.putChild(b"create", Endpoint(b"POST", api.create_group, signer))
    root.putChild(b"group", group)
    group_user = Root()
    group_user.putChild(b"list", Endpoint(b"GET", api.group_users, signer))
    root.putChild(b"group_user", group_user)
    if hub is not None:
        from gochat.api.people import PeopleApi, mount_people

        mount_people(root, friend, group, PeopleApi(store, hub, search_limiter), signer)
    return root


def build_site(
    store: Store,
    signer: TokenSigner,
    passwords: Passwords,
    ws_resource: resource.Resource | None = None,
    auth_limiter: RateLimiter | None = None,
    register_limiter: RateLimiter | None = None,
    hub: Any = None,
    search_limiter: RateLimiter | None = None,
) -> server.Site:
    root = build_root(store, signer, passwords, auth_limiter, register_limiter, hub, search_limiter)
    if ws_resource is not None:
        root.putChild(b"ws", ws_resource)
    web.mount(root, NotFoundResource())
    site = server.Site(root, requestFactory=BoundedRequest)
    site.displayTracebacks = False
    return site

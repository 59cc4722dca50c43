"""The HTTP API from Python, on ``twisted.web.client.Agent``."""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody
from twisted.web.http_headers import Headers

#: A JSON object as the node sends it: the ``data`` of a reply.
JsonObject = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(f"{status}: {msg}")
        self.status = status
        self.msg = msg


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:  # noqa: N802
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


class HttpApi:
    """``HttpApi("http://127.0.0.1:9090")``: each call fires with the ``data`` object.

    ``https://`` URLs verify the node's certificate and host name, against the
    system's trusted CAs or against ``trust_root`` (an
    ``IOpenSSLTrustRoot`` such as ``ssl.Certificate`` or
    ``ssl.trustRootFromCertificates([...])``) when given.
    """

    def __init__(
        self, base_url: str, reactor: Any = None, agent: Any = None, trust_root: Any = None
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.base_url = base_url.rstrip("/")
        if agent is None:
            agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust_root))
        self.agent = agent

    @defer.inlineCallbacks
    def call(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]] | dict[str, Any] | None = None,
        token: str | None = None,
        json_body: bool = False,
    ) -> Generator[defer.Deferred[Any], Any, JsonObject]:
        """Fires with the reply's ``data``, or fails with :class:`ApiError`."""
        headers = {b"user-agent": [b"gochat-client"]}
        if token:
            headers[b"token"] = [token.encode()]
        url = self.base_url + path
        body = None
        if method == "GET":
            if params:
                url += "?" + urlencode(params, doseq=True)
        elif json_body:
            headers[b"content-type"] = [b"application/json"]
            body = _Body(json.dumps(dict(params or {})).encode())
        else:
            headers[b"content-type"] = [b"application/x-www-form-urlencoded"]
            body = _Body(urlencode(params or [], doseq=True).encode())
        response = yield self.agent.request(method.encode(), url.encode(), Headers(headers), body)
        raw = yield readBody(response)
        try:
            reply = json.loads(raw)
        except ValueError:
            raise ApiError(response.code, raw[:200].decode("utf-8", "replace")) from None
        if response.code != 200 or reply.get("code") != 200:
            raise ApiError(response.code, reply.get("msg", ""))
        data: JsonObject = reply.get("data", {})
        return data

    def register(self, phone: str, password: str, nickname: str) -> defer.Deferred[JsonObject]:
        """Fires with ``{"token", "id"}``."""
        return self.call(
            "POST",
            "/register",
            [("phone_number", phone), ("password", password), ("nickname", nickname)],
        )

    def login(self, phone: str, password: str) -> defer.Deferred[JsonObject]:
        """Fires with ``{"token", "user_id"}``."""
        return self.call("POST", "/login", [("phone_number", phone), ("password", password)])

    def add_friend(self, token: str, friend_id: int) -> defer.Deferred[JsonObject]:
        return self.call("POST", "/friend/add", [("friend_id", str(friend_id))], token)

    def create_group(self, token: str, name: str, ids: list[int]) -> defer.Deferred[JsonObject]:
        """Fires with ``{"id"}``; the caller is a member too."""
        params = [("name", name)] + [("ids", str(i)) for i in ids]
        return self.call("POST", "/group/create", params, token)

    def group_users(self, token: str, group_id: int) -> defer.Deferred[JsonObject]:
        return self.call("GET", "/group_user/list", [("group_id", str(group_id))], token)

    # -- people, groups and conversations ----------------------------------------

    def user_info(self, token: str, ids: list[int]) -> defer.Deferred[JsonObject]:
        """Fires with ``{"users": [{"id", "nickname"}]}``; at most 500 ids, unknown left out."""
        return self.call("GET", "/user/info", [("ids", str(i)) for i in ids], token)

    def search_user(self, token: str, phone: str) -> defer.Deferred[JsonObject]:
        """Fires with ``{"id", "nickname"}`` of the user with exactly this phone number.

        Fails with :class:`ApiError` 404 when nobody has it (and 429 past the
        node's per-address budget: the search cannot enumerate the users).
        """
        return self.call("GET", "/user/search", [("phone_number", phone)], token)

    def update_user(self, token: str, nickname: str) -> defer.Deferred[JsonObject]:
        """Change the caller's nickname (1-32 characters, no control characters)."""
        return self.call("POST", "/user/update", [("nickname", nickname)], token)

    def friends(self, token: str) -> defer.Deferred[JsonObject]:
        """Fires with ``{"friends": [{"id", "nickname"}]}``."""
        return self.call("GET", "/friend/list", None, token)

    def groups(self, token: str) -> defer.Deferred[JsonObject]:
        """Fires with ``{"groups": [{"id", "name", "owner_id", "member_count"}]}``: the caller's."""
        return self.call("GET", "/group/list", None, token)

    def group_info(self, token: str, group_id: int) -> defer.Deferred[JsonObject]:
        """Fires with ``{"id", "name", "owner_id", "members": [{"id", "nickname"}]}``.

        Members only: anyone else gets :class:`ApiError` 403.
        """
        return self.call("GET", "/group/info", [("group_id", str(group_id))], token)

    def add_members(self, token: str, group_id: int, ids: list[int]) -> defer.Deferred[JsonObject]:
        """Any member may add; each member gets a ``members_added`` system message."""
        params = [("group_id", str(group_id))] + [("ids", str(i)) for i in ids]
        return self.call("POST", "/group/members/add", params, token)

    def remove_members(
        self, token: str, group_id: int, ids: list[int]
    ) -> defer.Deferred[JsonObject]:
        """The owner only (403 otherwise); the removed get the removal, then nothing more."""
        params = [("group_id", str(group_id))] + [("ids", str(i)) for i in ids]
        return self.call("POST", "/group/members/remove", params, token)

    def leave_group(self, token: str, group_id: int) -> defer.Deferred[JsonObject]:
        """Leave; an owner who leaves hands the group to the longest-standing member."""
        return self.call("POST", "/group/leave", [("group_id", str(group_id))], token)

    def rename_group(self, token: str, group_id: int, name: str) -> defer.Deferred[JsonObject]:
        """The owner only; the name is 1-64 characters."""
        return self.call(
            "POST", "/group/update", [("group_id", str(group_id)), ("name", name)], token
        )

    def conversations(
        self, token: str, limit: int | None = None, before: str | int | None = None
    ) -> defer.Deferred[JsonObject]:
        """Fires with ``{"conversations": [...]}``, most recent first.

        Each has ``session_type``, ``peer_id``, ``name``, ``last_message`` (the
        Message fields), ``unread`` and ``read_seq``. ``before`` pages on (the
        node's paging key, as its docs say).
        """
        params: list[tuple[str, str]] = []
        if limit is not None:
            params.append(("limit", str(limit)))
        if before is not None:
            params.append(("before", str(before)))
        return self.call("GET", "/conversations", params, token)

    def mark_read(
        self, token: str, session_type: int, peer_id: int, seq: int
    ) -> defer.Deferred[JsonObject]:
        """Everything of the conversation up to ``seq`` (the caller's own seq) is read."""
        params = [("session_type", str(session_type)), ("peer_id", str(peer_id)), ("seq", str(seq))]
        return self.call("POST", "/conversation/read", params, token)

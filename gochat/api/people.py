"""HTTP calls of people, groups that change and conversations.

Handlers only parse parameters and shape answers; group changes go to the
hub (they are committed by the message writer, in order with messages),
reads go to the store. ``docs/protocol/people.rst`` is their contract.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.web import resource
from twisted.web.server import Request

from gochat import codes, metrics
from gochat.api.resource import (
    MAX_GROUP_MEMBERS,
    ApiError,
    Endpoint,
    Params,
    TokenAuth,
    check_name,
)
from gochat.inputs import GROUP_NAME_MAX as MAX_GROUP_NAME
from gochat.inputs import NICKNAME_MAX as MAX_NICKNAME
from gochat.ratelimit import RateLimiter
from gochat.store import NotFound, Store
from gochat.store.people import NO_CHANGE, Conversation, GroupOp, message_json
from gochat.store.store import MAX_ID

MAX_INFO_IDS = 500
MAX_PHONE = 32
DEFAULT_CONVERSATIONS = 50
MAX_CONVERSATIONS = 200
#: /user/search per client address: this many a minute, this many at once
SEARCH_RATE = 10
SEARCH_BURST = 20

#: the answer to a refused group change, by the code the store gave
_CHANGE_STATUS = {
    codes.NO_DATA: 404,
    codes.UNAUTHORIZED: 403,
    codes.PARAM_ILLEGAL: 400,
}


def _user(uid: int, nickname: str) -> dict[str, str]:
    return {"id": str(uid), "nickname": nickname}


class PeopleApi:
    def __init__(self, store: Store, hub: Any, search_limiter: RateLimiter | None = None) -> None:
        self.store = store
        self.hub = hub
        self.search_limiter = search_limiter  # /user/search: no enumerating the user base

    # -- people --------------------------------------------------------------

    @defer.inlineCallbacks
    def user_info(self, request: Request, params: Params, user_id: int) -> Any:
        ids = params.ids("ids")
        if len(ids) > MAX_INFO_IDS:
            raise ApiError(400, f"at most {MAX_INFO_IDS} ids")
        users = yield self.store.users_info(ids)
        return {"users": [_user(u, n) for u, n in users]}

    @defer.inlineCallbacks
    def user_search(self, request: Request, params: Params, user_id: int) -> Any:
        limiter = self.search_limiter
        if limiter is not None:
            address = getattr(request.getClientAddress(), "host", None) or "unknown"
            if not limiter.allow(address):
                metrics.REFUSED.labels("search_rate").inc()
                raise ApiError(429, "too many searches, slow down", limiter.retry_after(address))
        phone = params.text("phone_number", MAX_PHONE)
        found = yield self.store.user_by_phone(phone)
        if found is None:
            raise ApiError(404, "no user with that phone number")
        return _user(*found)

    @defer.inlineCallbacks
    def user_update(self, request: Request, params: Params, user_id: int) -> Any:
        nickname = check_name(params.text("nickname", MAX_NICKNAME), "nickname", MAX_NICKNAME)
        yield self.store.set_nickname(user_id, nickname)
        return {}

    @defer.inlineCallbacks
    def friend_list(self, request: Request, params: Params, user_id: int) -> Any:
        friends = yield self.store.friends(user_id)
        return {"friends": [_user(u, n) for u, n in friends]}

    # -- groups --------------------------------------------------------------

    @defer.inlineCallbacks
    def group_list(self, request: Request, params: Params, user_id: int) -> Any:
        groups = yield self.store.user_groups(user_id)
        return {
            "groups": [
                {"id": str(g), "name": name, "owner_id": str(owner), "member_count": count}
                for g, name, owner, count in groups
            ]
        }

    @defer.inlineCallbacks
    def group_info(self, request: Request, params: Params, user_id: int) -> Any:
        group_id = params.id("group_id")
        info = yield self.store.group_info(group_id)
        if info is None:
            raise ApiError(404, f"group {group_id} not found")
        name, owner, members, read_count = info
        if user_id not in {m for m, _ in members}:
            raise ApiError(403, "not a member of this group")
        return {
            "id": str(group_id),
            "name": name,
            "owner_id": str(owner),
            "members": [_user(u, n) for u, n in members],
            "read_count": read_count,
        }

    @defer.inlineCallbacks
    def _change(self, op: GroupOp) -> Any:
        result = yield self.hub.change_group(op)
        if result.code in (codes.OK, NO_CHANGE):
            return {}
        raise ApiError(_CHANGE_STATUS.get(result.code, 400), result.detail or "refused")

    def _member_ids(self, params: Params) -> list[int]:
        ids = params.ids("ids")
        if not ids:
            raise ApiError(400, "missing parameter ids")
        if len(set(ids)) > MAX_GROUP_MEMBERS:
            raise ApiError(400, f"a group holds at most {MAX_GROUP_MEMBERS} members")
        return ids

    def members_add(self, request: Request, params: Params, user_id: int) -> Any:
        group_id = params.id("group_id")
        return self._change(GroupOp("add", group_id, user_id, self._member_ids(params)))

    def members_remove(self, request: Request, params: Params, user_id: int) -> Any:
        group_id = params.id("group_id")
        return self._change(GroupOp("remove", group_id, user_id, self._member_ids(params)))

    def leave(self, request: Request, params: Params, user_id: int) -> Any:
        return self._change(GroupOp("leave", params.id("group_id"), user_id))

    def update(self, request: Request, params: Params, user_id: int) -> Any:
        group_id = params.id("group_id")
        name = check_name(params.text("name", MAX_GROUP_NAME), "name", MAX_GROUP_NAME)
        return self._change(GroupOp("rename", group_id, user_id, name=name))

    # -- conversations -------------------------------------------------------

    @defer.inlineCallbacks
    def conversations(self, request: Request, params: Params, user_id: int) -> Any:
        raw = params.text("limit", 6, required=False)
        if raw and not raw.isdigit():
            raise ApiError(400, "parameter limit must be a number")
        limit = int(raw) if raw else DEFAULT_CONVERSATIONS
        if not 1 <= limit <= MAX_CONVERSATIONS:
            raise ApiError(400, f"parameter limit must be 1 to {MAX_CONVERSATIONS}")
        before = _cursor(params.text("before", 64, required=False))
        page, more = yield self.store.conversations(user_id, limit, before)
        return {
            "conversations": [_conversation_json(c) for c in page],
            "next_before": ":".join(map(str, more)) if more else "",
        }

    @defer.inlineCallbacks
    def conversation_read(self, request: Request, params: Params, user_id: int) -> Any:
        st = params.text("session_type", 1)
        if st not in ("1", "2"):
            raise ApiError(400, "parameter session_type must be 1 or 2")
        peer = params.id("peer_id")
        seq = params.id("seq")
        try:
            yield self.hub.mark_read(user_id, int(st), peer, seq)
        except NotFound as exc:
            raise ApiError(404, str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return {}


def _conversation_json(c: Conversation) -> dict[str, Any]:
    """One entry of ``/conversations``; a one-to-one entry adds ``peer_read_seq``."""
    out: dict[str, Any] = {
        "session_type": c.session_type,
        "peer_id": str(c.peer_id),
        "name": c.name,
        "last_message": message_json(c.last_message) if c.last_message else None,
        "unread": c.unread,
        "read_seq": str(c.read_seq),
    }
    if c.peer_read_seq is not None:
        out["peer_read_seq"] = str(c.peer_read_seq)
    return out


def _cursor(value: str) -> tuple[int, int, int] | None:
    if not value:
        return None
    parts = value.split(":")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 20 for p in parts):
        raise ApiError(400, "parameter before is not a cursor this call gave")
    when, st, peer = (int(p) for p in parts)
    if st not in (1, 2) or peer > MAX_ID or when > MAX_ID:
        raise ApiError(400, "parameter before is not a cursor this call gave")
    return when, st, peer


def _folder(parent: resource.Resource, name: bytes) -> resource.Resource:
    from gochat.api.resource import Root

    child = parent.children.get(name)
    if child is None:
        child = Root()
        parent.putChild(name, child)
    return child


def mount_people(
    root: resource.Resource,
    friend: resource.Resource,
    group: resource.Resource,
    api: PeopleApi,
    signer: TokenAuth,
) -> None:
    """Put the calls under ``root`` (``friend`` and ``group`` are its existing folders)."""
    user = _folder(root, b"user")
    user.putChild(b"info", Endpoint(b"GET", api.user_info, signer))
    user.putChild(b"search", Endpoint(b"GET", api.user_search, signer))
    user.putChild(b"update", Endpoint(b"POST", api.user_update, signer))
    friend.putChild(b"list", Endpoint(b"GET", api.friend_list, signer))
    group.putChild(b"list", Endpoint(b"GET", api.group_list, signer))
    group.putChild(b"info", Endpoint(b"GET", api.group_info, signer))
    members = _folder(group, b"members")
    members.putChild(b"add", Endpoint(b"POST", api.members_add, signer))
    members.putChild(b"remove", Endpoint(b"POST", api.members_remove, signer))
    group.putChild(b"leave", Endpoint(b"POST", api.leave, signer))
    group.putChild(b"update", Endpoint(b"POST", api.update, signer))
    root.putChild(b"conversations", Endpoint(b"GET", api.conversations, signer))
    conversation = _folder(root, b"conversation")
    conversation.putChild(b"read", Endpoint(b"POST", api.conversation_read, signer))

"""Transaction helpers for groups that change, conversations and read positions.

Called from :class:`gochat.store.store.Store` inside its transactions; they
only read and write rows. The message path calls :func:`record_positions`
once per committed batch: a conversation counter per conversation of the
batch, one narrow row per message, one read position per sender, never a
row per recipient.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gochat import codes
from gochat.pb import pb
from gochat.store.database import Cursor, Refusal

#: ``(session_type, low_id, high_id)``: a pair (1, lower id, higher id) or a group (2, id, 0)
ConvKey = tuple[int, int, int]

#: code of a group change that changed nothing (no event is written)
NO_CHANGE = -1
#: rows looked at to find a group's last message in a user's list
LAST_SEQ_WINDOW = 10000
#: members a group may reach by additions (as at its creation)
MAX_GROUP_MEMBERS = 10000
#: conversation counters kept in memory (single writer; least recently used
#: dropped past this, and read again when needed), and group versions
POS_CACHE_LIMIT = 262144

_CONV_COLUMNS = (
    "INSERT INTO conversations (user_id, session_type, peer_id, read_pos, read_seq, left_pos,"
    " left_owner_id, left_owner_seq, left_time) VALUES"
)
_CONV_KEY = "user_id, session_type, peer_id"
_HEAD_KEY = "session_type, low_id, high_id"


class NotInConversation(Refusal, ValueError):
    """A read position names a seq that is no message of that conversation."""


@dataclass
class GroupOp:
    """A membership change or rename, committed by the message writer in order."""

    kind: str  # "add", "remove", "leave", "rename"
    group_id: int
    actor_id: int
    user_ids: list[int] = field(default_factory=list)
    name: str = ""
    #: filled in the transaction: who joined / who is gone, for the read rows
    added: tuple[int, ...] = ()
    gone: tuple[int, ...] = ()


def conv_key(msg: pb.Message) -> ConvKey:
    if msg.session_type == pb.ST_Single:
        a, b = msg.sender_id, msg.receiver_id
        return (1, a, b) if a < b else (1, b, a)
    return (2, msg.receiver_id, 0)


def head_key(user_id: int, session_type: int, peer_id: int) -> ConvKey:
    """The conversation ``user_id`` calls ``(session_type, peer_id)``."""
    if session_type == pb.ST_Single:
        return (1, min(user_id, peer_id), max(user_id, peer_id))
    return (2, peer_id, 0)


def apply_group_op(
    cur: Cursor, op: GroupOp, members: tuple[int, ...], now: int
) -> tuple[int, str, tuple[int, ...], tuple[int, ...], pb.Message | None]:
    """Check and apply ``op``; ``(code, detail, new members, recipients, event)``."""
    gid = op.group_id
    op.added = op.gone = ()
    if not members:
        return codes.NO_DATA, f"group {gid} not found", members, (), None
    if op.actor_id not in members:
        return codes.UNAUTHORIZED, "not a member of this group", members, (), None
    cur.execute("SELECT owner_id FROM chat_groups WHERE id = ?", (gid,))
    owner = int(cur.fetchone()[0])
    event: dict[str, Any] = {"group_id": str(gid), "actor_id": str(op.actor_id)}
    present = set(members)
    after = present
    if op.kind == "add":
        wanted = sorted(set(op.user_ids))
        from gochat.store.store import _existing_users

        missing = set(wanted) - _existing_users(cur, set(wanted))
        if missing:
            detail = "user " + ", ".join(str(m) for m in sorted(missing)) + " not found"
            return codes.NO_DATA, detail, members, (), None
        new = [u for u in wanted if u not in present]
        if not new:
            return NO_CHANGE, "", members, (), None
        if len(present) + len(new) > MAX_GROUP_MEMBERS:
            detail = f"a group holds at most {MAX_GROUP_MEMBERS} members"
            return codes.PARAM_ILLEGAL, detail, members, (), None
        cur.executemany(
            "INSERT INTO group_members (group_id, user_id, joined_at) VALUES (?, ?, ?)",
            [(gid, u, now) for u in new],
        )
        op.added = tuple(new)
        after = present | set(new)
        recipients = tuple(sorted(after))
        event.update(event="members_added", user_ids=[str(u) for u in new])
    elif op.kind in ("remove", "leave"):
        if op.kind == "remove":
            if op.actor_id != owner:
                return codes.UNAUTHORIZED, "only the owner may remove members", members, (), None
            if op.actor_id in op.user_ids:
                return codes.PARAM_ILLEGAL, "the owner leaves with /group/leave", members, (), None
            gone = sorted(set(op.user_ids) & present)
            event.update(event="members_removed")
        else:
            gone = [op.actor_id]
            event.update(event="member_left")
        if not gone:
            return NO_CHANGE, "", members, (), None
        cur.executemany(
            "DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
            [(gid, u) for u in gone],
        )
        op.gone = tuple(gone)
        after = present - set(gone)
        recipients = members
        event["user_ids"] = [str(u) for u in gone]
        if owner in gone and after:
            cur.execute(
                "SELECT user_id FROM group_members WHERE group_id = ?"
                " ORDER BY joined_at, user_id LIMIT 1",
                (gid,),
            )
            new_owner = int(cur.fetchone()[0])
            cur.execute("UPDATE chat_groups SET owner_id = ? WHERE id = ?", (new_owner, gid))
            event["owner_id"] = str(new_owner)
    elif op.kind == "rename":
        if op.actor_id != owner:
            return codes.UNAUTHORIZED, "only the owner may rename the group", members, (), None
        cur.execute("UPDATE chat_groups SET name = ? WHERE id = ?", (op.name, gid))
        recipients = members
        event.update(event="group_renamed", name=op.name)
    else:  # pragma: no cover - the API builds only the kinds above
        return codes.PARAM_ILLEGAL, f"unknown change {op.kind}", members, (), None
    cur.execute("UPDATE chat_groups SET version = version + 1 WHERE id = ?", (gid,))
    message = pb.Message(
        session_type=pb.ST_Group,
        receiver_id=gid,
        sender_id=op.actor_id,
        message_type=pb.MT_System,
        content=json.dumps({"event": event.pop("event"), **event}).encode(),
        send_time=now,
    )
    return codes.OK, "", tuple(sorted(after)), recipients, message


def lock_group_versions(cur: Cursor, group_ids: set[int], suffix: str) -> dict[int, int]:
    """``{group: version}``, the rows locked: membership changes serialize with this batch."""
    sql = "SELECT id, version FROM chat_groups WHERE id IN ({marks}) ORDER BY id" + suffix
    return {int(g): int(v) for g, v in cur.select_in(sql, sorted(group_ids))}


def record_positions(
    cur: Cursor,
    engine: Any,
    entries: list[tuple[pb.Message, int, int, Sequence[tuple[int, int]], GroupOp | None]],
    cache: Any,
    now: int,
) -> dict[ConvKey, int]:
    """Positions of a batch's committed messages, in commit order.

    ``entries`` are ``(message, owner, owner_seq, rows, op)``. Fires no
    query per recipient: one counter read and one upsert per conversation,
    one position row per message, one read position per sender.
    """
    if not entries:
        return {}
    # One read of each message's fields (protobuf attribute reads are the
    # costly part of this function); the owner is the sender.
    keyed = []
    for msg, owner, owner_seq, rows, op in entries:
        receiver = msg.receiver_id
        if msg.session_type == pb.ST_Single:
            key = (1, owner, receiver) if owner < receiver else (1, receiver, owner)
        else:
            key = (2, receiver, 0)
        keyed.append((key, receiver, owner, owner_seq, rows, op))
    keys = sorted({k[0] for k in keyed})
    current: dict[ConvKey, int] = {}
    if engine.single_writer:
        get = cache.get
        current = {k: pos for k in keys if (pos := get(k)) is not None}
    missing = [k for k in keys if k not in current]
    if missing and not engine.single_writer:
        # An absent head is created first, so two nodes starting the same
        # conversation at once queue on its row instead of both counting from 0.
        cur.insert_many(
            "INSERT INTO conversation_heads (session_type, low_id, high_id, last_pos,"
            " last_owner_id, last_owner_seq, last_time) VALUES",
            [(*k, 0, 0, 0, now) for k in missing],
            engine.upsert_suffix(_HEAD_KEY, ["session_type"]),
        )
    suffix = engine.lock_rows_suffix()
    for start in range(0, len(missing), 200):
        chunk = missing[start : start + 200]
        where = " OR ".join(["(session_type = ? AND low_id = ? AND high_id = ?)"] * len(chunk))
        cur.execute(
            f"SELECT session_type, low_id, high_id, last_pos FROM conversation_heads"
            f" WHERE {where} ORDER BY session_type, low_id, high_id{suffix}",
            [v for k in chunk for v in k],
        )
        for st, lo, hi, pos in cur.fetchall():
            current[(int(st), int(lo), int(hi))] = int(pos)
    positions: list[int] = []
    heads: dict[ConvKey, tuple[int, ...]] = {}
    senders: dict[tuple[int, int, int], tuple[int, ...]] = {}
    receivers: dict[tuple[int, int, int], tuple[int, ...]] = {}
    for key, peer, owner, owner_seq, rows, op in keyed:
        pos = current.get(key, 0) + 1
        current[key] = pos
        peer_seq = 0
        if key[0] == 1:
            peer_seq = next(seq for uid, seq in rows if uid == peer)
            receivers[(peer, 1, owner)] = (peer, 1, owner, 0, 0, 0, 0, 0, 0)
        positions += (owner, owner_seq, pos, peer_seq)
        heads[key] = (*key, pos, owner, owner_seq, now)
        if op is not None:
            _op_rows(cur, engine, op, pos, owner, owner_seq, rows, now)
        senders[(owner, key[0], peer)] = (owner, key[0], peer, pos, owner_seq, 0, 0, 0, 0)
    cur.insert_flat(
        "INSERT INTO message_positions (owner_id, owner_seq, pos, peer_seq) VALUES", 4, positions
    )
    cur.insert_many(
        "INSERT INTO conversation_heads (session_type, low_id, high_id, last_pos,"
        " last_owner_id, last_owner_seq, last_time) VALUES",
        [heads[k] for k in sorted(heads)],
        engine.upsert_suffix(
            _HEAD_KEY, ["last_pos", "last_owner_id", "last_owner_seq", "last_time"]
        ),
    )
    for key in senders:
        receivers.pop(key, None)  # a sender's own row is written below
    if receivers:
        cur.insert_many(
            _CONV_COLUMNS,
            [receivers[k] for k in sorted(receivers)],
            engine.upsert_suffix(_CONV_KEY, ["user_id"]),  # only creates a missing row
        )
    cur.insert_many(
        _CONV_COLUMNS,
        [senders[k] for k in sorted(senders)],
        engine.upsert_suffix(_CONV_KEY, ["read_pos", "read_seq"]),
    )
    return {k: current[k] for k in keys}


def _op_rows(
    cur: Cursor,
    engine: Any,
    op: GroupOp,
    pos: int,
    owner: int,
    owner_seq: int,
    rows: Sequence[tuple[int, int]],
    now: int,
) -> None:
    """Read rows of a group change: joiners start at the event, leavers stop at it."""
    gid = op.group_id
    seqs = dict(rows)
    if op.added:
        cur.insert_many(
            _CONV_COLUMNS,
            [(u, 2, gid, pos - 1, seqs[u] - 1, 0, 0, 0, 0) for u in op.added],
            engine.upsert_suffix(
                _CONV_KEY,
                [
                    "read_pos",
                    "read_seq",
                    "left_pos",
                    "left_owner_id",
                    "left_owner_seq",
                    "left_time",
                ],
            ),
        )
    if op.gone:
        cur.insert_many(
            _CONV_COLUMNS,
            [(u, 2, gid, 0, 0, pos, owner, owner_seq, now) for u in op.gone],
            engine.upsert_suffix(
                _CONV_KEY, ["left_pos", "left_owner_id", "left_owner_seq", "left_time"]
            ),
        )


def message_json(msg: pb.Message) -> dict[str, Any]:
    """A message as the HTTP API shows it: ids as decimal strings, content as text."""
    raw = bytes(msg.content)
    out: dict[str, Any] = {
        "session_type": msg.session_type,
        "receiver_id": str(msg.receiver_id),
        "sender_id": str(msg.sender_id),
        "message_type": msg.message_type,
        "content": raw.decode("utf-8", "replace"),
        "seq": str(msg.seq),
        "send_time": str(msg.send_time),
    }
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        out["content_base64"] = base64.b64encode(raw).decode()
    return out


def create_group_conversation(cur: Cursor, group_id: int, members: list[int], now: int) -> None:
    """A new group's head and its members' rows (no event: GoChat's clients expect none)."""
    cur.execute(
        "INSERT INTO conversation_heads (session_type, low_id, high_id, last_pos, last_owner_id,"
        " last_owner_seq, last_time) VALUES (2, ?, 0, 0, 0, 0, ?)",
        (group_id, now),
    )
    cur.insert_many(_CONV_COLUMNS, [(m, 2, group_id, 0, 0, 0, 0, 0, 0) for m in members])


def read_count(cur: Cursor, group_id: int) -> int:
    """How many current members have read the group's latest message."""
    cur.execute(
        "SELECT last_pos FROM conversation_heads WHERE session_type = 2 AND low_id = ?"
        " AND high_id = 0",
        (group_id,),
    )
    row = cur.fetchone()
    last = int(row[0]) if row else 0
    cur.execute(
        "SELECT COUNT(*) FROM conversations c JOIN group_members m ON m.group_id = c.peer_id"
        " AND m.user_id = c.user_id WHERE c.session_type = 2 AND c.peer_id = ? AND c.read_pos >= ?",
        (group_id, last),
    )
    return int(cur.fetchone()[0])


@dataclass
class Conversation:
    session_type: int
    peer_id: int
    name: str
    last_message: pb.Message | None
    unread: int
    read_seq: int
    cursor: tuple[int, int, int]  # (time, session_type, peer_id): the paging key
    #: one-to-one only (``None`` for a group): the caller's own seq up to which
    #: the peer has read, 0 if the peer has read nothing of the caller's
    peer_read_seq: int | None = None


def list_conversations(
    cur: Cursor, user_id: int, limit: int, before: tuple[int, int, int] | None
) -> tuple[list[Conversation], tuple[int, int, int] | None]:
    """A page of the user's conversations, most recent first, and the next cursor.

    Reads the user's conversation rows (one per conversation, not per
    message) and, for the page only, each last message.
    """
    cur.execute(
        "SELECT c.session_type, c.peer_id, c.read_pos, c.read_seq, c.left_pos, c.left_owner_id,"
        " c.left_owner_seq, c.left_time, h.last_pos, h.last_owner_id, h.last_owner_seq,"
        " h.last_time FROM conversations c JOIN conversation_heads h"
        " ON h.session_type = c.session_type"
        " AND h.low_id = CASE WHEN c.session_type = 1 AND c.user_id < c.peer_id"
        " THEN c.user_id ELSE c.peer_id END"
        " AND h.high_id = CASE WHEN c.session_type = 2 THEN 0"
        " WHEN c.user_id < c.peer_id THEN c.peer_id ELSE c.user_id END"
        " WHERE c.user_id = ?",
        (user_id,),
    )
    rows = []
    for r in cur.fetchall():
        st, peer, read_pos, read_seq, left_pos = (int(v) for v in r[:5])
        if left_pos:
            last_pos, owner, owner_seq, when = left_pos, int(r[5]), int(r[6]), int(r[7])
        else:
            last_pos, owner, owner_seq, when = int(r[8]), int(r[9]), int(r[10]), int(r[11])
        key = (when, st, peer)
        if before is not None and key >= before:
            continue
        rows.append((key, max(0, last_pos - read_pos), read_seq, owner, owner_seq))
    rows.sort(reverse=True)
    more = len(rows) > limit
    rows = rows[:limit]
    users = sorted({k[2] for k, *_ in rows if k[1] == 1})
    groups = sorted({k[2] for k, *_ in rows if k[1] == 2})
    from gochat.store.store import _nicknames

    names = {(1, u): n for u, n in _nicknames(cur, users)}
    group_names = cur.select_in("SELECT id, name FROM chat_groups WHERE id IN ({marks})", groups)
    names.update(((2, int(g)), n) for g, n in group_names)
    seen = peer_read_seqs(cur, user_id, users)
    out = []
    for key, unread, read_seq, owner, owner_seq in rows:
        _, st, peer = key
        last = None
        if owner:
            last = _last_message(cur, user_id, st, owner, owner_seq, unread, read_seq)
        conv = Conversation(st, peer, names.get((st, peer), ""), last, unread, read_seq, key)
        if st == 1:
            conv.peer_read_seq = seen.get(peer, 0)
        out.append(conv)
    return out, (rows[-1][0] if more and rows else None)


def body_at(user: str, seq: str) -> str:
    """Joins ``r`` (the run) and ``b`` (the body) of the message at ``user``'s ``seq``.

    ``user`` and ``seq`` are SQL expressions. The run holding a seq is the
    first with ``last_seq >= seq`` (an index minimum), if it starts at or
    before it; the body is then the stream's message that far into the run.
    """
    return (
        f" JOIN user_runs r ON r.user_id = {user} AND r.last_seq ="
        f" (SELECT MIN(x.last_seq) FROM user_runs x WHERE x.user_id = {user}"
        f" AND x.last_seq >= {seq}) AND r.seq <= {seq}"
        " JOIN message_bodies b ON b.stream_owner = r.stream_owner"
        f" AND b.stream_seq = r.stream_seq AND b.idx = r.first_idx + ({seq} - r.seq)"
    )


#: the peers' read positions and their messages, by primary keys only
PEER_READ_SQL = (
    "SELECT c.user_id, b.owner_id, b.owner_seq, p.peer_seq FROM conversations c"
    + body_at("c.user_id", "c.read_seq")
    + " LEFT JOIN message_positions p ON p.owner_id = b.owner_id"
    " AND p.owner_seq = b.owner_seq"
    " WHERE c.user_id IN ({marks}) AND c.session_type = 1 AND c.peer_id = ?"
    " AND c.read_seq > 0"
)


def peer_read_seqs(cur: Cursor, user_id: int, peers: list[int]) -> dict[int, int]:
    """``{peer: the caller's own seq up to which that peer has read}`` ("seen").

    The peer's read position names a message by the peer's own seq; that
    message's caller-side seq is its owner seq when the caller sent it, or
    the receiver's seq kept in ``message_positions`` when the peer did. Three
    primary-key look-ups per peer, whatever the length of either history.
    Peers that have read nothing of the conversation are left out.
    """
    out: dict[int, int] = {}
    for peer, owner, owner_seq, peer_seq in cur.select_in(PEER_READ_SQL, peers, [user_id]):
        seq = int(owner_seq) if int(owner) == user_id else int(peer_seq or 0)
        if seq:
            out[int(peer)] = seq
    return out


def _last_message(
    cur: Cursor, user_id: int, st: int, owner: int, owner_seq: int, unread: int, read_seq: int
) -> pb.Message | None:
    cur.execute(
        "SELECT b.sender_id, b.session_type, b.receiver_id, b.message_type, b.content,"
        " b.send_time, p.peer_seq FROM message_bodies b JOIN message_positions p"
        " ON p.owner_id = b.owner_id AND p.owner_seq = b.owner_seq"
        " WHERE b.owner_id = ? AND b.owner_seq = ?",
        (owner, owner_seq),
    )
    row = cur.fetchone()
    if row is None:
        return None
    if owner == user_id:
        seq = owner_seq
    elif st == 1:
        seq = int(row[6])
    elif unread == 0 and read_seq:
        seq = read_seq  # read up to the last message: read_seq is its seq
    else:
        # Each unread message has its own seq past read_seq, so the last one
        # is at read_seq + unread or later: a bounded walk of the user's list.
        low = read_seq + unread
        # (A run is at most one batch long, far less than the window, so a
        # run holding a seq of the window ends before twice its end.)
        cur.execute(
            "SELECT r.seq + (b.idx - r.first_idx) FROM message_bodies b JOIN user_runs r"
            " ON r.stream_owner = b.stream_owner AND r.stream_seq = b.stream_seq"
            " AND b.idx >= r.first_idx AND b.idx <= r.first_idx + (r.last_seq - r.seq)"
            " WHERE b.owner_id = ? AND b.owner_seq = ? AND r.user_id = ?"
            " AND r.last_seq >= ? AND r.last_seq < ? AND r.seq < ?"
            " ORDER BY r.last_seq LIMIT 1",
            (owner, owner_seq, user_id, low, low + 2 * LAST_SEQ_WINDOW, low + LAST_SEQ_WINDOW),
        )
        found = cur.fetchone()
        seq = int(found[0]) if found else 0
    return pb.Message(
        sender_id=row[0],
        session_type=row[1],
        receiver_id=row[2],
        message_type=row[3],
        content=bytes(row[4]),
        send_time=row[5],
        seq=seq,
    )


@dataclass
class ReadOutcome:
    moved: bool  # the position moved forward (others are told)
    read_seq: int  # the reader's own seq of the read position now
    peer_seq: int  # one-to-one: the peer's own seq of that message


def mark_read(cur: Cursor, engine: Any, user_id: int, st: int, peer: int, seq: int) -> ReadOutcome:
    """Move ``user_id``'s read position in a conversation up to their ``seq``."""
    from gochat.store.store import MAX_ID, NotFound

    cur.execute(
        "SELECT read_pos, read_seq FROM conversations WHERE user_id = ? AND session_type = ?"
        f" AND peer_id = ?{engine.lock_rows_suffix()}",
        (user_id, st, peer),
    )
    conv = cur.fetchone()
    row = None
    if 0 < seq <= MAX_ID:
        cur.execute(
            "SELECT b.owner_id, b.owner_seq, b.session_type, b.sender_id, b.receiver_id,"
            " p.pos, p.peer_seq FROM users u"
            + body_at("u.id", "?")
            + " LEFT JOIN message_positions p ON p.owner_id = b.owner_id"
            " AND p.owner_seq = b.owner_seq WHERE u.id = ?",
            (seq, seq, seq, user_id),
        )
        row = cur.fetchone()
    if row is not None:
        owner, owner_seq, mst, sender, receiver = (int(v) for v in row[:5])
        if st == pb.ST_Single:
            matches = mst == st and {sender, receiver} == {user_id, peer}
        else:
            matches = mst == st and receiver == peer
        if not matches:
            row = None
    if row is None:
        if conv is None:
            raise NotFound("no such conversation")
        raise NotInConversation(f"seq {seq} is not a message of this conversation")
    pos = int(row[5]) if row[5] is not None else 0
    peer_seq = owner_seq if owner == peer else int(row[6] or 0)
    if conv is None:  # a one-to-one chat from before conversations were kept
        cur.execute(
            _CONV_COLUMNS + " (?, ?, ?, 0, 0, 0, 0, 0, 0)",
            (user_id, st, peer),
        )
        conv = (0, 0)
    read_pos, read_seq = int(conv[0]), int(conv[1])
    if pos <= read_pos:
        return ReadOutcome(False, read_seq, 0)
    cur.execute(
        "UPDATE conversations SET read_pos = ?, read_seq = ? WHERE user_id = ?"
        " AND session_type = ? AND peer_id = ?",
        (pos, seq, user_id, st, peer),
    )
    return ReadOutcome(True, seq, peer_seq)

"""Every query of the node, as named interactions on :class:`Database`.

The one place that allocates seqs is :meth:`Store.commit_messages`: a batch
of upstream messages is validated, sequenced and written in one transaction,
so all rows of a message (and of every message in the batch) commit together.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from gochat import codes
from gochat.auth import Account
from gochat.pb import pb
from gochat.store import people
from gochat.store.cache import LRU
from gochat.store.database import Cursor, Database, Refusal
from gochat.store.engines import SQLValue
from gochat.store.people import GroupOp

MAX_ID = 2**63 - 1  # ids are signed 64-bit in every supported database

#: ACKs kept per device in ``device_acks``: a client retransmits only what it
#: has not seen ACKed, and none keeps this many messages unACKed, so older
#: rows are deleted (a retransmit of such a clientId is answered 1001).
DEVICE_ACK_HISTORY = 65536
#: Old ACKs are deleted each time a device's clientIds cross a multiple of
#: this: one small DELETE per 4,096 messages instead of one per batch.
DEVICE_ACK_PRUNE_EVERY = 4096

#: Users whose latest seq (and existence) the store keeps: at about 150 bytes
#: an entry, 100,000 users take about 15 MB. A user not in it costs one
#: indexed read in the next batch that writes to them.
CACHE_USERS = 100_000
#: Member ids of cached groups, all groups together (about 10 bytes each plus
#: the ids themselves): 200,000 is 20 groups of 10,000 or 400 of 500.
CACHE_GROUP_MEMBERS = 200_000


#: the columns the commit appends to, and their kinds for the engines' bulk paths
_BODY_COLUMNS = (
    "owner_id",
    "owner_seq",
    "sender_id",
    "session_type",
    "receiver_id",
    "message_type",
    "content",
    "send_time",
    "stream_owner",
    "stream_seq",
    "idx",
)
_BODY_KINDS = ("bigint", "bigint", "bigint", "int", "bigint", "int", "blob") + ("bigint",) * 4
_RUN_COLUMNS = ("user_id", "last_seq", "seq", "stream_owner", "stream_seq", "first_idx")
_RUN_KINDS = ("bigint",) * 6


#: ``(name, owner_id, [(id, nickname)] in join order, read_count)`` of a group
GroupInfo = tuple[str, int, list[tuple[int, str]], int]


class NotFound(Refusal):
    """A referenced user or group does not exist."""


class Conflict(Refusal):
    """A unique value (a phone number) is taken."""


@dataclass
class UpItem:
    """One upstream message (or a permanent rejection) waiting to be committed."""

    user_id: int
    device_id: str | None  # None: the clientId belongs to the connection only
    client_id: int
    message: pb.Message | None  # None for a rejection decided before the store
    reject_code: int = codes.OK
    #: a group change to commit in order with the messages (user_id is the actor)
    op: GroupOp | None = None


class MemberBlock:
    """The recipients of a run of consecutive messages of one batch to one group.

    Every member gets one seq per message, consecutive: member ``k``'s seq
    for the block's message ``i`` (from 1) is ``bases[k] + i``. The block is
    sequenced once per batch instead of once per message, and the router
    finds the online members once per block (``online``, its own cache,
    valid while ``online_version`` matches its own).
    """

    __slots__ = ("members", "bases", "online", "online_version")

    def __init__(self, members: tuple[int, ...], bases: list[int]) -> None:
        self.members = members
        self.bases = bases
        self.online: list[tuple[Any, int]] = []
        self.online_version = -1


class BlockRows(Sequence[tuple[int, int]]):
    """The (user_id, seq) rows of the block's message ``offset``, without a pair each."""

    __slots__ = ("block", "offset")

    def __init__(self, block: MemberBlock, offset: int) -> None:
        self.block = block
        self.offset = offset

    def __len__(self) -> int:
        return len(self.block.members)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        off = self.offset
        return zip(self.block.members, [b + off for b in self.block.bases], strict=True)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(self)[index]
        return (self.block.members[index], self.block.bases[index] + self.offset)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"BlockRows({list(self)!r})"


@dataclass
class UpResult:
    code: int
    sender_seq: int = 0
    #: (user_id, seq) of every row written, the sender's own included; a
    #: group message's are :class:`BlockRows`
    rows: Sequence[tuple[int, int]] = field(default_factory=list)
    message: pb.Message | None = None
    #: why a group change was refused
    detail: str = ""


#: what one commit transaction hands back to the reactor thread: the results,
#: the new seqs, the member lists it read or changed, and the cached groups it used
CommitOutcome = tuple[list[UpResult], dict[int, int], dict[int, tuple[int, ...]], set[int]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Store:
    """High-level storage operations; every method returns a Deferred."""

    def __init__(
        self,
        db: Database,
        cache_users: int = CACHE_USERS,
        cache_group_members: int = CACHE_GROUP_MEMBERS,
    ) -> None:
        self.db = db
        self.engine = db.engine
        # Users known to exist, each with its latest seq: the seq is served
        # from memory only when this process is the only writer (SQLite).
        # Both caches are read inside the write transaction (database thread)
        # and changed only on the reactor thread once it has committed; the
        # writer runs one transaction at a time, so none reads a stale seq.
        self._users: LRU[int, int] = LRU(cache_users)
        self._group_cache: LRU[int, tuple[int, ...]] = LRU(cache_group_members, len)
        # Bumped on every invalidation: a transaction that read members before
        # an invalidation must not put its (maybe stale) copy back in the cache.
        self._group_generation = 0
        #: Called with a group id after this node changed its membership; a
        #: cluster publishes it so every other node drops its cached copy.
        self.on_group_changed: Callable[[int], Any] | None = None
        # Conversation counters served from memory with a single writer.
        self._pos_cache: LRU[people.ConvKey, int] = LRU(people.POS_CACHE_LIMIT)
        # The chat_groups.version each cached member list was read at (several
        # writers); a version missing here only means the members are read again.
        self._group_versions: LRU[int, int] = LRU(people.POS_CACHE_LIMIT)

    # -- users ---------------------------------------------------------------

    def create_user(self, phone: str, nickname: str, password_hash: str) -> defer.Deferred[int]:
        """Insert a user; fires with its id, or fails with :class:`Conflict`."""
        d = self.create_account(phone, nickname, password_hash)
        return d.addCallback(lambda account: account.user_id)

    def create_account(
        self, phone: str, nickname: str, password_hash: str
    ) -> defer.Deferred[Account]:
        """Insert a user; fires with its :class:`~gochat.auth.Account` (to issue a token)."""

        def txn(cur: Cursor) -> Account:
            cur.execute("SELECT id FROM users WHERE phone_number = ?", (phone,))
            if cur.fetchone():
                raise Conflict("phone number already registered")
            created_at = _now_ms()
            cur.execute(
                "INSERT INTO users (phone_number, nickname, password_hash, created_at)"
                " VALUES (?, ?, ?, ?)",
                (phone, nickname, password_hash, created_at),
            )
            cur.execute("SELECT id FROM users WHERE phone_number = ?", (phone,))
            user_id = cur.fetchone()[0]
            cur.execute("INSERT INTO user_seq (user_id, seq) VALUES (?, 0)", (user_id,))
            return Account(int(user_id), created_at, 0)

        def unique(failure: Failure) -> Failure:
            # an errback's failure always holds its exception
            if failure.value is not None and self.engine.is_unique_violation(failure.value):
                raise Conflict("phone number already registered")
            return failure

        return self.db.run_interaction("create_user", txn).addErrback(unique)

    def create_users(self, users: list[tuple[str, str, str]]) -> defer.Deferred[list[Account]]:
        """Insert many ``(phone, nickname, password_hash)`` users in one transaction.

        For operators and benchmarks that set up thousands of accounts at
        once (a 10,000-member group in seconds, not an argon2 hash each).
        Fires with their :class:`~gochat.auth.Account` in order (to issue
        tokens), or fails with :class:`Conflict` (and inserts nothing) when a
        phone number is taken.
        """
        phones = [phone for phone, _, _ in users]
        if len(set(phones)) != len(phones):
            return defer.fail(Conflict("phone number given twice"))

        def txn(cur: Cursor) -> list[Account]:
            now = _now_ms()
            cur.insert_many(
                "INSERT INTO users (phone_number, nickname, password_hash, created_at) VALUES",
                [(phone, nick, hashed, now) for phone, nick, hashed in users],
            )
            found = cur.select_in(
                "SELECT phone_number, id FROM users WHERE phone_number IN ({marks})", phones
            )
            ids = {phone: int(uid) for phone, uid in found}
            ordered = [ids[phone] for phone in phones]
            cur.insert_many("INSERT INTO user_seq (user_id, seq) VALUES", [(u, 0) for u in ordered])
            return [Account(u, now, 0) for u in ordered]

        def unique(failure: Failure) -> Failure:
            # an errback's failure always holds its exception
            if failure.value is not None and self.engine.is_unique_violation(failure.value):
                raise Conflict("phone number already registered")
            return failure

        return self.db.run_interaction("create_users", txn).addErrback(unique)

    def account(self, user_id: int) -> defer.Deferred[Account | None]:
        """Fires with the user's :class:`~gochat.auth.Account`, or ``None`` if there is none.

        Read on every authenticated call and WebSocket login (one primary-key
        lookup), so a revoked token is refused on every node at once.
        """
        if not 0 < user_id <= MAX_ID:
            return defer.succeed(None)

        def txn(cur: Cursor) -> Account | None:
            cur.execute("SELECT created_at, token_generation FROM users WHERE id = ?", (user_id,))
            row = cur.fetchone()
            return Account(user_id, int(row[0]), int(row[1])) if row else None

        return self.db.run_interaction("account", txn, write=False)

    def login_record(self, phone: str) -> defer.Deferred[tuple[Account, str] | None]:
        """Fires with ``(Account, password_hash)`` of the phone number's user, or ``None``."""

        def txn(cur: Cursor) -> tuple[Account, str] | None:
            cur.execute(
                "SELECT id, created_at, token_generation, password_hash FROM users"
                " WHERE phone_number = ?",
                (phone,),
            )
            row = cur.fetchone()
            if not row:
                return None
            return Account(int(row[0]), int(row[1]), int(row[2])), row[3]

        return self.db.run_interaction("login_record", txn, write=False)

    def bump_token_generation(self, user_id: int) -> defer.Deferred[Account]:
        """Revoke every token of the user; fires with the new :class:`~gochat.auth.Account`."""

        def txn(cur: Cursor) -> Account:
            cur.execute(
                "UPDATE users SET token_generation = token_generation + 1 WHERE id = ?",
                (user_id,),
            )
            cur.execute("SELECT created_at, token_generation FROM users WHERE id = ?", (user_id,))
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"user {user_id} not found")
            return Account(user_id, int(row[0]), int(row[1]))

        return self.db.run_with_retry("bump_token_generation", txn)

    def get_user_by_phone(self, phone: str) -> defer.Deferred[tuple[int, str] | None]:
        """Fires with ``(id, password_hash)`` or ``None``."""

        def txn(cur: Cursor) -> tuple[int, str] | None:
            cur.execute("SELECT id, password_hash FROM users WHERE phone_number = ?", (phone,))
            row = cur.fetchone()
            return (int(row[0]), row[1]) if row else None

        return self.db.run_interaction("get_user_by_phone", txn, write=False)

    def set_password_hash(self, user_id: int, password_hash: str) -> defer.Deferred[None]:
        def txn(cur: Cursor) -> None:
            cur.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))

        return self.db.run_interaction("set_password_hash", txn)

    def users_exist(self, user_ids: list[int]) -> defer.Deferred[set[int]]:
        """Fires with the subset of ``user_ids`` that exist."""
        wanted = {u for u in user_ids if 0 < u <= MAX_ID}

        def txn(cur: Cursor) -> set[int]:
            return _existing_users(cur, wanted)

        return self.db.run_interaction("users_exist", txn, write=False)

    # -- friends and groups --------------------------------------------------

    def add_friend(self, user_id: int, friend_id: int) -> defer.Deferred[None]:
        """Make two users friends both ways (idempotent)."""

        def txn(cur: Cursor) -> None:
            if not _existing_users(cur, {friend_id}):
                raise NotFound(f"user {friend_id} not found")
            now = _now_ms()
            for a, b in ((user_id, friend_id), (friend_id, user_id)):
                cur.execute("SELECT 1 FROM friends WHERE user_id = ? AND friend_id = ?", (a, b))
                if not cur.fetchone():
                    cur.execute(
                        "INSERT INTO friends (user_id, friend_id, created_at) VALUES (?, ?, ?)",
                        (a, b, now),
                    )

        return self.db.run_with_retry("add_friend", txn)

    def create_group(self, owner_id: int, name: str, member_ids: list[int]) -> defer.Deferred[int]:
        """Create a group of ``member_ids`` plus the owner; fires with its id."""
        members = sorted({owner_id, *member_ids})

        def txn(cur: Cursor) -> int:
            missing = set(members) - _existing_users(cur, set(members))
            if missing:
                raise NotFound("user " + ", ".join(str(m) for m in sorted(missing)) + " not found")
            now = _now_ms()
            group_id = cur.insert_id(
                "INSERT INTO chat_groups (name, owner_id, created_at) VALUES (?, ?, ?)",
                (name, owner_id, now),
            )
            # The owner joined first: an owner who leaves hands over to the next.
            cur.executemany(
                "INSERT INTO group_members (group_id, user_id, joined_at) VALUES (?, ?, ?)",
                [(group_id, m, now if m == owner_id else now + 1) for m in members],
            )
            people.create_group_conversation(cur, int(group_id), members, now)
            return int(group_id)

        return self.db.run_interaction("create_group", txn)

    def group_members(self, group_id: int) -> defer.Deferred[list[int]]:
        """Fires with the sorted member ids (empty when the group does not exist)."""
        cached = self._group_cache.get(group_id)
        if cached is not None:
            return defer.succeed(list(cached))

        def txn(cur: Cursor) -> list[int]:
            return list(_group_members(cur, group_id))

        return self.db.run_interaction("group_members", txn, write=False)

    # -- sequencing and messages ---------------------------------------------

    def latest_seq(self, user_id: int) -> defer.Deferred[int]:
        if self.engine.single_writer:
            cached = self._users.get(user_id)
            if cached is not None:
                return defer.succeed(cached)

        def txn(cur: Cursor) -> int:
            cur.execute("SELECT seq FROM user_seq WHERE user_id = ?", (user_id,))
            row = cur.fetchone()
            return int(row[0]) if row else 0

        return self.db.run_interaction("latest_seq", txn, write=False)

    def sync(
        self, user_id: int, after_seq: int, limit: int
    ) -> defer.Deferred[tuple[list[pb.Message], bool]]:
        """Fires with ``(messages, has_more)``: seq > after_seq, ascending."""
        after_seq = min(after_seq, MAX_ID)

        def txn(cur: Cursor) -> tuple[list[pb.Message], bool]:
            # The first limit + 1 runs past after_seq hold the first limit + 1
            # messages, and each run gives at most that many from where it
            # passes after_seq: a bounded read whatever the runs' lengths.
            cur.execute(
                "SELECT r.seq + (b.idx - r.first_idx) AS s, b.sender_id, b.session_type,"
                " b.receiver_id, b.message_type, b.content, b.send_time FROM"
                " (SELECT seq, last_seq, stream_owner, stream_seq, first_idx,"
                " first_idx + CASE WHEN seq > ? THEN 0 ELSE ? - seq + 1 END AS lo"
                " FROM user_runs WHERE user_id = ? AND last_seq > ?"
                " ORDER BY last_seq LIMIT ?) r"
                " JOIN message_bodies b ON b.stream_owner = r.stream_owner"
                " AND b.stream_seq = r.stream_seq AND b.idx >= r.lo"
                " AND b.idx <= r.first_idx + (r.last_seq - r.seq) AND b.idx <= r.lo + ?"
                " ORDER BY s LIMIT ?",
                (after_seq, after_seq, user_id, after_seq, limit + 1, limit, limit + 1),
            )
            rows = cur.fetchall()
            out = [
                pb.Message(
                    seq=r[0],
                    sender_id=r[1],
                    session_type=r[2],
                    receiver_id=r[3],
                    message_type=r[4],
                    content=bytes(r[5]),
                    send_time=r[6],
                )
                for r in rows[:limit]
            ]
            return out, len(rows) > limit

        return self.db.run_interaction("sync", txn, write=False)

    def load_device(self, user_id: int, device_id: str) -> defer.Deferred[int]:
        """Fires with the last accepted clientId of (user, device), creating the row."""

        def txn(cur: Cursor) -> int:
            cur.execute(
                "SELECT last_client_id FROM devices WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            )
            row = cur.fetchone()
            if row:
                return int(row[0])
            cur.execute(
                "INSERT INTO devices (user_id, device_id, last_client_id) VALUES (?, ?, 0)",
                (user_id, device_id),
            )
            return 0

        def unique(failure: Failure) -> defer.Deferred[int]:
            # an errback's failure always holds its exception
            if failure.value is not None and self.engine.is_unique_violation(failure.value):
                return self.load_device(user_id, device_id)  # created concurrently
            return defer.fail(failure)

        return self.db.run_interaction("load_device", txn).addErrback(unique)

    def device_ack(
        self, user_id: int, device_id: str, client_id: int
    ) -> defer.Deferred[tuple[int, int] | None]:
        """Fires with ``(code, seq)`` given earlier to that clientId, or ``None``."""

        def txn(cur: Cursor) -> tuple[int, int] | None:
            cur.execute(
                "SELECT code, seq FROM device_acks WHERE user_id = ? AND device_id = ?"
                " AND client_id = ?",
                (user_id, device_id, client_id),
            )
            row = cur.fetchone()
            return (int(row[0]), int(row[1])) if row else None

        return self.db.run_interaction("device_ack", txn, write=False)

    def commit_messages(self, items: list[UpItem]) -> defer.Deferred[list[UpResult]]:
        """Validate, sequence and store a batch in one transaction.

        Fires with one :class:`UpResult` per item, in order. Permanent
        rejections are results; a database failure fails the whole batch and
        nothing of it is stored.
        """
        generation = self._group_generation
        single_writer = self.engine.single_writer
        txn_state: dict[str, Any] = {}

        def done(outcome: CommitOutcome) -> list[UpResult]:
            results, seqs, groups, used = outcome
            # Every recipient of a stored message got a seq (and so exists).
            # With several writers the seq is only a placeholder: never read.
            self._users.update(seqs)
            if single_writer:
                self._pos_cache.update(txn_state.get("positions", ()))
            if generation == self._group_generation:
                self._group_cache.touch(used)
                self._group_cache.update(groups)
                self._group_versions.update(txn_state.get("versions", ()))
            self._groups_changed(txn_state.get("changed_groups", ()))
            return results

        return self.db.run_with_retry(
            "commit_messages", self._commit_txn, items, txn_state
        ).addCallback(done)

    def rows_estimate(
        self, item: UpItem, groups_seen: set[int] | None = None, unknown: int = 1
    ) -> int:
        """Rows ``item`` will write, from the caches (``unknown`` for a group not cached yet).

        The writer bounds a batch's rows with it, read on the reactor thread.
        A batch's messages to one group share their members' runs (one each
        per batch), so with ``groups_seen`` (the batch's groups so far) only
        the first message to a group counts its members.
        """
        msg = item.message
        if msg is None or item.reject_code != codes.OK:
            return 1
        if msg.session_type == pb.ST_Single:
            return 2
        gid = msg.receiver_id
        if groups_seen is not None:
            if gid in groups_seen:
                return 1
            groups_seen.add(gid)
        members = self._group_cache.get(gid)
        return len(members) if members else unknown

    def _commit_txn(
        self, cur: Cursor, items: list[UpItem], txn_state: dict[str, Any] | None = None
    ) -> CommitOutcome:
        # Runs on the database thread: the caches are only read here.
        groups: dict[int, tuple[int, ...]] = {}
        cached_groups: set[int] = set()  # marked used once committed
        users = self._users
        known: set[int] = set()
        state = txn_state if txn_state is not None else {}
        state.clear()
        stale = self._stale_groups(cur, items, state)
        now = _now_ms()
        # 0. with several writers the same device may be served by two nodes for a
        #    moment (it reconnected elsewhere): its window is re-read under a lock,
        #    and a clientId already stored gets its earlier answer, not a second row.
        stored = {} if self.engine.single_writer else _lock_devices(cur, items)
        # 1. decide recipients (validation that needs the database)
        plans: list[tuple[UpItem, int, tuple[int, ...]]] = []
        duplicates: dict[int, UpResult] = {}
        for item in items:
            msg = item.message
            if item.device_id is not None:
                key = (item.user_id, item.device_id)
                if item.client_id <= stored.get(key, 0):
                    duplicates[id(item)] = _earlier_answer(cur, item)
                    continue
                stored[key] = item.client_id
            if item.op is not None:
                plans.append(self._plan_op(cur, item, groups, stale, now, state))
                continue
            if item.reject_code != codes.OK or msg is None:
                plans.append((item, item.reject_code, ()))
                continue
            if msg.session_type == pb.ST_Single:
                rid = msg.receiver_id
                if rid not in known and rid not in users:
                    if _existing_users(cur, {rid}):
                        known.add(rid)
                    else:
                        plans.append((item, codes.NO_DATA, ()))
                        continue
                plans.append((item, codes.OK, (item.user_id, rid)))
            else:
                gid = msg.receiver_id
                members = groups.get(gid)
                if members is None:
                    members = None if gid in stale else self._group_cache.get(gid)
                    if members is not None:
                        cached_groups.add(gid)
                    else:
                        members = _group_members(cur, gid)
                        if members:
                            groups[gid] = members
                if not members:
                    plans.append((item, codes.NO_DATA, ()))
                elif item.user_id not in members:
                    plans.append((item, codes.UNAUTHORIZED, ()))
                else:
                    plans.append((item, codes.OK, members))
        # 2. current seqs of every recipient, locked in a fixed order
        # (a group's member tuple once, not once per message to it)
        lists = {id(rcpts): rcpts for _, code, rcpts in plans if code == codes.OK}
        recipients_all = sorted({u for rcpts in lists.values() for u in rcpts})
        current = self._current_seqs(cur, recipients_all)
        # 3. one body per message, under the sender's own list entry, and the
        # recipients' lists as runs: the messages one batch commits to one
        # conversation are a stream (named by its first body), and a user's
        # consecutive seqs over consecutive messages of a stream are one run.
        # A batch of messages to one group is one run per member, not one row
        # per member per message.
        streams: dict[tuple[int, int, int], list[int]] = {}
        #: user -> its open run: [last_seq, seq, stream_owner, stream_seq,
        #: first_idx, stream, next idx]
        runs: dict[int, list[Any]] = {}
        closed: dict[int, list[int]] = {}  # user -> its earlier runs of the batch, flat
        bodies: list[SQLValue] = []
        results = []
        device_acks: list[tuple[Any, ...]] = []
        device_first: dict[tuple[int, str], int] = {}
        device_last: dict[tuple[int, str], int] = {}
        # committed messages, for their conversation positions
        entries: list[tuple[pb.Message, int, int, Sequence[tuple[int, int]], GroupOp | None]] = []
        spans = _group_blocks(plans)
        block: MemberBlock | None = None
        block_start = block_end = block_idx = 0
        for k, (item, code, recipients) in enumerate(plans):
            result = UpResult(code=code)
            if code == codes.OK:
                msg = item.message
                assert msg is not None
                owner = item.user_id  # the sender, always among the recipients
                receiver = msg.receiver_id
                end = spans.get(k)
                if end is not None:
                    # The first of a block of messages to one group: each
                    # member's seqs and run for all of them at once.
                    m = end - k
                    conv = (2, receiver, 0)
                    stream = streams.get(conv)
                    if stream is None:
                        stream = streams[conv] = [owner, current[owner] + 1, 0]
                    s_owner, s_seq, block_idx = stream
                    stream[2] = block_idx + m
                    bases = _sequence_block(current, runs, closed, recipients, stream, block_idx, m)
                    block = MemberBlock(recipients, bases)
                    block_start, block_end = k, end
                if k < block_end:
                    assert block is not None
                    owner_seq = current[owner] - (block_end - k) + 1
                    idx = block_idx + k - block_start
                    result.rows = BlockRows(block, k - block_start + 1)
                else:
                    owner_seq = current[owner] + 1
                    current[owner] = owner_seq
                    if msg.session_type == pb.ST_Single:
                        conv = (1, owner, receiver) if owner < receiver else (1, receiver, owner)
                    else:
                        conv = (2, receiver, 0)
                    stream = streams.get(conv)
                    if stream is None:
                        stream = streams[conv] = [owner, owner_seq, 0]
                    s_owner, s_seq, idx = stream
                    stream[2] = idx + 1
                    pushed: list[tuple[int, int]] = []
                    for uid in recipients:
                        if uid == owner:
                            seq = owner_seq
                        else:
                            seq = current[uid] + 1
                            current[uid] = seq
                        run = runs.get(uid)
                        if run is not None and run[5] is stream and run[6] == idx:
                            run[0] = seq  # the user's seqs in a batch are consecutive
                            run[6] = idx + 1
                        else:
                            if run is not None:
                                earlier = closed.get(uid)
                                if earlier is None:
                                    earlier = closed[uid] = []
                                earlier += (uid, *run[:5])
                            runs[uid] = [seq, seq, s_owner, s_seq, idx, stream, idx + 1]
                        pushed.append((uid, seq))
                    result.rows = pushed
                result.sender_seq = owner_seq
                bodies += (
                    owner,
                    owner_seq,
                    msg.sender_id,
                    msg.session_type,
                    receiver,
                    msg.message_type,
                    msg.content,
                    msg.send_time,
                    s_owner,
                    s_seq,
                    idx,
                )
                result.message = msg
                entries.append((msg, owner, owner_seq, result.rows, item.op))
            elif item.op is not None:
                result.detail = state.get("details", {}).get(id(item), "")
            results.append(result)
            _device_ack(item, result, device_acks, device_first, device_last)
        if duplicates:
            by_item = {id(item): r for (item, _, _), r in zip(plans, results, strict=True)}
            by_item.update(duplicates)
            results = [by_item[id(item)] for item in items]
        cur.write_rows("message_bodies", _BODY_COLUMNS, _BODY_KINDS, bodies)
        # in (user_id, last_seq) order: each user's part of the key filled in turn
        run_rows: list[int] = []
        for uid in sorted(runs):
            earlier = closed.get(uid)
            if earlier is not None:
                run_rows += earlier
            run = runs[uid]
            run_rows += (uid, run[0], run[1], run[2], run[3], run[4])
        cur.write_rows("user_runs", _RUN_COLUMNS, _RUN_KINDS, run_rows)
        state["positions"] = people.record_positions(
            cur, self.engine, entries, self._pos_cache, now
        )
        if "versions" in state:
            # A stale copy that no item of this batch reloaded stays stale.
            state["versions"] = {
                g: v for g, v in state["versions"].items() if g in groups or g not in stale
            }
        changed = {u: current[u] for u in recipients_all}
        cur.write_seqs(changed)
        cur.insert_many(
            "INSERT INTO device_acks (user_id, device_id, client_id, code, seq) VALUES",
            device_acks,
        )
        cur.executemany(
            "UPDATE devices SET last_client_id = ? WHERE user_id = ? AND device_id = ?",
            [(cid, uid, dev) for (uid, dev), cid in device_last.items()],
        )
        every = DEVICE_ACK_PRUNE_EVERY
        cur.executemany(
            "DELETE FROM device_acks WHERE user_id = ? AND device_id = ? AND client_id <= ?",
            [
                (uid, dev, cid - DEVICE_ACK_HISTORY)
                for (uid, dev), cid in device_last.items()
                if cid > DEVICE_ACK_HISTORY
                and cid // every > (device_first[(uid, dev)] - 1) // every
            ],
        )
        return results, changed, groups, cached_groups

    def _stale_groups(self, cur: Cursor, items: list[UpItem], state: dict[str, Any]) -> set[int]:
        """Groups of the batch whose cached members may be out of date.

        With one writer process every change goes through it, so the cache is
        exact. With several, the batch locks the rows of its groups and
        compares their versions with those the cache was read at: a change
        committed by another node is seen here at once, not when its Redis
        invalidation arrives.
        """
        if self.engine.single_writer:
            return set()
        gids = {i.op.group_id for i in items if i.op is not None}
        gids.update(
            i.message.receiver_id
            for i in items
            if i.message is not None and i.message.session_type == pb.ST_Group
        )
        gids = {g for g in gids if 0 < g <= MAX_ID}
        if not gids:
            return set()
        versions = people.lock_group_versions(cur, gids, self.engine.lock_rows_suffix())
        state["versions"] = versions
        known = self._group_versions
        return {g for g in gids if known.get(g) != versions.get(g)}

    def _plan_op(
        self,
        cur: Cursor,
        item: UpItem,
        groups: dict[int, tuple[int, ...]],
        stale: set[int],
        now: int,
        state: dict[str, Any],
    ) -> tuple[UpItem, int, tuple[int, ...]]:
        """Apply a group change where it stands among the batch's messages."""
        op = item.op
        assert op is not None
        gid = op.group_id
        members = groups.get(gid)
        if members is None and gid not in stale:
            members = self._group_cache.get(gid)
        if members is None:
            members = _group_members(cur, gid)
        code, detail, after, recipients, event = people.apply_group_op(cur, op, members, now)
        item.message = event
        if detail:
            state.setdefault("details", {})[id(item)] = detail
        if code == codes.OK:
            groups[gid] = after  # later messages of the batch see the new members
            if "versions" in state and gid in state["versions"]:
                state["versions"][gid] += 1
            state.setdefault("changed_groups", set()).add(gid)
        return item, code, recipients

    def _groups_changed(self, group_ids: Iterable[int]) -> None:
        """Tell the other nodes (their caches are dropped; ours is already exact)."""
        if self.on_group_changed is None:
            return
        for gid in group_ids:
            self.on_group_changed(gid)

    def _current_seqs(self, cur: Cursor, users: list[int]) -> dict[int, int]:
        current: dict[int, int] = {}
        missing = users
        if self.engine.single_writer:
            current = self._users.get_many(users)
            if len(current) < len(users):
                missing = [u for u in users if u not in current]
            else:
                missing = []
        for uid, seq in cur.read_seqs(missing):
            current[int(uid)] = int(seq)
        return current

    def add_group_members(self, group_id: int, user_ids: list[int]) -> defer.Deferred[None]:
        """Add existing users to a group (idempotent); every node's cache is invalidated.

        No event and no read rows: members use ``Hub.change_group``; this is
        for operators and tests of the cache invalidation.
        """
        wanted = sorted(set(user_ids))

        def txn(cur: Cursor) -> None:
            if not _group_members(cur, group_id):
                raise NotFound(f"group {group_id} not found")
            missing = set(wanted) - _existing_users(cur, set(wanted))
            if missing:
                raise NotFound("user " + ", ".join(str(m) for m in sorted(missing)) + " not found")
            present = set(_group_members(cur, group_id))
            cur.executemany(
                "INSERT INTO group_members (group_id, user_id) VALUES (?, ?)",
                [(group_id, u) for u in wanted if u not in present],
            )

        d = self.db.run_with_retry("add_group_members", txn)
        return d.addCallback(self._group_changed, group_id)

    def remove_group_members(self, group_id: int, user_ids: list[int]) -> defer.Deferred[None]:
        """Remove users from a group; every node's cache is invalidated."""
        gone = sorted(set(user_ids))

        def txn(cur: Cursor) -> None:
            cur.executemany(
                "DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
                [(group_id, u) for u in gone],
            )

        d = self.db.run_with_retry("remove_group_members", txn)
        return d.addCallback(self._group_changed, group_id)

    def _group_changed(self, _: None, group_id: int) -> None:
        self.forget_group(group_id)
        if self.on_group_changed is not None:
            self.on_group_changed(group_id)

    def forget_group(self, group_id: int) -> None:
        """Drop a cached member list (membership changed elsewhere)."""
        self._group_generation += 1
        self._group_cache.pop(group_id)

    def forget_all_groups(self) -> None:
        """Drop every cached member list (invalidations may have been missed)."""
        self._group_generation += 1
        self._group_cache.clear()

    # -- people, groups that change, conversations ----------------------------

    def users_info(self, user_ids: list[int]) -> defer.Deferred[list[tuple[int, str]]]:
        """Fires with ``[(id, nickname)]`` of those that exist, by id."""
        ids = sorted({u for u in user_ids if 0 < u <= MAX_ID})

        def txn(cur: Cursor) -> list[tuple[int, str]]:
            return _nicknames(cur, ids)

        return self.db.run_interaction("users_info", txn, write=False)

    def user_by_phone(self, phone: str) -> defer.Deferred[tuple[int, str] | None]:
        """Fires with ``(id, nickname)`` or ``None``."""

        def txn(cur: Cursor) -> tuple[int, str] | None:
            cur.execute("SELECT id, nickname FROM users WHERE phone_number = ?", (phone,))
            row = cur.fetchone()
            return (int(row[0]), row[1]) if row else None

        return self.db.run_interaction("user_by_phone", txn, write=False)

    def set_nickname(self, user_id: int, nickname: str) -> defer.Deferred[None]:
        def txn(cur: Cursor) -> None:
            cur.execute("UPDATE users SET nickname = ? WHERE id = ?", (nickname, user_id))

        return self.db.run_interaction("set_nickname", txn)

    def friends(self, user_id: int) -> defer.Deferred[list[tuple[int, str]]]:
        """Fires with ``[(id, nickname)]`` of the user's friends, by id."""

        def txn(cur: Cursor) -> list[tuple[int, str]]:
            cur.execute(
                "SELECT u.id, u.nickname FROM friends f JOIN users u ON u.id = f.friend_id"
                " WHERE f.user_id = ? ORDER BY u.id",
                (user_id,),
            )
            return [(int(r[0]), r[1]) for r in cur.fetchall()]

        return self.db.run_interaction("friends", txn, write=False)

    def user_groups(self, user_id: int) -> defer.Deferred[list[tuple[int, str, int, int]]]:
        """Fires with ``[(id, name, owner_id, member_count)]`` of the user's groups."""

        def txn(cur: Cursor) -> list[tuple[int, str, int, int]]:
            cur.execute(
                "SELECT g.id, g.name, g.owner_id, (SELECT COUNT(*) FROM group_members c"
                " WHERE c.group_id = g.id) FROM group_members m JOIN chat_groups g"
                " ON g.id = m.group_id WHERE m.user_id = ? ORDER BY g.id",
                (user_id,),
            )
            return [(int(r[0]), r[1], int(r[2]), int(r[3])) for r in cur.fetchall()]

        return self.db.run_interaction("user_groups", txn, write=False)

    def group_info(self, group_id: int) -> defer.Deferred[GroupInfo | None]:
        """Fires with ``(name, owner_id, [(id, nickname)] in join order, read_count)`` or None."""

        def txn(cur: Cursor) -> GroupInfo | None:
            if not 0 < group_id <= MAX_ID:
                return None
            cur.execute("SELECT name, owner_id FROM chat_groups WHERE id = ?", (group_id,))
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute(
                "SELECT u.id, u.nickname FROM group_members m JOIN users u ON u.id = m.user_id"
                " WHERE m.group_id = ? ORDER BY m.joined_at, m.user_id",
                (group_id,),
            )
            members = [(int(r[0]), r[1]) for r in cur.fetchall()]
            if not members:
                return None
            return row[0], int(row[1]), members, people.read_count(cur, group_id)

        return self.db.run_interaction("group_info", txn, write=False)

    def conversations(
        self, user_id: int, limit: int, before: tuple[int, int, int] | None
    ) -> defer.Deferred[tuple[list[people.Conversation], tuple[int, int, int] | None]]:
        """Fires with ``(conversations, next cursor or None)``, most recent first."""

        def txn(cur: Cursor) -> tuple[list[people.Conversation], tuple[int, int, int] | None]:
            return people.list_conversations(cur, user_id, limit, before)

        return self.db.run_interaction("conversations", txn, write=False)

    def mark_read(
        self, user_id: int, session_type: int, peer_id: int, seq: int
    ) -> defer.Deferred[people.ReadOutcome]:
        """Move a read position forward; fires with a :class:`people.ReadOutcome`.

        Fails with :class:`NotFound` (no such conversation) or ``ValueError``
        (``seq`` is not a message of it in the user's list).
        """

        def txn(cur: Cursor) -> people.ReadOutcome:
            return people.mark_read(cur, self.engine, user_id, session_type, peer_id, seq)

        return self.db.run_with_retry("mark_read", txn)


def _group_blocks(plans: list[tuple[UpItem, int, tuple[int, ...]]]) -> dict[int, int]:
    """``{first: end}`` of each block of consecutive messages to one group in ``plans``.

    A block is messages (not group changes) to the same group with the same
    member list; a message to another conversation, a change or a refusal
    ends it.
    """
    spans: dict[int, int] = {}
    start = -1
    gid = 0
    members: tuple[int, ...] = ()
    for k, (item, code, recipients) in enumerate(plans):
        msg = item.message
        if (
            code != codes.OK
            or item.op is not None
            or msg is None
            or (msg.session_type != pb.ST_Group)
        ):
            start = -1
            continue
        if start >= 0 and recipients is members and msg.receiver_id == gid:
            spans[start] = k + 1
            continue
        start, gid, members = k, msg.receiver_id, recipients
        spans[k] = k + 1
    return spans


def _sequence_block(
    current: dict[int, int],
    runs: dict[int, list[Any]],
    closed: dict[int, list[int]],
    members: tuple[int, ...],
    stream: list[int],
    idx: int,
    count: int,
) -> list[int]:
    """Give every member ``count`` consecutive seqs (and one run) for a block.

    Returns each member's seq before the block, in ``members`` order. A
    member's open run over the same stream, ending just before the block,
    is extended; any other open run is closed.
    """
    s_owner, s_seq = stream[0], stream[1]
    end = idx + count
    if runs.keys().isdisjoint(members):
        # No member has a run in this batch yet (the usual case): in bulk.
        bases = [current[uid] for uid in members]
        lasts = [base + count for base in bases]
        current.update(zip(members, lasts, strict=True))
        runs.update(
            zip(
                members,
                [
                    [last, base + 1, s_owner, s_seq, idx, stream, end]
                    for base, last in zip(bases, lasts, strict=True)
                ],
                strict=True,
            )
        )
        return bases
    bases = []
    append = bases.append
    get = runs.get
    for uid in members:
        base = current[uid]
        last = current[uid] = base + count
        append(base)
        run = get(uid)
        if run is not None:
            if run[5] is stream and run[6] == idx:
                run[0] = last
                run[6] = end
                continue
            earlier = closed.get(uid)
            if earlier is None:
                earlier = closed[uid] = []
            earlier += (uid, *run[:5])
        runs[uid] = [last, base + 1, s_owner, s_seq, idx, stream, end]
    return bases


def _device_ack(
    item: UpItem,
    result: UpResult,
    acks: list[tuple[Any, ...]],
    first: dict[tuple[int, str], int],
    last: dict[tuple[int, str], int],
) -> None:
    """Record the answer to a device's clientId (for retransmits) and its window."""
    if item.device_id is not None:
        acks.append((item.user_id, item.device_id, item.client_id, result.code, result.sender_seq))
        key = (item.user_id, item.device_id)
        first.setdefault(key, item.client_id)
        last[key] = item.client_id


def _lock_devices(cur: Cursor, items: list[UpItem]) -> dict[tuple[int, str | None], int]:
    """Lock the device rows of a batch in a fixed order; ``{(user, device): last clientId}``."""
    keys = sorted({(i.user_id, i.device_id) for i in items if i.device_id is not None})
    last: dict[tuple[int, str | None], int] = {}
    for start in range(0, len(keys), 200):
        chunk = keys[start : start + 200]
        where = " OR ".join(["(user_id = ? AND device_id = ?)"] * len(chunk))
        cur.execute(
            f"SELECT user_id, device_id, last_client_id FROM devices WHERE {where}"
            " ORDER BY user_id, device_id FOR UPDATE",
            [v for key in chunk for v in key],
        )
        for uid, dev, cid in cur.fetchall():
            last[(int(uid), dev)] = int(cid)
    return last


def _earlier_answer(cur: Cursor, item: UpItem) -> UpResult:
    """The result given when this (user, device, clientId) was first stored."""
    cur.execute(
        "SELECT code, seq FROM device_acks WHERE user_id = ? AND device_id = ? AND client_id = ?",
        (item.user_id, item.device_id, item.client_id),
    )
    row = cur.fetchone()
    if row is None:  # older than the ACK memory: accepted, answer unknown
        return UpResult(code=codes.OK)
    return UpResult(code=int(row[0]), sender_seq=int(row[1]))


def _existing_users(cur: Cursor, user_ids: set[int]) -> set[int]:
    ids = sorted(u for u in user_ids if 0 < u <= MAX_ID)
    return {int(r[0]) for r in cur.select_in("SELECT id FROM users WHERE id IN ({marks})", ids)}


def _nicknames(cur: Cursor, ids: list[int]) -> list[tuple[int, str]]:
    rows = cur.select_in("SELECT id, nickname FROM users WHERE id IN ({marks}) ORDER BY id", ids)
    return [(int(r[0]), r[1]) for r in rows]


def _group_members(cur: Cursor, group_id: int) -> tuple[int, ...]:
    if not 0 < group_id <= MAX_ID:
        return ()
    cur.execute(
        "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id", (group_id,)
    )
    return tuple(int(r[0]) for r in cur.fetchall())

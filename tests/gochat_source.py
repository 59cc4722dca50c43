"""A GoChat (c58f9fc)-shaped MySQL database, made from the facts of issue 12.

Tables ``user``, ``friend``, ``group`` (literally), ``group_user``,
``message`` and ``uid``; unsigned 64-bit ids, DATETIME times, and write
diffusion: one full ``message`` row per recipient, ``user_id`` being the
recipient and ``seq`` that recipient's seq.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

from tests.services import mysql_database

SALT = "gogogoChat"

SCHEMA = [
    """CREATE TABLE `user` (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        phone_number VARCHAR(20) NOT NULL,
        nickname VARCHAR(20) NOT NULL,
        password VARCHAR(64) NOT NULL,
        create_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
        update_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
        UNIQUE KEY uk_phone_number (phone_number)
    )""",
    """CREATE TABLE friend (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        user_id BIGINT UNSIGNED NOT NULL,
        friend_id BIGINT UNSIGNED NOT NULL,
        create_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
        update_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
        UNIQUE KEY uk_user_id_friend_id (user_id, friend_id)
    )""",
    """CREATE TABLE `group` (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        name VARCHAR(50) NOT NULL,
        owner_id BIGINT UNSIGNED NOT NULL,
        create_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
        update_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE group_user (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        group_id BIGINT UNSIGNED NOT NULL,
        user_id BIGINT UNSIGNED NOT NULL,
        create_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
        update_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
        UNIQUE KEY uk_group_id_user_id (group_id, user_id)
    )""",
    """CREATE TABLE message (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        user_id BIGINT UNSIGNED NOT NULL,
        sender_id BIGINT UNSIGNED NOT NULL,
        session_type TINYINT NOT NULL,
        receiver_id BIGINT UNSIGNED NOT NULL,
        message_type TINYINT NOT NULL,
        content BLOB NOT NULL,
        seq BIGINT UNSIGNED NOT NULL,
        send_time DATETIME NOT NULL,
        create_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
        update_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
        UNIQUE KEY uk_user_id_seq (user_id, seq)
    )""",
    """CREATE TABLE uid (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        business_id VARCHAR(128) NOT NULL,
        max_id BIGINT UNSIGNED NOT NULL,
        step INT UNSIGNED NOT NULL,
        UNIQUE KEY uk_business_id (business_id)
    )""",
]

T0 = datetime(2025, 3, 1, 12, 0, 0)
HUGE_ID = 2**63 + 5  # fits GoChat's unsigned ids, not the node's signed ones


def gochat_password(password: str) -> str:
    return hashlib.md5((password + SALT).encode()).hexdigest()


class Source:
    """The database and what the tests expect of it."""

    def __init__(self, url: str, conn: Any) -> None:
        self.url = url
        self.conn = conn
        self.next_seq: dict[int, int] = {}
        #: (user_id, seq) -> (sender, session_type, receiver, content)
        self.rows: dict[tuple[int, int], tuple] = {}

    def execute(self, sql: str, args: Any = ()) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
        self.conn.commit()

    def user(self, uid: int, phone: str, nickname: str, password: str = "123456") -> None:
        self.execute(
            "INSERT INTO `user` (id, phone_number, nickname, password) VALUES (%s, %s, %s, %s)",
            (uid, phone, nickname, gochat_password(password)),
        )

    def copies(
        self,
        recipients: list[int],
        sender: int,
        session_type: int,
        receiver: int,
        content: bytes,
        when: datetime,
    ) -> None:
        """One message as GoChat writes it: a row (and a seq) per recipient."""
        rows = []
        for uid in recipients:
            seq = self.next_seq.get(uid, 0) + 1
            self.next_seq[uid] = seq
            rows.append((uid, sender, session_type, receiver, 1, content, seq, when))
            self.rows[(uid, seq)] = (sender, session_type, receiver, content)
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO message (user_id, sender_id, session_type, receiver_id,"
                " message_type, content, seq, send_time) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                rows,
            )
        self.conn.commit()

    def list_of(self, uid: int) -> list[tuple]:
        return [(seq, *self.rows[(u, seq)]) for (u, seq) in sorted(self.rows) if u == uid]


def gochat_database(test: Any) -> Source:
    """The fixture every import test starts from (see the comments for what is odd in it)."""
    import pymysql

    url = mysql_database(test)
    parts = urlparse(url)
    conn = pymysql.connect(
        host=parts.hostname, port=parts.port, user=parts.username, database=parts.path[1:]
    )
    test.addCleanup(conn.close)
    src = Source(url, conn)
    for statement in SCHEMA:
        src.execute(statement)
    src.execute("INSERT INTO uid (business_id, max_id, step) VALUES ('device_id', 1000, 100)")
    src.user(1, "13800000001", "alice")
    src.user(2, "13800000002", "bob")
    src.user(3, "13800000003", "carol", "carols-password")
    src.user(4, "13800000004", "dave")
    src.user(HUGE_ID, "13800000099", "huge")  # skipped: above 2^63 - 1
    for a, b in ((1, 2), (2, 1), (1, 3), (3, 1), (1, 77)):  # 77 no longer exists
        src.execute("INSERT INTO friend (user_id, friend_id) VALUES (%s, %s)", (a, b))
    src.execute("INSERT INTO `group` (id, name, owner_id) VALUES (10, 'team', 1)")
    src.execute("INSERT INTO `group` (id, name, owner_id) VALUES (12, 'quiet', 4)")
    for gid, uid in ((10, 1), (10, 2), (10, 3), (12, 4), (11, 1), (10, 77)):
        src.execute("INSERT INTO group_user (group_id, user_id) VALUES (%s, %s)", (gid, uid))
    t = T0
    src.copies([1, 2], 1, 1, 2, b"hi bob", t)
    src.copies([2, 1], 2, 1, 1, b"hi alice", t + timedelta(seconds=1))
    src.copies([1, 2, 3], 1, 2, 10, b"hello team", t + timedelta(seconds=2))
    # Two identical messages within one second: two bodies, paired in seq order.
    src.copies([1, 2], 1, 1, 2, b"twice", t + timedelta(seconds=3))
    src.copies([1, 2], 1, 1, 2, b"twice", t + timedelta(seconds=3))
    # Carol's own row of this one is gone: the copies get bodies of their own.
    src.copies([1, 2], 3, 2, 10, b"from carol", t + timedelta(seconds=4))
    # Group 11 was deleted: its messages stay in the lists (seqs without gaps).
    src.copies([1, 2], 2, 2, 11, b"old group", t + timedelta(seconds=5))
    # The list of user 77, who no longer exists: skipped.
    src.copies([77], 1, 1, 77, b"to nobody", t + timedelta(seconds=6))
    src.copies([3, 1, 2], 3, 2, 10, b"carol again", t + timedelta(seconds=7))
    return src

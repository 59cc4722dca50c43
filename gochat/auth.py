"""Tokens and passwords.

Tokens are JWTs signed with HS256 only (the algorithm is pinned, so an
unsigned or differently signed token is refused) and carry the user id and an
expiry. Passwords are hashed with argon2id off the reactor thread, in a
small pool of its own.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

ALGORITHM = "HS256"


class BadToken(Exception):
    """The token is missing, malformed, forged or expired."""


def load_or_create_secret(path: str) -> bytes:
    """Read the signing secret, generating it (mode 0600) on first start."""
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except FileNotFoundError:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        secret = secrets.token_hex(32).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
        return secret
    if len(secret) < 16:
        raise ValueError(f"secret file {path} holds fewer than 16 bytes")
    return secret


@dataclass
class TokenSigner:
    secret: bytes
    ttl: float = 7 * 86400
    clock: object = time

    def issue(self, user_id: int) -> str:
        now = int(self.clock.time())
        return jwt.encode(
            {"user_id": user_id, "iat": now, "exp": now + int(self.ttl)},
            self.secret,
            algorithm=ALGORITHM,
        )

    def verify(self, token: str | bytes) -> int:
        """Return the user id in a valid token, else raise :class:`BadToken`."""
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise BadToken("token is not ASCII") from None
        if not token or len(token) > 4096:
            raise BadToken("missing token")
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "user_id"], "verify_exp": False},
            )
        except jwt.PyJWTError as exc:
            raise BadToken(str(exc)) from None
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= self.clock.time():
            raise BadToken("token expired")
        user_id = claims.get("user_id")
        if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id <= 0:
            raise BadToken("token carries no user id")
        return user_id


class Passwords:
    """argon2id hashing in a small thread pool of its own.

    Each hash holds ``memory_cost`` KiB while it runs, so the pool's size is
    the most memory hashing can hold at once (2 threads: 38 MiB at the
    defaults); a burst of sign-ups or logins queues rather than growing the
    node, and the reactor's own pool (DNS, other work) is never taken.
    """

    def __init__(
        self,
        time_cost: int = 2,
        memory_cost: int = 19 * 1024,
        parallelism: int = 1,
        threads: int = 2,
        reactor: Any = None,
    ) -> None:
        # OWASP's argon2id minimum (19 MiB, t=2, p=1): slow for attackers, not for a login burst.
        self._hasher = _Argon2(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism
        )
        if threads < 1:
            raise ValueError("password hashing needs at least one thread")
        self.threads = threads
        self._reactor = reactor
        self._pool: ThreadPool | None = None

    def _run(self, func: Any, *args: Any) -> defer.Deferred:
        if self._pool is None:
            if self._reactor is None:
                from twisted.internet import reactor

                self._reactor = reactor
            self._pool = ThreadPool(minthreads=0, maxthreads=self.threads, name="gochat-argon2")
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        return threads.deferToThreadPool(self._reactor, self._pool, func, *args)

    def stop(self) -> None:
        """Stop the pool's threads (at reactor shutdown); a later hash starts it again."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    def hash(self, password: str) -> defer.Deferred:
        return self._run(self._hasher.hash, password)

    def verify(self, stored: str, password: str) -> defer.Deferred:
        """Fires True or False; comparison is constant-time inside argon2."""

        def check() -> bool:
            try:
                return self._hasher.verify(stored, password)
            except (VerificationError, InvalidHashError):
                return False

        return self._run(check)

"""Tokens and passwords.

Tokens are JWTs signed with HS256 only (the algorithm is pinned, so an
unsigned or differently signed token is refused). They carry the user id, an
expiry and the account they were issued for: the account's creation time and
its token generation. :meth:`TokenSigner.verify` checks the signature and the
expiry; :func:`check_account` then checks the binding against the account row,
so a token of a deleted or re-created account (a database reset with the same
secret) is refused, and ``POST /logout_all`` (a generation bump) revokes every
token issued before it. Passwords are hashed with argon2id off the reactor
thread, in a small pool of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard, TypeVar

import jwt
from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from gochat.inputs import MAX_ID

ALGORITHM = "HS256"

_T = TypeVar("_T")


class TimeSource(Protocol):
    """Anything with ``time()`` in Unix seconds: the ``time`` module, a reactor, a test clock."""

    def time(self) -> float: ...


class BadToken(Exception):
    """The token is missing, malformed, forged or expired."""


def load_or_create_secret(path: str) -> bytes:
    """Read the signing secret, generating it (mode 0600) on first start."""
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except FileNotFoundError:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        secret = secrets.token_hex(32).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
        return secret
    if len(secret) < 16:
        raise ValueError(f"secret file {path} holds fewer than 16 bytes")
    return secret


@dataclass(frozen=True)
class Account:
    """What a token is bound to: the user row's identity and token generation."""

    user_id: int
    created_at: int  # ms; tells a re-created account with the same id apart
    token_generation: int  # bumped by POST /logout_all


@dataclass(frozen=True)
class Claims:
    """What a valid token says.

    ``generation``/``created_at`` are ``None`` for a token that is not bound to
    an account (a verifier of another token format may produce those): then
    :func:`check_account` only checks that the account exists.
    """

    user_id: int
    expires: float  # Unix time the token stops being valid
    generation: int | None = None
    created_at: int | None = None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode(token: str | bytes, key: bytes, now: float) -> tuple[dict[str, Any], int, int]:
    """``(claims, user_id, exp)`` of an HS256 token signed with ``key`` and unexpired.

    The checks every token gets, ours and GoChat's alike; raises :class:`BadToken`.
    """
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise BadToken("token is not ASCII") from None
    if not token or len(token) > 4096:
        raise BadToken("missing token")
    try:
        with warnings.catch_warnings():
            # GoChat ships short sign keys; PyJWT warns about each use.
            warnings.simplefilter("ignore")
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "user_id"], "verify_exp": False},
            )
    except jwt.PyJWTError as exc:
        raise BadToken(str(exc)) from None
    exp = claims.get("exp")
    if not _is_int(exp) or exp <= now:
        raise BadToken("token expired")
    user_id = claims.get("user_id")
    if not _is_int(user_id) or not 0 < user_id <= MAX_ID:
        raise BadToken("token carries no user id")
    return claims, user_id, exp


def check_account(claims: Claims, account: Account | None) -> None:
    """Raise :class:`BadToken` unless ``claims`` still belong to ``account``."""
    if account is None or account.user_id != claims.user_id:
        raise BadToken("no such user")
    if claims.generation is None and claims.created_at is None:
        # An unbound token (GoChat's, see LegacyTokenSigner) predates every
        # /logout_all of its account: the first one revokes it too.
        if account.token_generation != 0:
            raise BadToken("token revoked")
        return
    if claims.created_at != account.created_at:
        raise BadToken("token of another account")
    if claims.generation != account.token_generation:
        raise BadToken("token revoked")


@dataclass
class TokenSigner:
    secret: bytes
    ttl: float = 7 * 86400
    clock: TimeSource = time

    def issue(self, account: Account) -> str:
        """A token for ``account``, valid for ``ttl`` seconds or until its next generation."""
        now = int(self.clock.time())
        return jwt.encode(
            {
                "user_id": account.user_id,
                "iat": now,
                "exp": now + int(self.ttl),
                "gen": account.token_generation,
                "acct": account.created_at,
            },
            self.secret,
            algorithm=ALGORITHM,
        )

    def verify(self, token: str | bytes) -> Claims:
        """The claims of a validly signed, unexpired token, else raise :class:`BadToken`.

        The account binding is checked by the caller (:func:`check_account`),
        which needs the database.
        """
        claims, user_id, exp = _decode(token, self.secret, self.clock.time())
        generation, created_at = claims.get("gen"), claims.get("acct")
        if not _is_int(generation) or not _is_int(created_at):
            # Tokens of this node are always bound (older unbound ones are refused).
            raise BadToken("token is not bound to an account")
        return Claims(user_id, float(exp), generation, created_at)


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

    def _run(self, func: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
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

    def hash(self, password: str) -> defer.Deferred[str]:
        return self._run(self._hasher.hash, password)

    def service(self) -> Any:
        """A service that stops the hashing threads when the node stops."""
        from twisted.application import service

        passwords = self

        class PasswordThreads(service.Service):
            def stopService(self) -> Any:  # noqa: N802
                passwords.stop()
                return super().stopService()

        return PasswordThreads()

    def verify(self, stored: str, password: str) -> defer.Deferred[bool]:
        """Fires True or False; comparison is constant-time inside argon2."""

        if stored.startswith(GOCHAT_MD5_PREFIX):
            return threads.deferToThread(verify_gochat_md5, stored, password)

        def check() -> bool:
            try:
                return self._hasher.verify(stored, password)
            except (VerificationError, InvalidHashError):
                return False

        return self._run(check)


# -- accounts imported from GoChat (``gochat-admin import-gochat``) ----------

#: GoChat's ``hex(md5(password + salt))`` kept as ``gochat-md5$<salt>$<hex>``
#: until the user's first login replaces it with an argon2id hash.
GOCHAT_MD5_PREFIX = "gochat-md5$"


def gochat_md5_hash(salt: str, hex_digest: str) -> str:
    """The stored form of a password hash imported from GoChat."""
    return f"{GOCHAT_MD5_PREFIX}{salt}${hex_digest.lower()}"


def is_legacy_hash(stored: str) -> bool:
    """True for a hash that must be replaced by argon2id at the next good login."""
    return stored.startswith(GOCHAT_MD5_PREFIX)


def verify_gochat_md5(stored: str, password: str) -> bool:
    """Check a password against an imported GoChat hash, in constant time."""
    salt, sep, digest = stored[len(GOCHAT_MD5_PREFIX) :].rpartition("$")
    if not sep:
        return False
    mine = hashlib.md5((password + salt).encode()).hexdigest()
    return hmac.compare_digest(mine, digest)


def load_legacy_key(path: str) -> bytes:
    """GoChat's ``jwt.sign_key`` from a file (its bytes, without the final newline)."""
    with open(path, "rb") as f:
        key = f.read().rstrip(b"\r\n")
    if not key:
        raise ValueError(f"{path} is empty")
    return key


class LegacyTokenSigner(TokenSigner):
    """:class:`TokenSigner` that also accepts tokens GoChat signed with its own key.

    New tokens are always ours; a GoChat token (HS256, ``{"user_id", "exp"}``)
    verifies until its ``exp``, so users moved over need not log in again. It
    is bound to no account generation: :func:`check_account` only checks
    that the user exists.
    """

    def __init__(self, signer: TokenSigner, legacy_key: bytes) -> None:
        super().__init__(signer.secret, signer.ttl, signer.clock)
        self.legacy_key = legacy_key

    def verify(self, token: str | bytes) -> Claims:
        try:
            return super().verify(token)
        except BadToken as first:
            try:
                return self._verify_gochat(token)
            except BadToken:
                raise first from None

    def _verify_gochat(self, token: str | bytes) -> Claims:
        _, user_id, exp = _decode(token, self.legacy_key, self.clock.time())
        return Claims(user_id, float(exp))

"""HTTP Basic Auth (RFC 7617): a pure parser, a constant-time check, the users of the store (users.py).

`parse_basic_auth` turns an Authorization header value into `Credentials` or raises `Unauthorized`; it never
raises anything else, whatever the bytes. `Authenticator.check` compares the whole header against the one
expected value with `hmac.compare_digest`, so the time taken does not depend on how much of a guess was right.
"""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass

from .errors import Unauthorized
from .users import User, UserStore, hash_password, verify_password

__all__ = ["Credentials", "parse_basic_auth", "Authenticator", "NoAuth"]

CACHE_SIZE = 4096   # verified headers remembered: more distinct callers than this re-verify now and then


@functools.cache
def _dummy_hash() -> str:
    return hash_password("not a password of anyone", salt=b"\0" * 16)


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


def parse_basic_auth(value: str | None) -> Credentials:
    if not value:
        raise Unauthorized("Basic Auth credentials are required", code="auth_required")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        raise Unauthorized("the Authorization header must use the Basic scheme", code="auth_malformed")
    try:
        decoded = base64.b64decode(token.strip().encode("ascii"), validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error, ValueError):
        raise Unauthorized("the Basic Auth token is not base64 of UTF-8 text", code="auth_malformed") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise Unauthorized("the Basic Auth token has no colon between user and password", code="auth_malformed")
    return Credentials(username, password)


class Authenticator:
    """Knows the server's own account (`--username/--password`, an admin) and, when given, the user store.

    The common case costs one constant-time comparison: the header of the server's account. A store user's
    password is checked against its PBKDF2 hash once; the verified header is then cached (keyed by a keyed BLAKE2b
    hash of the header under a key made at start, so the cache holds no credentials; bounded; stale as soon as the
    store changes), so a warm caller costs one keyed hash and a dict lookup."""

    def __init__(self, username: str, password: str, store: UserStore | None = None) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._expected = ("Basic " + token).encode("ascii")
        self._credentials = Credentials(username, password)
        self._admin = User(username, "admin")
        self._store = store
        self._key = os.urandom(32)
        self._cache: collections.OrderedDict[bytes, tuple[int, User]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def check(self, value: str | None) -> User:
        """The user `value` authenticates, else raise `Unauthorized`."""
        raw = value.encode("latin-1", "replace") if value is not None else b""
        if hmac.compare_digest(raw, self._expected):
            return self._admin  # the common case: exactly the header we expect, one comparison
        store = self._store
        key = b""
        if store is not None and len(store):  # a store user's header seen before: one keyed hash, one lookup
            key = hashlib.blake2b(raw, key=self._key).digest()  # a keyed hash (a MAC); twice as fast as HMAC
            hit = self._cache.get(key)
            if hit is not None and hit[0] == store.generation:
                return hit[1]
        given = parse_basic_auth(value)  # raises with a precise message when malformed
        same_user = hmac.compare_digest(given.username.encode(), self._credentials.username.encode())
        same_password = hmac.compare_digest(given.password.encode(), self._credentials.password.encode())
        if same_user and same_password:
            return self._admin
        if store is None or not key:
            raise Unauthorized("wrong user name or password", code="auth_failed")
        generation, user = store.generation, store.get(given.username)
        # An unknown name costs a hash as well, so the time taken does not tell which names exist.
        if not verify_password(given.password, user.password_hash if user else _dummy_hash()) or user is None:
            raise Unauthorized("wrong user name or password", code="auth_failed")
        with self._lock:
            self._cache[key] = (generation, user)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return user


class NoAuth:
    """Lets every request in, as an invoker: `serve-one` started without credentials, behind a platform that
    decides who may reach it (SPEC 14). An invoker may call, which is all serve-one serves."""

    _anyone = User("anyone", "invoker")

    def check(self, value: str | None) -> User:
        return self._anyone

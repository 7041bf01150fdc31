"""HTTP Basic Auth (RFC 7617): a pure parser and a constant-time check.

`parse_basic_auth` turns an Authorization header value into `Credentials` or raises `Unauthorized`; it never
raises anything else, whatever the bytes. `Authenticator.check` compares the whole header against the one
expected value with `hmac.compare_digest`, so the time taken does not depend on how much of a guess was right.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from .errors import Unauthorized

__all__ = ["Credentials", "parse_basic_auth", "Authenticator"]


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
    """Knows the one valid header value; compares in constant time."""

    def __init__(self, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._expected = ("Basic " + token).encode("ascii")
        self._credentials = Credentials(username, password)

    def check(self, value: str | None) -> None:
        """Return if `value` carries the right credentials, else raise `Unauthorized`."""
        if value is not None and hmac.compare_digest(value.encode("latin-1", "replace"), self._expected):
            return  # the common case: exactly the header we expect, one comparison
        given = parse_basic_auth(value)  # raises with a precise message when malformed
        same_user = hmac.compare_digest(given.username.encode(), self._credentials.username.encode())
        same_password = hmac.compare_digest(given.password.encode(), self._credentials.password.encode())
        if not (same_user and same_password):
            raise Unauthorized("wrong user name or password", code="auth_failed")

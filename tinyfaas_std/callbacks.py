"""Callbacks of async calls (SPEC 11): which URLs may be called back, and the delivery with its retries.

Strategy: `check` is pure: it accepts a callback URL only when its origin (`scheme://host:port`, default ports
filled in, host lower-cased) is listed in `--callback-allow`, so the server cannot be used to reach addresses its
admin did not name (nothing is allowed by default). `deliver` POSTs a finished call's answer with the standard
library's `http.client`, up to three tries (1 s, then 4 s apart) on a connection error or a 5xx, and says how it
went as the record's `callback` field. It runs on the async call's own thread, after the worker is released.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Callable

from .errors import BadRequest

__all__ = ["parse_allow", "check", "deliver", "DELAYS"]

DELAYS = (1.0, 4.0)        # SPEC 11: three tries, 1 s then 4 s apart
TIMEOUT = 10.0             # seconds for each try to connect and answer: a slow receiver delays only its own call
MAX_URL = 2048             # a callback URL longer than this is a mistake
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int, str]:
    """(origin, host, port, path with query) of an http(s) URL, or ValueError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        raise ValueError(url)
    port = parts.port or _DEFAULT_PORTS[parts.scheme]  # .port raises ValueError when it is not a number
    host = parts.hostname.lower()
    shown = f"[{host}]" if ":" in host else host
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return f"{parts.scheme}://{shown}:{port}", host, port, path


def parse_allow(text: str) -> frozenset[str]:
    """`--callback-allow`: comma-separated origins such as `http://127.0.0.1:9000,https://hooks.example.com`."""
    origins = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            origins.add(_origin(item)[0])
        except ValueError:
            raise ValueError(f"--callback-allow: {item!r} is not an http(s) origin") from None
    return frozenset(origins)


def check(url: str, allowed: frozenset[str]) -> str:
    """The URL, if calls may be called back there; else 400 `callback_not_allowed` (or `bad_callback`)."""
    if len(url) > MAX_URL or not url.isascii() or not url.isprintable() or " " in url:
        raise BadRequest("X-Callback-Url is not a URL", code="bad_callback")
    try:
        origin = _origin(url)[0]
    except ValueError:
        raise BadRequest("X-Callback-Url must be an http or https URL", code="bad_callback") from None
    if origin not in allowed:
        raise BadRequest(f"callbacks to {origin} are not allowed (--callback-allow lists the origins that are)",
                         code="callback_not_allowed", origin=origin)
    return url


def deliver(url: str, body: bytes, headers: dict[str, str],
            sleep: Callable[[float], None] = time.sleep) -> bytes:
    """POST `body` to `url`; the record's `"callback":{"url","status","tries"}` (status null: no answer)."""
    _, host, port, path = _origin(url)
    status: int | None = None
    tries = 0
    for delay in (0.0, *DELAYS):
        if delay:
            sleep(delay)
        tries += 1
        status = _post(url.startswith("https:"), host, port, path, body, headers)
        if status is not None and status < 500:
            break
    doc = {"url": url, "status": status, "tries": tries}
    return b',"callback":' + json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode()


def _post(tls: bool, host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> int | None:
    kind = http.client.HTTPSConnection if tls else http.client.HTTPConnection
    conn = kind(host, port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(64 * 1024)  # what the receiver says is not kept
        return response.status
    except (OSError, http.client.HTTPException, ValueError):  # ValueError: what http.client cannot encode
        return None
    finally:
        conn.close()

"""The dashboard's files (SPEC 13): read from the package once, answered with strict headers.

Strategy: the files of `ui/` (HTML, CSS and JavaScript written here: no framework, no build step) are read on
the first request for one, so serving one costs a dict lookup and never touches the disk; a request's path is only
ever a key of that dict, never a file name. Every answer allows the page nothing it does not need: scripts,
styles, images and requests from its own origin only, and no inline script or style (`default-src 'self'`); no
MIME sniffing; no framing by other sites; and revalidation on every load (`no-cache`), so the files of a newer
server are seen at once. The page itself talks to the JSON API with the credentials the browser asked for.
"""

from __future__ import annotations

import functools
from importlib import resources

from .errors import NotFound

__all__ = ["HEADERS", "file"]

HEADERS = (
    ("Content-Security-Policy", "default-src 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)

_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",   # RFC 9239: text/javascript is the one JavaScript type
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

Headers = tuple[tuple[str, str], ...]


@functools.cache
def _files() -> dict[str, tuple[bytes, Headers]]:
    """Read once, on the first request for a file: a runtime without the dashboard (serve-one's, in an export)
    imports this module and never asks."""
    folder = resources.files(__package__).joinpath("ui")
    return {name: (folder.joinpath(name).read_bytes(), (("Content-Type", content_type), *HEADERS))
            for name, content_type in _TYPES.items()}


def file(name: str) -> tuple[bytes, Headers]:
    """The bytes and headers of one of the dashboard's files; `404` for any other name."""
    try:
        return _files()[name]
    except KeyError:
        raise NotFound("the dashboard has no such file", code="path_not_found") from None

"""One error root that carries its HTTP answer.

Strategy: every failure the server can name is a `FaasError` subclass with a `status` and a machine `code`, raised
where the cause is known (a parser, the registry, a worker). The single error boundary in `httpd.py` answers
`exc.status` with `exc.body()`; nothing between the cause and the boundary translates errors. `close` marks errors
after which the connection's framing can no longer be trusted, so the boundary closes it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FaasError", "BadRequest", "Unauthorized", "Forbidden", "NotFound", "MethodNotAllowed", "Conflict",
    "RequestTimeout",
    "LengthRequired", "PayloadTooLarge", "UriTooLong", "UnsupportedMediaType", "Unprocessable",
    "TooManyRequests", "HeaderFieldsTooLarge", "InternalError", "NotImplementedHttp", "WorkerCrashed",
    "ServiceUnavailable",
]


class FaasError(Exception):
    """An error with an HTTP status, a machine-readable code and a human sentence."""

    status: int = 500
    code: str = "internal_error"
    close: bool = False
    record: bytes | None = None  # the log line of a call that failed before it had an answer (calls.py)

    def __init__(self, message: str, *, code: str | None = None, close: bool | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if close is not None:
            self.close = close
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class BadRequest(FaasError):
    status, code = 400, "bad_request"


class Unauthorized(FaasError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str = "valid Basic Auth credentials are required", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": 'Basic realm="Login Required"'})
        super().__init__(message, **kw)


class Forbidden(FaasError):
    status, code = 403, "forbidden"


class NotFound(FaasError):
    status, code = 404, "not_found"


class MethodNotAllowed(FaasError):
    status, code = 405, "method_not_allowed"


class Conflict(FaasError):
    status, code = 409, "conflict"


class RequestTimeout(FaasError):
    status, code, close = 408, "request_timeout", True


class LengthRequired(FaasError):
    status, code, close = 411, "length_required", True


class PayloadTooLarge(FaasError):
    status, code, close = 413, "payload_too_large", True


class UriTooLong(FaasError):
    status, code, close = 414, "uri_too_long", True


class UnsupportedMediaType(FaasError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(FaasError):
    status, code = 422, "rejected"


class TooManyRequests(FaasError):
    status, code = 429, "too_many_requests"


class HeaderFieldsTooLarge(FaasError):
    status, code, close = 431, "header_fields_too_large", True


class InternalError(FaasError):
    status, code = 500, "internal_error"


class NotImplementedHttp(FaasError):
    status, code, close = 501, "not_implemented", True


class WorkerCrashed(FaasError):
    status, code = 502, "function_crashed"


class ServiceUnavailable(FaasError):
    status, code = 503, "shutting_down"

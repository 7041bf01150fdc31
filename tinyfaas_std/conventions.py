"""The calling conventions (SPEC 5 and 10): how a call's bytes become `main`'s arguments, and what `main` returns
becomes an answer and a log record.

Strategy: this module runs where the conventions are applied, inside the worker (loaded by path beside
`bodies.py` and `protocol.py`, in the function's own venv interpreter), so it uses the standard library only and
imports are kept lazy. The server forwards a call's body untouched and adds a small JSON `meta` for the
conventions that need it; it imports this module only to describe a call whose worker died before answering.

Each convention is a pair: `prepare(main, meta, body, context)` parses the input before `main` runs (a bad input
is `BadBody`, a 400) and returns `main`'s positional and keyword arguments and the record's input fragment;
`finish(value)` encodes what `main` returned as (kind, value bytes, record fragment). The conventions:
- `args`: the body is an invocation (bodies.py); `main(*args, **kwargs)`; answers a JSON result.
- `event`: the body is any JSON value (empty: null); `main(event[, context])`; answers a JSON result.
- `http`: `main(request[, context])`; the function's return value is the HTTP answer, sent to the server as
  `HTTP` kind: LEN(head) + head JSON `{"statusCode", "headers": [[name, value], ...]}` + the body bytes.
"""

import time

if __package__:
    from . import bodies, protocol
else:  # in the worker, loaded by path: `_worker.py` registered these names first
    import _tinyfaas_bodies as bodies  # type: ignore[no-redef,import-not-found]
    import _tinyfaas_protocol as protocol  # type: ignore[no-redef,import-not-found]

__all__ = ["CONVENTIONS", "Context", "wants_context", "input_fragment", "EMPTY_INPUT", "FRAMING_HEADERS",
           "parse_response_head"]

# Headers that frame the message or the connection are the server's (RFC 9110 7.6.1, RFC 9112 6-9).
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
                             "trailer", "proxy-connection", "x-call-id"})
MAX_RESPONSE_HEADERS = 100            # a function's own answer headers; more is a mistake
MAX_RESPONSE_HEAD_BYTES = 64 * 1024   # the same bound the server puts on a request head
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class Context:
    """The optional second parameter of an `event` or `http` function."""

    __slots__ = ("call_id", "function", "version", "deadline")

    def __init__(self, call_id: str, function: str, version: str, deadline: float) -> None:
        self.call_id, self.function, self.version, self.deadline = call_id, function, version, deadline

    def remaining_seconds(self) -> float:
        return max(0.0, self.deadline - time.time())

    def __repr__(self) -> str:
        return f"Context(call_id={self.call_id!r}, function={self.function!r}, version={self.version!r})"


def wants_context(main) -> bool:
    """Whether `main` takes two positional parameters (or *args): then it is given the context too."""
    func = getattr(main, "__func__", main)            # a bound method: its self is already given
    code = getattr(func, "__code__", None) or getattr(getattr(func, "__call__", None), "__code__", None)
    if code is None:
        return False
    bound = 1 if (func is not main or not hasattr(func, "__code__")) else 0
    return bool(code.co_flags & 0x04) or code.co_argcount - bound >= 2  # 0x04: CO_VARARGS


def _finish_json(value) -> tuple:
    """A JSON result under the arguments' rules: nesting, size, no NaN (raises; the call is then an error)."""
    body = bodies.encode(value)
    if body.count("[") + body.count("{") > bodies.MAX_DEPTH and not bodies.depth_ok(value):
        raise ValueError(f"the result is nested deeper than {bodies.MAX_DEPTH} levels")
    if len(body) > protocol.MAX_RESULT_BYTES:
        raise ValueError(f"the result is {len(body)} bytes of JSON; the limit is {protocol.MAX_RESULT_BYTES}")
    return protocol.OK, body.encode(), b""


def _result(value) -> bytes:
    return _finish_json(value)[1]


_NO_KWARGS: dict = {}


# -- args -------------------------------------------------------------------------------------------------------

def _prepare_args(main, meta, body: bytes, context) -> tuple:
    call = bodies.parse_invocation(body)
    fragment = protocol.input_fragment(call.fragment())  # before main runs: it may change its arguments
    return call.args, call.kwargs, fragment


# -- event ------------------------------------------------------------------------------------------------------

def _event(body: bytes):
    return None if not body.strip() else bodies.loads_strict(body)


def _event_fragment(event) -> bytes:
    try:
        fragment = b'"event":' + bodies.encode(event).encode()
    except ValueError:
        raise bodies.BadBody("a number in the body is too large to be a float (e.g. 1e400)") from None
    return protocol.input_fragment(fragment, b'"event":null')


def _prepare_event(main, meta, body: bytes, context) -> tuple:
    event = _event(body)
    fragment = _event_fragment(event)
    return ((event,) if context is None else (event, context)), _NO_KWARGS, fragment


# -- http -------------------------------------------------------------------------------------------------------

def _text_or_base64(data: bytes) -> tuple:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        import binascii

        return binascii.b2a_base64(data, newline=False).decode("ascii"), True


def http_request(meta: dict, body: bytes) -> dict:
    """The `request` a function receives. HEAD runs as GET: the server sends the head of GET's answer."""
    from urllib.parse import parse_qsl

    text, is_base64 = _text_or_base64(body)
    return {"method": "GET" if meta["method"] == "HEAD" else meta["method"], "path": meta["path"],
            "query": meta["query"], "params": dict(parse_qsl(meta["query"], keep_blank_values=True)),
            "headers": dict(meta["headers"]), "body": text, "isBase64Encoded": is_base64}


def _request_fragment(meta: dict, request: dict, size: int) -> bytes:
    record = {**request, "method": meta["method"]}
    if size > protocol.RECORD_VALUE_CAP:
        record.update(body=None, body_truncated=True, body_bytes=size)
    return protocol.input_fragment(b'"request":' + bodies.encode(record).encode(), b'"request":null')


def _prepare_http(main, meta, body: bytes, context) -> tuple:
    request = http_request(meta, body)
    fragment = _request_fragment(meta, request, len(body))
    return ((request,) if context is None else (request, context)), _NO_KWARGS, fragment


def _finish_http(value) -> tuple:
    status, headers, data = _response(value)
    names = {name.lower() for name, _ in headers}
    if "content-type" not in names and data:
        headers.append(("Content-Type", _default_type(value)))
    head = bodies.encode({"statusCode": status, "headers": headers}).encode()
    parse_response_head(head)  # the function's own headers: refused here, as its error, with the reason
    text, is_base64 = _text_or_base64(data)
    record = {"statusCode": status, "headers": dict(headers), "body": text, "isBase64Encoded": is_base64}
    if len(data) > protocol.RECORD_VALUE_CAP:
        record.update(body=None, body_truncated=True, body_bytes=len(data))
    fragment = b',"response":' + bodies.encode(record).encode()
    return protocol.HTTP, protocol.LEN.pack(len(head)) + head + data, fragment


def _response(value) -> tuple:
    """(status, [(name, value)], body bytes) for what an http function returned."""
    if isinstance(value, dict) and "statusCode" in value:
        status = value["statusCode"]
        body = value.get("body")
        if body is None:
            data = b""
        elif isinstance(body, str) and value.get("isBase64Encoded"):
            import binascii

            data = binascii.a2b_base64(body.encode("ascii"))
        elif isinstance(body, str):
            data = body.encode("utf-8", "surrogatepass")
        elif isinstance(body, (bytes, bytearray)):
            data = bytes(body)
        else:
            data = _result(body)
        return status, _headers(value.get("headers")), (b"" if status in (204, 205, 304) else data)
    if value is None:
        return 204, [], b""
    if isinstance(value, str):
        return 200, [], value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray)):
        return 200, [], bytes(value)
    return 200, [], _result(value)


def _default_type(value) -> str:
    body = value.get("body") if isinstance(value, dict) and "statusCode" in value else value
    if isinstance(body, str) and not (isinstance(value, dict) and value.get("isBase64Encoded")):
        return "text/plain; charset=utf-8"
    if isinstance(body, (str, bytes, bytearray)):
        return "application/octet-stream"
    return "application/json"


def _headers(headers) -> list:
    if headers is None:
        return []
    if not isinstance(headers, dict):
        raise TypeError("headers must be a dict of str to str")
    pairs = []
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header {name!r}: names and values must be str")
        if name.lower() not in FRAMING_HEADERS:
            pairs.append((name, value))
    return pairs


def parse_response_head(head: bytes) -> tuple:
    """(status, [(name, value)]) from an `HTTP` answer's head, or ValueError unless it is one this module would
    send: run by the worker on the function's answer, and again by the server on what the worker sent (a function
    can write to the channel itself)."""
    if len(head) > MAX_RESPONSE_HEAD_BYTES:
        raise ValueError(f"the answer's headers are larger than {MAX_RESPONSE_HEAD_BYTES} bytes")
    doc = bodies.loads_strict(head)
    if not isinstance(doc, dict):
        raise ValueError("the answer's head is not a JSON object")
    status, headers = doc.get("statusCode"), doc.get("headers")
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise ValueError(f"statusCode must be an integer from 200 to 599, not {status!r} (an informational 1xx "
                         "status cannot end an answer)")
    if not isinstance(headers, list) or len(headers) > MAX_RESPONSE_HEADERS:
        raise ValueError(f"headers must be at most {MAX_RESPONSE_HEADERS} names and values")
    pairs = []
    for pair in headers:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
                and valid_header(*pair)):
            raise ValueError(f"header {str(pair)[:80]}: not a valid HTTP header (a token name; a value without "
                             "control characters or surrounding spaces, latin-1 only; framing headers are the "
                             "server's)")
        pairs.append((pair[0], pair[1]))
    return status, pairs


def valid_header(name: str, value: str) -> bool:
    """RFC 9110 5.1 and 5.5: a token name; a value of visible latin-1 characters, spaces and tabs."""
    return (bool(name) and all(c in _TCHAR for c in name) and name.lower() not in FRAMING_HEADERS
            and all(c == "\t" or " " <= c <= "~" or "\xa0" <= c <= "\xff" for c in value)
            and value == value.strip(" \t"))


CONVENTIONS = {
    "args": (_prepare_args, _finish_json),
    "event": (_prepare_event, _finish_json),
    "http": (_prepare_http, _finish_http),
}


EMPTY_INPUT = {"args": b'"args":null,"kwargs":null', "event": b'"event":null', "http": b'"request":null'}


def input_fragment(calling: str, meta, body: bytes) -> bytes:
    """The record's input fragment of a call no worker described (its worker died first, or none was free):
    the rare path, run by the server. A body the convention refuses is BadBody."""
    if calling == "args":
        return protocol.input_fragment(bodies.parse_invocation(body).fragment())
    if calling == "event":
        return _event_fragment(_event(body))
    return _request_fragment(meta, http_request(meta, body), len(body))

"""The wire protocol between the server and a worker: the one home of its frames, kinds and caps.

Strategy: both sides import this module. The server imports it as `tinyfaas_std.protocol`; the worker, which runs
in the function's own venv interpreter under `python -I` and may import nothing of the package, loads this file
by path. So it uses the standard library only and holds constants and tiny pure helpers, no I/O.

Frames, both ways: `HEAD` (payload length, call sequence number), then the payload. The sequence number of the
hello is 0; an answer repeats its call's, so a stray frame the function writes itself can never pass for an answer.
- Worker -> server first, the hello: `OK` if `func.py` imported and has a callable `main`, else `ERROR` + a JSON
  object `{"type", "message", "line", "traceback"}`.
- Server -> worker, a call: the request body exactly as the client sent it (the worker parses it).
- Worker -> server, its answer: a kind (`OK`: main returned, `ERROR`: main raised, `BAD`: the body is not an
  invocation), `LEN` (the size of the value), the value as JSON (result, error object or `{"code", "message"}`),
  and for `OK`/`ERROR` a JSON object fragment without braces for the log record: `"args"`, `"kwargs"` (or
  `null` and `"input_truncated"`/`"input_bytes"` past RECORD_VALUE_CAP), `"stdout"`, `"stderr"` and their flags.
  The server splices these bytes into its answer and the record without decoding them.
"""

import struct

HEAD = struct.Struct("!II")  # payload length, call sequence number
LEN = struct.Struct("!I")    # the length of the value inside an answer

OK, ERROR, BAD, HTTP = b"o", b"e", b"b", b"h"
KINDS = {OK: "ok", ERROR: "error", BAD: "bad", HTTP: "http"}

OUTPUT_CAP = 64 * 1024               # characters of stdout/stderr kept per call; the rest is counted, not stored
MAX_RESULT_BYTES = 6 * 1024 * 1024   # a larger result is an error (AWS Lambda's synchronous limit is 6 MB too)
RECORD_VALUE_CAP = 64 * 1024         # bytes of arguments, and of result, that a log record keeps (SPEC 9)
NO_OUTPUT = b'"stdout":"","stderr":"","stdout_truncated":false,"stderr_truncated":false'

# Exit statuses of a worker's launcher that say why the worker ended (the server quotes them in a 502).
EXIT_MEMORY = 90      # the worker's processes together held more than --memory-mb
EXIT_SANDBOX = 91     # the sandbox could not be set up (the launcher says why in its hello)
EXIT_REASONS = {
    EXIT_MEMORY: "its processes together used more than the memory limit and were killed",
    EXIT_SANDBOX: "its sandbox could not be set up",
}


def frame(seq: int, payload: bytes) -> bytes:
    return HEAD.pack(len(payload), seq) + payload


def input_fragment(fragment: bytes, empty: bytes = b'"args":null,"kwargs":null') -> bytes:
    """A call's input as the record keeps it (`"args":...,"kwargs":...`, `"event":...` or `"request":...`): past
    RECORD_VALUE_CAP, `empty` and the size."""
    if len(fragment) <= RECORD_VALUE_CAP:
        return fragment
    return empty + b',"input_truncated":true,"input_bytes":%d' % len(fragment)


def call_frame(seq: int, meta: bytes, body: bytes) -> bytes:
    """A call, server -> worker: LEN(meta), meta (JSON for the event and http conventions, else empty), body."""
    if not meta:  # an args call: the hot path
        return _HEAD_PACK(LEN.size + len(body), seq) + _NO_META + body
    return _HEAD_PACK(LEN.size + len(meta) + len(body), seq) + LEN.pack(len(meta)) + meta + body


_HEAD_PACK = HEAD.pack
_NO_META = LEN.pack(0)

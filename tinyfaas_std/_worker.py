"""The worker: runs inside a function's own virtualenv interpreter, imports `func.py` once, serves many calls.

Started by the server as `<venv>/bin/python -I _worker.py <fd> <func.py> <memory_mb> <out> <err>`, by path, so it
must use the standard library only and import nothing from `tinyfaas_std`. It talks to the server over the socket `<fd>` (one
end of a socketpair), never over stdout, so whatever the function prints cannot corrupt the channel.

Frames, both ways: a 4-byte big-endian payload length, the 4-byte sequence number of the call (0 for the hello;
an answer repeats its call's, so a stray frame can never pass for an answer), then the payload.
- First, worker -> server, the hello: `o` if `func.py` imported and has a callable `main`, else `e` + a JSON
  object `{"type", "message", "line", "traceback"}`.
- Server -> worker, a call: the request body exactly as the client sent it. The worker parses it (with the
  server's own `bodies.py`, loaded by path), so the server's one busy process never decodes it.
- Worker -> server, its answer: `o` (main returned), `e` (main raised) or `b` (the body is not an invocation),
  a 4-byte length, then the result, the error object or `{"code", "message"}` as JSON; for `o`/`e` a JSON object
  fragment without braces follows, holding `args`, `kwargs`, `stdout`, `stderr` and the `*_truncated` flags. The
  server splices these bytes into its response and the log record without decoding them.
What the call prints through `sys.stdout`/`sys.stderr` is captured up to OUTPUT_CAP characters each, and also
written through to the files `<out>`/`<err>`, so that the server can still report it when the call times out or
the process dies. A watchdog thread ends the worker's process group if the server goes away (even by SIGKILL).
"""

import importlib.util
import os
import signal
import struct
import sys
import threading
import time

OUTPUT_CAP = 64 * 1024  # characters of stdout/stderr kept per call; the rest is counted, not stored
MAX_RESULT_BYTES = 6 * 1024 * 1024  # an answer larger than this is an error (AWS Lambda's limit is 6 MB too)
WATCHDOG_INTERVAL = 1.0  # seconds between checks that the server is still our parent

_HEAD = struct.Struct("!II")
_LEN = struct.Struct("!I")
_NO_OUTPUT = b'"stdout":"","stderr":"","stdout_truncated":false,"stderr_truncated":false'


class _Capture:
    """A write-only text stream that keeps the first OUTPUT_CAP characters of a call, also in a file."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "w", encoding="utf-8", errors="backslashreplace")
        self.parts: list = []
        self.kept = 0
        self.truncated = False

    def reset(self) -> None:
        if self.kept or self.truncated:
            self.file.seek(0)
            self.file.truncate()
        self.parts, self.kept, self.truncated = [], 0, False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        room = OUTPUT_CAP - self.kept
        if len(text) > room:
            self.truncated = True
            text = text[:room]
        if text:
            self.parts.append(text)
            self.kept += len(text)
            self.file.write(text)
            self.file.flush()
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def value(self) -> str:
        return "".join(self.parts)


def _depth(value, limit: int, depth: int = 0) -> None:
    if depth > limit:
        raise ValueError(f"the result is nested deeper than {limit} levels")
    if isinstance(value, (list, tuple)):
        for item in value:
            _depth(item, limit, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            _depth(item, limit, depth + 1)


def _error(exc: BaseException, skip_frames: int = 1) -> dict:
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    import traceback  # only when something failed: the module costs every worker ~0.7 MB

    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return {"type": type(exc).__name__, "message": str(exc), "traceback": text}


def _send(fd: int, seq: int, payload: bytes) -> None:
    data = memoryview(_HEAD.pack(len(payload), seq) + payload)
    while data:
        data = data[os.write(fd, data):]


def _recv_exactly(rfile, n: int) -> bytes:
    data = rfile.read(n)
    if len(data) < n:
        raise EOFError
    return data


def _import(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load_bodies():
    return _import("_tinyfaas_bodies", os.path.join(os.path.dirname(os.path.abspath(__file__)), "bodies.py"))


def _load(path: str):
    main = getattr(_import("func", path), "main", None)
    if not callable(main):
        raise TypeError("func.py defines no callable main()")
    return main


def _call(main, bodies, request: bytes, out: _Capture, err: _Capture) -> bytes:
    try:
        call = bodies.parse_invocation(request)
    except bodies.BadBody as exc:
        body = bodies.encode({"code": exc.code, "message": str(exc)}).encode()
        return b"b" + _LEN.pack(len(body)) + body
    fragment = call.fragment()  # before main runs: what was sent, even if main changes its arguments
    out.reset()
    err.reset()
    sys.stdout, sys.stderr = out, err
    try:
        result = main(*call.args, **call.kwargs)
        status, body = b"o", bodies.encode(result)  # NaN, sets, huge ints (CPython's digit guard) raise here
        if body.count("[") + body.count("{") > bodies.MAX_DEPTH:  # results obey the arguments' rules
            _depth(result, bodies.MAX_DEPTH)
        if len(body) > MAX_RESULT_BYTES:
            raise ValueError(f"the result is {len(body)} bytes of JSON; the limit is {MAX_RESULT_BYTES}")
    except Exception as exc:  # the function's failure is data for its caller; SystemExit ends the worker (502)
        status, body = b"e", bodies.encode(_error(exc))
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    if out.kept or out.truncated or err.kept or err.truncated:
        output = bodies.encode({"stdout": out.value(), "stderr": err.value(), "stdout_truncated": out.truncated,
                                "stderr_truncated": err.truncated})[1:-1].encode()
    else:
        output = _NO_OUTPUT
    body = body.encode()
    return b"".join((status, _LEN.pack(len(body)), body, fragment, b",", output))


def _watchdog(parent: int) -> None:
    while True:
        time.sleep(WATCHDOG_INTERVAL)
        if os.getppid() != parent:
            os.killpg(0, signal.SIGKILL)


def main() -> None:
    fd, path, memory_mb = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    os.set_inheritable(fd, False)  # a child the function leaves behind must not hold the channel open
    out, err = _Capture(sys.argv[4]), _Capture(sys.argv[5])
    threading.Thread(target=_watchdog, args=(os.getppid(),), daemon=True).start()

    if memory_mb > 0:
        import resource
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    bodies = _load_bodies()
    sys.path.insert(0, os.path.dirname(path))
    try:
        fn = _load(path)
    except BaseException as exc:
        info = _error(exc, skip_frames=0)
        line = getattr(exc, "lineno", None)
        if line is None:
            import traceback

            frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
            line = frames[-1].lineno if frames else None
        info["line"] = line
        _send(fd, 0, b"e" + bodies.encode(info).encode())
        return
    _send(fd, 0, b"o")
    rfile = open(fd, "rb", buffering=65536, closefd=False)  # plain fd I/O: the socket module costs ~0.6 MB
    while True:
        try:
            size, seq = _HEAD.unpack(_recv_exactly(rfile, _HEAD.size))
            request = _recv_exactly(rfile, size)
        except (EOFError, ConnectionError):
            return  # the server closed the channel: stop quietly
        answer = _call(fn, bodies, request, out, err)
        try:
            _send(fd, seq, answer)
        except OSError:
            return  # the server went away mid-answer


if __name__ == "__main__":
    main()

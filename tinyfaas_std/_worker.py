"""The worker: runs inside a function's own virtualenv interpreter, imports `func.py` once, serves many calls.

Started by the launcher (`_launcher.py`, inside the worker's sandbox) as
`<venv>/bin/python -I _worker.py <fd> <func.py> <out> <err> <calling> <function> <version>`, by path, so it must
use the standard library only and imports nothing of `tinyfaas_std` as a package: the wire protocol
(`protocol.py`), the JSON rules (`bodies.py`) and the calling conventions (`conventions.py`, which turn a call's
bytes into `main`'s arguments and its return value into an answer) are loaded by path from beside this file. It
talks to the server over the socket `<fd>` (one end of a socketpair), never over stdout, so whatever the function
prints cannot corrupt the channel.

What a call prints through `sys.stdout`/`sys.stderr` is captured up to OUTPUT_CAP characters each, and written
through to the files `<out>`/`<err>`, so that the server can still report it when the call times out or the process
dies. Output belongs to the call that is running: a thread that an earlier call left running is a stray, and
whatever it prints, during a later call or between calls, is dropped. Ending the worker's process tree, and
watching that the server is alive, is the launcher's job.
"""

import importlib.util
import os
import sys
import threading

ERROR_TEXT_CAP = 16 * 1024  # characters of an error's message, and of its traceback, that are kept


class _Capture:
    """A write-only text stream that keeps the first OUTPUT_CAP characters of a call, also in a file."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "w", encoding="utf-8", errors="backslashreplace")
        self.parts: list = []
        self.kept = 0
        self.truncated = False
        self.strays: frozenset = frozenset()

    def reset(self, strays: frozenset) -> None:
        if self.kept or self.truncated:
            self.file.seek(0)
            self.file.truncate()
        self.parts, self.kept, self.truncated = [], 0, False
        self.strays = strays

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self.strays and threading.get_ident() in self.strays:
            return len(text)  # a thread an earlier call left running: not this call's output
        room = protocol.OUTPUT_CAP - self.kept
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


class _Discard:
    """sys.stdout and sys.stderr between calls: what stray threads print there belongs to no call."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


_DISCARD = _Discard()


def _error(exc: BaseException, skip_frames: int = 1) -> dict:
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    import traceback  # only when something failed: the module costs every worker ~0.7 MB

    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        message = str(exc)
    except Exception:  # a hostile __str__
        message = "<the exception's message could not be read>"
    return {"type": type(exc).__name__, "message": message[:ERROR_TEXT_CAP], "traceback": text[-ERROR_TEXT_CAP:]}


def _send(fd: int, seq: int, payload: bytes) -> None:
    data = memoryview(protocol.frame(seq, payload))
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


_NO_META = b"\0\0\0\0"  # LEN(0): a call without meta
_HERE = os.path.dirname(os.path.abspath(__file__))
protocol = _import("_tinyfaas_protocol", os.path.join(_HERE, "protocol.py"))
bodies = _import("_tinyfaas_bodies", os.path.join(_HERE, "bodies.py"))


def _load(path: str):
    main = getattr(_import("func", path), "main", None)
    if not callable(main):
        raise TypeError("func.py defines no callable main()")
    return main


def _strays() -> frozenset:
    """Threads alive before a call starts (other than this one): whatever they print is not the call's."""
    if threading.active_count() == 1:
        return frozenset()
    return frozenset(t.ident for t in threading.enumerate()) - {threading.get_ident()}


def _call(convention, main, context, request: bytes, out: _Capture, err: _Capture) -> bytes:
    """One call: (kind, LEN, value, record fragment); see protocol.py. `request` is LEN(meta), meta, body."""
    prepare, finish = convention
    if request.startswith(_NO_META):  # an args call: no meta
        meta, body = None, request[4:]
    else:
        (size,) = protocol.LEN.unpack_from(request)
        meta, body = bodies.loads_strict(request[4:4 + size]), request[4 + size:]
        if context is not None:  # event and http calls carry their id and deadline
            context.call_id, context.deadline = meta["id"], meta["deadline"]
    try:
        args, kwargs, fragment = prepare(main, meta, body, context)  # parsed before main runs
    except bodies.BadBody as exc:
        body = bodies.encode({"code": exc.code, "message": str(exc)}).encode()
        return protocol.BAD + protocol.LEN.pack(len(body)) + body
    strays = _strays()
    out.reset(strays)
    err.reset(strays)
    sys.stdout, sys.stderr = out, err
    try:
        kind, value, extra = finish(main(*args, **kwargs))  # NaN, sets, huge ints, bad headers: the call's error
    except Exception as exc:  # the function's failure is data for its caller; SystemExit ends the worker (502)
        kind, value, extra = protocol.ERROR, bodies.encode(_error(exc)).encode(), b""
    finally:
        sys.stdout, sys.stderr = _DISCARD, _DISCARD
    if out.kept or out.truncated or err.kept or err.truncated:
        output = bodies.encode({"stdout": out.value(), "stderr": err.value(), "stdout_truncated": out.truncated,
                                "stderr_truncated": err.truncated})[1:-1].encode()
    else:
        output = protocol.NO_OUTPUT
    return b"".join((kind, protocol.LEN.pack(len(value)), value, fragment, extra, b",", output))


def main() -> None:
    fd, path, calling, function, version = int(sys.argv[1]), sys.argv[2], *sys.argv[5:8]
    os.set_inheritable(fd, False)  # a program the function runs does not get the channel
    out, err = _Capture(sys.argv[3]), _Capture(sys.argv[4])
    conventions = _import("_tinyfaas_conventions", os.path.join(_HERE, "conventions.py"))
    convention = conventions.CONVENTIONS[calling]
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
        _send(fd, 0, protocol.ERROR + bodies.encode(info).encode())
        return
    _send(fd, 0, protocol.OK)
    context = None
    if calling != "args" and conventions.wants_context(fn):
        context = conventions.Context("", function, version, 0.0)
    sys.stdout, sys.stderr = _DISCARD, _DISCARD
    rfile = open(fd, "rb", buffering=65536, closefd=False)  # plain fd I/O: the socket module costs ~0.6 MB
    while True:
        try:
            size, seq = protocol.HEAD.unpack(_recv_exactly(rfile, protocol.HEAD.size))
            request = _recv_exactly(rfile, size)
        except (EOFError, ConnectionError):
            return  # the server closed the channel: stop quietly
        answer = _call(convention, fn, context, request, out, err)
        try:
            _send(fd, seq, answer)
        except OSError:
            return  # the server went away mid-answer


if __name__ == "__main__":
    main()

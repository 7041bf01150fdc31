"""Function lifecycle and execution: validate, build, swap, invoke, time, log, delete.

Strategy: `FunctionManager` is the core the HTTP layer calls; it owns the registry, the logs, the venvs and one
worker `Pool` per deployed function. Uploaded code never runs in this process: it is compiled here (syntax
errors are cheap to report) and imported by a worker of the function's own venv interpreter. That first worker
is the upload's proof that the function starts, and then becomes its first warm worker.

Replacing a function builds the new version beside the old one (staged file, venv by requirements key) and swaps
only on success: registry entry, `func.py`, pool. Until then calls keep reaching the old pool; a rejected upload
leaves everything as it was. Uploads and deletes of one name are serialised by that name's lock; calls never
take it.

Every call, whatever its outcome, is appended to the log before its answer is returned. Results travel as JSON
bytes from the worker and are spliced into the answer and the record, never decoded here.
"""

from __future__ import annotations

import enum
import hashlib
import os
import random
import re
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .bodies import parse_invocation
from .config import Config
from .errors import BadRequest, NotFound, ServiceUnavailable, Unprocessable, WorkerCrashed
from .state import FunctionMeta, LogStore, Registry, encode_record
from .venvs import Venv, VenvBuilder, parse_requirements
from .workers import Pool, StartFailed, Worker, WorkerDied, WorkerTimeout

__all__ = ["FunctionManager", "Answer", "Lifecycle", "NAME_PATTERN"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # ASCII only: names become folder names
MAX_SOURCE_BYTES = 4 * 1024 * 1024  # a single-file function; more is data that belongs elsewhere


class Lifecycle(enum.Enum):
    BUILDING = "building"   # first upload in progress: not callable yet
    READY = "ready"
    UPDATING = "updating"   # a new version is building; the old one serves
    DELETING = "deleting"


_MOVES: dict[Lifecycle | None, set[Lifecycle | None]] = {
    None: {Lifecycle.BUILDING},
    Lifecycle.BUILDING: {Lifecycle.READY, None},
    Lifecycle.READY: {Lifecycle.UPDATING, Lifecycle.DELETING},
    Lifecycle.UPDATING: {Lifecycle.READY},
    Lifecycle.DELETING: {None},
}


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished call: the HTTP status and the JSON body, already encoded."""
    status: int
    body: bytes


class _Ids:
    """uuid4 strings from a generator seeded once from the OS, not a syscall per call."""

    def __init__(self) -> None:
        self._rng = random.Random(os.urandom(32))

    def next(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))


class FunctionManager:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.functions_dir = config.functions_dir.resolve()
        self.functions_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(config.data_dir / "functions.json")
        self.logs = LogStore(config.data_dir / "logs", config.log_retention)
        self.venvs = VenvBuilder(self.functions_dir / ".venvs", config.pip_timeout)
        self.started = time.time()
        self._ids = _Ids()
        self._lock = threading.Lock()                  # guards the four dicts below and the in-flight count
        self._pools: dict[str, Pool] = {}
        self._states: dict[str, Lifecycle] = {m.name: Lifecycle.READY for m in self.registry.all()}
        self._name_locks: dict[str, threading.Lock] = {}
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._closing = False

    # -- admin -------------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return self.registry.names()

    def describe(self, name: str) -> dict[str, Any]:
        meta = self._meta(name)
        calls, errors = self.logs.counts(name)
        return {**asdict(meta), "status": self._states.get(name, Lifecycle.READY).value,
                "invocations": calls, "errors": errors,
                "limits": {"timeout_seconds": self.config.timeout, "memory_mb": self.config.memory_mb,
                           "max_workers": self.config.max_workers, "max_body_mb": self.config.max_body_mb}}

    def read_logs(self, name: str, limit: int | None) -> list[bytes]:
        self._meta(name)
        return self.logs.read(name, limit)

    def upload(self, name: str, source: bytes, requirements_text: str | None) -> dict[str, Any]:
        check_name(name)
        _check_source(source)
        requirements = parse_requirements(requirements_text or "")
        began = time.monotonic()
        with self._name_lock(name):
            existed = self.registry.get(name) is not None
            self._move(name, Lifecycle.UPDATING if existed else Lifecycle.BUILDING)
            try:
                meta, worker = self._build(name, source, requirements)
            except BaseException:
                self._move(name, Lifecycle.READY if existed else None)
                raise
            self._swap(meta, worker)
            self._move(name, Lifecycle.READY)
        self._collect_venvs()
        return {"name": name, "status": "ready", "created": not existed, "requirements": requirements,
                "build_seconds": round(time.monotonic() - began, 4)}

    def delete(self, name: str) -> dict[str, str]:
        check_name(name)
        with self._name_lock(name):
            self._meta(name)
            self._move(name, Lifecycle.DELETING)
            self.registry.remove(name)
            with self._lock:
                pool = self._pools.pop(name, None)
            if pool is not None:
                pool.close()
            self.logs.delete(name)
            _remove_tree(self._folder(name))
            self._move(name, None)
        self._collect_venvs()
        return {"deleted": name}

    # -- calls -------------------------------------------------------------------------------------------------

    def invoke(self, name: str, body: bytes) -> Answer:
        with self._lock:
            if self._closing:
                raise ServiceUnavailable("the server is shutting down", code="shutting_down",
                                         headers={"Connection": "close"})
            self._inflight += 1
        try:
            call = parse_invocation(body)
            pool = self._pool(name)
            return self._run(name, pool, call.args_json, call.kwargs_json)
        finally:
            with self._lock:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.notify_all()

    def _run(self, name: str, pool: Pool, args_json: str, kwargs_json: str) -> Answer:
        call_id = self._ids.next()
        timeout = self.config.timeout
        start = time.time()
        worker = pool.acquire(wait=timeout)
        healthy = False
        try:
            ok, main, extra = worker.call(b"[%s,%s]" % (args_json.encode(), kwargs_json.encode()), timeout)
            healthy, status = True, ("ok" if ok else "error")
        except WorkerTimeout:
            status = "timeout"
            main = b'{"type":"Timeout","message":"the function ran past its %gs timeout; its worker was killed",' \
                   b'"traceback":""}' % timeout
            extra = b'"stdout":"","stderr":""'
        except WorkerDied:
            status = "crashed"
            main = (b'{"type":"WorkerDied","message":"the function\'s process exited or was killed '
                    b'(exit status %d)","traceback":""}' % _exit_status(worker))
            extra = b'"stdout":"","stderr":""'
        finally:
            pool.release(worker, healthy)
        end = time.time()
        outcome = (b'"result":' if status == "ok" else b'"error":') + main + b"," + extra
        self.logs.append(name, encode_record(id=call_id, status=status, function=name, start=start, end=end,
                                             args_json=args_json, kwargs_json=kwargs_json, outcome=outcome),
                         status != "ok")
        return _answer(call_id, status, main, end - start)

    def _pool(self, name: str) -> Pool:
        pool = self._pools.get(name)
        if pool is not None:
            return pool
        with self._name_lock(name):  # after a restart: the first call creates the pool of a known function
            with self._lock:
                pool = self._pools.get(name)
            if pool is None:
                meta = self._meta(name)
                pool = self._new_pool(self.venvs.get(meta.venv), self._folder(name) / "func.py")
                with self._lock:
                    self._pools[name] = pool
            return pool

    def worker_pids(self) -> list[int]:
        with self._lock:
            pools = list(self._pools.values())
        return [pid for pool in pools for pid in pool.pids()]

    def reap_idle_workers(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.reap_idle(self.config.idle_timeout)

    def close(self, grace: float) -> None:
        """Refuse new calls, let calls in flight finish for up to `grace` seconds, then stop every worker."""
        with self._lock:
            self._closing = True
            self._idle.wait_for(lambda: self._inflight == 0, timeout=grace)
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.kill_all()
        self.logs.close()

    # -- helpers -----------------------------------------------------------------------------------------------

    def _build(self, name: str, source: bytes, requirements: list[str]) -> tuple[FunctionMeta, Worker]:
        folder = self._folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".staging-{uuid.uuid4().hex}"  # the new version, beside the serving one
        staging.mkdir()
        staged = staging / "func.py"
        staged.write_bytes(source)
        try:
            with self.venvs.use(requirements) as (venv, _built):
                worker = self._start(venv, staged)
                now = time.time()
                old = self.registry.get(name)
                meta = FunctionMeta(name=name, created=old.created if old else now, updated=now,
                                    requirements=requirements, venv=venv.key,
                                    code_sha256=hashlib.sha256(source).hexdigest(), code_size=len(source))
                os.replace(staged, folder / "func.py")
                self._write_requirements(folder, requirements)
                _replace_symlink(folder / "venv", os.path.relpath(venv.path, folder))
                self.registry.put(meta)
        finally:
            _remove_tree(staging)
        return meta, worker

    def _start(self, venv: Venv, func_path: Path) -> Worker:
        try:
            return Worker(venv.python, func_path, self.config.memory_mb, self.config.timeout)
        except StartFailed as exc:
            info = exc.info
            where = f" at line {info['line']}" if info.get("line") else ""
            raise Unprocessable(f"func.py failed to load{where}: {info.get('type')}: {info.get('message')}",
                                code="function_rejected", line=info.get("line"),
                                traceback=info.get("traceback", "")) from None

    def _swap(self, meta: FunctionMeta, worker: Worker) -> None:
        pool = self._new_pool(self.venvs.get(meta.venv), self._folder(meta.name) / "func.py", first=worker)
        with self._lock:
            old = self._pools.get(meta.name)
            self._pools[meta.name] = pool
        if old is not None:
            old.close()

    def _new_pool(self, venv: Venv, func_path: Path, first: Worker | None = None) -> Pool:
        def spawn() -> Worker:
            try:
                return Worker(venv.python, func_path, self.config.memory_mb, self.config.timeout)
            except StartFailed as exc:
                raise WorkerCrashed(f"the function failed to start: {exc.info.get('type')}: "
                                    f"{exc.info.get('message')}", code="function_start_failed") from None
        return Pool(spawn, self.config.max_workers, self.config.max_queue, first)

    def _write_requirements(self, folder: Path, requirements: list[str]) -> None:
        path = folder / "requirements.txt"
        if requirements:
            path.write_text("\n".join(requirements) + "\n")
        else:
            path.unlink(missing_ok=True)

    def _collect_venvs(self) -> None:
        self.venvs.remove_unused({meta.venv for meta in self.registry.all()})

    def _meta(self, name: str) -> FunctionMeta:
        meta = self.registry.get(name) if NAME_PATTERN.fullmatch(name) else None
        if meta is None:
            raise NotFound(f"no function named {name[:80]!r}", code="function_not_found")
        return meta

    def _folder(self, name: str) -> Path:
        folder = (self.functions_dir / name).resolve()
        if folder.parent != self.functions_dir:  # containment: a name can never point outside functions/
            raise BadRequest("invalid function name", code="bad_name")
        return folder

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def _move(self, name: str, to: Lifecycle | None) -> None:
        with self._lock:
            now = self._states.get(name)
            if to not in _MOVES[now]:
                raise RuntimeError(f"function {name}: no move from {now} to {to}")
            if to is None:
                self._states.pop(name, None)
            else:
                self._states[name] = to


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise BadRequest("a function name is 1-64 characters of A-Z, a-z, 0-9, '_' and '-', starting with a "
                         "letter or digit", code="bad_name")


def _check_source(source: bytes) -> None:
    if len(source) > MAX_SOURCE_BYTES:
        raise Unprocessable(f"func.py is larger than {MAX_SOURCE_BYTES} bytes", code="function_rejected")
    try:
        code = source.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unprocessable(f"func.py is not UTF-8 (byte {exc.start})", code="function_rejected") from None
    try:
        compile(code, "func.py", "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise Unprocessable(f"func.py does not compile: {exc.msg} at line {exc.lineno}", code="function_rejected",
                            line=exc.lineno, offset=exc.offset) from None
    except ValueError as exc:  # NUL bytes in the source
        raise Unprocessable(f"func.py does not compile: {exc}", code="function_rejected") from None


def _answer(call_id: str, status: str, main: bytes, duration: float) -> Answer:
    if status == "ok":
        return Answer(200, b'{"id":"%s","result":%s,"duration":%.6f}' % (call_id.encode(), main, duration))
    http_status, code = {"error": (500, b"function_error"), "timeout": (504, b"function_timeout"),
                         "crashed": (502, b"function_crashed")}[status]
    error = main[:-1] + b',"code":"%s"}' % code  # the worker's error object, with our machine code added
    body = b'{"id":"%s","error":%s,"duration":%.6f}' % (call_id.encode(), error, duration)
    return Answer(http_status, body)


def _exit_status(worker: Worker) -> int:
    code = worker.proc.poll()
    return code if code is not None else -1


def _replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex}")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

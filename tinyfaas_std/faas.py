"""Function lifecycle and execution: validate, build, swap, invoke, time, log, delete.

Strategy: `FunctionManager` is the core the HTTP layer calls. It owns the registry, the logs, the venvs, and
for each deployed function a `_Live` entry: its registry record, the worker `Pool` of its current version and
its log. Calls read `_live` without taking any lock held by an upload; uploads and deletes of one name are
serialised by that name's lock.

Uploaded code never runs in this process: it is compiled here (syntax errors are cheap to report) and imported
by a worker of the function's own venv interpreter. That first worker is the upload's proof that the function
starts, and then becomes its first warm worker.

Versions: each upload writes its code to a new folder `functions/<name>/v-<id>/` and the registry names the
version that is live; `registry.put` is the single moment a new version goes live, so a crash at any point
leaves the old or the new version whole. `functions/<name>/func.py` is a link to the live version for people.
A replaced version's pool finishes the calls it has, then its folder and (if no one else uses it) its venv are
collected. A rejected upload leaves everything as it was.

Every call, whatever its outcome, is appended to the log before its answer is returned. Results travel as JSON
bytes from the worker and are spliced into the answer and the record, never decoded here.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
import json
import os
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import protocol
from .bodies import BadBody, parse_invocation
from .config import Config
from .errors import BadRequest, FaasError, NotFound, ServiceUnavailable, Unprocessable, WorkerCrashed
from .sandbox import Sandbox, WorkerSpec
from .state import FunctionLog, FunctionMeta, LogStore, Registry, encode_record
from .venvs import VenvBuilder, parse_requirements
from .workers import Pool, PoolClosed, StartFailed, Worker, WorkerDied, WorkerTimeout

__all__ = ["FunctionManager", "Answer", "Lifecycle", "NAME_PATTERN", "check_name"]

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


@dataclass(frozen=True, slots=True)
class _Live:
    meta: FunctionMeta
    pool: Pool
    log: FunctionLog


_UUID4_MASK = ~(0xF000 << 64 | 0xC000 << 48) & (1 << 128) - 1  # clears the version and variant bits
_UUID4_BITS = 0x4000 << 64 | 0x8000 << 48                      # version 4, RFC 4122 variant


class _Ids:
    """uuid4 strings from a generator seeded once from the OS, not a syscall per call."""

    def __init__(self) -> None:
        self._rng = random.Random(os.urandom(32))

    def next(self) -> str:
        h = "%032x" % (self._rng.getrandbits(128) & _UUID4_MASK | _UUID4_BITS)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class FunctionManager:
    def __init__(self, config: Config) -> None:
        self.config = config
        os.umask(0o022)  # functions run under other uids and must be able to read their code and venv
        self.functions_dir = config.functions_dir.resolve()
        self.functions_dir.mkdir(parents=True, exist_ok=True)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(config.data_dir, 0o700)  # the registry and every function's log: the server's alone
        self.registry = Registry(config.data_dir / "functions.json")
        self.logs = LogStore(config.data_dir / "logs", config.log_retention, retention_mb=config.log_retention_mb)
        self.venvs = VenvBuilder(self.functions_dir / ".venvs", config.pip_timeout,
                                 source_builds=config.source_builds == "allow")
        self.sandbox = Sandbox(root_dir=self.functions_dir / ".sandbox", hidden=[config.data_dir, self.functions_dir],
                               memory_mb=config.memory_mb, max_processes=config.max_processes,
                               max_file_mb=config.max_file_mb,
                               mode=None if config.isolation == "auto" else config.isolation)
        self._ids = _Ids()
        self._lock = threading.Lock()  # guards the dicts and lists below
        self._live: dict[str, _Live] = {}
        self._retiring: list[_Live] = []  # replaced or deleted versions whose calls may still be running
        self._states: dict[str, Lifecycle] = {}
        self._name_locks: dict[str, threading.Lock] = {}
        self._uids_pending: set[int] = set()  # given to uploads of new names; kept (tiny) to never hand out twice
        self._calls: collections.deque[None] = collections.deque()  # one entry per call or upload in flight
        self._closing = False
        for meta in self.registry.all():
            if meta.uid not in config.uids:  # a registry from before uids, or the range was changed
                meta = dataclasses.replace(meta, uid=self._free_uid())
                self.registry.put(meta)
            self._live[meta.name] = _Live(meta, self._new_pool(meta), self.logs.open(meta.name))
            self._states[meta.name] = Lifecycle.READY
            self._link(meta)
        self.collect_garbage()

    # -- admin -------------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return self.registry.names()

    def describe(self, name: str) -> dict[str, Any]:
        live = self._get(name)
        calls, errors = live.log.counts()
        return {**asdict(live.meta), "status": self._states.get(name, Lifecycle.READY).value,
                "invocations": calls, "errors": errors,
                "limits": {"timeout_seconds": self.config.timeout, "memory_mb": self.config.memory_mb,
                           "max_workers": self.config.max_workers, "max_body_mb": self.config.max_body_mb}}

    def read_logs(self, name: str, limit: int | None) -> Iterator[bytes]:
        return self._get(name).log.read(limit)

    def upload(self, name: str, source: bytes, requirements_text: str | None) -> dict[str, Any]:
        check_name(name)
        _check_source(source)
        requirements = parse_requirements(requirements_text or "")
        began = time.monotonic()
        self._enter_call()
        try:
            return self._upload(name, source, requirements, began)
        except FaasError:
            if self._closing:  # the build was cut short by the server stopping, not by the code
                raise ServiceUnavailable("the server is shutting down", code="shutting_down", close=True) from None
            raise
        finally:
            self._leave_call()

    def _upload(self, name: str, source: bytes, requirements: list[str], began: float) -> dict[str, Any]:
        with self._name_lock(name):
            existed = name in self._live
            self._move(name, Lifecycle.UPDATING if existed else Lifecycle.BUILDING)
            try:
                meta, worker = self._build(name, source, requirements)
            except BaseException:
                self._move(name, Lifecycle.READY if existed else None)
                raise
            self._activate(meta, worker)
            self._move(name, Lifecycle.READY)
        self.collect_garbage([name])
        return {"name": name, "status": "ready", "created": not existed, "requirements": requirements,
                "build_seconds": round(time.monotonic() - began, 4)}

    def delete(self, name: str) -> dict[str, str]:
        self._get(name)
        with self._name_lock(name):
            self._get(name)  # it may have gone while we waited for the lock
            self._move(name, Lifecycle.DELETING)
            self.registry.remove(name)
            with self._lock:
                live = self._live.pop(name)
                self._retiring.append(live)
            live.pool.close()  # calls it has taken finish; its folders go once they have (collect_garbage)
            live.log.close()
            self.logs.remove(name)
            self._move(name, None)
        self.collect_garbage([name])
        return {"deleted": name}

    # -- calls -------------------------------------------------------------------------------------------------

    def invoke(self, name: str, body: bytes) -> Answer:
        """Run `main` with the arguments in `body` (forwarded as it came; the worker parses it)."""
        self._enter_call()
        try:
            live = self._get(name)
            call_id, start = self._ids.next(), time.time()
            try:
                worker, live = self._acquire(live)
            except FaasError as exc:
                if exc.status in (429, 502):  # the call was made and failed: it belongs in the log
                    self._record_refusal(live, call_id, start, body, exc)
                raise
            status, main, rest = self._execute(live.pool, worker, body)
            if status == "bad":
                raise _bad_body(main)
            end = self._record(live, call_id, start, status, rest + _record_value(status, main))
            return _answer(call_id, status, main, end - start)
        finally:
            self._leave_call()

    def _acquire(self, live: _Live) -> tuple[Worker, _Live]:
        """A worker of the function's current version. A call that raced with a replacement follows it."""
        while True:
            try:
                return live.pool.acquire(wait=self.config.timeout), live
            except PoolClosed:
                if self._closing:
                    raise ServiceUnavailable("the server is shutting down", code="shutting_down",
                                             close=True) from None
                live = self._get(live.meta.name)

    def _execute(self, pool: Pool, worker: Worker, body: bytes) -> tuple[str, bytes, bytes]:
        healthy = False
        try:
            kind, main, rest = worker.call(body)
            healthy = True
            return protocol.KINDS[kind], main, rest
        except WorkerTimeout:
            message = f"the function ran past its {self.config.timeout:g} s timeout; its worker was killed"
            return "timeout", b'{"type":"Timeout","message":%s,"traceback":""}' % _quote(message), \
                _describe(body) + b"," + worker.salvage_output()
        except WorkerDied:
            message = f"the function's process exited or was killed{worker.exit_reason()}"
            return "crashed", b'{"type":"WorkerDied","message":%s,"traceback":""}' % _quote(message), \
                _describe(body) + b"," + worker.salvage_output()
        finally:
            pool.release(worker, healthy)

    def _record_refusal(self, live: _Live, call_id: str, start: float, body: bytes, exc: FaasError) -> None:
        """A call that got no worker (429) or whose worker could not start (502). Its body was not parsed by a
        worker, so it is parsed here: a bad one is the 400 it would have been."""
        try:
            args = protocol.input_fragment(parse_invocation(body).fragment())
        except BadBody as bad:
            raise BadRequest(str(bad), code=bad.code) from None
        error = b'{"type":"%s","message":%s}' % (type(exc).__name__.encode(), _quote(exc.message))
        self._record(live, call_id, start, "crashed" if exc.status == 502 else "error",
                     args + b"," + protocol.NO_OUTPUT + b',"error":' + error)

    def _record(self, live: _Live, call_id: str, start: float, status: str, rest: bytes) -> float:
        end = time.time()
        try:
            live.log.append(encode_record(id=call_id, status=status, function=live.meta.name, start=start,
                                          end=end, rest=rest), status != "ok")
        except OSError as exc:  # e.g. the disk is full: every call is logged before it is answered, or fails
            raise ServiceUnavailable(f"the call {call_id} ran, but its record could not be written: "
                                     f"{exc.strerror or exc}", code="log_write_failed") from None
        return end

    def _enter_call(self) -> None:
        # A deque as the in-flight count: append/pop are atomic, so calls take no lock. Counted first and
        # checked second, so close() (which sets the flag first, then waits for the count) misses none.
        self._calls.append(None)
        if self._closing:
            self._calls.pop()
            raise ServiceUnavailable("the server is shutting down", code="shutting_down", close=True)

    def _leave_call(self) -> None:
        self._calls.pop()

    # -- upkeep ------------------------------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        with self._lock:
            pools = [live.pool for live in self._live.values()] + [item.pool for item in self._retiring]
        return [pid for pool in pools for pid in pool.pids()]

    def reap_idle_workers(self) -> None:
        with self._lock:
            pools = [live.pool for live in self._live.values()]
        for pool in pools:
            pool.reap_idle(self.config.idle_timeout)

    def collect_garbage(self, names: list[str] | None = None) -> None:
        """Remove venvs, and version folders of `names` (default: all), that no live function, upload in
        progress or unfinished old pool uses."""
        with self._lock:
            self._retiring = [item for item in self._retiring if not item.pool.drained]
        self.venvs.remove_unused(self._venvs_in_use)
        if names is None:  # every folder, so that a deleted function's is removed once its last call ends
            names = [p.name for p in self.functions_dir.iterdir() if NAME_PATTERN.fullmatch(p.name)]
        for name in names:
            lock = self._name_lock(name)
            if not lock.acquire(blocking=False):
                continue  # an upload or delete is under way: its versions are in flux; next sweep
            try:
                self._collect_versions(name)
            finally:
                lock.release()

    def _collect_versions(self, name: str) -> None:
        """Under the name's lock, so no version of it can start building or go live meanwhile."""
        folder = self._folder(name)
        with self._lock:
            live = self._live.get(name)
            users = [item.meta for item in self._retiring if item.meta.name == name]
        if live is None and not users:
            _remove_tree(folder)  # deleted, and its last call has finished: code, links and scratch go
            return
        users += [live.meta] if live else []
        keep = {folder / meta.version for meta in users} | {self._scratch(meta) for meta in users}
        for path in [*folder.glob("v-*"), *folder.glob("scratch-*")]:
            if path not in keep:
                _remove_tree(path)

    def close(self, grace: float) -> None:
        """Refuse new calls, let calls in flight finish for up to `grace` seconds, then stop every worker."""
        self._closing = True
        deadline = time.monotonic() + grace
        while self._calls and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._lock:
            pools = [live.pool for live in self._live.values()] + [item.pool for item in self._retiring]
        for pool in pools:
            pool.kill_all()
        for live in list(self._live.values()):
            live.log.close()

    # -- helpers -----------------------------------------------------------------------------------------------

    def _build(self, name: str, source: bytes, requirements: list[str]) -> tuple[FunctionMeta, Worker]:
        old = self.registry.get(name)
        uid = old.uid if old else self._free_uid()
        version = self._folder(name) / f"v-{uuid.uuid4().hex[:12]}"
        version.mkdir(parents=True)
        try:
            (version / "func.py").write_bytes(source)
            if requirements:
                (version / "requirements.txt").write_text("\n".join(requirements) + "\n")
            with self.venvs.use(requirements) as (venv, _built):
                now = time.time()
                meta = FunctionMeta(name=name, created=old.created if old else now, updated=now,
                                    requirements=requirements, venv=venv.key, version=version.name,
                                    code_sha256=hashlib.sha256(source).hexdigest(), code_size=len(source), uid=uid)
                try:
                    worker = self._launch(meta)
                except StartFailed as exc:
                    raise _rejected(exc.info) from None
                try:
                    self.registry.put(meta)  # the new version is live from here on
                except BaseException:
                    worker.close()
                    raise
        except BaseException:
            _remove_tree(version)
            raise
        return meta, worker

    def _activate(self, meta: FunctionMeta, worker: Worker) -> None:
        pool = self._new_pool(meta, first=worker)
        with self._lock:
            old = self._live.get(meta.name)
            log = old.log if old else self.logs.open(meta.name)
            self._live[meta.name] = _Live(meta, pool, log)
            if old:
                self._retiring.append(old)
        if old:
            old.pool.close()
        self._link(meta)

    def _launch(self, meta: FunctionMeta) -> Worker:
        """Start a worker of this version in its sandbox. Its scratch folder doubles as the place where it
        writes through what calls print (for reports of calls whose worker died)."""
        venv, code, scratch = self.venvs.get(meta.venv), self._folder(meta.name) / meta.version, self._scratch(meta)
        self.sandbox.prepare_scratch(scratch, meta.uid)

        def start(channel: int, capture: tuple[Path, Path]) -> Any:
            spec = WorkerSpec(function=meta.name, version=meta.version, uid=meta.uid, python=venv.python,
                              venv=venv.path, code=code, scratch=scratch,
                              args=(str(code / "func.py"), *map(str, capture)))
            return self.sandbox.start(spec, channel)

        return Worker(start, scratch, timeout=self.config.timeout, max_body=self.config.max_body_bytes)

    def _scratch(self, meta: FunctionMeta) -> Path:
        """HOME and TMPDIR of the function's workers: one per uid, so a function deleted and made again under
        the same name (and a new uid) never finds, nor is refused, what the old one left."""
        return self._folder(meta.name) / f"scratch-{meta.uid}"

    def _free_uid(self) -> int:
        """A uid of --uid-range for a new function: one past the highest taken, so a deleted function's uid is not
        handed out again while higher ones are free; then the lowest free one."""
        with self._lock:
            taken = {meta.uid for meta in self.registry.all()} | self._uids_pending
            uids = self.config.uids
            top = max((u for u in taken if u in uids), default=uids.start - 1)
            uid = top + 1 if top + 1 in uids else next((u for u in uids if u not in taken), None)
            if uid is None:
                raise ServiceUnavailable("every uid of --uid-range is taken", code="no_free_uid")
            self._uids_pending.add(uid)
            return uid

    def _new_pool(self, meta: FunctionMeta, first: Worker | None = None) -> Pool:
        def spawn() -> Worker:
            try:
                return self._launch(meta)
            except StartFailed as exc:
                raise WorkerCrashed(f"the function failed to start: {exc.info.get('type')}: "
                                    f"{exc.info.get('message')}", code="function_start_failed") from None

        return Pool(spawn, self.config.max_workers, self.config.max_queue, first)

    def _venvs_in_use(self) -> set[str]:
        """Called by the venv builder under its lock, after uploads' pins: the registry is up to date then."""
        with self._lock:
            live = {item.meta.venv for item in self._live.values()} | {item.meta.venv for item in self._retiring}
        return live | {meta.venv for meta in self.registry.all()}

    def _link(self, meta: FunctionMeta) -> None:
        """`func.py`, `requirements.txt` and `venv` in the function's folder point at the live version."""
        folder = self._folder(meta.name)
        _replace_symlink(folder / "func.py", f"{meta.version}/func.py")
        _replace_symlink(folder / "venv", os.path.relpath(self.venvs.get(meta.venv).path, folder))
        if meta.requirements:
            _replace_symlink(folder / "requirements.txt", f"{meta.version}/requirements.txt")
        else:
            (folder / "requirements.txt").unlink(missing_ok=True)

    def _get(self, name: str) -> _Live:
        live = self._live.get(name)
        if live is None:
            raise NotFound(f"no function named {name[:80]!r}", code="function_not_found")
        return live

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


def _rejected(info: dict[str, Any]) -> Unprocessable:
    where = f" at line {info['line']}" if info.get("line") else ""
    return Unprocessable(f"func.py failed to load{where}: {info.get('type')}: {info.get('message')}",
                         code="function_rejected", line=info.get("line"), traceback=info.get("traceback", ""))


def _describe(body: bytes) -> bytes:
    """`"args"`/`"kwargs"` of a call whose worker died before describing it; parsed only on this rare path."""
    try:
        return protocol.input_fragment(parse_invocation(body).fragment())
    except BadBody:
        return b'"args":null,"kwargs":null'


def _bad_body(main: bytes) -> FaasError:
    """The worker's `{"code", "message"}` for a body that is not an invocation, as the 400 it is."""
    try:
        info = json.loads(main)
        return BadRequest(str(info["message"]), code=str(info["code"]))
    except (ValueError, KeyError, TypeError):
        return WorkerCrashed("the function's worker sent a malformed answer", code="function_crashed")


def _record_value(status: str, value: bytes) -> bytes:
    """The result or error of a call as its record keeps it: past RECORD_VALUE_CAP, null and the size."""
    key = b',"result":' if status == "ok" else b',"error":'
    if len(value) <= protocol.RECORD_VALUE_CAP:
        return key + value
    return key + b'null,"%s_truncated":true,"%s_bytes":%d' % (key[2:-2], key[2:-2], len(value))


def _quote(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=True).encode()


def _answer(call_id: str, status: str, main: bytes, duration: float) -> Answer:
    if status == "ok":
        return Answer(200, b'{"id":"%s","result":%s,"duration":%.6f}' % (call_id.encode(), main, duration))
    http_status, code = {"error": (500, b"function_error"), "timeout": (504, b"function_timeout"),
                         "crashed": (502, b"function_crashed")}[status]
    error = main[:-1] + b',"code":"%s"}' % code  # the worker's error object, with our machine code added
    body = b'{"id":"%s","error":%s,"duration":%.6f}' % (call_id.encode(), error, duration)
    return Answer(http_status, body)


def _replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex}")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

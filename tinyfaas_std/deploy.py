"""Deploying: uploads, settings changes (PATCH), versions, rollbacks, deletes and the collection of what they leave.

Strategy: every change of a function makes or picks a `Version` (state.py) and switches to it the same way:
1. under the function's name lock (one change of a name at a time; calls never take it), build what the version
   needs: for an upload a new code folder `functions/<name>/v-<id>/` and a venv (venvs.py); a PATCH reuses its
   parent's code and venv;
2. start the version's first worker (sandbox.py): the proof that it imports with its settings; a failure is
   `422` and nothing has changed;
3. `registry.put`: the single moment the version goes live, so a crash leaves the old or the new one whole;
4. `table.swap`: new calls go to the new pool, the old one finishes the calls it took (live.py).
The newest `--keep-versions` versions are kept (and the live one, after a rollback), each with its code folder
and venv; `collect_garbage` removes the folders and venvs that no kept version and no draining pool uses.
`functions/<name>/func.py` is a link to the live version's code, for people.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import archive, export, settings
from .config import Config
from .errors import BadRequest, Conflict, FaasError, NotFound, ServiceUnavailable, Unprocessable, WorkerCrashed
from .live import Live, LiveTable, shutting_down
from .logs import FunctionLog, LogStore
from .sandbox import Sandbox, WorkerSpec
from .state import FunctionRecord, Registry, SecretStore, Version
from .venvs import VenvBuilder, parse_requirements
from .workers import Pool, StartFailed, Worker, start_worker

__all__ = ["Deployer", "Lifecycle", "NAME_PATTERN", "check_name"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # ASCII only: names become folder names
MAX_SOURCE_BYTES = 4 * 1024 * 1024  # func.py itself; more is data that belongs in other files of an archive


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


class Deployer:
    def __init__(self, config: Config, table: LiveTable, registry: Registry, secrets: SecretStore,
                 logs: LogStore, venvs: VenvBuilder, sandbox: Sandbox, functions_dir: Path,
                 on_change: Callable[[str, Version | None], None] = lambda name, version: None) -> None:
        """`on_change(name, version)` is told each version that goes live (None: the function was deleted)."""
        self.config = config
        self._on_change = on_change
        self._table, self._registry, self._secrets, self._logs = table, registry, secrets, logs
        self._venvs, self._sandbox, self._dir = venvs, sandbox, functions_dir
        self._lock = threading.Lock()  # guards the dicts and the set below
        self._states: dict[str, Lifecycle] = {}
        self._name_locks: dict[str, threading.Lock] = {}
        self._uids_pending: set[int] = set()  # given to uploads of new names; kept (tiny) to never hand out twice

    def load(self) -> None:
        """Serve every function of the registry, as it was (workers start on the first call)."""
        for record in self._registry.all():
            if record.uid not in self.config.uids:  # a registry from before uids, or the range was changed
                record = dataclasses.replace(record, uid=self._free_uid())
                self._registry.put(record)
            env = {**record.current.env, **self._secrets.get(record.name)}
            self._table.swap(self._live(record, record.current, self._logs.open(record.name), env))
            self._states[record.name] = Lifecycle.READY
            self._link(record)
            self._on_change(record.name, record.current)

    # -- changes -----------------------------------------------------------------------------------------------

    def upload(self, name: str, data: bytes, requirements_text: str | None, changes: settings.Changes) -> dict:
        check_name(name)
        bundle = archive.unpack(data, max_bytes=self.config.max_upload_bytes)
        _check_source(bundle.files["func.py"])
        if requirements_text is None and "requirements.txt" in bundle.files:
            requirements_text = _text(bundle.files["requirements.txt"], "requirements.txt")
        requirements = parse_requirements(requirements_text or "")
        began = time.monotonic()
        try:
            with self._change(name, new_ok=True) as old:
                version = self._build(name, old, data, bundle.files, requirements, changes)
        finally:
            self.collect_garbage([name])  # also what a rejected first upload left (its scratch folder)
        return {"name": name, "status": "ready", "created": old is None, "requirements": requirements,
                "version": version.version, "files": version.files,
                "build_seconds": round(time.monotonic() - began, 4)}

    def _build(self, name: str, old: FunctionRecord | None, data: bytes, files: dict[str, bytes],
               requirements: list[str], changes: settings.Changes) -> Version:
        """Step 1 for an upload: a new code folder and its venv, then the switch. A failure removes the folder."""
        base = old.current if old else None
        env, secrets = settings.apply(base.env if base else {}, self._secrets.get(name) if old else {}, changes)
        files = {key: value for key, value in files.items() if key != "requirements.txt"}
        if requirements:  # as pip reads them: normalised, and the form's field wins over the archive's file
            files["requirements.txt"] = "".join(f"{r}\n" for r in requirements).encode()
        code = self._folder(name) / f"v-{uuid.uuid4().hex[:12]}"
        try:
            _write_files(code, files)
            with self._venvs.use(requirements) as (venv, _built):
                version = Version(version=_next_version(old), created=time.time(), code=code.name,
                                  code_sha256=hashlib.sha256(data).hexdigest(), code_size=len(data),
                                  files=len(files), requirements=requirements, venv=venv.key, env=env,
                                  **_settings(base, changes))
                self._switch(name, old, version, secrets, new_secrets=changes.secrets is not None or not old)
        except BaseException:
            shutil.rmtree(code, ignore_errors=True)
            raise
        return version

    def patch(self, name: str, changes: settings.Changes) -> None:
        """A new version of the live one with other settings: same code and venv."""
        with self._change(name) as old:
            assert old is not None
            base = old.current
            env, secrets = settings.apply(base.env, self._secrets.get(name), changes)
            version = dataclasses.replace(base, version=_next_version(old), created=time.time(), env=env,
                                          **_settings(base, changes))
            self._switch(name, old, version, secrets, new_secrets=changes.secrets is not None)
        self.collect_garbage([name])

    def rollback(self, name: str, target: str | None) -> None:
        """Make a kept version live again (default: the one created before the live one)."""
        with self._change(name) as old:
            assert old is not None
            if target is None:
                index = [v.version for v in old.versions].index(old.live)
                if index == 0:
                    raise Conflict(f"version {old.live} is the oldest kept version of {name}",
                                   code="no_earlier_version")
                version = old.versions[index - 1]
            else:
                found = old.find(target)
                if found is None:
                    raise NotFound(f"{name} has no kept version {target[:40]!r}", code="version_not_found",
                                   versions=[v.version for v in reversed(old.versions)])
                version = found
            if version.version != old.live:
                self._switch(name, old, version, self._secrets.get(name), new_secrets=False)

    def delete(self, name: str) -> dict[str, str]:
        with self._change(name, deleting=True):
            self._registry.remove(name)
            live = self._table.remove(name)  # calls it has taken finish; its folders go once they have
            live.log.close()
            self._logs.remove(name)
            self._secrets.remove(name)
            self._on_change(name, None)
        self.collect_garbage([name])
        return {"deleted": name}

    def _switch(self, name: str, old: FunctionRecord | None, version: Version, secrets: dict[str, str],
                new_secrets: bool) -> None:
        """Steps 2 to 4 of the strategy: prove, commit, swap."""
        now = time.time()
        if old is None:
            record = FunctionRecord(name=name, created=now, updated=now, uid=self._free_uid(), live=version.version,
                                    versions=(version,))
        else:
            versions = old.versions if old.find(version.version) else (*old.versions, version)
            keep = {v.version for v in versions[-self.config.keep_versions:]} | {version.version}
            record = dataclasses.replace(old, updated=now, live=version.version,
                                         versions=tuple(v for v in versions if v.version in keep))
        try:
            first = self._start(record, version, {**version.env, **secrets})
        except StartFailed as exc:
            raise _rejected(exc.info) from None
        old_secrets = self._secrets.get(name) if new_secrets else None
        try:
            if new_secrets:
                self._secrets.put(name, secrets)
            self._registry.put(record)  # the version is live from here on
        except BaseException:
            first.close()
            if old_secrets is not None:
                self._secrets.put(name, old_secrets)
            raise
        current = self._table.find(name)
        log = current.log if current else self._logs.open(name)
        self._table.swap(self._live(record, version, log, {**version.env, **secrets}, first))
        self._link(record)
        self._on_change(name, version)

    # -- reading -----------------------------------------------------------------------------------------------

    def describe(self, name: str) -> dict[str, Any]:
        live = self._table.get(name)
        record, version = live.record, live.version
        calls, errors = live.log.counts()
        effective = self._effective(version)
        secrets = sorted(self._secrets.get(name))
        return {
            "name": name, "status": self._states.get(name, Lifecycle.READY).value, "version": record.live,
            "created": record.created, "updated": record.updated, "calling": version.calling,
            "env": {key: value for key, value in version.env.items() if key not in secrets},  # a secret shadows
            "secrets": secrets, **effective,
            "schedule": version.schedule,
            "requirements": version.requirements, "files": version.files, "code_sha256": version.code_sha256,
            "code_size": version.code_size, "venv": version.venv, "uid": record.uid,
            "versions": len(record.versions), "invocations": calls, "errors": errors,
            "limits": {"timeout_seconds": effective["timeout"], "memory_mb": effective["memory_mb"],
                       "max_workers": effective["max_workers"], "max_body_mb": self.config.max_body_mb}}

    def versions(self, name: str) -> list[dict[str, Any]]:
        record = self._table.get(name).record
        return [{"version": v.version, "created": v.created, "code_sha256": v.code_sha256,
                 "requirements": v.requirements, "calling": v.calling, "live": v.version == record.live}
                for v in reversed(record.versions)]

    def names(self) -> list[str]:
        return self._registry.names()

    def export_source(self, name: str) -> export.Source:
        """What an export of `name` is made of (SPEC 14): its live version's files, requirements and settings, and
        the names of its secrets (their values never leave the secret store). Read under the name's lock, so that
        no change or collection removes the folder meanwhile: an export waits for a change in progress."""
        self._table.get(name)  # 404 before waiting for the lock
        with self._name_lock(name):
            record = self._registry.get(name)
            if record is None:
                raise NotFound(f"no function named {name[:80]!r}", code="function_not_found")
            version = record.current
            secrets = tuple(sorted(self._secrets.get(name)))
            files = _read_files(self._folder(name) / version.code)
        effective = self._effective(version)
        return export.Source(
            name=name, version=version.version, created=version.created, calling=version.calling,
            env={key: value for key, value in version.env.items() if key not in secrets},  # a secret shadows
            secrets=secrets, requirements=tuple(version.requirements), timeout=effective["timeout"],
            memory_mb=effective["memory_mb"], max_workers=effective["max_workers"], schedule=version.schedule,
            files=files)

    # -- collection --------------------------------------------------------------------------------------------

    def collect_garbage(self, names: list[str] | None = None) -> None:
        """Remove venvs, and code and scratch folders of `names` (default: all), that no kept version, change in
        progress or draining pool uses."""
        self._venvs.remove_unused(self._venvs_in_use)
        if names is None:  # every folder, so that a deleted function's is removed once its last call ends
            names = [p.name for p in self._dir.iterdir() if NAME_PATTERN.fullmatch(p.name)]
        for name in names:
            lock = self._name_lock(name)
            if not lock.acquire(blocking=False):
                continue  # a change is under way: its versions are in flux; next sweep
            try:
                self._collect(name)
            finally:
                lock.release()

    def _collect(self, name: str) -> None:
        """Under the name's lock, so no version of it can be built or go live meanwhile."""
        folder = self._folder(name)
        record = self._registry.get(name)
        running = self._table.versions_in_use(name)
        if record is None and not running:
            shutil.rmtree(folder, ignore_errors=True)  # deleted, and its last call has finished
            return
        kept = [(record, v) for v in record.versions] if record else []
        keep = {folder / v.code for _, v in kept + running} | {self._scratch(r) for r, _ in kept + running}
        for path in [*folder.glob("v-*"), *folder.glob("scratch-*")]:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def _venvs_in_use(self) -> set[str]:
        """Called by the venv builder under its lock, after uploads' pins: the registry is up to date then."""
        running = {version.venv for _, version in self._table.versions_in_use()}
        return running | {v.venv for record in self._registry.all() for v in record.versions}

    # -- workers -----------------------------------------------------------------------------------------------

    def _live(self, record: FunctionRecord, version: Version, log: FunctionLog, env: dict[str, str],
              first: Worker | None = None) -> Live:
        """The table entry of a version: its pool starts workers with `env` (its env and the secrets)."""
        effective = self._effective(version)

        def spawn() -> Worker:
            try:
                return self._start(record, version, env)
            except StartFailed as exc:
                raise WorkerCrashed(f"the function failed to start: {exc.info.get('type')}: "
                                    f"{exc.info.get('message')}", code="function_start_failed") from None

        pool = Pool(spawn, effective["max_workers"], self.config.max_queue, first)
        return Live(record, version, pool, log, effective["timeout"])

    def _start(self, record: FunctionRecord, version: Version, env: dict[str, str]) -> Worker:
        """Start a worker of `version` in its sandbox. Its scratch folder doubles as the place where it writes
        through what calls print (for reports of calls whose worker died)."""
        venv, code, scratch = self._venvs.get(version.venv), self._folder(record.name) / version.code, \
            self._scratch(record)
        self._sandbox.prepare_scratch(scratch, record.uid)
        effective = self._effective(version)
        spec = WorkerSpec(function=record.name, version=version.version, uid=record.uid, python=venv.python,
                          venv=venv.path, code=code, scratch=scratch, calling=version.calling, env=env,
                          memory_mb=effective["memory_mb"])
        return start_worker(self._sandbox, spec, timeout=effective["timeout"], max_body=self.config.max_body_bytes)

    def _effective(self, version: Version) -> dict[str, Any]:
        """The version's own limits, or the server's flags where it has none."""
        return {"timeout": version.timeout or self.config.timeout,
                "memory_mb": version.memory_mb or self.config.memory_mb,
                "max_workers": version.max_workers or self.config.max_workers}

    def _scratch(self, record: FunctionRecord) -> Path:
        """HOME and TMPDIR of the function's workers: one per uid, so a function deleted and made again under
        the same name (and a new uid) never finds, nor is refused, what the old one left."""
        return self._folder(record.name) / f"scratch-{record.uid}"

    # -- helpers -----------------------------------------------------------------------------------------------

    def _change(self, name: str, new_ok: bool = False, deleting: bool = False) -> _Change:
        return _Change(self, name, new_ok, deleting)

    def _free_uid(self) -> int:
        """A uid of --uid-range for a new function: one past the highest taken, so a deleted function's uid is not
        handed out again while higher ones are free; then the lowest free one."""
        with self._lock:
            taken = {record.uid for record in self._registry.all()} | self._uids_pending
            uids = self.config.uids
            top = max((u for u in taken if u in uids), default=uids.start - 1)
            uid = top + 1 if top + 1 in uids else next((u for u in uids if u not in taken), None)
            if uid is None:
                raise ServiceUnavailable("every uid of --uid-range is taken", code="no_free_uid")
            self._uids_pending.add(uid)
            return uid

    def _link(self, record: FunctionRecord) -> None:
        """`func.py`, `requirements.txt` and `venv` in the function's folder point at the live version."""
        folder, version = self._folder(record.name), record.current
        _replace_symlink(folder / "func.py", f"{version.code}/func.py")
        _replace_symlink(folder / "venv", os.path.relpath(self._venvs.get(version.venv).path, folder))
        if (folder / version.code / "requirements.txt").exists():
            _replace_symlink(folder / "requirements.txt", f"{version.code}/requirements.txt")
        else:
            (folder / "requirements.txt").unlink(missing_ok=True)

    def _folder(self, name: str) -> Path:
        folder = (self._dir / name).resolve()
        if folder.parent != self._dir:  # containment: a name can never point outside functions/
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


class _Change:
    """One change of a function, as a `with` block: counted as in flight (shutdown waits for it), under the
    name's lock, its lifecycle moved there and back. Yields the function's record (None for a new name)."""

    def __init__(self, deployer: Deployer, name: str, new_ok: bool, deleting: bool) -> None:
        self._d, self._name, self._new_ok, self._deleting = deployer, name, new_ok, deleting
        self._lock = deployer._name_lock(name)
        self._old: FunctionRecord | None = None
        self._done: Lifecycle | None = None

    def __enter__(self) -> FunctionRecord | None:
        d, name = self._d, self._name
        if not self._new_ok:
            d._table.get(name)  # 404 before waiting for the lock
        d._table.enter()
        self._lock.acquire()
        try:
            self._old = d._registry.get(name)
            if self._old is None and not self._new_ok:
                d._table.get(name)  # it went while we waited: 404
            if self._deleting:
                d._move(name, Lifecycle.DELETING)
            else:
                d._move(name, Lifecycle.UPDATING if self._old else Lifecycle.BUILDING)
        except BaseException:
            self._lock.release()
            d._table.leave()
            raise
        return self._old

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        d, name = self._d, self._name
        try:
            if self._deleting:
                d._move(name, None)
            elif exc is None or self._old is not None:
                d._move(name, Lifecycle.READY)
            else:
                d._move(name, None)
        finally:
            self._lock.release()
            d._table.leave()
        if isinstance(exc, FaasError) and d._table.closing:
            raise shutting_down() from None  # the build was cut short by the server stopping, not by the code


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise BadRequest("a function name is 1-64 characters of A-Z, a-z, 0-9, '_' and '-', starting with a "
                         "letter or digit", code="bad_name")


def _settings(base: Version | None, changes: settings.Changes) -> dict[str, Any]:
    """calling, timeout, memory_mb, max_workers and schedule: the changed ones, else the base version's."""
    keys = ("calling", "timeout", "memory_mb", "max_workers", "schedule")
    inherited = {key: getattr(base, key) for key in keys} if base else {}
    return {**inherited, **changes.settings}


def _next_version(record: FunctionRecord | None) -> str:
    return str(max((int(v.version) for v in record.versions), default=0) + 1) if record else "1"


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    """A version's files, read-only to everyone but the server (functions run under other uids)."""
    folder.mkdir(parents=True)
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _read_files(folder: Path) -> dict[str, bytes]:
    """A version's files as uploaded: the regular files of its folder, without what Python's imports left there
    (`__pycache__`, written when a worker may write its code folder)."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and not path.is_symlink() and "__pycache__" not in path.relative_to(folder).parts}


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Unprocessable(f"{what} is not UTF-8", code="function_rejected") from None


def _check_source(source: bytes) -> None:
    if len(source) > MAX_SOURCE_BYTES:
        raise Unprocessable(f"func.py is larger than {MAX_SOURCE_BYTES} bytes", code="function_rejected")
    code = _text(source, "func.py")
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




def _replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex}")
    os.symlink(target, tmp)
    os.replace(tmp, link)

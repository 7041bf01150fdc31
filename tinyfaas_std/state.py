"""Persistence of deployments: the function registry (with each function's versions) and its secrets.

Strategy:
- `Registry` owns `data/functions.json`: for each function a `FunctionRecord`, which lists its kept `Version`s and
  names the live one. It keeps the registry in memory behind one lock and rewrites the file atomically
  (temporary file, fsync, `os.replace`, fsync of the folder) on every change, so a crash at any moment leaves the
  old or the new file, never a torn one. `put` is therefore the single moment a version goes live. Changes are rare
  (upload, PATCH, rollback, delete); calls never write it.
- `SecretStore` owns `data/secrets/<name>.json`, one file per function, mode 0600 in a 0700 folder: secrets belong
  to a function, not to a version (a rollback keeps the current ones), and are kept apart from the registry so
  that nothing which shows a record can show a secret.
Both do file I/O only; they know nothing of HTTP, workers or settings' rules (see settings.py).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Version", "FunctionRecord", "Registry", "SecretStore", "atomic_write"]

_REGISTRY_VERSION = 2  # 1: one version per function, its fields on the function itself (migrated on load)


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a function: its code, venv and settings. A PATCH makes a version sharing its parent's
    code folder and venv; `None` settings follow the server's flags."""
    version: str              # "1", "2", ... in order of creation, per function
    created: float
    code: str                 # the folder under functions/<name>/ that holds its files (shared by PATCHed versions)
    code_sha256: str = ""     # of the uploaded file (the archive itself for an archive)
    code_size: int = 0
    files: int = 1
    requirements: list[str] = field(default_factory=list)
    venv: str = ""            # the key of its virtualenv
    calling: str = "args"
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    memory_mb: int | None = None
    max_workers: int | None = None
    schedule: str | None = None  # cron.py: when the scheduler calls it (SPEC 11)


@dataclass(frozen=True, slots=True)
class FunctionRecord:
    name: str
    created: float
    updated: float
    uid: int                  # the uid and gid its workers run under when the server is root
    live: str                 # the version that calls run
    versions: tuple[Version, ...] = ()  # oldest first

    @property
    def current(self) -> Version:
        return next(v for v in self.versions if v.version == self.live)

    def find(self, version: str) -> Version | None:
        return next((v for v in self.versions if v.version == version), None)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _record(raw: dict[str, Any]) -> FunctionRecord:
    versions = tuple(Version(**v) for v in raw.pop("versions"))
    return FunctionRecord(**raw, versions=versions)


def _migrate_v1(name: str, meta: dict[str, Any]) -> FunctionRecord:
    version = Version(version="1", created=meta["updated"], code=meta.get("version", ""),
                      code_sha256=meta.get("code_sha256", ""), code_size=meta.get("code_size", 0),
                      requirements=meta.get("requirements", []), venv=meta.get("venv", ""))
    return FunctionRecord(name=name, created=meta["created"], updated=meta["updated"], uid=meta.get("uid", 0),
                          live="1", versions=(version,))


class Registry:
    """The deployed functions, in memory and in `functions.json`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._functions: dict[str, FunctionRecord] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raw = json.loads(path.read_bytes())
            if raw.get("version", 1) == 1:
                self._functions = {name: _migrate_v1(name, meta) for name, meta in raw["functions"].items()}
            else:
                self._functions = {name: _record(meta) for name, meta in raw["functions"].items()}

    def get(self, name: str) -> FunctionRecord | None:
        return self._functions.get(name)

    def names(self) -> list[str]:
        return sorted(self._functions)

    def all(self) -> list[FunctionRecord]:
        with self._lock:
            return list(self._functions.values())

    def put(self, record: FunctionRecord) -> None:
        with self._lock:
            self._commit({**self._functions, record.name: record})

    def remove(self, name: str) -> FunctionRecord | None:
        with self._lock:
            record = self._functions.get(name)
            if record is not None:
                self._commit({key: value for key, value in self._functions.items() if key != name})
            return record

    def _commit(self, functions: dict[str, FunctionRecord]) -> None:
        """Write `functions`, then make them the registry: a failed write changes nothing, on disk or here."""
        doc = {"version": _REGISTRY_VERSION,
               "functions": {name: asdict(record) for name, record in sorted(functions.items())}}
        atomic_write(self._path, json.dumps(doc, indent=1).encode())
        self._functions = functions


class SecretStore:
    """Each function's secrets, name -> value, readable by the server's user alone."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)

    def get(self, name: str) -> dict[str, str]:
        try:
            return dict(json.loads(self._path(name).read_bytes()))
        except FileNotFoundError:
            return {}

    def put(self, name: str, secrets: dict[str, str]) -> None:
        if not secrets:
            self.remove(name)
            return
        atomic_write(self._path(name), json.dumps(secrets, sort_keys=True).encode(), mode=0o600)

    def remove(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def _path(self, name: str) -> Path:
        return self._folder / f"{name}.json"


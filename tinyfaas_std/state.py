"""Persistence: the function registry and the per-function invocation logs.

Strategy:
- `Registry` owns `data/functions.json`. It keeps the registry in memory behind one lock and rewrites the file
  atomically (temporary file, fsync, `os.replace`, fsync of the folder) on every change, so a crash at any moment
  leaves the old or the new file, never a torn one. Changes are rare (upload, delete); calls never write it.
- `LogStore` owns `data/logs/<name>/`: each record is one JSON line appended with a single `os.write` to the
  newest segment file (`000000000001.jsonl`, ...). Segments hold a fixed number of records, so retention deletes
  whole old segments instead of rewriting a log, and the cost of a call never grows with the history. Reads come
  from the end of the newest segments. A torn last line (the server was killed mid-write) is cut off when the log
  is first opened, and any line that does not parse is skipped on read.
- Records are written by `encode_record` below and begin `{"id":"<uuid>","status":"...`; the store relies on that
  fixed prefix to count errors without decoding every line.
Both classes do file I/O only; they know nothing of HTTP or workers.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["FunctionMeta", "Registry", "LogStore", "FunctionLog", "encode_record", "atomic_write"]

_REGISTRY_VERSION = 1
_TAIL_BLOCK = 64 * 1024       # bytes read per step when reading a log from its end
_DEFAULT_SEGMENT = 10_000     # records per segment when retention keeps everything
_STATUS_AT = len('{"id":"') + 36 + len('","status":"')  # where the status word starts in a record line


@dataclass(frozen=True, slots=True)
class FunctionMeta:
    name: str
    created: float
    updated: float
    requirements: list[str] = field(default_factory=list)
    venv: str = ""            # the key of the virtualenv the function runs in
    version: str = ""         # the folder under functions/<name>/ that holds this version's code
    code_sha256: str = ""
    code_size: int = 0
    uid: int = 0              # the uid and gid its workers run under when the server is root


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Registry:
    """The deployed functions, in memory and in `functions.json`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._functions: dict[str, FunctionMeta] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raw = json.loads(path.read_bytes())
            self._functions = {name: FunctionMeta(**meta) for name, meta in raw["functions"].items()}

    def get(self, name: str) -> FunctionMeta | None:
        return self._functions.get(name)

    def names(self) -> list[str]:
        return sorted(self._functions)

    def all(self) -> list[FunctionMeta]:
        with self._lock:
            return list(self._functions.values())

    def put(self, meta: FunctionMeta) -> None:
        with self._lock:
            self._functions[meta.name] = meta
            self._save()

    def remove(self, name: str) -> FunctionMeta | None:
        with self._lock:
            meta = self._functions.pop(name, None)
            if meta is not None:
                self._save()
            return meta

    def _save(self) -> None:
        doc = {"version": _REGISTRY_VERSION,
               "functions": {name: asdict(meta) for name, meta in sorted(self._functions.items())}}
        atomic_write(self._path, json.dumps(doc, indent=1).encode())


def encode_record(*, id: str, status: str, function: str, start: float, end: float, rest: bytes) -> bytes:
    """One log line. `rest` is a JSON object fragment without braces, already encoded by the worker (spliced,
    not re-encoded): `"args"`, `"kwargs"`, `"stdout"`, `"stderr"` and their flags, `"result"` or `"error"`."""
    head = (f'{{"id":"{id}","status":"{status}","function":"{function}","start":{start:.6f},"end":{end:.6f},'
            f'"duration":{end - start:.6f},')
    return head.encode() + rest + b"}\n"


class FunctionLog:
    """The segments of one function's log, behind its own lock. Opened on first use; after `close` (the function
    was deleted) appends are dropped, so a call that finishes late cannot bring a deleted log back."""

    def __init__(self, folder: Path, retention: int) -> None:
        self.folder = folder
        self.retention = retention
        self.per_segment = max(1, retention // 4) if retention else _DEFAULT_SEGMENT
        self.lock = threading.Lock()
        self.segments: list[list[int]] = []  # [seq, records, errors], oldest first; -1: not counted yet
        self.size = 0                         # bytes in the newest segment
        self.fd = -1
        self.closed = False

    def _path(self, seq: int) -> Path:
        return self.folder / f"{seq:012d}.jsonl"

    def _open(self) -> None:
        """Only the newest segment is read here (its torn tail cut, its lines counted), so the first call after
        a restart costs the same however long the history; older segments are counted when first needed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        seqs = sorted(int(p.stem) for p in self.folder.glob("*.jsonl") if p.stem.isdigit()) or [1]
        self.segments = [[seq, -1, -1] for seq in seqs]
        newest = self._path(seqs[-1])
        data = newest.read_bytes() if newest.exists() else b""
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]  # cut a torn last line so appends start clean
            os.truncate(newest, len(data))
        self.segments[-1][1] = data.count(b"\n")
        self.size = len(data)
        self.fd = os.open(newest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _count(self, segment: list[int]) -> None:
        """Records and errors of a segment, from its file (relies on encode_record's fixed prefix)."""
        lines = self._path(segment[0]).read_bytes().splitlines()
        segment[1] = len(lines)
        segment[2] = sum(1 for line in lines if line[_STATUS_AT:_STATUS_AT + 3] != b'ok"')

    def append(self, line: bytes, is_error: bool) -> None:
        with self.lock:
            if self.closed:
                return
            if self.fd < 0:
                self._open()
            if self.segments[-1][1] >= self.per_segment:
                self._roll()
            os.write(self.fd, line)
            newest = self.segments[-1]
            newest[1] += 1
            if newest[2] >= 0:
                newest[2] += is_error
            self.size += len(line)

    def _roll(self) -> None:
        os.close(self.fd)
        seq = self.segments[-1][0] + 1
        self.fd = os.open(self._path(seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.segments.append([seq, 0, 0])
        self.size = 0
        if self.retention:
            for segment in self.segments:
                if segment[1] < 0:
                    self._count(segment)
            while sum(s[1] for s in self.segments) - self.segments[0][1] >= self.retention:
                os.unlink(self._path(self.segments.pop(0)[0]))

    def read(self, limit: int | None = None) -> list[bytes]:
        """The newest `limit` records (at most the retention), oldest first, as JSON lines that parse."""
        wanted = [n for n in (limit, self.retention) if n]
        with self.lock:
            if self.closed:
                return []
            if self.fd < 0:
                self._open()
            lines = self._tail(min(wanted) if wanted else 1 << 62)
        return [line for line in lines if _parses(line)]

    def _tail(self, limit: int) -> list[bytes]:
        lines: list[bytes] = []
        for index in range(len(self.segments) - 1, -1, -1):
            seq = self.segments[index][0]
            size = self.size if index == len(self.segments) - 1 else None
            lines[:0] = _tail_lines(self._path(seq), size, limit - len(lines))
            if len(lines) >= limit:
                break
        return lines

    def counts(self) -> tuple[int, int]:
        """(records, errors) in the kept log."""
        with self.lock:
            if self.fd < 0 and not self.closed:
                self._open()
            for segment in self.segments:
                if segment[2] < 0:
                    self._count(segment)
            records = sum(s[1] for s in self.segments)
            errors = sum(s[2] for s in self.segments)
        if self.retention and records > self.retention:
            return self.retention, errors  # errors may include a few from the oldest, unreturned records
        return records, errors

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def _tail_lines(path: Path, size: int | None, limit: int) -> list[bytes]:
    if limit <= 0:
        return []
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END) if size is None else size
        chunks: list[bytes] = []
        pos, newlines = end, 0
        while pos > 0 and newlines <= limit:
            step = min(_TAIL_BLOCK, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
        buf = b"".join(reversed(chunks))
    lines = buf.split(b"\n")
    if pos > 0:
        lines = lines[1:]  # the first piece may be the end of an older line
    return [line for line in lines if line][-limit:]


class LogStore:
    """Owns `data/logs/`: hands out one `FunctionLog` per function and removes a function's folder."""

    def __init__(self, root: Path, retention: int) -> None:
        self._root = root
        self._retention = retention
        root.mkdir(parents=True, exist_ok=True)

    def open(self, name: str) -> FunctionLog:
        return FunctionLog(self._folder(name), self._retention)

    def remove(self, name: str) -> None:
        shutil.rmtree(self._folder(name), ignore_errors=True)

    def _folder(self, name: str) -> Path:
        folder = self._root / name
        if folder.resolve().parent != self._root.resolve():  # containment, whatever the caller validated
            raise ValueError(f"not a log folder name: {name!r}")
        return folder


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True

"""Persistence of calls: the per-function invocation logs.

Strategy:
- `LogStore` owns `data/logs/<name>/`: each record is one JSON line appended with a single `os.write` to the
  newest segment file (`000000000001.jsonl`, ...). A segment rolls at a quarter of the record bound
  (`--log-retention`) or of the byte bound (`--log-retention-mb`), so retention deletes whole old segments instead
  of rewriting a log, and the cost of a call never grows with the history. Reads stream the newest records in
  fixed-size blocks, so reading a log costs bounded memory however large it is. A torn last line (the server was
  killed mid-write) is cut off when the log is first opened, and any line that does not parse is skipped on read.
- Records are written by `encode_record` below and begin `{"id":"<uuid>","status":"...`; the store relies on that
  fixed prefix to count errors without decoding every line.
It does file I/O only and knows nothing of HTTP or workers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["LogStore", "FunctionLog", "encode_record"]

_BLOCK = 64 * 1024            # bytes read per step, forwards or backwards: a log is never read whole into memory
_DEFAULT_SEGMENT = 10_000     # records per segment when retention keeps everything
_SEGMENTS_PER_BOUND = 4       # a segment rolls at a quarter of a bound: retention drops a quarter at a time
_STATUS_AT = len('{"id":"') + 36 + len('","status":"')  # where the status word starts in a record line


def encode_record(*, id: str, status: str, function: str, trigger: str, start: float, end: float,
                  rest: bytes) -> bytes:
    """One log line. `rest` is a JSON object fragment without braces, already encoded by the worker (spliced,
    not re-encoded): `"args"`, `"kwargs"`, `"stdout"`, `"stderr"` and their flags, `"result"` or `"error"`.
    `trigger`: what made the call (SPEC 11): "http", "async" or "schedule"."""
    head = (f'{{"id":"{id}","status":"{status}","function":"{function}","trigger":"{trigger}",'
            f'"start":{start:.6f},"end":{end:.6f},"duration":{end - start:.6f},')
    return head.encode() + rest + b"}\n"


@dataclass(slots=True)
class _Segment:
    """One segment file. `records` and `errors` are -1 until counted; `marks` (one byte per record, 1 for an
    error) is kept only for a segment the kept window starts inside, to count the errors of its newest part."""
    seq: int
    size: int = 0
    records: int = -1
    errors: int = -1
    marks: bytearray | None = None


@dataclass(frozen=True, slots=True)
class _Slice:
    """The lines of a segment file before byte `end`; only its last `last` lines if `last` > 0."""
    path: Path
    end: int
    last: int = 0


class FunctionLog:
    """The segments of one function's log, behind its own lock. Opened on first use; after `close` (the function
    was deleted) appends are dropped, so a call that finishes late cannot bring a deleted log back.

    Two bounds, each optional (0: none): `retention` records and `retention_bytes` of files. A segment rolls at
    a quarter of either, so dropping whole old segments keeps the files within the byte bound (only a single
    record larger than it can exceed it: the newest record is always kept) and at least `retention` records.
    The kept window, which `read` and `counts` both describe, is the newest `retention` of the kept records."""

    def __init__(self, folder: Path, retention: int, retention_bytes: int = 0) -> None:
        self.folder = folder
        self.retention = retention
        self.retention_bytes = retention_bytes
        self.per_segment = max(1, retention // _SEGMENTS_PER_BOUND) if retention else _DEFAULT_SEGMENT
        self.segment_bytes = max(1, retention_bytes // _SEGMENTS_PER_BOUND) if retention_bytes else 0
        self.lock = threading.Lock()
        self.segments: list[_Segment] = []  # oldest first
        self.total_bytes = 0                # of every segment file
        self.fd = -1                        # appends go to the newest segment
        self.closed = False

    def _path(self, seq: int) -> Path:
        return self.folder / f"{seq:012d}.jsonl"

    def _open(self) -> None:
        """Only the newest segment is read here (its torn tail cut, its lines counted), so the first call after
        a restart costs the same however long the history; older segments are counted when first needed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        seqs = sorted(int(p.stem) for p in self.folder.glob("*.jsonl") if p.stem.isdigit()) or [1]
        self.segments = [_Segment(seq, size=_file_size(self._path(seq))) for seq in seqs]
        newest = self.segments[-1]
        if newest.size:
            with open(self._path(newest.seq), "rb") as f:
                f.seek(newest.size - 1)
                if f.read(1) != b"\n":  # cut a torn last line so appends start clean
                    newest.size = _after_newline(f, newest.size, 1)
                    os.truncate(self._path(newest.seq), newest.size)
            self._count(newest)
        else:
            newest.records = newest.errors = 0
        self.total_bytes = sum(s.size for s in self.segments)
        self.fd = os.open(self._path(newest.seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._drop_past_bytes()  # the bound may be lower than when these files were written

    def _count(self, segment: _Segment, keep_marks: bool = False) -> None:
        """Records and errors of a segment, from its file (relies on encode_record's fixed prefix)."""
        marks = bytearray()
        with open(self._path(segment.seq), "rb") as f:
            for line in _lines(f, 0, segment.size):
                marks.append(line[_STATUS_AT:_STATUS_AT + 3] != b'ok"')
        segment.records, segment.errors = len(marks), marks.count(1)
        if keep_marks:
            segment.marks = marks

    def append(self, line: bytes, is_error: bool) -> None:
        with self.lock:
            if self.closed:
                return
            if self.fd < 0:
                self._open()
            newest = self.segments[-1]
            if newest.records >= self.per_segment or (
                    self.segment_bytes and newest.size and newest.size + len(line) > self.segment_bytes):
                newest = self._roll()
            try:
                if os.write(self.fd, line) != len(line):
                    raise OSError(errno.ENOSPC, "the record was written only in part")
            except OSError:
                os.ftruncate(self.fd, newest.size)  # no torn record for the next one to be glued to
                raise
            newest.records += 1
            newest.errors += is_error
            if newest.marks is not None:
                newest.marks.append(is_error)
            newest.size += len(line)
            self.total_bytes += len(line)
            self._drop_past_bytes()

    def _roll(self) -> _Segment:
        os.close(self.fd)
        newest = _Segment(self.segments[-1].seq + 1, size=0, records=0, errors=0)
        self.fd = os.open(self._path(newest.seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.segments.append(newest)
        if self.retention:
            for segment in self.segments:
                if segment.records < 0:
                    self._count(segment)
            while sum(s.records for s in self.segments) - self.segments[0].records >= self.retention:
                self._drop_oldest()
        return newest

    def _drop_past_bytes(self) -> None:
        while self.retention_bytes and self.total_bytes > self.retention_bytes and len(self.segments) > 1:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        oldest = self.segments.pop(0)
        os.unlink(self._path(oldest.seq))
        self.total_bytes -= oldest.size

    def read(self, limit: int | None = None) -> Iterator[bytes]:
        """The newest `limit` records of the kept window, oldest first, as JSON lines that parse. The records
        are found now and read lazily in blocks of _BLOCK bytes, so a whole log never sits in memory; a
        segment dropped by retention meanwhile is skipped (its records are no longer kept)."""
        wanted = min(n for n in (limit, self.retention, 1 << 62) if n)
        with self.lock:
            if self.closed:
                return iter(())
            if self.fd < 0:
                self._open()
            slices: list[_Slice] = []
            for segment in reversed(self.segments):
                if wanted <= 0:
                    break
                if segment.records < 0:
                    self._count(segment)
                path = self._path(segment.seq)
                slices.append(_Slice(path, segment.size, wanted if segment.records > wanted else 0))
                wanted -= segment.records
        return _records(slices[::-1])

    def read_after(self, call_id: str) -> list[bytes] | None:
        """The records after the call `call_id`, oldest first; None when that call is not in the kept window.
        Searched from the newest backwards, in windows growing fourfold: a follower asking for what came after
        the last record it saw finds it at once."""
        needle = b'{"id":"%s"' % call_id.encode("ascii")
        wanted = 64
        while True:
            lines = list(self.read(wanted))
            for i in range(len(lines) - 1, -1, -1):
                if lines[i].startswith(needle):
                    return lines[i + 1:]
            if len(lines) < wanted:
                return None
            wanted *= 4

    def counts(self) -> tuple[int, int]:
        """(records, errors) of the kept window: the records `read()` returns (less any torn line)."""
        with self.lock:
            if self.fd < 0 and not self.closed:
                self._open()
            for segment in self.segments:
                if segment.records < 0:
                    self._count(segment)
            records = sum(s.records for s in self.segments)
            window = min(records, self.retention) if self.retention else records
            errors, wanted = 0, window
            for segment in reversed(self.segments):
                if wanted <= 0:
                    break
                if segment.records <= wanted:
                    errors += segment.errors
                else:  # the window starts inside this segment
                    if segment.marks is None:
                        self._count(segment, keep_marks=True)
                    errors += segment.marks[-wanted:].count(1)  # type: ignore[index]
                wanted -= segment.records
        return window, errors

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _records(slices: list[_Slice]) -> Iterator[bytes]:
    for part in slices:
        try:
            f = open(part.path, "rb")
        except FileNotFoundError:  # dropped by retention since `read` planned: no longer part of the log
            continue
        with f:
            start = _after_newline(f, part.end, part.last + 1) if part.last else 0
            yield from (line for line in _lines(f, start, part.end) if _parses(line))


def _lines(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """The non-empty lines of `f` between byte offsets `start` and `end`, read in blocks of _BLOCK bytes. A line
    longer than a block is found first and then read in one piece, so only that line is ever held."""
    pos = start
    while pos < end:
        f.seek(pos)
        block = f.read(min(_BLOCK, end - pos))
        if not block:
            return  # the file is shorter than recorded
        last = block.rfind(b"\n")
        if last >= 0:
            lines = block.split(b"\n")
            lines.pop()  # the start of a line that ends in a later block
            yield from (line for line in lines if line)
            pos += last + 1
            continue
        stop = _newline_at(f, pos + len(block), end)
        f.seek(pos)
        yield f.read(stop - pos)
        pos = stop + 1


def _newline_at(f: BinaryIO, pos: int, end: int) -> int:
    """The offset of the first newline at or after `pos` (where `f` is), or `end` if there is none before it."""
    while pos < end:
        block = f.read(min(_BLOCK, end - pos))
        if not block:
            break
        found = block.find(b"\n")
        if found >= 0:
            return pos + found
        pos += len(block)
    return end


def _after_newline(f: BinaryIO, end: int, nth: int) -> int:
    """The offset just after the `nth` newline before `end`, counting back from `end`; 0 if there are fewer.
    Read backwards in blocks of _BLOCK bytes."""
    high = end
    while high > 0:
        low = max(0, high - _BLOCK)
        f.seek(low)
        block = f.read(high - low)
        i = len(block)
        while (i := block.rfind(b"\n", 0, i)) >= 0:
            nth -= 1
            if nth == 0:
                return low + i + 1
        high = low
    return 0


class LogStore:
    """Owns `data/logs/`: hands out one `FunctionLog` per function and removes a function's folder."""

    def __init__(self, root: Path, retention: int, retention_mb: float = 100.0) -> None:
        self._root = root
        self._retention = retention
        self._retention_bytes = int(retention_mb * 1024 * 1024)  # --log-retention-mb; 0: no byte bound
        root.mkdir(parents=True, exist_ok=True)

    def open(self, name: str) -> FunctionLog:
        return FunctionLog(self._folder(name), self._retention, self._retention_bytes)

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

"""Pure unpacking of an uploaded `file` field (SPEC section 10): bytes in, the function's files out.

Strategy: this module owns deciding what an upload is and turning a zip or a gzip-compressed tar into a `Bundle` of
relative POSIX paths and their bytes. The kind is read from the leading bytes, never from a name. It never writes to
the file system, never calls `extract`/`extractall`, never follows a link, and never holds more than `max_bytes` of
unpacked content: the declared sizes must fit the budget before anything is decompressed, and each member is read
with a cap of its declared size plus one byte, so a header that lies cannot get past. Going past the budget is
`PayloadTooLarge` (413, `archive_too_large`); anything else wrong is `Unprocessable` (422, `bad_archive`). Nothing is
skipped silently.

Policies:
- Entries are regular files or folders; links, devices, fifos and other kinds are refused, never skipped.
- Names are relative POSIX paths: no leading `/`, no `..`, no backslash or NUL; `.` and empty components are
  dropped (`./a//b` is `a/b`). A folder entry for the root itself (`./`, as `tar -C dir .` writes) is allowed.
- A path appears once, and nothing is both a file and a folder (`a` beside `a/b`). `func.py` is at the root.
- zip members are stored or deflated: zipfile inflates bzip2 and lzma without an output bound per call.
- A tar is read as a stream through a capped gunzip, because tarfile reads a pax or GNU long-name header whole,
  whatever size it declares; the cap is the budget plus 2 KiB of headers per allowed entry.
"""

from __future__ import annotations

import gzip
import io
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from tinyfaas_std.errors import PayloadTooLarge, Unprocessable

__all__ = ["MAX_ENTRIES", "MAX_NAME_BYTES", "MAX_PATH_BYTES", "Bundle", "unpack"]

MAX_ENTRIES = 10_000  # SPEC section 10: bounds the inodes and the per-entry work one upload can cost.
MAX_NAME_BYTES = 255  # NAME_MAX on Linux: a longer path component could not be written.
MAX_PATH_BYTES = 1024  # well under PATH_MAX (4096) once the function's own folder is put in front.

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; the end record of an empty zip
_GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952 section 2.3.1
_ZIP_KINDS = {0: "file", stat.S_IFREG: "file", stat.S_IFDIR: "folder", stat.S_IFLNK: "link"}
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_TAR_OVERHEAD = 2048  # per entry: a header block, padding, and one pax or long-name record
_TAR_SLACK = 2 * tarfile.RECORDSIZE  # the end-of-archive blocks and tarfile's read-ahead
_DRAIN_CHUNK = 1 << 16
# What zipfile, tarfile, gzip and zlib raise on cut or crafted bytes; zipfile also lets a bad UTF-8 name
# (ValueError), a negative seek (ValueError) or a short record (struct.error) escape.
_CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, ValueError, struct.error,
            OverflowError, NotImplementedError)

_Node: TypeAlias = dict[str, "_Node | None"]  # a folder's children by name; None marks a file


@dataclass(frozen=True, slots=True)
class Bundle:
    """The files of a function: relative POSIX path -> content. `archive` is False for a single source file."""

    files: dict[str, bytes]
    archive: bool


def unpack(data: bytes, *, max_bytes: int, max_entries: int = MAX_ENTRIES) -> Bundle:
    """The files an upload holds: an archive's regular files, or `data` itself as `func.py`."""
    if data.startswith(_ZIP_MAGIC):
        read: Callable[[bytes, _Tree], None] = _read_zip
    elif data.startswith(_GZIP_MAGIC):
        read = _read_tar
    else:
        return Bundle({"func.py": data}, archive=False)
    tree = _Tree(max_bytes, max_entries)
    try:
        read(data, tree)
    except _CORRUPT as exc:
        raise _bad(f"the archive is corrupt or cut short ({exc})") from exc
    _require_func(tree.files)
    return Bundle(tree.files, archive=True)


def _read_zip(data: bytes, tree: _Tree) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()  # zipfile has parsed the central directory; nothing is decompressed yet
        if len(infos) > tree.max_entries:
            raise _too_many(tree.max_entries)
        wanted = []
        for info in infos:
            mode = stat.S_IFMT(info.external_attr >> 16)  # the Unix file type, 0 when the zip tool set none
            kind = _ZIP_KINDS.get(mode, "special file")
            if kind == "file" and info.filename.endswith("/"):  # not is_dir(): it fails on an empty name
                kind = "folder"
            # orig_filename: zipfile cuts `filename` at a NUL, which would hide one
            path = tree.entry(info.orig_filename, kind, info.file_size)
            if path is None:
                continue
            if info.flag_bits & 0x1:
                raise _bad(f"{_show(path)} is encrypted")
            if info.compress_type not in _ZIP_METHODS:
                raise _bad(f"{_show(path)} uses compression method {info.compress_type}: only store and deflate")
            wanted.append((path, info))
        for path, info in wanted:  # the declared total is within the budget
            with archive.open(info) as member:
                tree.store(path, info.file_size, member.read)


def _read_tar(data: bytes, tree: _Tree) -> None:
    stream = _Capped(gzip.GzipFile(fileobj=io.BytesIO(data)), tree.max_bytes
                     + tree.max_entries * _TAR_OVERHEAD + _TAR_SLACK)
    with tarfile.open(fileobj=stream, mode="r|") as archive:  # type: ignore[call-overload]  # it only calls read()
        for member in archive:
            kind = ("link" if member.issym() or member.islnk() else "folder" if member.isdir()
                    else "file" if member.isreg() else "device" if member.isdev() else "special file")
            path = tree.entry(member.name, kind, member.size)  # checks member.size before its data is read
            if path is not None:
                source = archive.extractfile(member)
                assert source is not None  # tarfile gives a reader for every regular member
                tree.store(path, member.size, source.read)
    stream.drain()  # reaching the gzip trailer checks its CRC and length: a cut-short upload is refused


class _Capped:
    """A reader that refuses to give out more than `limit` bytes in all."""

    def __init__(self, source: gzip.GzipFile, limit: int) -> None:
        self._source, self._limit, self._left = source, limit, limit

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(self._left + 1 if size < 0 else min(size, self._left + 1))
        self._left -= len(chunk)
        if self._left < 0:
            raise _too_large(self._limit)
        return chunk

    def drain(self) -> None:
        while self.read(_DRAIN_CHUNK):
            pass


class _Tree:
    """What every archive kind shares: the entry count, clean and unique paths, and the byte budget."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.files: dict[str, bytes] = {}
        self._entries = self._declared = 0
        self._folders: set[str] = set()  # the explicit folder entries, to refuse one given twice
        self._root: _Node = {}

    def entry(self, raw: str, kind: str, size: int) -> str | None:
        """Check one entry before its data is read: the clean path of a file to read, None for a folder."""
        self._entries += 1
        if self._entries > self.max_entries:
            raise _too_many(self.max_entries)
        if kind not in ("file", "folder"):
            raise _bad(f"{_show(raw)} is a {kind}: only regular files and folders are allowed")
        path = _clean(raw)
        if not path:
            if kind == "folder":
                return None  # the root itself
            raise _bad(f"{_show(raw)} is a file without a name")
        self._place(path, kind == "folder")
        if kind == "folder":
            return None
        self._declared += size
        if self._declared > self.max_bytes:
            raise _too_large(self.max_bytes)
        return path

    def store(self, path: str, size: int, read: Callable[[int], bytes]) -> None:
        """Read a member whose declared `size` fits the budget: at most one byte more, to catch a lie."""
        content = read(size + 1)  # not the whole budget: a buffered reader allocates what it is asked for
        if len(content) > size:
            raise _bad(f"{_show(path)} holds more than its header says")
        self.files[path] = content

    def _place(self, path: str, is_folder: bool) -> None:
        # A trie of path components finds `a` beside `a/b` in one walk per entry, whatever the depth.
        *parents, leaf = path.split("/")
        node = self._root
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if child is None:
                raise _bad(f"{_show('/'.join(parents[:depth + 1]))} is both a file and a folder")
            node = child
        if leaf in node:
            if (node[leaf] is None) == is_folder:
                raise _bad(f"{_show(path)} is both a file and a folder")
            if node[leaf] is None or path in self._folders:
                raise _bad(f"{_show(path)} appears twice")
        node.setdefault(leaf, {} if is_folder else None)
        if is_folder:
            self._folders.add(path)


def _clean(raw: str) -> str:
    """`raw` as a relative POSIX path, `.` and empty components dropped ("" for the root)."""
    if not raw:
        raise _bad("an entry has an empty name")
    if raw.startswith("/"):
        raise _bad(f"{_show(raw)} is an absolute path")
    if "\\" in raw or "\0" in raw:
        raise _bad(f"{_show(raw)} holds a backslash or a NUL")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _bad(f"{_show(raw)} holds a '..' component")
    path = "/".join(parts)
    try:
        encoded = path.encode()
    except UnicodeEncodeError:
        raise _bad(f"{_show(raw)} is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES or max(map(len, encoded.split(b"/"))) > MAX_NAME_BYTES:
        raise _bad(f"{_show(raw)} is too long: at most {MAX_PATH_BYTES} bytes, {MAX_NAME_BYTES} per name")
    return path


def _require_func(files: dict[str, bytes]) -> None:
    if "func.py" in files:
        return
    nested = [path for path in files if path.count("/") == 1 and path.endswith("/func.py")]
    if len(nested) == 1:
        raise _bad(f"func.py must be at the archive's root; found {nested[0]}: "
                   "archive the folder's contents, not the folder")
    raise _bad("the archive has no func.py at its root")


def _show(name: str) -> str:
    return repr(name if len(name) <= 100 else name[:100] + "...")


def _bad(message: str) -> Unprocessable:
    return Unprocessable(message, code="bad_archive")


def _too_many(limit: int) -> Unprocessable:
    return _bad(f"the archive has more than {limit} entries")


def _too_large(limit: int) -> PayloadTooLarge:
    # close=False: the request body was read in full, so the connection's framing is intact.
    return PayloadTooLarge(f"the archive unpacks to more than {limit} bytes", code="archive_too_large", close=False)

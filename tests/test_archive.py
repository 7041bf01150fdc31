"""Tests for tinyfaas_std.archive: good bundles, the hostile gallery, limits, and properties. All in memory."""

from __future__ import annotations

import io
import re
import struct
import tarfile
import time
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fuzzing import fuzz

from tinyfaas_std import archive
from tinyfaas_std.archive import MAX_ENTRIES, Bundle, unpack
from tinyfaas_std.errors import FaasError, PayloadTooLarge, Unprocessable

MiB = 1024 * 1024
FUNC = b"from lib.helper import greet\n\ndef main(who):\n    return greet(who)\n"
HELPER = b"def greet(who):\n    return 'hello ' + who\n"
PAGE = b"<html><body>hi</body></html>\n"
GOOD = {"func.py": FUNC, "lib/helper.py": HELPER, "templates/page.html": PAGE}

Entry = tuple[str, "bytes | None"]  # (name, content); None is a folder


# --- builders ------------------------------------------------------------------------------------------------------

def _zip(*entries: tuple[str | zipfile.ZipInfo, bytes | None], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names one test needs
        with zipfile.ZipFile(buffer, "w", method) as zf:
            for name, data in entries:
                zf.writestr(name, b"" if data is None else data)
    return buffer.getvalue()


def _tar(*entries: Entry | tarfile.TarInfo, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=fmt) as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
                continue
            name, data = entry
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _tar_special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


PACKERS: dict[str, Callable[..., bytes]] = {"zip": _zip, "tar": _tar}
both = pytest.mark.parametrize("pack", PACKERS.values(), ids=PACKERS.keys())


def _patch_zip(data: bytes, *, local: int, central: int, fmt: str, value: int) -> bytes:
    """Overwrite one field of the (only) member's local header and central-directory record."""
    out = bytearray(data)
    struct.pack_into(fmt, out, local, value)  # the first local header starts the file
    struct.pack_into(fmt, out, data.rindex(b"PK\x01\x02") + central, value)
    return bytes(out)


def _overlapping_bomb(copies: int, size: int) -> bytes:
    """Fifield's overlapping-entry bomb: one deflated member, `copies` central records that all point at it."""
    one = _zip(("000", bytes(size)))
    cd_at, end_at = one.rindex(b"PK\x01\x02"), one.rindex(b"PK\x05\x06")
    record = one[cd_at:end_at]
    records = b"".join(record[:46] + f"{i:03d}".encode() + record[49:] for i in range(copies))
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, copies, copies, len(records), cd_at, 0)
    return one[:cd_at] + records + end


# --- assertions ----------------------------------------------------------------------------------------------------

def _refused(data: bytes, kind: type[FaasError], code: str, match: str = "", **limits: Any) -> FaasError:
    limits.setdefault("max_bytes", MiB)
    with pytest.raises(kind) as caught:
        unpack(data, **limits)
    error = caught.value
    assert (error.code, error.close) == (code, False)  # the body was read in full: the connection stays usable
    assert re.search(match, error.message), error.message
    return error


def _bad(data: bytes, match: str = "", **limits: Any) -> FaasError:
    error = _refused(data, Unprocessable, "bad_archive", match, **limits)
    assert error.status == 422
    return error


def _too_large(data: bytes, **limits: Any) -> FaasError:
    error = _refused(data, PayloadTooLarge, "archive_too_large", **limits)
    assert error.status == 413
    return error


def _peak_bytes(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
    except FaasError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# --- good bundles --------------------------------------------------------------------------------------------------

def test_zip_with_helper_module_and_data_file() -> None:
    data = _zip(("lib/", None), ("templates/", None), *GOOD.items())
    assert unpack(data, max_bytes=MiB) == Bundle(GOOD, archive=True)


def test_tar_gz_as_tar_c_dir_dot_writes_it() -> None:
    data = _tar(("./", None), ("./func.py", FUNC), ("./lib/", None), ("./lib/helper.py", HELPER),
                ("./templates", None), ("./templates/page.html", PAGE))
    assert unpack(data, max_bytes=MiB) == Bundle(GOOD, archive=True)


@both
def test_paths_are_normalised(pack: Callable[..., bytes]) -> None:
    data = pack(("./func.py", FUNC), ("lib//./helper.py", HELPER), ("templates/./page.html", PAGE))
    assert unpack(data, max_bytes=MiB).files == GOOD


@both
def test_requirements_and_empty_files_are_kept(pack: Callable[..., bytes]) -> None:
    data = pack(("func.py", FUNC), ("requirements.txt", b"greetlib==1.0\n"), ("lib/__init__.py", b""))
    assert unpack(data, max_bytes=MiB).files == {
        "func.py": FUNC, "requirements.txt": b"greetlib==1.0\n", "lib/__init__.py": b""}


def test_stored_zip_members_are_read() -> None:
    assert unpack(_zip(*GOOD.items(), method=zipfile.ZIP_STORED), max_bytes=MiB).files == GOOD


@both
def test_exactly_the_budget_and_the_entry_limit_pass(pack: Callable[..., bytes]) -> None:
    data = pack(("lib/", None), ("func.py", b"x" * 60), ("lib/a", b"y" * 40))
    assert unpack(data, max_bytes=100, max_entries=3).files == {"func.py": b"x" * 60, "lib/a": b"y" * 40}


@pytest.mark.parametrize("source", [
    FUNC, b"", b"PK but not a zip\n", b"\x1f not gzip", b"# saved as upload.zip\nimport zipfile\n",
    "print('caf\u00e9')\n".encode(),
])
def test_anything_else_is_a_single_source_file(source: bytes) -> None:
    assert unpack(source, max_bytes=MiB) == Bundle({"func.py": source}, archive=False)


# --- sizes ---------------------------------------------------------------------------------------------------------

def test_zip_bomb_is_refused_from_the_declared_size() -> None:
    bomb = _zip(("func.py", FUNC), ("zeros.bin", bytes(16 * MiB)))
    assert len(bomb) < 64 * 1024
    started = time.perf_counter()
    _too_large(bomb, max_bytes=16 * MiB - 1)
    assert time.perf_counter() - started < 0.5
    assert _peak_bytes(lambda: unpack(bomb, max_bytes=16 * MiB - 1)) < MiB  # nothing was inflated


def test_zip_member_bigger_than_its_header_says_is_refused() -> None:
    honest = _zip(("func.py", bytes(16 * MiB)))
    liar = _patch_zip(honest, local=22, central=24, fmt="<L", value=100)  # "uncompressed size: 100 bytes"
    _bad(liar, "corrupt", max_bytes=MiB)  # zipfile stops at the declared size; the CRC then disagrees
    assert _peak_bytes(lambda: unpack(liar, max_bytes=MiB)) < MiB


def test_overlapping_entry_bomb_is_refused_before_inflating() -> None:
    bomb = _overlapping_bomb(copies=20, size=MiB)
    assert len(zipfile.ZipFile(io.BytesIO(bomb)).infolist()) == 20
    _too_large(bomb, max_bytes=4 * MiB)
    assert _peak_bytes(lambda: unpack(bomb, max_bytes=4 * MiB)) < MiB


def test_tar_gz_bomb_is_refused_from_the_member_size() -> None:
    bomb = _tar(("func.py", FUNC), ("zeros.bin", bytes(16 * MiB)))
    _too_large(bomb, max_bytes=16 * MiB - 1)
    assert _peak_bytes(lambda: unpack(bomb, max_bytes=16 * MiB - 1)) < MiB


@both
def test_total_over_the_budget_is_refused(pack: Callable[..., bytes]) -> None:
    _too_large(pack(("func.py", b"x" * 60), ("a", b"y" * 41)), max_bytes=100)


def test_tar_pax_header_bomb_is_capped() -> None:
    # tarfile reads a pax header whole; without the cap this would hold 8 MiB to unpack a 7-byte file.
    info = tarfile.TarInfo("func.py")
    info.size, info.pax_headers = 7, {"comment": "x" * (8 * MiB)}
    bomb = _tar(info)
    assert len(bomb) < 64 * 1024
    _too_large(bomb, max_bytes=64 * 1024, max_entries=4)
    assert _peak_bytes(lambda: unpack(bomb, max_bytes=64 * 1024, max_entries=4)) < MiB


def test_a_reader_that_gives_more_than_declared_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    class Liar(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            asked.append(size if size is not None else -1)
            return bytes(size if size is not None and size >= 0 else 16 * MiB)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, member: Liar())
    _bad(_tar(("func.py", b"x" * 10)), "holds more than its header says", max_bytes=1000)
    assert asked == [11]  # the declared size plus one: never the whole budget


# --- names ---------------------------------------------------------------------------------------------------------

@both
@pytest.mark.parametrize("name, match", [
    ("../x", r"'\.\.'"), ("a/../../x", r"'\.\.'"), ("a/..", r"'\.\.'"), ("/etc/x", "absolute"),
    ("lib\\helper.py", "backslash"), ("x" * 256, "too long"), ("a/" * 600 + "b", "too long"),
])
def test_hostile_names_are_refused(pack: Callable[..., bytes], name: str, match: str) -> None:
    _bad(pack(("func.py", FUNC), (name, b"x")), match)


def test_nul_in_a_zip_name_is_refused() -> None:
    data = _zip(("func.py", FUNC), ("evil_.py", b"x")).replace(b"evil_.py", b"evil\0.py")  # zipfile cannot write one
    _bad(data, "NUL")  # zipfile cuts ZipInfo.filename at the NUL, which would make this plain "evil"


def test_empty_zip_name_is_refused() -> None:
    data = bytearray(_zip(("x", b"data")))  # zipfile cannot write an empty name
    at = data.rindex(b"PK\x01\x02")
    struct.pack_into("<H", data, at + 28, 0)  # name length 0 in the central directory...
    struct.pack_into("<H", data, at + 32, 1)  # ...and the name's one byte becomes the entry's comment
    assert zipfile.ZipFile(io.BytesIO(bytes(data))).namelist() == [""]
    _bad(bytes(data), "empty name")


def test_empty_tar_name_is_refused() -> None:
    _bad(_tar(("func.py", FUNC), ("", b"x")), "empty name")


def test_non_utf8_tar_name_is_refused() -> None:
    info = tarfile.TarInfo("caf\udce9.py")  # a raw 0xE9 byte, as tarfile decodes it
    _bad(_tar(("func.py", FUNC), info, fmt=tarfile.GNU_FORMAT), "UTF-8")


@both
def test_duplicate_paths_are_refused(pack: Callable[..., bytes]) -> None:
    _bad(pack(("func.py", FUNC), ("lib/a.py", b"1"), ("./lib/a.py", b"2")), "appears twice")


@both
@pytest.mark.parametrize("entries", [
    [("a", b"file"), ("a/b", b"inside")],
    [("a/b", b"inside"), ("a", b"file")],
    [("a", b"file"), ("a/", None)],
    [("a/", None), ("a", b"file")],
])
def test_a_path_cannot_be_both_file_and_folder(pack: Callable[..., bytes], entries: list[Entry]) -> None:
    _bad(pack(("func.py", FUNC), *entries), "'a' is both a file and a folder")


@both
def test_a_folder_entry_after_its_files_is_fine(pack: Callable[..., bytes]) -> None:
    assert unpack(pack(("lib/a.py", b"1"), ("lib/", None), ("func.py", FUNC)), max_bytes=MiB).files == {
        "lib/a.py": b"1", "func.py": FUNC}


# --- kinds ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, match", [(0o120777, "link"), (0o010644, "special file"), (0o020644, "special")])
def test_zip_symlinks_and_special_files_are_refused(mode: int, match: str) -> None:
    info = zipfile.ZipInfo("lib.py")
    info.external_attr = mode << 16
    _bad(_zip(("func.py", FUNC), (info, b"/etc/passwd")), match)


@pytest.mark.parametrize("info, match", [
    (_tar_special("lib.py", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    (_tar_special("lib.py", tarfile.LNKTYPE, "func.py"), "link"),
    (_tar_special("tty", tarfile.CHRTYPE), "device"),
    (_tar_special("disk", tarfile.BLKTYPE), "device"),
    (_tar_special("pipe", tarfile.FIFOTYPE), "device"),
    (_tar_special("label", b"V"), "special file"),  # a GNU volume label
])
def test_tar_links_devices_and_fifos_are_refused(info: tarfile.TarInfo, match: str) -> None:
    _bad(_tar(("func.py", FUNC), info, fmt=tarfile.GNU_FORMAT), match)


def test_encrypted_zip_member_is_refused() -> None:
    _bad(_patch_zip(_zip(("func.py", FUNC)), local=6, central=8, fmt="<H", value=0x1), "encrypted")


def test_zip_features_zipfile_cannot_read_are_refused() -> None:
    patched = _patch_zip(_zip(("func.py", FUNC)), local=6, central=8, fmt="<H", value=0x20)  # "patched data"
    _bad(patched, "corrupt")  # zipfile raises NotImplementedError, which must not become a 500


def test_folder_from_a_zip_tool_without_unix_modes() -> None:
    folder = zipfile.ZipInfo("lib/")
    folder.create_system, folder.external_attr = 0, 0x10  # MS-DOS: only the directory attribute
    data = _zip((folder, None), ("func.py", FUNC), ("lib/helper.py", HELPER))
    assert unpack(data, max_bytes=MiB).files == {"func.py": FUNC, "lib/helper.py": HELPER}


def test_bzip2_zip_member_is_refused() -> None:
    _bad(_zip(("func.py", FUNC), method=zipfile.ZIP_BZIP2), "compression method 12")


# --- counts --------------------------------------------------------------------------------------------------------

@both
def test_twenty_thousand_entries_are_refused_quickly(pack: Callable[..., bytes]) -> None:
    data = pack(("func.py", FUNC), *((f"d{i}/", None) for i in range(20_000)))
    started = time.perf_counter()
    _bad(data, f"more than {MAX_ENTRIES} entries")
    assert time.perf_counter() - started < 1.0


def test_zip_entry_count_is_checked_before_any_name() -> None:
    _bad(_zip(("../x", b""), ("func.py", FUNC), ("b", b"")), "more than 2 entries", max_entries=2)


@both
def test_folders_count_as_entries(pack: Callable[..., bytes]) -> None:
    _bad(pack(("func.py", FUNC), ("a/", None), ("b/", None)), "more than 2 entries", max_entries=2)


# --- corrupt archives ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_zip_is_refused(keep: float) -> None:
    data = _zip(*GOOD.items())
    _bad(data[:int(len(data) * keep)], "corrupt")


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_truncated_tar_gz_is_refused(cut: float) -> None:
    data = _tar(*GOOD.items(), ("big.bin", bytes(range(256)) * 64))
    _bad(data[:int(len(data) * cut)], "corrupt")


def test_tar_gz_with_a_bad_gzip_trailer_is_refused() -> None:
    data = bytearray(_tar(*GOOD.items()))
    data[-8] ^= 0xFF  # the CRC-32 of the uncompressed stream
    _bad(bytes(data), "corrupt")


def test_zip_member_with_a_flipped_byte_fails_its_crc() -> None:
    data = bytearray(_zip(("func.py", FUNC), method=zipfile.ZIP_STORED))
    data[30 + len("func.py")] ^= 0x01  # the first content byte, after the 30-byte local header and the name
    _bad(bytes(data), "corrupt")


@pytest.mark.parametrize("data", [
    b"PK\x03\x04" + bytes(range(256)) * 4, b"PK\x05\x06garbage", b"\x1f\x8b" + b"\xff" * 100, b"\x1f\x8b",
    b"\x1f\x8b\x08\x00" + bytes(6) + b"\x03\x00" + bytes(8),  # a valid, empty gzip stream: no tar inside
])
def test_garbage_after_the_magic_bytes_is_refused(data: bytes) -> None:
    _bad(data, "corrupt")


def test_gzip_of_a_plain_file_is_not_a_tar() -> None:
    import gzip
    _bad(gzip.compress(FUNC), "corrupt")


# --- func.py -------------------------------------------------------------------------------------------------------

@both
def test_archive_without_func_py_is_refused(pack: Callable[..., bytes]) -> None:
    _bad(pack(("main.py", FUNC), ("lib/helper.py", HELPER)), "no func.py at its root")


def test_empty_zip_has_no_func_py() -> None:
    assert _zip().startswith(b"PK\x05\x06")
    _bad(_zip(), "no func.py")


@both
def test_func_py_one_folder_down_is_named(pack: Callable[..., bytes]) -> None:
    data = pack(("myfunc/", None), ("myfunc/func.py", FUNC), ("myfunc/lib/helper.py", HELPER))
    _bad(data, re.escape("found myfunc/func.py: archive the folder's contents, not the folder"))


@both
def test_func_py_in_two_folders_is_just_missing(pack: Callable[..., bytes]) -> None:
    error = _bad(pack(("a/func.py", FUNC), ("b/func.py", FUNC)), "no func.py at its root")
    assert "found" not in error.message


@both
def test_a_folder_named_func_py_is_not_func_py(pack: Callable[..., bytes]) -> None:
    _bad(pack(("func.py/", None), ("func.py/x", b"")), "no func.py")


# --- properties ----------------------------------------------------------------------------------------------------

_part = st.sampled_from(["a", "b", "lib", "x.py", "data.json", "\u00e9"])
_tree = st.dictionaries(st.lists(_part, min_size=1, max_size=3).map("/".join), st.binary(max_size=64), max_size=8)


@fuzz(100)
@given(files=_tree)
def test_roundtrip_zip_and_tar(files: dict[str, bytes]) -> None:
    files = {"func.py": FUNC, **files}
    assume(not any(other.startswith(path + "/") for path in files for other in files))
    for pack in PACKERS.values():
        assert unpack(pack(*files.items()), max_bytes=MiB) == Bundle(files, archive=True)


@fuzz(200)
@given(magic=st.sampled_from([b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b"]), rest=st.binary(max_size=300))
def test_fuzz_random_bytes_after_the_magic(magic: bytes, rest: bytes) -> None:
    with pytest.raises(FaasError) as caught:
        unpack(magic + rest, max_bytes=MiB)
    assert (caught.value.status, caught.value.code) in {(422, "bad_archive"), (413, "archive_too_large")}


_SAMPLES = [_zip(*GOOD.items()), _zip(*GOOD.items(), method=zipfile.ZIP_STORED), _tar(*GOOD.items())]


@fuzz(300)
@given(sample=st.sampled_from(_SAMPLES), flips=st.lists(st.tuples(st.integers(0), st.integers(1, 255)),
                                                            min_size=1, max_size=4))
def test_fuzz_flipped_bytes_give_a_bundle_or_a_named_error(sample: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(sample)
    for at, mask in flips:
        data[at % len(data)] ^= mask
    try:
        bundle = unpack(bytes(data), max_bytes=MiB)
    except FaasError as error:
        assert (error.status, error.code) in {(422, "bad_archive"), (413, "archive_too_large")}
    else:
        assert sum(map(len, bundle.files.values())) <= MiB
        assert bundle.archive is False or "func.py" in bundle.files


def test_module_exports() -> None:
    assert set(archive.__all__) >= {"Bundle", "unpack", "MAX_ENTRIES"}
    assert MAX_ENTRIES == 10_000

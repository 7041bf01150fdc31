"""Functions of more than one file, end to end: a zip or tar.gz upload with modules and data beside func.py, and
the hostile archives the server refuses without leaving anything on disk (archive.py has the parser's own tests)."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile

import pytest

from harness import Server

FUNC = ("import json, os\nfrom lib.helper import shout\n"
        "HERE = os.path.dirname(__file__)\n"
        "def main(who):\n"
        "    with open(os.path.join(HERE, 'templates', 'greeting.txt')) as f:\n"
        "        template = f.read().strip()\n"
        "    return shout(template.format(who=who))\n")
FILES = {"func.py": FUNC.encode(), "lib/__init__.py": b"", "lib/helper.py": b"def shout(s):\n    return s.upper()\n",
         "templates/greeting.txt": b"hello {who}\n"}


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: list[tarfile.TarInfo], contents: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info in members:
            data = (contents or {}).get(info.name)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _tar_files(files: dict[str, bytes]) -> bytes:
    infos = []
    for name, data in files.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        infos.append(info)
    return _tar(infos, files)


def _on_disk(server: Server, name: str) -> list[str]:
    folder = server.root / "functions" / name
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("pack", [_zip, _tar_files], ids=["zip", "tar.gz"])
def test_an_archive_function_imports_its_module_and_reads_its_data_file(server: Server, pack) -> None:
    name = f"multi-{pack.__name__.strip('_')}"
    data = pack({**FILES, "requirements.txt": b"greetlib\n"})
    resp = server.upload(name, data)
    assert resp.status == 200, resp.raw
    assert resp.json["files"] == 5 and resp.json["requirements"] == ["greetlib"]
    assert server.call(name, ["ada"]).json["result"] == "HELLO ADA"
    described = server.request("GET", f"/admin/functions/{name}").json
    import hashlib

    assert described["files"] == 5 and described["code_sha256"] == hashlib.sha256(data).hexdigest()
    assert described["code_size"] == len(data)


def test_a_requirements_field_beats_the_archives_requirements_txt(server: Server) -> None:
    data = _zip({"func.py": b"import otherlib\ndef main():\n    return otherlib.VALUE\n",
                 "requirements.txt": b"no-such-package-here\n"})
    resp = server.upload("reqfield", data, requirements="otherlib\n")
    assert resp.status == 200, resp.raw
    assert server.call("reqfield").json["result"] == 42


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("func.py", "def main():\n    return 1\n")
        link = zipfile.ZipInfo("evil")
        link.external_attr = (0o120777 << 16)  # S_IFLNK
        zf.writestr(link, "/etc/passwd")
    return buf.getvalue()


def _symlink_tar() -> bytes:
    func = tarfile.TarInfo("func.py")
    func.size = 24
    link = tarfile.TarInfo("lib")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    return _tar([func, link], {"func.py": b"def main():\n    return 1"})


def _bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("func.py", "def main():\n    return 1\n")
        zf.writestr("zeros.bin", b"\0" * (17 * 1024 * 1024))  # past --max-upload-mb 16 unpacked
    return buf.getvalue()


def _many() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("func.py", "def main():\n    return 1\n")
        for i in range(20_000):
            zf.writestr(f"d/{i}", b"")
    return buf.getvalue()


HOSTILE = {
    "zip bomb": (_bomb, 413, "archive_too_large"),
    "dot-dot": (lambda: _zip({"func.py": b"def main():\n    return 1\n", "../x": b"x"}), 422, "bad_archive"),
    "absolute": (lambda: _tar_files({"func.py": b"def main():\n    return 1\n", "/etc/x": b"x"}), 422,
                 "bad_archive"),
    "zip symlink": (_symlink_zip, 422, "bad_archive"),
    "tar symlink out": (_symlink_tar, 422, "bad_archive"),
    "20000 entries": (_many, 422, "bad_archive"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_a_hostile_archive_is_refused_and_leaves_nothing(server: Server, case: str) -> None:
    make, status, code = HOSTILE[case]
    name = "hostile-" + case.replace(" ", "-")
    before_venvs = sorted(os.listdir(server.root / "functions" / ".venvs")) \
        if (server.root / "functions" / ".venvs").exists() else []
    resp = server.upload(name, make())
    assert (resp.status, resp.json["error"]["code"]) == (status, code), resp.raw
    assert _on_disk(server, name) == []
    assert server.request("GET", f"/admin/functions/{name}").status == 404
    after_venvs = sorted(os.listdir(server.root / "functions" / ".venvs")) \
        if (server.root / "functions" / ".venvs").exists() else []
    assert after_venvs == before_venvs
    assert not (server.root / "functions" / name).exists()


def test_a_hostile_archive_for_a_live_function_changes_nothing(server: Server) -> None:
    assert server.upload("keeper", "def main():\n    return 'old'\n").status == 200
    files = _on_disk(server, "keeper")
    assert server.upload("keeper", HOSTILE["dot-dot"][0]()).status == 422
    assert server.call("keeper").json["result"] == "old"
    assert _on_disk(server, "keeper") == files
    assert [v["version"] for v in server.request("GET", "/admin/functions/keeper/versions").json] == ["1"]


def test_a_new_function_whose_import_fails_leaves_no_folder(server: Server) -> None:
    resp = server.upload("badimport", _zip({"func.py": b"import lib.missing\ndef main():\n    return 1\n"}))
    assert resp.status == 422 and resp.json["error"]["code"] == "function_rejected"
    assert not (server.root / "functions" / "badimport").exists()

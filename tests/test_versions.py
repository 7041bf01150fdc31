"""A function's own settings and its versions, end to end (SPEC 10): env and secrets reaching the function and
nowhere else, per-function timeout/memory/workers, PATCH, rollback, restarts and the collection of old versions.

Most tests share one server started with `--timeout 30 --keep-versions 3`; the restart test has its own."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from harness import Response, Server, multipart_body

PROBE = '''import hashlib, os


def main(env=(), secrets=()):
    """What the function sees: env values, digests of secret values (never the values: they would be logged)."""
    return {"env": {name: os.environ.get(name) for name in env},
            "secrets": {name: _digest(os.environ.get(name)) for name in secrets},
            "version": os.environ.get("TINYFAAS_VERSION"), "function": os.environ.get("TINYFAAS_FUNCTION"),
            "pid": os.getpid()}


def _digest(value):
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()
'''
SLEEPER = "import time\n\ndef main(seconds):\n    time.sleep(seconds)\n    return seconds\n"
HOG = "def main(mb):\n    block = bytearray(mb * 1024 * 1024)\n    return len(block)\n"
MARKER = "import os\n\ndef main():\n    return os.environ['MARK']\n"

# Walks every folder the function can see and searches every file it can read for the values of the secrets
# named in its arguments (taken from its own environment, so no secret travels in a call) and for a control
# string written in this very source (proof that the search finds what is there). /proc, /sys and /dev are not
# files. Files of the big read-only system trees (/usr, the interpreter's installation) are opened only when
# changed since the test began: a file that holds a secret made during the test was written after it began, so
# its mtime or ctime is newer; everything else (/etc, /tmp, the code, the venv, the scratch folder, the
# package...) is read whole.
WALKER = '''import hashlib, os, stat, sys

CONTROL = {control!r}
CHUNK = 1 << 20
SYSTEM = ("/usr/", os.path.realpath(sys.base_prefix) + "/")
SKIP = ("/proc", "/sys", "/dev")


def main(since, names, hidden):
    needles = [os.environ[name].encode() for name in names] + [CONTROL.encode()]
    found = {{needle: [] for needle in needles}}
    seen = opened = 0
    for top, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(top, d) not in SKIP]
        for name in files:
            path = os.path.join(top, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            seen += 1
            if path.startswith(SYSTEM) and max(info.st_mtime, info.st_ctime) < since:
                continue
            try:
                hits = _search(path, needles)
            except OSError:
                continue
            opened += 1
            for needle in hits:
                found[needle].append(path)
    return {{"secret_hits": [found[n] for n in needles[:-1]], "control_hits": found[needles[-1]],
            "digests": [hashlib.sha256(n).hexdigest() for n in needles[:-1]], "seen": seen, "opened": opened,
            "hidden": os.listdir(hidden) if os.path.isdir(hidden) else None}}


def _search(path, needles):
    keep = max(map(len, needles)) - 1
    hits, tail = set(), b""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            window = tail + chunk
            hits.update(n for n in needles if n in window)
            tail = window[-keep:]
    return hits
'''


@pytest.fixture(scope="module")
def vserver(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("versions"), wheels,
                    ["--timeout", "30", "--keep-versions", "3"]).start()
    try:
        yield server
    finally:
        if server.proc and server.proc.poll() is None:
            server.stop()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _secret() -> str:
    return f"s3cr3t-{uuid.uuid4().hex}"


def _ok(resp: Response, status: int = 200) -> Response:
    assert resp.status == status, resp.raw
    return resp


def _error(resp: Response, status: int, code: str) -> Response:
    assert resp.status == status and resp.json["error"]["code"] == code, resp.raw
    return resp


def _describe(server: Server, name: str) -> dict[str, Any]:
    return _ok(server.request("GET", f"/admin/functions/{name}")).json


def _versions(server: Server, name: str) -> list[dict[str, Any]]:
    return _ok(server.request("GET", f"/admin/functions/{name}/versions")).json


def _patch(server: Server, name: str, doc: Any) -> Response:
    return server.request("PATCH", f"/admin/functions/{name}", json.dumps(doc), {"Content-Type": "application/json"})


def _rollback(server: Server, name: str, version: str | None = None) -> Response:
    body = b"" if version is None else json.dumps({"version": version}).encode()
    return server.request("POST", f"/admin/functions/{name}/rollback", body, {"Content-Type": "application/json"})


def _probe(server: Server, name: str, env: Sequence[str] = (), secrets: Sequence[str] = ()) -> dict[str, Any]:
    return _ok(server.call(name, {"kwargs": {"env": list(env), "secrets": list(secrets)}})).json["result"]


def _live(versions: list[dict[str, Any]]) -> str:
    live = [v["version"] for v in versions if v["live"]]
    assert len(live) == 1, versions
    return live[0]


def _without_counts(description: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in description.items() if k not in ("invocations", "errors")}


# -- env and secrets ---------------------------------------------------------------------------------------------

def test_env_and_secrets_reach_the_function(vserver: Server) -> None:
    server, token = vserver, _secret()
    env = "# settings\n\nGREETING=hello world \nDSN=pg://u:p@h/db?a=1&b=2\n  # indented\nEMPTY=\n"
    _ok(server.upload("envy", PROBE, fields={"env": env, "secrets": f"TOKEN={token}\n"}))
    seen = _probe(server, "envy", ["GREETING", "DSN", "EMPTY", "TOKEN", "PATH"], ["TOKEN", "GREETING"])
    assert seen["env"]["GREETING"] == "hello world " and seen["env"]["DSN"] == "pg://u:p@h/db?a=1&b=2"
    assert seen["env"]["EMPTY"] == "" and seen["secrets"] == {"TOKEN": _sha(token), "GREETING": _sha("hello world ")}
    assert seen["env"]["PATH"] and seen["function"] == "envy" and seen["version"] == "1"
    described = _describe(server, "envy")
    assert described["env"] == {"GREETING": "hello world ", "DSN": "pg://u:p@h/db?a=1&b=2", "EMPTY": ""}
    assert described["secrets"] == ["TOKEN"]


def test_a_reupload_keeps_the_settings_it_does_not_send_and_replaces_those_it_does(vserver: Server) -> None:
    server, token = vserver, _secret()
    _ok(server.upload("resettled", PROBE, fields={"env": "A=1\nB=2", "secrets": f"S={token}", "timeout": "7",
                                                  "memory_mb": "256", "max_workers": "2", "calling": "args"}))
    _ok(server.upload("resettled", PROBE + "\n# v2\n"))
    described = _describe(server, "resettled")
    assert described["version"] == "2" and described["env"] == {"A": "1", "B": "2"} and described["secrets"] == ["S"]
    assert (described["timeout"], described["memory_mb"], described["max_workers"]) == (7, 256, 2)
    assert _probe(server, "resettled", ["A"], ["S"])["secrets"] == {"S": _sha(token)}

    _ok(server.upload("resettled", PROBE, fields={"env": "C=3\n"}))
    described = _describe(server, "resettled")
    assert described["env"] == {"C": "3"} and described["secrets"] == ["S"]
    _ok(server.upload("resettled", PROBE, fields={"secrets": ""}))
    assert _describe(server, "resettled")["secrets"] == []
    seen = _probe(server, "resettled", ["C"], ["S"])
    assert seen["env"] == {"C": "3"} and seen["secrets"] == {"S": None}

    described = _ok(_patch(server, "resettled", {"env": {"C": None, "D": "4"}})).json
    assert described["env"] == {"D": "4"}
    described = _ok(_patch(server, "resettled", {"timeout": None, "memory_mb": None, "max_workers": None})).json
    assert (described["timeout"], described["memory_mb"], described["max_workers"]) == (30, 512, 4)
    assert described["env"] == {"D": "4"}


def test_a_secret_value_is_never_answered_logged_or_readable_by_any_function(vserver: Server) -> None:
    server, since = vserver, time.time() - 1
    token, old, rotated, refused = _secret(), _secret(), _secret(), _secret()
    control = f"control-{uuid.uuid4().hex}"
    answers: list[bytes] = []

    def keep(resp: Response, status: int = 200, code: str | None = None) -> Response:
        assert resp.status == status and (code is None or resp.json["error"]["code"] == code), resp.raw
        answers.append(resp.raw)
        return resp

    keep(server.upload("walker", WALKER.format(control=control),
                       fields={"env": "PLAIN=visible", "secrets": f"TOKEN={token}\nROTATED={old}", "timeout": "120"}))
    keep(_patch(server, "walker", {"env": {"PLAIN": "still visible"}}))
    keep(_patch(server, "walker", {"secrets": {"ROTATED": rotated}}))
    keep(_patch(server, "walker", {"secrets": {"bad-name": refused}}), 400, "bad_env")
    keep(_patch(server, "walker", {"secrets": {"LD_PRELOAD": refused}}), 400, "bad_env")
    keep(_patch(server, "walker", {"env": {"TOKEN": refused}}), 400, "bad_env")
    keep(server.upload("walker", WALKER.format(control=control), fields={"secrets": f"PYTHONPATH={refused}"}),
         400, "bad_env")
    assert keep(_rollback(server, "walker")).json["version"] == "2"
    assert keep(_rollback(server, "walker", "3")).json["version"] == "3"
    walked = keep(server.call("walker", [since, ["TOKEN", "ROTATED"], str(server.root / "data")])).json["result"]
    read = {path: keep(server.request("GET", path)).json
            for path in ("/admin/functions", "/admin/functions/walker", "/admin/functions/walker/versions",
                         "/admin/logs/walker", "/admin/status")}

    # the worker had both secrets, found neither anywhere it can read, and did find the control string
    assert walked["digests"] == [_sha(token), _sha(rotated)]
    assert walked["secret_hits"] == [[], []], walked["secret_hits"]
    assert any(path.endswith("/func.py") for path in walked["control_hits"]), walked
    assert walked["seen"] > 1000 and walked["opened"] > 100, walked
    assert not walked["hidden"], walked["hidden"]  # the server's data/ is not visible to it (absent or empty)
    described = read["/admin/functions/walker"]
    assert described["secrets"] == ["ROTATED", "TOKEN"] and described["env"] == {"PLAIN": "still visible"}

    # no answer, no log record, no file of the server but the secret store holds a value
    values = [v.encode() for v in (token, old, rotated, refused)]
    for raw in answers:
        assert not any(v in raw for v in values), raw[:500]
    assert not any(v.decode() in server.log() for v in values)
    store = server.root / "data" / "secrets"
    for path in server.root.rglob("*"):
        if path.is_file() and not path.is_symlink() and store not in path.parents:
            data = path.read_bytes()
            assert not any(v in data for v in values), path

    # it is in data/secrets/walker.json, readable by the server's user alone
    secrets_file = store / "walker.json"
    assert json.loads(secrets_file.read_text()) == {"TOKEN": token, "ROTATED": rotated}
    info = secrets_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert stat.S_IMODE(store.stat().st_mode) == 0o700


def test_a_bad_env_name_is_400_and_a_rejected_change_changes_nothing(vserver: Server) -> None:
    server = vserver
    _error(server.upload("strict", PROBE, fields={"env": "1BAD=x"}), 400, "bad_env")
    _error(server.request("GET", "/admin/functions/strict"), 404, "function_not_found")
    assert "strict" not in _ok(server.request("GET", "/admin/functions")).json

    source = "import os\nMUST = os.environ['MUST']\n\n" + PROBE
    key = _secret()
    _ok(server.upload("strict", source, fields={"env": "MUST=yes\nA=1", "secrets": f"K={key}", "timeout": "9"}))
    _ok(_patch(server, "strict", {"env": {"A": "2"}}))
    before = _without_counts(_describe(server, "strict"))
    listed = _versions(server, "strict")
    answer = _probe(server, "strict", ["MUST", "A"], ["K"])
    assert answer["env"] == {"MUST": "yes", "A": "2"} and answer["secrets"] == {"K": _sha(key)}

    rejected: list[tuple[Response, int, str]] = []
    for doc, code in [({"env": {"PATH": "/evil"}}, "bad_env"), ({"env": {"1X": "y"}}, "bad_env"),
                      ({"env": {"TINYFAAS_FUNCTION": "other"}}, "bad_env"),
                      ({"secrets": {"PYTHONPATH": "/tmp"}}, "bad_env"), ({"secrets": {"K": 5}}, "bad_env"),
                      ({"env": {"K": "both"}}, "bad_env"), ({"timeout": 1, "env": {"OK": "1", "BAD-NAME": "2"}},
                                                            "bad_env"),
                      ({"timeout": 0}, "bad_setting"), ({"timeout": 3600.5}, "bad_setting"),
                      ({"memory_mb": 63}, "bad_setting"), ({"max_workers": 65}, "bad_setting"),
                      ({"calling": "rpc"}, "bad_setting"), ({"colour": "red"}, "bad_setting"),
                      ({"env": {"A": "3"}, "colour": "red"}, "bad_setting"), ([{"timeout": 1}], "bad_setting")]:
        rejected.append((_patch(server, "strict", doc), 400, code))
    rejected.append((_patch(server, "strict", {"env": {"MUST": None}, "timeout": 3}), 422, "function_rejected"))
    rejected.append((server.upload("strict", source, fields={"env": "A=1", "timeout": "2"}), 422,
                     "function_rejected"))
    for fields, code in [({"env": "PATH=/x"}, "bad_env"), ({"secrets": "LD_PRELOAD=x"}, "bad_env"),
                         ({"env": "K=1"}, "bad_env"), ({"timeout": "0"}, "bad_setting"),
                         ({"memory_mb": "65537"}, "bad_setting")]:
        rejected.append((server.upload("strict", source + "\n# never\n", fields=fields), 400, code))

    for resp, status, code in rejected:
        _error(resp, status, code)
        assert key.encode() not in resp.raw
    assert _without_counts(_describe(server, "strict")) == before
    assert _versions(server, "strict") == listed
    assert _probe(server, "strict", ["MUST", "A"], ["K"]) == answer  # the same warm worker, same settings
    assert json.loads((server.root / "data" / "secrets" / "strict.json").read_text()) == {"K": key}


# -- limits of one function --------------------------------------------------------------------------------------

def _timed_call(server: Server, name: str, payload: Any) -> tuple[float, Response]:
    began = time.monotonic()
    resp = server.call(name, payload)
    return time.monotonic() - began, resp


def test_a_functions_own_timeout_is_enforced_and_others_keep_the_servers(vserver: Server) -> None:
    server = vserver
    _ok(server.upload("hasty", SLEEPER, fields={"timeout": "1"}))
    _ok(server.upload("patient", SLEEPER))
    assert _describe(server, "hasty")["timeout"] == 1 and _describe(server, "patient")["timeout"] == 30
    with ThreadPoolExecutor(2) as pool:
        hasty = pool.submit(_timed_call, server, "hasty", [5])
        patient = pool.submit(_timed_call, server, "patient", [2])
        (hasty_took, hasty_resp), (patient_took, patient_resp) = hasty.result(), patient.result()
    assert hasty_resp.status == 504, hasty_resp.raw
    assert 0.9 < hasty_took < 2.5, hasty_took
    assert patient_resp.status == 200 and patient_resp.json["result"] == 2 and patient_took >= 2
    assert _ok(server.call("hasty", [0])).json["result"] == 0  # its next call works

    described = _ok(_patch(server, "hasty", {"timeout": None})).json
    assert described["timeout"] == 30 and described["limits"]["timeout_seconds"] == 30
    took, resp = _timed_call(server, "hasty", [1.5])
    assert resp.status == 200 and resp.json["result"] == 1.5, resp.raw


def test_a_functions_own_memory_limit_is_enforced(vserver: Server) -> None:
    server = vserver
    _ok(server.upload("hog_small", HOG, fields={"memory_mb": "128"}))
    _ok(server.upload("hog_big", HOG, fields={"memory_mb": "512"}))
    assert _describe(server, "hog_small")["memory_mb"] == 128 and _describe(server, "hog_big")["memory_mb"] == 512
    small = server.call("hog_small", [200])
    assert small.status in (500, 502), small.raw
    if small.status == 500:
        assert small.json["error"]["type"] == "MemoryError", small.raw
    assert _ok(server.call("hog_big", [200])).json["result"] == 200 * 1024 * 1024
    assert _ok(server.call("hog_small", [16])).json["result"] == 16 * 1024 * 1024  # it still serves small ones
    _ok(_patch(server, "hog_small", {"memory_mb": 512}))
    assert _ok(server.call("hog_small", [200])).json["result"] == 200 * 1024 * 1024


def _batch(server: Server, name: str, count: int, seconds: float) -> tuple[float, list[Response]]:
    began = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda _: server.call(name, [seconds]), range(count)))
    return time.monotonic() - began, answers


def test_max_workers_bounds_only_that_functions_parallel_calls(vserver: Server) -> None:
    server = vserver
    _ok(server.upload("solo", SLEEPER, fields={"max_workers": "1"}))
    _ok(server.upload("crowd", SLEEPER))
    assert _describe(server, "solo")["max_workers"] == 1 and _describe(server, "crowd")["max_workers"] == 4
    _batch(server, "crowd", 4, 0.3)  # warm its four workers, so the measure below is of calls, not of starts
    with ThreadPoolExecutor(2) as pool:
        solo = pool.submit(_batch, server, "solo", 4, 0.5)
        crowd = pool.submit(_batch, server, "crowd", 4, 0.5)
        (solo_took, solo_answers), (crowd_took, crowd_answers) = solo.result(), crowd.result()
    assert all(r.status == 200 for r in solo_answers + crowd_answers), [r.raw for r in solo_answers + crowd_answers]
    assert solo_took >= 1.9, solo_took
    assert crowd_took < 1.4, crowd_took


# -- PATCH and rollback while calls run --------------------------------------------------------------------------

def test_patches_and_rollbacks_under_load_never_fail_a_call(vserver: Server) -> None:
    server = vserver
    first = _ok(server.upload("marked", MARKER, fields={"env": "MARK=m0"})).json
    mark_of = {first["version"]: "m0"}  # version -> its MARK
    stop = threading.Event()

    def client() -> list[tuple[int, Any]]:
        seen: list[tuple[int, Any]] = []
        conn = server.connect(timeout=30)
        try:
            while not stop.is_set():
                resp = server.request("POST", "/function/marked", b"", conn=conn)
                seen.append((resp.status, resp.json.get("result") if resp.status == 200 else resp.raw))
        finally:
            conn.close()
        return seen

    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        clients = [pool.submit(client) for _ in range(8)]
        try:
            for i in range(1, 21):
                described = _ok(_patch(server, "marked", {"env": {"MARK": f"m{i}"}})).json
                assert described["env"]["MARK"] == f"m{i}"
                mark_of[described["version"]] = f"m{i}"
                last = described["version"]
                assert _ok(server.call("marked")).json["result"] == f"m{i}"  # new calls see it at once
                if i % 4 in (2, 3):
                    listed = _versions(server, "marked")
                    ids = [v["version"] for v in listed]
                    target = None if i % 4 == 2 else ids[-1]  # the one before, or the oldest kept
                    expected = ids[ids.index(_live(listed)) + 1] if target is None else target
                    described = _ok(_rollback(server, "marked", target)).json
                    assert described["version"] == expected and described["env"]["MARK"] == mark_of[expected]
                    assert _ok(server.call("marked")).json["result"] == mark_of[expected]
                    last = expected
        finally:
            stop.set()
        results = [c.result() for c in clients]
    assert time.monotonic() - began < 30
    calls = [item for seen in results for item in seen]
    assert len(calls) > 200 and all(len(seen) > 10 for seen in results), [len(seen) for seen in results]
    failed = [item for item in calls if item[0] != 200 or item[1] not in mark_of.values()]
    assert not failed, failed[:5]
    assert len({mark for _, mark in calls}) > 3  # the clients saw the changes
    described = _describe(server, "marked")
    assert described["version"] == last and described["env"] == {"MARK": "m20"}
    assert _live(_versions(server, "marked")) == last
    assert _ok(server.call("marked")).json["result"] == "m20"


# -- versions and rollback ---------------------------------------------------------------------------------------

VERSIONED = "import os\n\ndef main():\n    return [{tag!r}, os.environ.get('E')]\n"


def test_versions_are_listed_newest_first_and_rollback_moves_between_them(vserver: Server) -> None:
    server = vserver
    one, two = VERSIONED.format(tag="one"), VERSIONED.format(tag="two")
    assert _ok(server.upload("ladder", one, fields={"env": "E=1"})).json["version"] == "1"
    assert _ok(server.upload("ladder", two, requirements="greetlib==1.0\n")).json["version"] == "2"
    assert _ok(_patch(server, "ladder", {"env": {"E": "3"}})).json["version"] == "3"

    listed = _versions(server, "ladder")
    assert [v["version"] for v in listed] == ["3", "2", "1"]
    assert all(set(v) == {"version", "created", "code_sha256", "requirements", "calling", "live"} for v in listed)
    assert [v["live"] for v in listed] == [True, False, False]
    assert listed[0]["created"] >= listed[1]["created"] >= listed[2]["created"]
    assert listed[2]["code_sha256"] == _sha(one) and listed[1]["code_sha256"] == listed[0]["code_sha256"] == _sha(two)
    assert [v["requirements"] for v in listed] == [["greetlib==1.0"], ["greetlib==1.0"], []]
    assert {v["calling"] for v in listed} == {"args"}
    assert _ok(server.call("ladder")).json["result"] == ["two", "3"]

    described = _ok(_rollback(server, "ladder")).json  # the one before the live one
    assert described["version"] == "2" and described["env"] == {"E": "1"}
    assert _ok(server.call("ladder")).json["result"] == ["two", "1"]
    assert _live(_versions(server, "ladder")) == "2"

    described = _ok(_rollback(server, "ladder", "1")).json
    assert described["version"] == "1" and described["requirements"] == []
    assert _ok(server.call("ladder")).json["result"] == ["one", "1"]
    _error(_rollback(server, "ladder"), 409, "no_earlier_version")
    _error(_rollback(server, "ladder", "7"), 404, "version_not_found")
    _error(_rollback(server, "ladder", "not-a-version"), 404, "version_not_found")
    assert _live(_versions(server, "ladder")) == "1"
    assert _ok(server.call("ladder")).json["result"] == ["one", "1"]

    assert _ok(_rollback(server, "ladder", "3")).json["version"] == "3"
    assert _ok(_rollback(server, "ladder")).json["version"] == "2"
    assert _ok(server.call("ladder")).json["result"] == ["two", "1"]
    assert [(v["version"], v["live"]) for v in _versions(server, "ladder")] == \
        [("3", False), ("2", True), ("1", False)]  # a rollback makes no version
    _error(_rollback(server, "no_such_function"), 404, "function_not_found")
    _error(server.request("GET", "/admin/functions/no_such_function/versions"), 404, "function_not_found")


def test_a_rollback_keeps_the_current_secrets_and_restores_the_versions_env(vserver: Server) -> None:
    server, old, new, gone = vserver, _secret(), _secret(), _secret()
    _ok(server.upload("vault", PROBE, fields={"env": "E=v1", "secrets": f"K={old}\nGONE={gone}"}))
    described = _ok(_patch(server, "vault", {"env": {"E": "v2"}, "secrets": {"K": new, "GONE": None}})).json
    assert described["secrets"] == ["K"] and described["version"] == "2"
    described = _ok(_rollback(server, "vault", "1")).json
    assert described["version"] == "1" and described["env"] == {"E": "v1"} and described["secrets"] == ["K"]
    seen = _probe(server, "vault", ["E"], ["K", "GONE"])
    assert seen["env"] == {"E": "v1"} and seen["secrets"] == {"K": _sha(new), "GONE": None}
    assert json.loads((server.root / "data" / "secrets" / "vault.json").read_text()) == {"K": new}


def test_a_rollback_to_before_an_env_name_became_a_secret_runs_with_the_secret(vserver: Server) -> None:
    server, hidden = vserver, _secret()
    _ok(server.upload("moved", PROBE, fields={"env": "K=plain\nE=1"}))
    described = _ok(_patch(server, "moved", {"env": {"K": None}, "secrets": {"K": hidden}})).json
    assert described["env"] == {"E": "1"} and described["secrets"] == ["K"]
    described = _ok(_rollback(server, "moved", "1")).json
    assert described["version"] == "1" and described["secrets"] == ["K"]
    assert _probe(server, "moved", ["E"], ["K"])["secrets"] == {"K": _sha(hidden)}
    described = _ok(_patch(server, "moved", {"env": {"E": "2"}})).json  # not stuck on the old env's K
    assert described["secrets"] == ["K"] and "K" not in described["env"] and described["env"]["E"] == "2"
    assert _probe(server, "moved", ["E"], ["K"])["secrets"] == {"K": _sha(hidden)}


def test_only_the_kept_versions_code_and_venvs_remain(vserver: Server) -> None:
    server = vserver
    folder = server.root / "functions" / "pruned"
    venvs = server.root / "functions" / ".venvs"
    requirements = ["greetlib>=0.1", "otherlib>=0.1", "greetlib>=0.2", None, "otherlib>=0.2"]  # used nowhere else
    sources, venv_of = [], []
    for i, req in enumerate(requirements, 1):
        sources.append(f"def main():\n    return {i}\n")
        assert _ok(server.upload("pruned", sources[-1], requirements=req)).json["version"] == str(i)
        venv_of.append(_describe(server, "pruned")["venv"])
    assert len(set(venv_of)) == 5, venv_of

    listed = _versions(server, "pruned")
    assert [v["version"] for v in listed] == ["5", "4", "3"] and _live(listed) == "5"
    assert _describe(server, "pruned")["versions"] == 3
    _error(_rollback(server, "pruned", "1"), 404, "version_not_found")
    code = {p.name: (p / "func.py").read_text() for p in folder.glob("v-*")}
    assert sorted(code.values()) == sorted(sources[2:]), code
    assert not (venvs / venv_of[0]).exists() and not (venvs / venv_of[1]).exists()
    assert all((venvs / key).is_dir() for key in venv_of[2:])
    assert _ok(server.call("pruned")).json["result"] == 5

    # a PATCH shares its parent's code and venv: kept 6, 5, 4 use two code folders; version 3's go
    assert _ok(_patch(server, "pruned", {"env": {"X": "1"}})).json["version"] == "6"
    assert [v["version"] for v in _versions(server, "pruned")] == ["6", "5", "4"]
    code = {p.name: (p / "func.py").read_text() for p in folder.glob("v-*")}
    assert sorted(code.values()) == sorted(sources[3:]), code
    assert not (venvs / venv_of[2]).exists()
    assert (venvs / venv_of[3]).is_dir() and (venvs / venv_of[4]).is_dir()
    assert _ok(_rollback(server, "pruned", "4")).json["version"] == "4"
    assert _ok(server.call("pruned")).json["result"] == 4


# -- restarts ----------------------------------------------------------------------------------------------------

def test_settings_versions_and_the_live_version_survive_restarts(fresh_server: Server) -> None:
    server, first, second, dropped = fresh_server, _secret(), _secret(), _secret()
    _ok(server.upload("durable", PROBE, fields={"env": "E=one\nKEEP=k", "secrets": f"S={first}\nT={dropped}",
                                                "timeout": "7", "memory_mb": "256", "max_workers": "2"}))
    _ok(_patch(server, "durable", {"env": {"E": "two"}, "secrets": {"S": second, "T": None}, "timeout": 8}))
    asked = (["E", "KEEP"], ["S", "T"])

    def snapshot() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        seen = _probe(server, "durable", *asked)
        seen.pop("pid")
        return _describe(server, "durable"), _versions(server, "durable"), seen

    before = snapshot()
    assert before[2]["env"] == {"E": "two", "KEEP": "k"} and before[2]["secrets"] == {"S": _sha(second), "T": None}
    assert (before[0]["timeout"], before[0]["memory_mb"], before[0]["max_workers"]) == (8, 256, 2)
    server.restart()
    after = snapshot()
    assert _without_counts(after[0]) == _without_counts(before[0]) and after[0]["invocations"] == \
        before[0]["invocations"] + 1
    assert after[1:] == before[1:]

    described = _ok(_rollback(server, "durable", "1")).json
    assert described["version"] == "1" and described["timeout"] == 7 and described["secrets"] == ["S"]
    before = snapshot()
    assert before[2]["env"] == {"E": "one", "KEEP": "k"} and before[2]["secrets"] == {"S": _sha(second), "T": None}
    server.restart()
    after = snapshot()
    assert _without_counts(after[0]) == _without_counts(before[0])
    assert after[1:] == before[1:] and _live(after[1]) == "1"
    secrets_file = server.root / "data" / "secrets" / "durable.json"
    assert json.loads(secrets_file.read_text()) == {"S": second}
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    for value in (first, second, dropped):
        assert value not in server.log()


def test_the_code_route_answers_the_live_versions_files_as_text_where_they_are_text(vserver: Server) -> None:
    server = vserver
    one, two = VERSIONED.format(tag="one"), VERSIONED.format(tag="two")
    _ok(server.upload("coded", one))
    _ok(server.upload("coded", two))
    code = _ok(server.request("GET", "/admin/functions/coded/code")).json
    assert code == {"name": "coded", "version": "2", "files": [{"path": "func.py", "size": len(two), "text": two}]}
    _ok(_rollback(server, "coded"))
    assert server.request("GET", "/admin/functions/coded/code").json["files"][0]["text"] == one

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("func.py", "from lib.helper import VALUE\n\ndef main():\n    return VALUE\n")
        zf.writestr("lib/__init__.py", "")
        zf.writestr("lib/helper.py", "VALUE = 'é'\n")
        zf.writestr("data/blob.bin", b"\xff\xfe\x00binary")
        zf.writestr("data/big.txt", "x" * (600 * 1024))
    upload = server.request("POST", "/admin/upload", *_archive_form("coded-zip", buffer.getvalue()))
    assert _ok(upload).json["files"] == 5
    files = {f["path"]: f for f in _ok(server.request("GET", "/admin/functions/coded-zip/code")).json["files"]}
    assert sorted(files) == ["data/big.txt", "data/blob.bin", "func.py", "lib/__init__.py", "lib/helper.py"]
    assert files["lib/helper.py"]["text"] == "VALUE = 'é'\n" and files["lib/__init__.py"]["text"] == ""
    assert files["data/blob.bin"] == {"path": "data/blob.bin", "size": 9, "text": None}  # not UTF-8
    assert files["data/big.txt"]["text"] is None and files["data/big.txt"]["size"] == 600 * 1024  # too large
    _error(server.request("GET", "/admin/functions/no_such_function/code"), 404, "function_not_found")


def _archive_form(name: str, data: bytes) -> tuple[bytes, dict[str, str]]:
    body, content_type = multipart_body({"name": name, "file": ("code.zip", data)})
    return body, {"Content-Type": content_type}

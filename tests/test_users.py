"""Users and roles (SPEC 12): the hash and the permission rule, then every route x every role on the real server,
and the users API taking effect on the next request."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Server, multipart_body
from tinyfaas_std import routes
from tinyfaas_std.users import ITERATIONS, Access, User, hash_password, may, verify_password

PASSWORD = "correct-horse-battery"


def _auth(name: str, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def test_a_password_is_kept_as_a_salted_pbkdf2_hash() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second and PASSWORD not in first
    scheme, iterations, _, _ = first.split("$")
    assert scheme == "pbkdf2_sha256" and int(iterations) == ITERATIONS >= 600_000
    assert verify_password(PASSWORD, first) and not verify_password(PASSWORD + "x", first)
    assert not verify_password(PASSWORD, "garbage") and not verify_password(PASSWORD, "md5$1$a$b")


def test_the_permission_rule() -> None:
    dev = User("d", "developer", ("report-*",))
    assert may(dev, Access.CHANGE, "report-a") and not may(dev, Access.CHANGE, "other")
    assert may(dev, Access.STATUS) and not may(dev, Access.METRICS) and not may(dev, Access.USERS)
    inv = User("i", "invoker")
    assert may(inv, Access.CALL, "anything") and not may(inv, Access.READ, "anything")
    view = User("v", "viewer")
    assert may(view, Access.READ, "x") and may(view, Access.METRICS) and not may(view, Access.CALL, "x")
    admin = User("a", "admin", ("nothing-*",))
    assert all(may(admin, access, "x") for access in Access)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("team"), wheels).start()
    for name in ("report-a", "other"):
        assert server.upload(name, "def main(x=1):\n    return x\n").status == 200
    for name, role, functions in (("dev", "developer", ["report-*"]), ("inv", "invoker", "report-*"),
                                  ("view", "viewer", None), ("ops", "admin", None)):
        doc: dict[str, Any] = {"name": name, "password": PASSWORD, "role": role}
        if functions is not None:
            doc["functions"] = functions
        resp = server.request("POST", "/admin/users", json.dumps(doc))
        assert resp.status == 201 and resp.json["role"] == role, resp.raw
    yield server
    server.stop()


def _upload_body(name: str) -> tuple[bytes, dict[str, str]]:
    body, ctype = multipart_body({"name": name, "file": ("f.py", b"def main():\n    return 1\n")})
    return body, {"Content-Type": ctype}


def _routes(call_id: str) -> list[tuple[str, str, bytes, dict[str, str], set[str]]]:
    """(method, path, body, headers, the users allowed); the others must get 403."""
    everyone_calls = {"ops", "dev", "inv"}
    readers = {"ops", "dev", "view"}
    changers = {"ops", "dev"}
    return [
        ("POST", "/function/report-a", b"[2]", {}, everyone_calls),
        ("POST", "/function/other", b"[2]", {}, {"ops"}),
        ("POST", "/async-function/report-a", b"[3]", {}, everyone_calls),
        ("POST", "/async-function/other", b"[3]", {}, {"ops"}),
        *((method, f"/{kind}/report-a", b"", {}, everyone_calls)  # an args function: 405, after the check
          for method in ("GET", "PUT", "PATCH", "DELETE", "OPTIONS") for kind in ("function", "async-function")),
        ("GET", f"/admin/calls/{call_id}", b"", {}, {"ops", "dev", "inv", "view"}),
        ("DELETE", f"/admin/calls/{call_id}", b"", {}, changers),
        ("POST", "/admin/upload", *_upload_body("report-new"), changers),
        ("POST", "/admin/upload", *_upload_body("other-new"), {"ops"}),
        ("GET", "/admin/functions", b"", {}, readers),
        ("GET", "/admin/functions/report-a", b"", {}, readers),
        ("GET", "/admin/functions/other", b"", {}, {"ops", "view"}),
        ("PATCH", "/admin/functions/report-a", b'{"timeout": 5}', {}, changers),
        ("PATCH", "/admin/functions/other", b'{"timeout": 5}', {}, {"ops"}),
        ("GET", "/admin/functions/report-a/versions", b"", {}, readers),
        ("POST", "/admin/functions/report-a/rollback", b"", {}, changers),
        ("GET", "/admin/functions/report-a/code", b"", {}, readers),
        ("GET", "/admin/functions/other/code", b"", {}, {"ops", "view"}),
        ("GET", "/admin/functions/report-a/export", b"", {}, readers),
        ("GET", "/admin/functions/other/export", b"", {}, {"ops", "view"}),
        ("GET", "/admin/logs/report-a", b"", {}, readers),
        ("GET", "/admin/logs/other", b"", {}, {"ops", "view"}),
        ("DELETE", "/admin/functions/report-zz", b"", {}, changers),
        ("DELETE", "/admin/functions/other-zz", b"", {}, {"ops"}),
        ("GET", "/admin/status", b"", {}, readers),
        ("GET", "/metrics", b"", {}, {"ops", "view"}),
        ("GET", "/admin/me", b"", {}, {"ops", "dev", "inv", "view"}),
        ("GET", "/openapi.json", b"", {}, {"ops", "dev", "inv", "view"}),
        ("GET", "/ui", b"", {}, {"ops", "dev", "inv", "view"}),
        ("GET", "/ui/app.js", b"", {}, {"ops", "dev", "inv", "view"}),
        ("GET", "/admin/users", b"", {}, {"ops"}),
        ("POST", "/admin/users", b'{"name": "x", "password": "x", "role": "viewer"}', {}, {"ops"}),
        ("PATCH", "/admin/users/nobody", b'{"role": "viewer"}', {}, {"ops"}),
        ("DELETE", "/admin/users/nobody", b"", {}, {"ops"}),
    ]


def test_the_matrix_covers_every_route_of_the_table() -> None:
    rows = _routes("00000000-0000-0000-0000-000000000000")
    missing = [f"{spec.method} {spec.pattern.pattern}" for spec in routes.ROUTES
               if not any(m == spec.method and spec.pattern.fullmatch(path) for m, path, *_ in rows)]
    assert missing == []


def test_every_route_answers_every_role_as_spec_12_says(team: Server) -> None:
    call_id = team.request("POST", "/async-function/report-a", b"[1]").json["id"]
    time.sleep(0.3)
    wrong = []
    for method, path, body, headers, allowed in _routes(call_id):
        for user in ("ops", "dev", "inv", "view"):
            status = team.request(method, path, body, headers, auth=_auth(user)).status
            if (status == 403) == (user in allowed) or status == 401:
                wrong.append(f"{user} {method} {path}: {status}")
    assert wrong == []


def test_lists_show_only_what_a_users_patterns_match(team: Server) -> None:
    assert team.request("GET", "/admin/functions", auth=_auth("dev")).json == [
        name for name in team.request("GET", "/admin/functions").json if name.startswith("report-")]
    assert "other" in team.request("GET", "/admin/functions", auth=_auth("view")).json


def test_the_users_api_keeps_no_password_and_changes_apply_at_once(team: Server) -> None:
    listed = team.request("GET", "/admin/users").json
    assert {u["name"] for u in listed} >= {"dev", "inv", "view", "ops"}
    assert all(set(u) == {"name", "role", "functions"} for u in listed)
    assert team.request("POST", "/admin/users", json.dumps({"name": "dev", "password": PASSWORD,
                                                             "role": "viewer"})).status == 409
    bad = team.request("POST", "/admin/users", b'{"name": "z", "password": "long-enough", "role": "root"}')
    assert bad.status == 400 and bad.json["error"]["code"] == "bad_user"
    assert team.request("POST", "/admin/users", json.dumps({"name": "temp", "password": PASSWORD,
                                                             "role": "invoker"})).status == 201
    assert team.request("POST", "/function/other", b"[1]", auth=_auth("temp")).status == 200  # cached now
    assert team.request("PATCH", "/admin/users/temp", b'{"role": "viewer"}').status == 200
    assert team.request("POST", "/function/other", b"[1]", auth=_auth("temp")).status == 403  # no restart
    assert team.request("PATCH", "/admin/users/temp", b'{"password": "another-password"}').status == 200
    assert team.request("GET", "/admin/status", auth=_auth("temp")).status == 401
    assert team.request("GET", "/admin/status", auth=_auth("temp", "another-password")).status == 200
    assert team.request("DELETE", "/admin/users/temp").status == 200
    assert team.request("GET", "/admin/status", auth=_auth("temp", "another-password")).status == 401
    users_file = team.root / "data" / "users.json"
    assert os.stat(users_file).st_mode & 0o777 == 0o600
    for path in (team.root / "data").rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert b"pbkdf2_sha256$" in users_file.read_bytes()


def test_offline_users_commands_bootstrap_a_user_the_server_then_knows(tmp_path: Path, wheels: Path) -> None:
    import subprocess
    import sys

    data = tmp_path / "data"

    def users(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tinyfaas_std", "users", "--data-dir", str(data), *args],
                              input=stdin, capture_output=True, text=True, timeout=60)

    assert users("add", "boot", "--role", "viewer", stdin=PASSWORD + "\n").returncode == 0
    assert users("add", "boot", "--role", "viewer", stdin=PASSWORD + "\n").returncode == 2  # exists
    assert users("add", "weak", "--role", "viewer", stdin="short\n").returncode == 2
    assert users("list").stdout.split() == ["boot", "viewer", "*"]
    server = Server(tmp_path, wheels).start()
    try:
        assert server.request("GET", "/admin/status", auth=_auth("boot")).status == 200
        assert server.request("POST", "/admin/users", b"{}", auth=_auth("boot")).status == 403
    finally:
        server.stop()
    assert users("remove", "boot").returncode == 0 and users("list").stdout == ""

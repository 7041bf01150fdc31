"""The command-line client (SPEC 12), end to end: every verb run as `python -m tinyfaas_std <verb> ... --url` in a
subprocess against the real server, its `--json` output parsed, its exit status checked (0 ok, 1 the function
failed, 2 usage, 3 server or connection error), credentials from the environment or a ~/.netrc.

Most tests share the module's server; each deploys functions of its own names."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import REPO, Server

ADD = "def main(a, b=0):\n    print('adding', a, b)\n    return a + b\n"
ENV = "import os\n\ndef main(*names):\n    return {n: os.environ.get(n) for n in names}\n"
SLOW = "import time\n\ndef main(seconds, fail=False):\n    time.sleep(seconds)\n    if fail:\n" \
       "        raise ValueError('asked to fail')\n    return seconds\n"
CREDENTIALS = {"TINYFAAS_USER": "admin", "TINYFAAS_PASSWORD": "1234"}


def tf(port: int, *args: str, env: dict[str, str] | None = None, stdin: str | None = None,
       home: Path | None = None, scheme: str = "http", url: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the client against 127.0.0.1:`port` (or `url`); credentials from the environment unless `env` says
    otherwise."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TINYFAAS_")}
    base["HOME"] = str(home or REPO / "tests" / "no-such-home")  # never the developer's own ~/.netrc
    return subprocess.run([sys.executable, "-m", "tinyfaas_std", *args, "--url", url or f"{scheme}://127.0.0.1:{port}"],
                          cwd=REPO, env={**base, **CREDENTIALS, **(env or {})}, input=stdin, capture_output=True,
                          text=True, timeout=30)


def tf_json(port: int, *args: str, **kw: Any) -> Any:
    done = tf(port, *args, "--json", **kw)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _source(tmp_path: Path, name: str, code: str) -> str:
    path = tmp_path / name
    path.write_text(code)
    return str(path)


def test_deploy_a_file_then_invoke_and_describe(server: Server, tmp_path: Path) -> None:
    up = tf_json(server.port, "deploy", "c-add", _source(tmp_path, "add.py", ADD), "--env", "UNITS=metric",
                 "--secret", "KEY=s3cret", "--timeout", "5", "--max-workers", "2")
    assert up["name"] == "c-add" and up["status"] == "ready" and up["created"] is True
    answer = tf_json(server.port, "invoke", "c-add", "[1, 2]")
    assert answer["result"] == 3 and "id" in answer
    human = tf(server.port, "invoke", "c-add", '{"args": [40], "kwargs": {"b": 2}}')
    assert human.returncode == 0 and human.stdout.strip() == "42"
    piped = tf(server.port, "invoke", "c-add", "-", stdin="[5, 6]")
    assert piped.returncode == 0 and piped.stdout.strip() == "11"
    desc = tf_json(server.port, "describe", "c-add")
    assert desc["env"] == {"UNITS": "metric"} and desc["secrets"] == ["KEY"]
    assert desc["timeout"] == 5 and desc["max_workers"] == 2 and desc["invocations"] == 3
    text = tf(server.port, "describe", "c-add")
    assert text.returncode == 0 and "secrets:" in text.stdout and "s3cret" not in text.stdout + json.dumps(desc)


def test_a_failing_function_exits_1_and_server_errors_exit_3(server: Server, tmp_path: Path) -> None:
    tf_json(server.port, "deploy", "c-fail", _source(tmp_path, "add.py", ADD))
    failed = tf(server.port, "invoke", "c-fail", '[1, "x"]')
    assert failed.returncode == 1 and "TypeError" in failed.stderr and "Traceback" in failed.stderr
    as_json = tf(server.port, "invoke", "c-fail", '[1, "x"]', "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["error"]["type"] == "TypeError"
    unknown = tf(server.port, "invoke", "c-no-such", "[1]")
    assert unknown.returncode == 3 and "404" in unknown.stderr and "c-no-such" in unknown.stderr
    bad_json = tf(server.port, "invoke", "c-fail", "[1,")
    assert bad_json.returncode == 3 and "400" in bad_json.stderr
    rejected = tf(server.port, "deploy", "c-fail", _source(tmp_path, "bad.py", "def main(:\n"))
    assert rejected.returncode == 3 and "422" in rejected.stderr
    assert tf_json(server.port, "invoke", "c-fail", "[2, 2]")["result"] == 4  # the old version stayed


def test_invoke_an_http_function_prints_what_it_answers(server: Server, tmp_path: Path) -> None:
    code = ("def main(request):\n    if request['body'] == 'missing':\n"
            "        return {'statusCode': 404, 'body': 'no such page'}\n    return 'hello ' + request['body']\n")
    tf_json(server.port, "deploy", "c-page", _source(tmp_path, "page.py", code), "--calling", "http")
    page = tf(server.port, "invoke", "c-page", "web")
    assert page.returncode == 0 and page.stdout == "hello web"
    missing = tf(server.port, "invoke", "c-page", "missing")
    assert missing.returncode == 1 and missing.stdout == "no such page"  # its own answer, not a server error


def test_deploy_a_folder_with_a_helper_module(server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "report"
    (folder / "templates").mkdir(parents=True)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "junk.cpython-311.pyc").write_bytes(b"\0not python")
    (folder / "fmt.py").write_text("def render(lines):\n    return ' / '.join(lines)\n")
    (folder / "templates" / "head.txt").write_text("Report for {who}\n")
    (folder / "func.py").write_text(
        "import os\nfrom fmt import render\n"
        "HEAD = open(os.path.join(os.path.dirname(__file__), 'templates', 'head.txt')).read().strip()\n\n"
        "def main(who):\n    return render([HEAD.format(who=who), os.environ['MODE']])\n")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("greetlib\n")
    up = tf_json(server.port, "deploy", "c-report", str(folder), "-r", str(reqs), "--env", "MODE=all good")
    assert up["requirements"] == ["greetlib"]
    assert tf_json(server.port, "invoke", "c-report", '["ops"]')["result"] == "Report for ops / all good"
    files = tf_json(server.port, "describe", "c-report")["files"]
    assert files == 4  # func.py, fmt.py, templates/head.txt and requirements.txt; nothing of __pycache__
    (folder / "func.py").unlink()
    missing = tf(server.port, "deploy", "c-report", str(folder))
    assert missing.returncode == 2 and "func.py" in missing.stderr


def test_invoke_async_and_wait(server: Server, tmp_path: Path) -> None:
    tf_json(server.port, "deploy", "c-slow", _source(tmp_path, "slow.py", SLOW))
    started = time.monotonic()
    record = tf_json(server.port, "invoke", "c-slow", "[0.5]", "--async", "--wait")
    assert time.monotonic() - started >= 0.5
    assert record["status"] == "ok" and record["result"] == 0.5 and record["trigger"] == "async"
    queued = tf_json(server.port, "invoke", "c-slow", "[0]", "--async")
    assert queued["status"] == "queued" and queued["id"]
    bare = tf(server.port, "invoke", "c-slow", "[0]", "--async")
    assert bare.returncode == 0 and len(bare.stdout.strip()) == 36  # only the id, for $(...)
    failed = tf(server.port, "invoke", "c-slow", "[0.1, true]", "--wait")
    assert failed.returncode == 1 and "ValueError: asked to fail" in failed.stdout
    state = server.request("GET", f"/admin/calls/{queued['id']}").json
    assert state["function"] == "c-slow"


def test_set_versions_and_rollback(server: Server, tmp_path: Path) -> None:
    tf_json(server.port, "deploy", "c-env", _source(tmp_path, "env.py", ENV), "--env", "A=1", "--secret", "S=x")
    changed = tf_json(server.port, "set", "c-env", "timeout=7", "memory_mb=256", "env.B=two", "secret.S=null",
                      "max-workers=3")
    assert changed["version"] == "2" and changed["timeout"] == 7 and changed["memory_mb"] == 256
    assert changed["env"] == {"A": "1", "B": "two"} and changed["secrets"] == [] and changed["max_workers"] == 3
    assert tf_json(server.port, "invoke", "c-env", '["A", "B"]')["result"] == {"A": "1", "B": "two"}
    human = tf(server.port, "set", "c-env", "timeout=null")
    assert human.returncode == 0 and "version 3 is live" in human.stdout
    listed = tf_json(server.port, "versions", "c-env")
    assert [v["version"] for v in listed] == ["3", "2", "1"] and listed[0]["live"] is True
    table = tf(server.port, "versions", "c-env").stdout.splitlines()
    assert table[0].split()[0] == "VERSION" and len(table) == 4
    assert tf_json(server.port, "rollback", "c-env")["version"] == "2"
    back = tf_json(server.port, "rollback", "c-env", "1")
    assert back["version"] == "1" and back["env"] == {"A": "1"}
    assert tf_json(server.port, "invoke", "c-env", '["A", "B"]')["result"] == {"A": "1", "B": None}
    for wrong in ("colour=red", "timeout=soon", "timeout"):
        usage = tf(server.port, "set", "c-env", wrong)
        assert usage.returncode == 2 and usage.stderr, wrong
    refused = tf(server.port, "set", "c-env", "timeout=0")
    assert refused.returncode == 3 and "bad_setting" in refused.stderr
    none_earlier = tf(server.port, "rollback", "c-env", "99")
    assert none_earlier.returncode == 3 and "version_not_found" in none_earlier.stderr


def test_ls_rm_logs_and_status(server: Server, tmp_path: Path) -> None:
    tf_json(server.port, "deploy", "c-gone", _source(tmp_path, "add.py", ADD))
    for n in range(3):
        tf_json(server.port, "invoke", "c-gone", f"[{n}, 10]")
    names = tf_json(server.port, "ls")
    assert "c-gone" in names and names == sorted(names)
    table = tf(server.port, "ls").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "VERSION", "CALLING"]
    assert any(line.split()[:3] == ["c-gone", "1", "args"] for line in table[1:])
    records = tf_json(server.port, "logs", "c-gone", "-n", "2")
    assert [r["result"] for r in records] == [11, 12] and records[0]["stdout"] == "adding 1 10\n"
    lines = tf(server.port, "logs", "c-gone").stdout.splitlines()
    assert len(lines) == 3 and all(r["id"] in line for r, line in zip(records, lines[1:]))
    status = tf_json(server.port, "status")
    assert status["functions"] == len(names) and {"process", "workers", "system"} <= set(status)
    assert "functions:" in tf(server.port, "status").stdout
    assert tf_json(server.port, "rm", "c-gone") == {"deleted": "c-gone"}
    again = tf(server.port, "rm", "c-gone")
    assert again.returncode == 3 and "404" in again.stderr
    assert "c-gone" not in tf_json(server.port, "ls")


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's stdout lines, as they come, on a queue (so a test can wait for one with a timeout)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout or ():
            lines.put(line)
    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_logs_follow_prints_a_new_call_within_a_second(server: Server, tmp_path: Path) -> None:
    tf_json(server.port, "deploy", "c-follow", _source(tmp_path, "add.py", ADD))
    first = server.call("c-follow", [1, 1]).headers["x-call-id"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("TINYFAAS_")}
    follower = subprocess.Popen([sys.executable, "-m", "tinyfaas_std", "logs", "c-follow", "-n", "1", "--follow",
                                 "--json", "--url", f"http://127.0.0.1:{server.port}"], cwd=REPO, text=True,
                                env={**base, **CREDENTIALS}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = _lines(follower)
        assert json.loads(lines.get(timeout=10))["id"] == first  # the newest record first
        for n in (2, 3):
            call_id = server.call("c-follow", [n, 0]).headers["x-call-id"]
            record = json.loads(lines.get(timeout=1.0))
            assert record["id"] == call_id and record["result"] == n
        assert lines.empty()  # nothing printed twice
        follower.send_signal(signal.SIGINT)  # Ctrl-C ends it cleanly
        assert follower.wait(10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_exit_3_on_wrong_password_missing_credentials_and_closed_port(server: Server, tmp_path: Path) -> None:
    wrong = tf(server.port, "ls", env={"TINYFAAS_PASSWORD": "nope"})
    assert wrong.returncode == 3 and "401" in wrong.stderr and wrong.stdout == ""
    anonymous = tf(server.port, "ls", env={"TINYFAAS_USER": "", "TINYFAAS_PASSWORD": ""}, home=tmp_path)
    assert anonymous.returncode == 3 and "401" in anonymous.stderr  # admin/1234 is never assumed
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    refused = tf(closed, "status")
    assert refused.returncode == 3 and "cannot reach" in refused.stderr


def test_credentials_from_netrc(server: Server, tmp_path: Path) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1\n  login admin\n  password 1234\n")
    netrc.chmod(0o600)
    no_env = {"TINYFAAS_USER": "", "TINYFAAS_PASSWORD": ""}
    assert isinstance(tf_json(server.port, "ls", env=no_env, home=tmp_path), list)
    wrong_user = tf(server.port, "ls", env={**no_env, "TINYFAAS_USER": "someone"}, home=tmp_path)
    assert wrong_user.returncode == 2 and "TINYFAAS_PASSWORD" in wrong_user.stderr
    netrc.chmod(0o644)  # others could read the password: refused, as ftp and curl do
    exposed = tf(server.port, "ls", env=no_env, home=tmp_path)
    assert exposed.returncode == 2 and ".netrc" in exposed.stderr


def test_usage_errors_exit_2(server: Server, tmp_path: Path) -> None:
    for args in (["invoke"], ["deploy", "x"], ["logs", "x", "-n", "-1"], ["deploy", "x", str(tmp_path / "none.py")],
                 ["deploy", "x", _source(tmp_path, "add.py", ADD), "--env", "NOEQUALS"], ["ls", "--bogus"],
                 ["export", "x"]):
        done = tf(server.port, *args)
        assert done.returncode == 2 and done.stderr and done.stdout == "", args
    bad_url = tf(server.port, "ls", url="ftp://127.0.0.1")
    assert bad_url.returncode == 2 and "--url" in bad_url.stderr


def test_the_serve_verb_serves(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tinyfaas_std", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--functions-dir", str(tmp_path / "f"), "--data-dir", str(tmp_path / "d")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "serving on http://127.0.0.1:" in line
        port = int(line.split("://", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
        assert tf_json(port, "ls") == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[tuple[Server, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the certificate")
    folder = tmp_path_factory.mktemp("clienttls")
    (folder / "srv").mkdir()
    crt, key = folder / "server.crt", folder / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    server = Server(folder / "srv", wheels, ["--tls-cert", str(crt), "--tls-key", str(key)]).start()
    yield server, crt
    server.stop()


def test_https_with_cacert(tls_server: tuple[Server, Path]) -> None:
    server, crt = tls_server
    assert tf_json(server.port, "ls", "--cacert", str(crt), scheme="https") == []
    untrusted = tf(server.port, "ls", scheme="https")
    assert untrusted.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr


def test_logs_follow_keeps_up_when_its_last_call_leaves_the_kept_log(wheels: Path, tmp_path: Path) -> None:
    """With 3 records kept, a burst of 20 calls pushes the call the follower asks `?after=` out of the log (400
    unknown_after): it reads the kept log instead, prints what ended since, and never a record twice."""
    server = Server(tmp_path, wheels, ["--log-retention", "3", "--access-log"]).start()
    try:
        tf_json(server.port, "deploy", "c-burst", _source(tmp_path, "add.py", ADD))
        server.call("c-burst", [0, 0])
        follower = subprocess.Popen([sys.executable, "-m", "tinyfaas_std", "logs", "c-burst", "--follow", "--json",
                                     "--url", f"http://127.0.0.1:{server.port}"], cwd=REPO, text=True,
                                    env={**os.environ, **CREDENTIALS}, stdout=subprocess.PIPE)
        lines = _lines(follower)
        assert json.loads(lines.get(timeout=10))["result"] == 0
        conn = server.connect()
        ids = [server.call("c-burst", [n, 0], conn=conn).headers["x-call-id"] for n in range(1, 21)]
        printed: list[str] = []
        while not printed or printed[-1] != ids[-1]:
            printed.append(json.loads(lines.get(timeout=2))["id"])
        assert len(printed) == len(set(printed)) and set(printed) <= set(ids)
        assert sorted(printed, key=ids.index) == printed
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        server.stop()
    assert "GET /admin/logs/c-burst 400" in server.log()  # the fallback was taken

"""Containment (SPEC 9): a function is a guest. Hostile functions against the real server, real processes, real uids.

Most tests run the server as root (as the tests do here) with each isolation mode the machine allows; one runs it
as an unprivileged user. Processes are found on the host with psutil, never trusted from what a function says.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from harness import REPO, Server

IS_ROOT = os.geteuid() == 0
_RUN = f"{os.getpid() % 1000}.{int(time.time()) % 100000}"  # marks of daemons of this run, found by cmdline


def _mark(n: int) -> str:
    """A `sleep` argument no other run (or leftover of one) uses."""
    return f"{900 + n}{_RUN}"
PASSWORD_ENV = {"TINYFAAS_PASSWORD": "1234", "SERVER_ONLY_SECRET": "do-not-leak"}

DAEMON = """import os, sys
def main(mark):
    child = os.fork()
    if child == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", mark])
        os._exit(0)
    os.waitpid(child, 0)
    return "spawned"
"""


def _procs_with(args: list[str]) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == args and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _status(proc: psutil.Process) -> str | None:
    """Its status, or None once it is gone (it may end between any two looks)."""
    try:
        return proc.status()
    except psutil.NoSuchProcess:
        return None


def _cmd(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return ""


def _alive(proc: psutil.Process) -> bool:
    return _status(proc) not in (None, psutil.STATUS_ZOMBIE)


def _wait_gone(args: list[str], seconds: float) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _procs_with(args):
            return []
        time.sleep(0.05)
    return _procs_with(args)


def _tree(server: Server) -> list[psutil.Process]:
    return psutil.Process(server.proc.pid).children(recursive=True)


def _modes() -> list[str]:
    """The modes a server run by this user may use (a root server never uses namespace-user)."""
    return ["namespace-root", "subreaper"] if IS_ROOT else ["namespace-user", "subreaper"]


def _scratch(server: Server, name: str) -> Path:
    return next((server.root / "functions" / name).glob("scratch-*"))


@pytest.fixture(scope="module", params=_modes())
def guarded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            wheels: Path) -> Iterator[Server]:
    yield from _serving(Server(tmp_path_factory.mktemp("guard"), wheels,
                               ["--timeout", "3", "--isolation", request.param, "--max-file-mb", "100"],
                               env=PASSWORD_ENV))


def _serving(server: Server) -> Iterator[Server]:
    """Start `server`, hand it to the test, stop it if the test left it running."""
    server.start()
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop()


def _mode(server: Server) -> str:
    return server.request("GET", "/admin/status").json["isolation"]["mode"]


def test_status_says_what_is_in_force(guarded: Server) -> None:
    isolation = guarded.request("GET", "/admin/status").json["isolation"]
    mode = isolation["mode"]
    assert isolation["per_function_user"] is (mode == "namespace-root")
    assert isolation["process_tree"] == ("subreaper" if mode == "subreaper" else "pid-namespace")
    assert isolation["max_processes"] == (64 if mode == "namespace-root" else 0)


def test_the_environment_is_built_from_nothing(guarded: Server) -> None:
    assert guarded.upload("envdump", "import os\ndef main():\n    return dict(os.environ)\n").status == 200
    env = guarded.call("envdump").json["result"]
    scratch = str(_scratch(guarded, "envdump"))
    venv_bin = str(Path(os.readlink(guarded.root / "functions" / "envdump" / "venv")))
    assert set(env) == {"PATH", "HOME", "TMPDIR", "LANG", "TINYFAAS_FUNCTION", "TINYFAAS_VERSION"}
    assert env["PATH"].endswith("/bin:/usr/local/bin:/usr/bin:/bin") and Path(venv_bin).name in env["PATH"]
    assert env["HOME"] == env["TMPDIR"] == scratch and env["LANG"] == "C.UTF-8"
    assert env["TINYFAAS_FUNCTION"] == "envdump" and env["TINYFAAS_VERSION"] == "1"
    assert "do-not-leak" not in json.dumps(env) and "1234" not in json.dumps(env)


def test_the_view_of_the_files_has_a_private_tmp_and_dev(guarded: Server) -> None:
    src = ("import os\ndef main():\n    open('/tmp/x', 'w').write('x')\n    open('/dev/null', 'w').write('x')\n"
           "    return [sorted(os.listdir('/dev')), os.listdir('/tmp'), os.urandom(4).hex() != '']\n")
    assert guarded.upload("view", src).status == 200
    dev, tmp, _ = guarded.call("view").json["result"]
    if _mode(guarded) == "subreaper":
        assert "x" in tmp  # the host's /tmp
        return
    assert dev == ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"]
    shown = [guarded.root, REPO / "tinyfaas_std", Path(sys.base_prefix).resolve()]  # folders a worker sees
    under_tmp = {p.relative_to("/tmp").parts[0] for p in shown if p.is_relative_to("/tmp")}
    assert set(tmp) == {"x"} | under_tmp  # its own /tmp: only the way to the folders it is shown


def test_a_worker_holds_no_descriptor_but_its_channel_and_stdio(guarded: Server) -> None:
    src = "import os\ndef main():\n    return sorted(int(fd) for fd in os.listdir('/proc/self/fd'))\n"
    assert guarded.upload("fds", src).status == 200
    fds = guarded.call("fds").json["result"]
    # 0-2 stdio, 3 the channel, and the two capture files the worker itself opened (plus listdir's own fd)
    assert fds[:4] == [0, 1, 2, 3] and len(fds) <= 7


def test_each_function_has_its_own_uid_and_sees_only_its_files(guarded: Server) -> None:
    """namespace-root: all of SPEC 9. subreaper (what a server gets where namespaces are refused): the function
    shares the server's uid and view of the files, as /admin/status and the README say."""
    full = _mode(guarded) == "namespace-root"
    src = ("import os\ndef main(path, write=None):\n    try:\n        if write:\n"
           "            open(path, 'w').write(write)\n            return 'written'\n"
           "        return open(path).read()[:40]\n    except OSError as e:\n        return type(e).__name__\n")
    for name in ("snoop", "victim"):
        assert guarded.upload(name, src.replace("def main(", f"WHO = {name!r}\ndef main(")).status == 200
    root = guarded.root
    data_file = str(root / "data" / "functions.json")
    victim_code = next((root / "functions" / "victim").glob("v-*/func.py"))
    own_code = next((root / "functions" / "snoop").glob("v-*/func.py"))
    if not full:
        assert guarded.call("snoop", [data_file]).json["result"].startswith("{")
        return
    assert guarded.call("snoop", [data_file]).json["result"] == "FileNotFoundError"
    assert guarded.call("snoop", [str(root / "data" / "logs")]).json["result"] == "FileNotFoundError"
    assert guarded.call("snoop", [str(victim_code)]).json["result"] == "FileNotFoundError"
    assert guarded.call("snoop", [str(victim_code), "pwned"]).json["result"] in ("FileNotFoundError", "OSError")
    assert "WHO = 'snoop'" in guarded.call("snoop", [str(own_code)]).json["result"]
    assert guarded.call("snoop", [str(own_code), "pwned"]).json["result"] == "OSError"  # read-only
    assert guarded.call("snoop", ["/etc/shadow"]).json["result"] == "PermissionError"
    scratch = _scratch(guarded, "snoop")
    assert guarded.call("snoop", [str(scratch / "note"), "mine"]).json["result"] == "written"
    owner = {p.uids().real for p in _tree(guarded)
             if "_worker.py" in _cmd(p) and ("/snoop/" in _cmd(p)
                                                           or "/victim/" in _cmd(p))}
    assert len(owner) == 2 and owner <= set(range(200000, 300000))
    assert (scratch / "note").stat().st_uid in owner
    assert "WHO = 'victim'" in victim_code.read_text()
    assert (root / "data").stat().st_mode & 0o777 == 0o700
    limits = ("import os, resource\ndef main():\n    status = open('/proc/self/status').read()\n"
              "    return [os.getgroups(), 'NoNewPrivs:\\t1' in status, os.getgid() == os.getuid(),\n"
              "            [resource.getrlimit(r)[0] for r in (resource.RLIMIT_NOFILE, resource.RLIMIT_CORE,\n"
              "             resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE)]]\n")
    assert guarded.upload("limits", limits).status == 200
    assert guarded.call("limits").json["result"] == [[], True, True, [1024, 0, 64, 100 * 1024 * 1024]]


def test_a_function_cannot_kill_the_server(guarded: Server) -> None:
    namespaces = _mode(guarded) != "subreaper"
    sig = "SIGKILL" if namespaces else "0"  # without namespaces it could: only check that it may signal
    src = ("import os, signal\ndef main(pid):\n    out = []\n    for target in (pid, os.getppid()):\n"
           f"        try:\n            os.kill(target, {'signal.SIGKILL' if namespaces else '0'})\n"
           "            out.append('sent')\n        except OSError as e:\n            out.append(type(e).__name__)\n"
           "    return out\n")
    assert guarded.upload("killer", src).status == 200
    result = guarded.call("killer", [guarded.proc.pid]).json["result"]
    if namespaces:  # the server's pid is not in the worker's namespace; its parent is the init, not to be killed
        assert result[0] == "ProcessLookupError"
        assert guarded.call("killer", [guarded.proc.pid]).status == 200  # the init it signalled lives on
    else:
        assert result == ["sent", "sent"], sig
    assert guarded.proc.poll() is None and guarded.request("GET", "/admin/functions").status == 200


def test_a_daemon_ends_with_its_worker_on_delete(guarded: Server) -> None:
    mark = _mark(1)
    assert guarded.upload("daemon", DAEMON).status == 200
    assert guarded.call("daemon", [mark]).json["result"] == "spawned"
    assert _procs_with(["sleep", mark])  # it really runs, detached in a session of its own
    assert guarded.request("DELETE", "/admin/functions/daemon").status == 200
    assert _wait_gone(["sleep", mark], 3) == []


def test_a_daemon_ends_when_its_function_is_replaced(guarded: Server) -> None:
    mark = _mark(7)
    assert guarded.upload("daemon-replaced", DAEMON).status == 200
    assert guarded.call("daemon-replaced", [mark]).json["result"] == "spawned"
    assert guarded.upload("daemon-replaced", DAEMON + "\n# v2\n").status == 200
    assert _wait_gone(["sleep", mark], 3) == []


def test_a_daemon_ends_when_its_call_times_out(guarded: Server) -> None:
    mark = _mark(2)
    src = DAEMON.replace('    return "spawned"', '    import time\n    time.sleep(60)')
    assert guarded.upload("daemon-timeout", src).status == 200
    assert guarded.call("daemon-timeout", [mark]).status == 504
    assert _wait_gone(["sleep", mark], 3) == []


def test_a_worker_that_exits_is_502_at_once_even_if_its_child_holds_the_channel(guarded: Server) -> None:
    src = ("import os, subprocess, time\ndef main(mark):\n    subprocess.Popen(['sleep', mark])\n"
           "    if os.fork() == 0:\n        time.sleep(20)\n        os._exit(0)\n    os._exit(1)\n")
    assert guarded.upload("forkexit", src).status == 200
    start = time.monotonic()
    mark = _mark(6)
    resp = guarded.call("forkexit", [mark])
    assert resp.status == 502 and time.monotonic() - start < 1.0  # the timeout is 3 s
    assert _wait_gone(["sleep", mark], 3) == []


def test_orphans_are_reaped(guarded: Server) -> None:
    src = ("import os\ndef main(n):\n    for _ in range(n):\n        child = os.fork()\n        if child == 0:\n"
           "            if os.fork() == 0:\n                os._exit(0)\n            os._exit(0)\n"
           "        os.waitpid(child, 0)\n    return n\n")
    assert guarded.upload("orphans", src).status == 200
    assert guarded.call("orphans", [40]).json["result"] == 40
    time.sleep(0.5)
    zombies = [p for p in _tree(guarded) if _status(p) == psutil.STATUS_ZOMBIE]
    assert zombies == []


def test_processes_together_are_held_to_the_memory_limit(guarded: Server) -> None:
    src = ("import os, time\ndef main(n, mb):\n    kids = []\n    for _ in range(n):\n        pid = os.fork()\n"
           "        if pid == 0:\n            block = b'x' * (mb * 1024 * 1024)\n            time.sleep(2)\n"
           "            os._exit(0)\n        kids.append(pid)\n    for pid in kids:\n        os.waitpid(pid, 0)\n"
           "    return 'survived'\n")
    assert guarded.upload("hog6", src).status == 200
    assert guarded.call("hog6", [2, 100]).json["result"] == "survived"  # 200 MB in all: within 512
    start = time.monotonic()
    resp = guarded.call("hog6", [6, 400])
    assert resp.status == 502 and "memory" in resp.json["error"]["message"]
    assert time.monotonic() - start < 2.0  # killed, not left to finish its 2 s
    assert guarded.call("hog6", [1, 10]).json["result"] == "survived"


def test_output_of_a_thread_left_running_never_lands_in_another_call(guarded: Server) -> None:
    src = ("import threading, time, sys\ndef chatter():\n    for _ in range(300):\n        print('stray')\n"
           "        time.sleep(0.01)\ndef main(start):\n    if start:\n"
           "        threading.Thread(target=chatter, daemon=True).start()\n        print('first')\n"
           "        return 'started'\n    print('second')\n    time.sleep(0.3)\n    return 'done'\n")
    assert guarded.upload("stray", src).status == 200
    assert guarded.call("stray", [True]).json["result"] == "started"
    assert guarded.call("stray", [False]).json["result"] == "done"
    records = guarded.request("GET", "/admin/logs/stray").json
    assert records[-1]["stdout"] == "second\n"
    assert "first\n" in records[-2]["stdout"]  # the thread was the first call's own while that call ran


def test_a_file_past_max_file_mb_fails_and_the_code_is_read_only(guarded: Server) -> None:
    src = ("import os, errno\ndef main(where, mb):\n    try:\n        with open(where, 'wb') as f:\n"
           "            for _ in range(mb):\n                f.write(b'x' * (1024 * 1024))\n        return 'ok'\n"
           "    except OSError as e:\n        return errno.errorcode[e.errno]\n")
    assert guarded.upload("bigfile", src).status == 200
    scratch = _scratch(guarded, "bigfile")
    assert guarded.call("bigfile", [str(scratch / "small"), 10]).json["result"] == "ok"
    assert guarded.call("bigfile", [str(scratch / "big"), 200]).json["result"] == "EFBIG"  # --max-file-mb 100
    if _mode(guarded) != "subreaper":
        code = next((guarded.root / "functions" / "bigfile").glob("v-*"))
        assert guarded.call("bigfile", [str(code / "x"), 1]).json["result"] == "EROFS"


def test_a_fork_bomb_is_bounded_and_ends_with_its_function(guarded: Server) -> None:
    bounded = _mode(guarded) == "namespace-root"  # RLIMIT_NPROC needs a uid of the function's own
    src = ("import os, time\ndef main(n):\n    made = 0\n    for _ in range(n):\n        try:\n"
           "            pid = os.fork()\n        except OSError:\n            break\n        if pid == 0:\n"
           "            time.sleep(30)\n            os._exit(0)\n        made += 1\n    return made\n")
    assert guarded.upload("forkbomb", src).status == 200
    before = {p.pid for p in _tree(guarded)}  # the bomb's first worker is among them: the upload started it
    made = guarded.call("forkbomb", [2000 if bounded else 200]).json["result"]
    assert (10 < made < 64) if bounded else made == 200
    assert guarded.upload("bystander", "def main():\n    return 'fine'\n").status == 200
    assert guarded.call("bystander").json["result"] == "fine"
    bomb = [p for p in _tree(guarded) if p.pid not in before and "/forkbomb/" in _cmd(p)]
    assert len(bomb) >= made
    assert guarded.request("DELETE", "/admin/functions/forkbomb").status == 200
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(_alive(p) for p in bomb):
        time.sleep(0.05)
    assert not [p for p in bomb if _alive(p)]


def test_nothing_of_the_tree_outlives_a_server_sigkill(tmp_path_factory: pytest.TempPathFactory,
                                                       wheels: Path) -> None:
    for mode in _modes():
        server = Server(tmp_path_factory.mktemp("sigkill"), wheels, ["--isolation", mode]).start()
        mark = _mark(3)
        assert server.upload("daemon", DAEMON).status == 200
        src = "import os, time\ndef main():\n    for _ in range(20):\n        if os.fork() == 0:\n" \
              "            time.sleep(60)\n            os._exit(0)\n    return 'forked'\n"
        assert server.upload("forker", src).status == 200
        assert server.call("daemon", [mark]).json["result"] == "spawned"
        assert server.call("forker").json["result"] == "forked"
        tree = _tree(server)
        assert len(tree) > 20
        server.proc.kill()
        server.proc.wait()
        deadline = time.monotonic() + 3
        alive = tree
        while alive and time.monotonic() < deadline:
            alive = [p for p in tree if _alive(p)]
            time.sleep(0.05)
        assert alive == [], (mode, alive)
        assert _procs_with(["sleep", mark]) == []


def test_a_daemon_ends_when_its_worker_idles_out(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> None:
    server = Server(tmp_path_factory.mktemp("idle"), wheels, ["--idle-timeout", "0.5"]).start()
    try:
        mark = _mark(8)
        assert server.upload("daemon", DAEMON).status == 200
        assert server.call("daemon", [mark]).json["result"] == "spawned"
        assert _procs_with(["sleep", mark])
        assert _wait_gone(["sleep", mark], 8) == []  # the janitor sweeps every 5 s
        assert server.call("daemon", [_mark(9)]).json["result"] == "spawned"  # a new worker on demand
    finally:
        server.stop()
    assert _wait_gone(["sleep", _mark(9)], 3) == []


def test_a_server_sigterm_ends_daemons_too(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> None:
    server = Server(tmp_path_factory.mktemp("sigterm"), wheels).start()
    mark = _mark(4)
    assert server.upload("daemon", DAEMON).status == 200
    assert server.call("daemon", [mark]).json["result"] == "spawned"
    assert server.stop() == 0
    assert _wait_gone(["sleep", mark], 3) == []


def test_an_import_slower_than_the_timeout_is_reported_as_such(guarded: Server) -> None:
    resp = guarded.upload("slowimport", "import time\ntime.sleep(5)\ndef main():\n    return 1\n")
    assert resp.status == 422
    assert "did not finish importing within the 3 s timeout" in resp.json["error"]["message"]


def test_a_number_too_large_for_a_float_is_400_and_the_worker_lives(guarded: Server) -> None:
    assert guarded.upload("echo", "def main(*a):\n    return a\n").status == 200
    resp = guarded.request("POST", "/function/echo", b"[1e400]")
    assert resp.status == 400 and resp.json["error"]["code"] == "bad_json"
    resp = guarded.request("POST", "/function/echo", b'{"kwargs": {"x": -1e999}}')
    assert resp.status == 400
    assert guarded.call("echo", [1.5]).json["result"] == [1.5]


def test_records_keep_at_most_64_kib_of_input_and_of_result(guarded: Server) -> None:
    src = "def main(text, n):\n    return 'r' * n\n"
    assert guarded.upload("big", src).status == 200
    assert guarded.call("big", ["x" * (5 * 1024 * 1024), 100 * 1024]).status == 200
    assert guarded.call("big", ["small", 10]).status == 200
    records = guarded.request("GET", "/admin/logs/big").json
    big, small = records[-2], records[-1]
    assert big["args"] is None and big["kwargs"] is None and big["input_truncated"] is True
    assert big["input_bytes"] > 5 * 1024 * 1024
    assert big["result"] is None and big["result_truncated"] is True and big["result_bytes"] == 100 * 1024 + 2
    assert small["args"] == ["small", 10] and small["result"] == "r" * 10 and "input_truncated" not in small
    log_dir = guarded.root / "data" / "logs" / "big"
    assert sum(f.stat().st_size for f in log_dir.iterdir()) < 300 * 1024


def test_what_a_worker_writes_to_its_descriptors_1_and_2_never_reaches_the_server(guarded: Server) -> None:
    src = ("import os\ndef main(mark):\n    os.write(1, mark.encode())\n    os.write(2, mark.encode())\n"
           "    try:\n        os.ftruncate(2, 0)\n    except OSError:\n        pass\n    return 'ok'\n")
    assert guarded.upload("fdwriter", src).status == 200
    before = guarded.log()
    mark = "FORGED-SERVER-LINE-" + _RUN
    assert guarded.call("fdwriter", [mark]).json["result"] == "ok"
    time.sleep(0.2)
    after = guarded.log()
    assert mark not in after and after.startswith(before)  # not written, not wiped


def test_system_v_shared_memory_dies_with_the_worker(guarded: Server) -> None:
    if _mode(guarded) == "subreaper":
        return  # no IPC namespace without namespaces (README)
    src = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\ndef main():\n"
           "    return libc.shmget(0, 4 * 1024 * 1024, 0o1600)\n")  # IPC_PRIVATE, IPC_CREAT | 0600
    assert guarded.upload("shm", src).status == 200
    before = Path("/proc/sysvipc/shm").read_text().count("\n")
    assert guarded.call("shm").json["result"] >= 0
    assert Path("/proc/sysvipc/shm").read_text().count("\n") == before  # not in the host's IPC namespace


def test_an_answer_that_trickles_in_is_cut_off(guarded: Server) -> None:
    """A function that writes the start of a large answer on the channel itself, then a byte now and then, is
    stopped once the transfer's own time (10 s in all) is up, not kept alive by each byte."""
    src = ("import os, struct, sys, time\ndef main():\n    f = sys._getframe()\n"
           "    while 'seq' not in f.f_locals:\n        f = f.f_back\n    seq = f.f_locals['seq']\n"
           "    os.write(3, struct.pack('!II', 1 << 20, seq) + b'o')\n    for _ in range(30):\n"
           "        time.sleep(0.8)\n        os.write(3, b' ')\n")
    assert guarded.upload("trickle", src).status == 200
    start = time.monotonic()
    resp = guarded.call("trickle")
    assert resp.status == 502 and 9 < time.monotonic() - start < 13  # trickling on would take 24 s


def test_a_function_may_call_functions_but_not_the_admin_api_over_loopback(guarded: Server) -> None:
    src = ("import base64, urllib.request, urllib.error\ndef main(port, path, method):\n"
           "    req = urllib.request.Request(f'http://127.0.0.1:{port}{path}', method=method, data=b'' if "
           "method == 'POST' else None)\n"
           "    req.add_header('Authorization', 'Basic ' + base64.b64encode(b'admin:1234').decode())\n"
           "    try:\n        with urllib.request.urlopen(req, timeout=5) as resp:\n            return resp.status\n"
           "    except urllib.error.HTTPError as e:\n        return e.code\n")
    assert guarded.upload("caller", src).status == 200
    assert guarded.upload("callee", "def main():\n    return 'hi'\n").status == 200
    port = guarded.port
    assert guarded.call("caller", [port, "/function/callee", "POST"]).json["result"] == 200  # chaining works
    admin = [guarded.call("caller", [port, path, method]).json["result"]
             for path, method in (("/admin/functions", "GET"), ("/admin/logs/callee", "GET"),
                                  ("/admin/functions/callee", "DELETE"))]
    if _mode(guarded) == "namespace-root":
        assert admin == [403, 403, 403]
        assert guarded.request("GET", "/admin/functions/callee").status == 200  # still there
    else:  # functions share the server's uid: only the password guards the API (README)
        assert admin == [200, 200, 200]


def test_after_the_gallery_the_server_and_every_other_function_still_serve(guarded: Server) -> None:
    """Runs after the hostile functions above, on the same server: nothing they did is noticed."""
    assert guarded.proc.poll() is None
    names = guarded.request("GET", "/admin/functions").json
    assert {"envdump", "killer", "hog6", "stray", "bigfile", "forkexit", "orphans", "echo"} <= set(names)
    assert guarded.call("envdump").status == 200 and guarded.call("echo", [1]).json["result"] == [1]
    assert guarded.call("fds").status == 200 and guarded.call("hog6", [1, 1]).json["result"] == "survived"
    assert guarded.request("GET", "/admin/status").json["functions"] == len(names)
    assert "bug while serving" not in guarded.log()


def _sdist(folder: Path, marker: Path) -> None:
    """A source distribution whose build backend, if pip ever runs it, writes its uid and environment to
    `marker`: what any package on an index could do."""
    import io
    import tarfile
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "backend.py": f"import json, os\nopen({str(marker)!r}, 'w').write(json.dumps(dict(os.environ)))\n"
                      "def get_requires_for_build_wheel(config_settings=None):\n    return []\n",
        "PKG-INFO": "Metadata-Version: 2.1\nName: buildme\nVersion: 1.0\n",
    }
    with tarfile.open(folder / "buildme-1.0.tar.gz", "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"buildme-1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("builds", ["refuse", "allow"])
def test_pip_builds_nothing_from_source_unless_allowed_and_never_sees_the_password(
        tmp_path_factory: pytest.TempPathFactory, builds: str) -> None:
    root = tmp_path_factory.mktemp("sdist")
    marker = root / "built"
    _sdist(root / "index", marker)
    server = Server(root, root / "index", ["--source-builds", builds],
                    env={"TINYFAAS_PASSWORD": "1234", "SERVER_ONLY_SECRET": "do-not-leak"}).start()
    try:
        resp = server.upload("needs-sdist", "def main():\n    return 1\n", requirements="buildme")
        assert resp.status == 422
    finally:
        server.stop()
    if builds == "refuse":
        assert not marker.exists()  # pip never ran the package's code
    else:
        env = json.loads(marker.read_text())
        assert "TINYFAAS_PASSWORD" not in env and "SERVER_ONLY_SECRET" not in env
        assert env["PIP_NO_INDEX"] == "1"  # what pip needs does reach it


# -- deleting and replacing during calls ------------------------------------------------------------------------

@pytest.fixture
def narrow(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[Server]:
    yield from _serving(Server(tmp_path_factory.mktemp("narrow"), wheels, ["--timeout", "5", "--max-workers", "2"]))


def test_calls_taken_before_a_delete_finish_and_read_their_files(narrow: Server) -> None:
    src = "import os, time\ndef main():\n    time.sleep(1)\n" \
          "    return open(os.path.join(os.path.dirname(__file__), 'func.py')).read()[:12]\n"
    assert narrow.upload("doomed", src).status == 200
    with ThreadPoolExecutor(5) as pool:
        calls = [pool.submit(narrow.call, "doomed") for _ in range(5)]  # 2 running, 3 queued
        time.sleep(0.4)
        assert narrow.request("DELETE", "/admin/functions/doomed").status == 200
        results = [f.result() for f in calls]
    assert [r.status for r in results] == [200] * 5
    assert all(r.json["result"] == "import os, t" for r in results)
    assert narrow.call("doomed").status == 404
    deadline = time.monotonic() + 10  # the janitor removes the folder once the last call is done
    while (narrow.root / "functions" / "doomed").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (narrow.root / "functions" / "doomed").exists()


def test_upload_and_delete_racing_with_calls_never_fail_a_call(narrow: Server) -> None:
    src = "import os\ndef main():\n    return open(os.path.join(os.path.dirname(__file__), 'func.py')).read()[:6]\n"
    assert narrow.upload("churn", src).status == 200
    statuses: list[int] = []
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            resp = narrow.call("churn")
            statuses.append(resp.status)
            if resp.status not in (200, 404):
                print(resp.raw)

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(8):
            assert narrow.request("DELETE", "/admin/functions/churn").status == 200
            assert narrow.upload("churn", src).status == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(statuses) <= {200, 404} and statuses.count(200) > 10


def test_a_worker_that_cannot_start_is_502_and_recorded(narrow: Server) -> None:
    assert narrow.upload("nopython", "def main():\n    return 1\n").status == 200
    narrow.stop()
    venv = (narrow.root / "functions" / "nopython" / "venv").resolve()
    for link in (venv / "bin").glob("python*"):
        link.unlink()
    narrow.start()
    resp = narrow.call("nopython")
    assert resp.status == 502 and resp.json["error"]["code"] == "function_start_failed"
    record = narrow.request("GET", "/admin/logs/nopython").json[-1]
    assert record["status"] == "crashed"


def test_sigterm_during_uploads_answers_them_200_or_503(narrow: Server) -> None:
    src = "import time, greetlib\ntime.sleep(0.5)\ndef main():\n    return 1\n"
    with ThreadPoolExecutor(3) as pool:  # pip runs while the server is told to stop; workers start after
        uploads = [pool.submit(narrow.upload, f"slow{i}", src, "greetlib" if i else "greetlib\notherlib")
                   for i in range(3)]
        time.sleep(0.3)
        narrow.proc.send_signal(signal.SIGTERM)
        statuses = [f.result().status for f in uploads]
    assert narrow.proc.wait(20) == 0
    assert set(statuses) <= {200, 503}, statuses


# -- the server as an ordinary user -----------------------------------------------------------------------------

def _python_for(uid: int) -> str | None:
    """An interpreter that `uid` may run (this machine's own may live under /root)."""
    check = "import subprocess, sys; print(subprocess.run([sys.executable, '-c', 'pass']).returncode == 0 " \
            "and sys.version_info >= (3, 10))"
    for python in ("/usr/bin/python3", os.path.realpath(sys.executable)):
        done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", python, "-c",
                               check], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == "True":
            return python
    return None


@pytest.mark.skipif(not IS_ROOT, reason="needs root to start the server as another user")
@pytest.mark.parametrize("mode", ["namespace-user", "subreaper"])
def test_as_an_ordinary_user_containment_degrades_honestly(tmp_path_factory: pytest.TempPathFactory,
                                                           wheels: Path, mode: str) -> None:
    nobody = 65534
    python = _python_for(nobody)
    assert python is not None, "no Python interpreter here that an unprivileged user may run"
    home = Path("/tmp") / f"tinyfaas-nobody-{os.getpid()}-{mode}"
    subprocess.run(["rm", "-rf", str(home)], check=True)
    home.mkdir(mode=0o755)
    os.chown(home, nobody, nobody)
    lib = home / "lib"  # the clone and its .venv may lie under a folder only root may enter: copy what it runs
    for package in (REPO / "tinyfaas_std", Path(psutil.__file__).parent):
        shutil.copytree(package, lib / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    server = Server(home, wheels, ["--isolation", mode, "--timeout", "3"], python=python,
                    prefix=["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"],
                    env={"PYTHONPATH": str(lib)}, cwd=home)
    try:
        server.start()
        status = server.request("GET", "/admin/status").json["isolation"]
        assert status == {"per_function_user": False, "max_processes": 0, "mode": mode,
                          "process_tree": "subreaper" if mode == "subreaper" else "pid-namespace"}
        assert f"functions run under the server's own uid {nobody}" in server.log()
        src = "import os\ndef main():\n    return [os.getuid(), sorted(os.environ)]\n"
        assert server.upload("who", src).status == 200
        uid, env = server.call("who").json["result"]
        assert uid == nobody and "TINYFAAS_PASSWORD" not in env and "PYTHONPATH" not in env
        mark = _mark(5)
        assert server.upload("daemon", DAEMON).status == 200
        assert server.call("daemon", [mark]).json["result"] == "spawned"
        assert server.request("DELETE", "/admin/functions/daemon").status == 200
        assert _wait_gone(["sleep", mark], 3) == []
    finally:
        if server.proc and server.proc.poll() is None:
            server.stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)

"""Functions as processes: venvs with real pip installs, warm workers, crashes, timeouts, concurrency, updates."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

from harness import Server

USES_GREETLIB = "import greetlib\n\ndef main(who):\n    return greetlib.greet(who)\n"
PROBE = ("import importlib.util, sys\n\ndef main(mod):\n"
         "    return {'found': importlib.util.find_spec(mod) is not None, 'python': sys.executable}\n")


def test_requirements_are_installed_into_the_functions_own_venv(server: Server) -> None:
    resp = server.upload("greeter", USES_GREETLIB, requirements="greetlib==1.0\n")
    assert resp.status == 200, resp.raw
    assert resp.json["requirements"] == ["greetlib==1.0"]
    assert server.call("greeter", ["world"]).json["result"] == "hello world"
    assert (server.root / "functions" / "greeter" / "requirements.txt").read_text() == "greetlib==1.0\n"


def test_a_function_without_the_requirement_cannot_import_it(server: Server) -> None:
    assert server.upload("plain", "def main():\n    import greetlib\n    return 1\n").status == 200
    resp = server.call("plain")
    assert resp.status == 500 and resp.json["error"]["type"] == "ModuleNotFoundError"


def test_two_functions_with_different_requirements_see_only_their_own(server: Server) -> None:
    assert server.upload("probe_a", PROBE, requirements="greetlib").status == 200
    assert server.upload("probe_b", PROBE, requirements="otherlib==2.0").status == 200
    a_greet, a_other = (server.call("probe_a", [m]).json["result"] for m in ("greetlib", "otherlib"))
    b_greet, b_other = (server.call("probe_b", [m]).json["result"] for m in ("greetlib", "otherlib"))
    assert a_greet["found"] and not a_other["found"]
    assert b_other["found"] and not b_greet["found"]
    assert a_greet["python"] != b_greet["python"]
    assert not server.call("probe_a", ["psutil"]).json["result"]["found"]  # the server's packages stay its own


def test_identical_requirements_share_a_venv_without_running_pip(server: Server) -> None:
    requirements = "greetlib==1.0\notherlib==2.0\n"  # a set no other test of this module installs: the first runs pip
    one = server.upload("greeter_one", USES_GREETLIB, requirements=requirements)
    assert one.status == 200
    two = server.upload("greeter_two", USES_GREETLIB, requirements=requirements)
    assert two.status == 200 and two.json["build_seconds"] < one.json["build_seconds"] / 2, (one.json, two.json)
    one = os.readlink(server.root / "functions" / "greeter_one" / "venv")
    two = os.readlink(server.root / "functions" / "greeter_two" / "venv")
    assert one == two


def test_pip_failure_is_422_with_pips_output(server: Server) -> None:
    resp = server.upload("nopkg", "def main():\n    return 1\n", requirements="package-that-does-not-exist==9.9\n")
    assert resp.status == 422
    err = resp.json["error"]
    assert err["code"] == "requirements_failed" and "package-that-does-not-exist" in err["pip_output"]


def test_requirement_lines_that_reach_outside_are_rejected(server: Server) -> None:
    for line in ["-r /etc/passwd", "--index-url http://evil/simple", "-e .", "./local", "/abs/path",
                 "pkg @ https://example.invalid/pkg.whl", "git+https://example.invalid/x.git", "-c c.txt"]:
        resp = server.upload("sneaky", "def main():\n    return 1\n", requirements=line)
        assert resp.status == 422 and resp.json["error"]["code"] == "requirements_rejected", line


def test_module_state_survives_between_calls_in_a_warm_worker(server: Server) -> None:
    src = "import os\nCOUNT = 0\n\ndef main():\n    global COUNT\n    COUNT += 1\n    return [COUNT, os.getpid()]\n"
    assert server.upload("counter", src).status == 200
    results = [server.call("counter").json["result"] for _ in range(3)]
    assert [r[0] for r in results] == [1, 2, 3]
    assert len({r[1] for r in results}) == 1 and results[0][1] != server.proc.pid


def test_a_crash_is_502_and_the_next_call_works(server: Server) -> None:
    src = "import os\n\ndef main(how):\n    if how == 'exit':\n        os._exit(3)\n    if how == 'sysexit':\n" \
          "        raise SystemExit(1)\n    return 'fine'\n"
    assert server.upload("crasher", src).status == 200
    for how in ("exit", "sysexit"):
        resp = server.call("crasher", [how])
        assert resp.status == 502 and resp.json["error"]["code"] == "function_crashed"
        assert server.call("crasher", ["ok"]).json["result"] == "fine"
    statuses = [r["status"] for r in server.request("GET", "/admin/logs/crasher").json]
    assert statuses == ["crashed", "ok", "crashed", "ok"]


def test_a_timeout_is_504_kills_the_worker_and_its_children(server: Server) -> None:
    src = ("import subprocess, sys, time\n\ndef main(sleep):\n"
           "    if sleep:\n        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
           "        time.sleep(60)\n    return 'awake'\n")
    assert server.upload("sleeper", src).status == 200
    assert server.call("sleeper", [False]).json["result"] == "awake"  # the warm worker the next call hangs in
    hung = [p for p in psutil.Process(server.proc.pid).children(recursive=True) if "sleeper" in " ".join(p.cmdline())]
    assert hung
    start = time.monotonic()
    resp = server.call("sleeper", [True])
    assert resp.status == 504 and resp.json["error"]["code"] == "function_timeout"
    assert 2 <= time.monotonic() - start < 2 + 2.5  # --timeout is 2 s here
    assert server.call("sleeper", [False]).json["result"] == "awake"
    time.sleep(0.5)
    survivors = [p for p in psutil.process_iter(["cmdline"])
                 if p.info["cmdline"] and "time.sleep(60)" in " ".join(p.info["cmdline"])]
    assert survivors == []
    assert not [p for p in hung if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert [r["status"] for r in server.request("GET", "/admin/logs/sleeper").json] == ["ok", "timeout", "ok"]


def test_64_concurrent_calls_get_64_distinct_ids_all_logged(server: Server) -> None:
    src = "import time\n\ndef main(i):\n    time.sleep(0.05)\n    return i\n"
    assert server.upload("parallel", src).status == 200

    def one(i: int) -> tuple[int, dict]:
        resp = server.call("parallel", [i])
        return resp.status, resp.json

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    assert all(status == 200 for status, _ in results)
    assert sorted(body["result"] for _, body in results) == list(range(64))
    ids = {body["id"] for _, body in results}
    assert len(ids) == 64
    logged = {r["id"] for r in server.request("GET", "/admin/logs/parallel").json}
    assert ids == logged


def test_calls_to_one_function_run_in_parallel_workers(server: Server) -> None:
    src = "import time, uuid\nTOKEN = uuid.uuid4().hex  # one per worker process (pids repeat across PID namespaces)\n\ndef main():\n    time.sleep(1)\n    return TOKEN\n"
    assert server.upload("wide", src).status == 200
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        pids = list(pool.map(lambda _: server.call("wide").json["result"], range(4)))
    assert len(set(pids)) == 4  # four workers (the default limit), not one after another
    assert time.monotonic() - start < 2.0  # 1 s each: in series 4 s, two at a time 2 s


def test_a_rejected_update_leaves_the_previous_version_serving(server: Server) -> None:
    assert server.upload("stable", "def main():\n    return 'v1'\n").status == 200
    for source, requirements in [("def main(:\n", None), ("def other():\n    return 1\n", None),
                                 ("def main():\n    return 'v2'\n", "no-such-dist-anywhere")]:
        assert server.upload("stable", source, requirements=requirements).status == 422
        assert server.call("stable").json["result"] == "v1"
    resp = server.upload("stable", "def main():\n    return 'v3'\n")
    assert resp.status == 200 and resp.json["created"] is False
    assert server.call("stable").json["result"] == "v3"
    assert len(server.request("GET", "/admin/logs/stable").json) == 4  # logs kept across versions


def test_calls_during_an_update_run_the_old_version_until_the_swap(server: Server) -> None:
    assert server.upload("swapping", "def main():\n    return 'old'\n").status == 200
    seen: list[str] = []
    done = threading.Event()

    def caller() -> None:
        while not done.is_set():
            resp = server.call("swapping")
            assert resp.status == 200
            seen.append(resp.json["result"])

    with ThreadPoolExecutor(1) as pool:
        calls = pool.submit(caller)
        try:
            resp = server.upload("swapping", "import greetlib\n\ndef main():\n    return 'new'\n",
                                 requirements="greetlib")
            assert resp.status == 200
            time.sleep(0.2)
        finally:
            done.set()
        calls.result()  # the caller's failed assertion (or error) fails the test here
    assert seen[0] == "old" and seen[-1] == "new"
    assert seen == sorted(seen, key=lambda v: v == "new")  # never back to old after new


def test_output_goes_to_the_record_not_the_response(server: Server) -> None:
    src = "import sys\n\ndef main():\n    print('to out')\n    print('to err', file=sys.stderr)\n    return 'r'\n"
    assert server.upload("printer", src).status == 200
    resp = server.call("printer")
    assert json.loads(resp.raw) == {"id": resp.json["id"], "result": "r", "duration": resp.json["duration"]}
    record = server.request("GET", "/admin/logs/printer?limit=1").json[0]
    assert record["stdout"] == "to out\n" and record["stderr"] == "to err\n"


def test_replacing_under_load_never_fails_a_call(server: Server) -> None:
    assert server.upload("hot", "def main():\n    return 0\n").status == 200
    statuses: list[int] = []
    done = threading.Event()

    def caller() -> None:
        conn = server.connect()
        while not done.is_set():
            statuses.append(server.request("POST", "/function/hot", b"", conn=conn).status)
        conn.close()

    with ThreadPoolExecutor(4) as pool:
        callers = [pool.submit(caller) for _ in range(4)]
        try:
            for version in range(1, 6):
                assert server.upload("hot", f"def main():\n    return {version}\n").status == 200
        finally:
            done.set()
        for c in callers:
            c.result()  # a caller's error fails the test here
    assert len(statuses) > 50 and set(statuses) == {200}
    assert server.call("hot").json["result"] == 5


def test_a_call_in_flight_keeps_its_venv_when_the_function_is_replaced(server: Server) -> None:
    src = "import time\n\ndef main(wait):\n    time.sleep(wait)\n    import greetlib\n    return greetlib.greet('late')\n"
    assert server.upload("lazyimport", src, requirements="greetlib").status == 200
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(server.call, "lazyimport", [1.0])
        time.sleep(0.3)
        assert server.upload("lazyimport", "def main(wait):\n    return 'v2'\n").status == 200
        resp = in_flight.result()
    assert resp.status == 200 and resp.json["result"] == "hello late"
    assert server.call("lazyimport", [0]).json["result"] == "v2"


def test_workers_run_in_their_versions_folder(server: Server) -> None:
    src = "import os\n\ndef main():\n    return [os.getcwd(), os.path.exists(__file__)]\n"
    assert server.upload("where", src).status == 200
    cwd, exists = server.call("where").json["result"]
    assert exists and os.path.basename(cwd).startswith("v-")
    assert os.path.realpath(server.root / "functions" / "where" / "func.py") == os.path.join(cwd, "func.py")


def test_deleting_during_a_call_finishes_it_and_the_log_stays_gone(server: Server) -> None:
    assert server.upload("brief", "import time\n\ndef main():\n    time.sleep(1)\n    return 'x'\n").status == 200
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(server.call, "brief")
        time.sleep(0.3)
        assert server.request("DELETE", "/admin/functions/brief").status == 200
        resp = in_flight.result()
    assert resp.status in (200, 502)
    assert not (server.root / "data" / "logs" / "brief").exists()
    assert server.upload("brief", "def main():\n    return 'new'\n").status == 200
    assert server.request("GET", "/admin/functions/brief").json["invocations"] == 0


def test_results_up_to_the_limit_come_back_and_larger_ones_are_errors(server: Server) -> None:
    assert server.upload("big", "def main(n):\n    return 'x' * n\n").status == 200
    start = time.monotonic()
    resp = server.call("big", [5 * 1024 * 1024])
    assert resp.status == 200 and len(resp.json["result"]) == 5 * 1024 * 1024
    assert time.monotonic() - start < 1.5  # about 0.1 s; well inside the 2 s timeout of this module's server
    resp = server.call("big", [7 * 1024 * 1024])
    assert resp.status == 500 and "limit" in resp.json["error"]["message"]


def test_what_a_call_printed_before_a_timeout_or_crash_is_in_its_record(server: Server) -> None:
    src = ("import os, time\n\ndef main(how):\n    print('before', how)\n"
           "    if how == 'crash':\n        os._exit(9)\n    time.sleep(60)\n")
    assert server.upload("lastwords", src).status == 200
    assert server.call("lastwords", ["crash"]).status == 502
    assert server.call("lastwords", ["hang"]).status == 504
    records = server.request("GET", "/admin/logs/lastwords").json
    assert [(r["status"], r["stdout"]) for r in records] == [("crashed", "before crash\n"),
                                                             ("timeout", "before hang\n")]


def test_answers_of_every_small_length_pass_the_frame_checks(server: Server) -> None:
    assert server.upload("lengths", "def main(n):\n    return 'x' * n\n").status == 200
    for n in range(0, 300):  # the frame's length bytes take every value, LF and CR included
        assert server.call("lengths", [n]).json["result"] == "x" * n

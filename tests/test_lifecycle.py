"""The server as a process: restarts, SIGKILL under load, graceful SIGTERM, command line and environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

from harness import REPO, Server


def test_a_restart_serves_every_function_again_with_its_logs(fresh_server: Server) -> None:
    server = fresh_server
    assert server.upload("keeper", "def main(x):\n    return x + 1\n").status == 200
    assert server.upload("greeter", "import greetlib\ndef main():\n    return greetlib.greet('x')\n",
                         requirements="greetlib").status == 200
    ids = [server.call("keeper", [i]).json["id"] for i in range(3)]
    server.restart()
    assert server.request("GET", "/admin/functions").json == ["greeter", "keeper"]
    assert [r["id"] for r in server.request("GET", "/admin/logs/keeper").json] == ids
    assert server.call("keeper", [41]).json["result"] == 42
    assert server.call("greeter").json["result"] == "hello x"
    assert len(server.request("GET", "/admin/logs/keeper").json) == 4


def test_sigkill_under_load_loses_no_answered_call(fresh_server: Server) -> None:
    server = fresh_server
    assert server.upload("busy", "def main(i):\n    return i\n").status == 200
    answered: list[str] = []
    stop = threading.Event()

    def client() -> None:
        conn = server.connect(timeout=5)
        i = 0
        while not stop.is_set():
            try:
                resp = server.request("POST", "/function/busy", json.dumps([i]), conn=conn)
            except (OSError, ValueError, Exception):
                return
            if resp.status == 200:
                answered.append(resp.json["id"])
            i += 1

    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client) for _ in range(4)]
        try:
            time.sleep(1.0)
            server.proc.kill()
            server.proc.wait()
        finally:
            stop.set()
        for c in clients:
            c.result()  # a client's error fails the test here
    assert len(answered) > 20
    json.loads((server.root / "data" / "functions.json").read_text())
    server.start()
    logged = {r["id"] for r in server.request("GET", "/admin/logs/busy").json}
    assert set(answered) <= logged
    assert server.call("busy", [1]).json["result"] == 1


def test_sigterm_finishes_calls_in_flight_refuses_new_ones_and_stops_workers(fresh_server: Server) -> None:
    server = fresh_server
    assert server.upload("slow", "import time\ndef main():\n    time.sleep(1.5)\n    return 'done'\n").status == 200
    assert server.upload("quick", "def main():\n    return 1\n").status == 200
    keep_alive = server.connect()
    assert server.request("POST", "/function/quick", b"", conn=keep_alive).status == 200
    workers = psutil.Process(server.proc.pid).children(recursive=True)
    assert workers
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(server.call, "slow")
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        late = server.request("POST", "/function/quick", b"", conn=keep_alive)
        assert late.status == 503 and late.json["error"]["code"] == "shutting_down"
        resp = in_flight.result()
    assert resp.status == 200 and resp.json["result"] == "done"
    assert server.proc.wait(20) == 0
    time.sleep(0.2)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def test_flags_and_environment(tmp_path) -> None:
    env = {**os.environ, "TINYFAAS_PASSWORD": "s3cret", "TINYFAAS_PORT": "0", "TINYFAAS_HOST": "127.0.0.1",
           "TINYFAAS_DATA_DIR": str(tmp_path / "d"), "TINYFAAS_FUNCTIONS_DIR": str(tmp_path / "f")}
    proc = subprocess.Popen([sys.executable, "-m", "tinyfaas_std", "--username", "boss"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(line.rsplit(":", 1)[1].split(" ")[0])
        server = Server(tmp_path, tmp_path)
        server.port = port
        import base64
        good = "Basic " + base64.b64encode(b"boss:s3cret").decode()
        assert server.request("GET", "/admin/functions", auth=good).json == []
        assert server.request("GET", "/admin/functions").status == 401  # admin:1234 no longer works
        assert (tmp_path / "d").is_dir() and (tmp_path / "f").is_dir()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        proc.stdout.close()
        proc.stderr.close()


def test_default_password_on_a_public_address_is_warned_about(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tinyfaas_std", "--host", "0.0.0.0", "--port", "0",
                             "--data-dir", str(tmp_path / "d"), "--functions-dir", str(tmp_path / "f")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "serving on" in proc.stdout.readline()
        warnings = proc.stderr.readline() + proc.stderr.readline()  # also: Basic Auth over plain HTTP
        assert "default password" in warnings and "plain HTTP" in warnings
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
        proc.stdout.close()
        proc.stderr.close()

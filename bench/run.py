"""Benchmark of tinyfaas_std against the two reference servers of ../shared/bench, in one run on one machine.

What it measures (see bench/README.md for the meaning of each row):
- warm calls/s and p50/p99 latency at 1, 8 and 64 connections (wrk + post.lua) for the server, `ceiling_stdlib`
  and `ceiling_raw`, interleaved round by round; each figure is the median of `--rounds` rounds;
- CPU time per call: user+system CPU of the target's own process (psutil, workers excluded) across the
  8-connection run, divided by the requests wrk completed;
- upload times, first-call latency after an upload and after a restart, `/admin/status` and
  `/admin/logs/add?limit=100` latency, resident memory of the server and of its workers;
- the effect of 100,000 logged calls on calls/s and CPU per call, and 64/256-connection soak runs (0 errors).

How: every process runs from its own temporary folder on 127.0.0.1 and a port picked by binding port 0; all of
them are stopped in a `finally`, whatever happens. Only the standard library, psutil and `wrk` are used.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from contextlib import ExitStack
from functools import cached_property
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import psutil

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TINYFAAS_SHARED") or Path(__file__).resolve().parents[2] / "shared")
AUTH = "Basic " + base64.b64encode(b"admin:1234").decode()
ADD_CODE = "def main(a, b):\n    return a + b\n"
POST_LUA = """wrk.method = "POST"
wrk.body   = '{"args": [1, 2]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic YWRtaW46MTIzNA=="
"""
WHEEL = ("benchdep", "1.0", "VALUE = 42\n")          # dist (= module) name, version, module code
REQ_CODE = "import benchdep\n\ndef main():\n    return benchdep.VALUE\n"
EVENT_CODE = "def main(event, context):\n    return event['args'][0] + event['args'][1]\n"
HTTP_CODE = "def main(request):\n    return {'statusCode': 200, 'body': request['params'].get('a', '')}\n"
GET_LUA = """wrk.method = "GET"
wrk.headers["Authorization"] = "Basic YWRtaW46MTIzNA=="
"""
MB = 1024 * 1024
POLL_SECONDS = 3.0  # after the idle wait, how long to watch for the last idle worker to go


@dataclass(frozen=True)
class Plan:
    """How long each part runs. The default run fits in 3 minutes on 2 cores; --quick in about one."""
    load_seconds: int = 2          # one wrk measurement at 8 connections (the calls/s and CPU per call goals)
    short_seconds: int = 1         # one at 1 or 64 connections (thousands of latency samples a second)
    rounds: int = 3
    soak_seconds: int = 30         # each of the 64- and 256-connection runs
    log_records: int = 100_000     # logged calls of `add` before the "after" figures
    functions: int = 100           # trivial functions deployed on the idle-timeout server
    idle_wait: float = 8.0         # seconds before counting the workers again

    @classmethod
    def quick(cls, rounds: int) -> Plan:
        return cls(load_seconds=1, short_seconds=1, rounds=rounds, soak_seconds=5, log_records=20_000,
                   functions=20)


# ---------------------------------------------------------------------------------------------------- results

@dataclass
class Goal:
    text: str
    check: Callable[[Row], bool] = field(repr=False)


@dataclass
class Row:
    """One line of the table. `server`, `stdlib` and `raw` are in `unit`; the ratios are server / reference."""
    figure: str
    unit: str
    server: float | None
    stdlib: float | None = None
    raw: float | None = None
    goal: Goal | None = None
    note: str = ""

    @property
    def vs_stdlib(self) -> float | None:
        return _ratio(self.server, self.stdlib)

    @property
    def vs_raw(self) -> float | None:
        return _ratio(self.server, self.raw)

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return ""
        try:
            return "PASS" if self.goal.check(self) else "FAIL"
        except TypeError:  # a figure the check needs is missing (no references)
            return "n/a"

    def as_json(self) -> dict:
        return {"figure": self.figure, "unit": self.unit, "server": self.server, "ceiling_stdlib": self.stdlib,
                "ceiling_raw": self.raw, "server_vs_stdlib": self.vs_stdlib, "server_vs_raw": self.vs_raw,
                "goal": self.goal.text if self.goal else None, "verdict": self.verdict or None, "note": self.note}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def at_most(limit: float, text: str) -> Goal:
    return Goal(text, lambda row: row.server <= limit)


def at_least(limit: float, text: str) -> Goal:
    return Goal(text, lambda row: row.server >= limit)


@dataclass
class Load:
    """What one wrk run measured on one target."""
    target: str
    connections: int
    seconds: float
    requests: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_us_per_call: float     # the target's own process, user + system
    peak_rss_mb: float         # the target's own process, sampled during the run
    other_cores: float         # CPU used meanwhile by processes that are neither the target, its workers nor wrk

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def median_load(runs: list[Load]) -> Load:
    """The median of each figure over rounds; the error counts are summed, so no round's errors are hidden."""
    medians = {name: statistics.median(getattr(r, name) for r in runs)
               for name in ("requests", "calls_per_s", "p50_ms", "p99_ms", "cpu_us_per_call", "peak_rss_mb",
                            "other_cores")}
    return replace(runs[0], **medians, non_2xx=sum(r.non_2xx for r in runs),
                   socket_errors=sum(r.socket_errors for r in runs))


# ---------------------------------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Target:
    """A running HTTP server we measure: the project's server or a reference."""
    name: str
    proc: subprocess.Popen
    port: int = 0

    @cached_property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU of this process only; its children (workers) are not included."""
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / MB

    def workers(self) -> list[psutil.Process]:
        return self.ps.children(recursive=True)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL past `grace`; any child that outlives the server is stopped too."""
        if self.proc.poll() is not None:
            return
        try:
            children = self.workers()
        except psutil.Error:
            children = []
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        for child in children:
            try:
                child.kill()
            except psutil.Error:
                pass


def wait_until_answers(target: Target, timeout: float = 20.0) -> None:
    """Poll until the target answers any HTTP request (a status code of any kind proves it is serving). The probe
    is a GET that no target runs a function for, so a "first call" measured next really is the first."""
    deadline = time.monotonic() + timeout
    while True:
        if target.proc.poll() is not None:
            raise RuntimeError(f"{target.name} exited with code {target.proc.returncode}")
        try:
            request(target.port, "GET", "/admin/functions", timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.name} did not answer on port {target.port} within {timeout}s")
            time.sleep(0.05)


def start_reference(script: Path, folder: Path) -> Target:
    port = free_port()
    with open(folder / "stderr.log", "ab") as stderr:
        proc = subprocess.Popen([sys.executable, str(script), str(port)], cwd=folder, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    target = Target(script.stem, proc, port)
    try:
        wait_until_answers(target)
    except BaseException:
        target.stop()
        raise
    return target


@dataclass
class ServerFolder:
    """The project's server on its own folders; `start` may be called again after `stop` (a restart)."""
    root: Path
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    python: str = sys.executable
    target: Target | None = None

    def start(self) -> Target:
        """Start the server (again) on the same folders; it becomes `self.target`."""
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [self.python, "-m", "tinyfaas_std", "--host", "127.0.0.1", "--port", "0",
               "--functions-dir", str(self.root / "f"), "--data-dir", str(self.root / "d"),
               "--log-retention", "0", *self.args]
        with open(self.root / "server.log", "ab") as stderr:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=stderr, text=True)
        self.target = Target("tinyfaas_std", proc)
        self.target.port = _read_port(proc, timeout=20)
        wait_until_answers(self.target)
        return self.target

    def stop(self) -> None:
        if self.target is not None:
            self.target.stop()


def _read_port(proc: subprocess.Popen, timeout: float) -> int:
    """The port from the first stdout line, `tinyfaas_std serving on http://127.0.0.1:PORT (...)`; a thread then
    keeps draining stdout so the server can never block on a full pipe."""
    box: list[str] = []
    first = threading.Event()

    def read() -> None:
        box.append(proc.stdout.readline())
        first.set()
        for _ in proc.stdout:
            pass

    threading.Thread(target=read, daemon=True).start()
    first.wait(timeout)
    match = re.search(r"serving on http://[\d.]+:(\d+)", box[0] if box else "")
    if not match:
        raise RuntimeError(f"the server did not print its address within {timeout}s: {box!r}")
    return int(match.group(1))


# ---------------------------------------------------------------------------------------------------- HTTP

class Client:
    """One keep-alive HTTP/1.1 connection with Basic Auth; `timed` answers (seconds, status, body)."""

    def __init__(self, port: int, timeout: float = 120) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.conn.close()

    def timed(self, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[float, int, bytes]:
        start = time.perf_counter()
        self.conn.request(method, path, body, {"Authorization": AUTH, **(headers or {})})
        response = self.conn.getresponse()
        data = response.read()
        return time.perf_counter() - start, response.status, data


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 120) -> tuple[float, int, bytes]:
    """One request on a fresh connection (so its wall clock includes the connect)."""
    with Client(port, timeout) as client:
        return client.timed(method, path, body, headers)


def get_json(port: int, path: str) -> dict:
    _, status, body = request(port, "GET", path)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
    return json.loads(body)


def multipart(parts: dict[str, tuple[str | None, bytes]]) -> tuple[bytes, str]:
    """multipart/form-data: `parts` maps a field name to (filename or None, content)."""
    boundary = "bench-" + uuid.uuid4().hex
    chunks = []
    for name, (filename, data) in parts.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
        if filename is not None:
            head += f'; filename="{filename}"\r\nContent-Type: application/octet-stream'
        chunks.append(head.encode() + b"\r\n\r\n" + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def upload(port: int, name: str, code: str, requirements: str | None = None,
           fields: dict[str, str] | None = None) -> float:
    """POST /admin/upload; answers the client-side wall clock of the request in seconds."""
    parts = {"name": (None, name.encode()), "file": ("func.py", code.encode())}
    parts.update({key: (None, value.encode()) for key, value in (fields or {}).items()})
    if requirements is not None:
        parts["requirements"] = ("requirements.txt", requirements.encode())
    body, content_type = multipart(parts)
    seconds, status, answer = request(port, "POST", "/admin/upload", body, {"Content-Type": content_type})
    if status != 200:
        raise RuntimeError(f"upload of {name} answered {status}: {answer[:500]!r}")
    return seconds


def call(port: int, name: str, args: list) -> tuple[float, object]:
    seconds, status, answer = request(port, "POST", f"/function/{name}", json.dumps(args).encode(),
                                      {"Content-Type": "application/json"})
    if status != 200:
        raise RuntimeError(f"call of {name} answered {status}: {answer[:500]!r}")
    return seconds, json.loads(answer)["result"]


def repeat_get(port: int, path: str, times: int) -> list[float]:
    """Sequential GETs on one keep-alive connection; the seconds of each."""
    samples = []
    with Client(port) as client:
        for _ in range(times):
            seconds, status, body = client.timed("GET", path)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
            samples.append(seconds)
    return samples


def build_wheel(folder: Path, dist: str, version: str, code: str) -> Path:
    """A minimal pure-Python wheel (PEP 427) holding one module named like the distribution."""
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}.py": code.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tinyfaas-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


# ---------------------------------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(text: str) -> dict:
    def number(pattern: str, default: str | None = None) -> str:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None and default is None:
            raise ValueError(f"wrk output without {pattern!r}:\n{text}")
        return match.group(1) if match else default

    def percentile(p: str) -> float:
        match = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output without the {p}% latency:\n{text}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {"requests": int(number(r"(\d+) requests in")),
            "calls_per_s": float(number(r"Requests/sec:\s+([\d.]+)")),
            "p50_ms": percentile("50"), "p99_ms": percentile("99"),
            "non_2xx": int(number(r"Non-2xx or 3xx responses:\s+(\d+)", "0")),
            "socket_errors": sum(map(int, sockets.groups())) if sockets else 0}


class RssSampler(threading.Thread):
    """The peak resident memory of one process, sampled every 0.1 s until `stop`."""

    def __init__(self, target: Target) -> None:
        super().__init__(daemon=True)
        self.target, self.peak_mb, self._done = target, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.peak_mb = max(self.peak_mb, self.target.rss_mb())
            except psutil.Error:
                return
            self._done.wait(0.1)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak_mb


class CpuMeter:
    """CPU seconds since creation: of the target's own process, and of everything else on the machine that is
    neither the target, its workers, nor this script and its children (wrk): the noise of a shared machine."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.start = self._read()

    def _read(self) -> tuple[float, float, float, dict[int, float]]:
        machine = psutil.cpu_times()
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        workers = {}
        for worker in self.target.workers():
            try:
                t = worker.cpu_times()
                workers[worker.pid] = t.user + t.system
            except psutil.Error:
                pass
        return (machine.user + machine.nice + machine.system + machine.steal, self.target.cpu_seconds(),
                me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, workers)

    def read(self) -> tuple[float, float]:
        """(target's CPU seconds, other processes' CPU seconds) since creation."""
        (busy0, target0, ours0, workers0), (busy1, target1, ours1, workers1) = self.start, self._read()
        workers = sum(workers1[pid] - workers0[pid] for pid in workers0.keys() & workers1.keys())
        target = target1 - target0
        return target, max(0.0, (busy1 - busy0) - target - workers - (ours1 - ours0))


def run_wrk(target: Target, connections: int, seconds: int, lua: Path, path: str = "/function/add") -> Load:
    """One wrk run against any target, with the target's own CPU time and peak RSS across it."""
    cmd = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua),
           f"http://127.0.0.1:{target.port}{path}"]
    sampler, meter, began = RssSampler(target), CpuMeter(target), time.monotonic()
    sampler.start()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        peak = sampler.stop()
    cpu, other = meter.read()
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    figures = parse_wrk(done.stdout)
    return Load(target.name, connections, seconds, **figures, cpu_us_per_call=cpu / max(figures["requests"], 1) * 1e6,
                peak_rss_mb=peak, other_cores=other / (time.monotonic() - began))


# ---------------------------------------------------------------------------------------------------- the parts

def log(message: str) -> None:
    print(f"[bench {time.monotonic() - START:6.1f}s] {message}", file=sys.stderr, flush=True)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def load_rounds(targets: list[Target], plan: Plan, lua: Path) -> dict[tuple[str, int], Load]:
    """Each round runs every connection count on every target in turn, so drift hits all of them alike."""
    runs: dict[tuple[str, int], list[Load]] = {}
    for round_ in range(plan.rounds):
        log(f"load round {round_ + 1}/{plan.rounds}")
        for connections in (1, 8, 64):
            seconds = plan.load_seconds if connections == 8 else plan.short_seconds
            for target in targets:
                runs.setdefault((target.name, connections), []).append(run_wrk(target, connections, seconds, lua))
    return {key: median_load(loads) for key, loads in runs.items()}


def load_rows(loads: dict[tuple[str, int], Load], server: str) -> list[Row]:
    def row(figure: str, unit: str, connections: int, attr: str, goal: Goal | None = None) -> Row:
        def value(name: str) -> float | None:
            load = loads.get((name, connections))
            return getattr(load, attr) if load else None
        return Row(figure, unit, value(server), value("ceiling_stdlib"), value("ceiling_raw"), goal)

    calls_goal = Goal(">= 1.2x stdlib, >= 0.45x raw", lambda r: r.vs_stdlib >= 1.2 and r.vs_raw >= 0.45)
    p50_goal = Goal("<= 1.2x stdlib", lambda r: r.vs_stdlib <= 1.2)
    rows = []
    for connections in (1, 8, 64):
        rows.append(row(f"warm calls/s, {connections} conn", "calls/s", connections, "calls_per_s",
                        calls_goal if connections == 8 else None))
        rows.append(row(f"p50 latency, {connections} conn", "ms", connections, "p50_ms",
                        p50_goal if connections == 1 else None))
        rows.append(row(f"p99 latency, {connections} conn", "ms", connections, "p99_ms"))
    rows.append(row("CPU per call, 8 conn", "us", 8, "cpu_us_per_call", at_most(100, "<= 100 us")))
    noise = row("other processes' CPU, 8 conn", "cores", 8, "other_cores")
    noise.note = "the machine's noise: CPU of everything but the target, its workers and wrk"
    rows.append(noise)

    def errors(name: str) -> int | None:
        return sum(load.errors for (n, _), load in loads.items() if n == name) if (name, 8) in loads else None

    detail = ", ".join(f"{load.non_2xx}/{load.socket_errors}" for (n, _), load in sorted(loads.items())
                       if n == server)
    rows.append(Row("errors, all load runs", "count", errors(server), errors("ceiling_stdlib"),
                    errors("ceiling_raw"), at_most(0, "0"), f"server non-2xx/socket at 1, 8, 64 conn: {detail}"))
    return rows


def convention_rows(target: Target, plan: Plan, lua: Path, tmp: Path) -> list[Row]:
    """Warm calls/s at 8 connections of an `event` function (the same body as `add`'s) and of an `http` function
    answering a GET with a query, in alternating runs with `add` so the machine's drift hits all three alike."""
    get_lua = tmp / "get.lua"
    get_lua.write_text(GET_LUA)
    upload(target.port, "ev", EVENT_CODE, fields={"calling": "event"})
    upload(target.port, "web", HTTP_CODE, fields={"calling": "http"})
    runs: dict[str, list[Load]] = {"add": [], "ev": [], "web": []}
    for _ in range(plan.rounds):
        runs["add"].append(run_wrk(target, 8, plan.load_seconds, lua))
        runs["ev"].append(run_wrk(target, 8, plan.load_seconds, lua, "/function/ev"))
        runs["web"].append(run_wrk(target, 8, plan.load_seconds, get_lua, "/function/web/page?a=1"))
    add, ev, web = (median_load(runs[name]) for name in ("add", "ev", "web"))
    return [
        Row("event function: warm calls/s, 8 conn", "calls/s", ev.calls_per_s,
            note=f"args function in the same rounds: {add.calls_per_s:.0f}; {ev.errors} errors; "
                 f"CPU per call {ev.cpu_us_per_call:.0f} us"),
        Row("http function (GET): warm calls/s, 8 conn", "calls/s", web.calls_per_s,
            note=f"{web.errors} errors; CPU per call {web.cpu_us_per_call:.0f} us"),
    ]


def users_rows(target: Target, plan: Plan, lua: Path, tmp: Path, count: int = 50) -> list[Row]:
    """Warm calls at 8 connections as the admin and as an invoker among `count` users (each password checked
    once with PBKDF2, then cached), in rounds of one run each, each first in turn: the cost of users on the hot
    path, as the median of the rounds' ratios."""
    with Client(target.port) as client:
        for i in range(count):
            doc = {"name": f"user{i}", "password": f"password-{i:04d}", "role": "invoker" if i else "viewer"}
            if i:
                doc["functions"] = ["add", "report-*"]
            _, status, body = client.timed("POST", "/admin/users", json.dumps(doc).encode())
            if status != 201:
                raise RuntimeError(f"adding a user answered {status}: {body[:200]!r}")
    token = base64.b64encode(f"user{count - 1}:password-{count - 1:04d}".encode()).decode()
    invoker_lua = tmp / "invoker.lua"
    invoker_lua.write_text(lua.read_text().replace("YWRtaW46MTIzNA==", token))
    run_wrk(target, 8, 1, invoker_lua)  # warm: the first requests check the password (0.2 s each), then cached
    admin: list[Load] = []
    invoker: list[Load] = []
    pairs = [(admin, lua), (invoker, invoker_lua)]
    for i in range(max(plan.rounds, 7)):  # alternating which goes first: a drift must not favour one
        for runs, script in (pairs if i % 2 == 0 else pairs[::-1]):
            runs.append(run_wrk(target, 8, plan.load_seconds, script))
    a, b = median_load(admin), median_load(invoker)
    # each round's two runs are seconds apart and share the machine's mood: the median of their ratios
    ratio = statistics.median(inv.calls_per_s / adm.calls_per_s for adm, inv in zip(admin, invoker))
    return [Row(f"warm calls/s, 8 conn, invoker among {count} users / admin", "ratio",
                ratio, goal=at_least(0.9, ">= 0.9"),
                note=f"{b.calls_per_s:.0f} vs {a.calls_per_s:.0f} calls/s; CPU per call {b.cpu_us_per_call:.0f} "
                     f"vs {a.cpu_us_per_call:.0f} us; {b.errors} errors")]


def async_rows(port: int, calls: int = 2000, timed: int = 50) -> list[Row]:
    """Async calls accepted per second (one keep-alive connection, each on disk before its 202) and the time
    from a 202 to the call's record being readable at /admin/calls/<id>, polled every millisecond."""
    upload(port, "aq", "def main(i):\n    return i\n")
    with Client(port) as client:
        began = time.perf_counter()
        ids = []
        for i in range(calls):
            _, status, body = client.timed("POST", "/async-function/aq", b"[%d]" % i)
            if status != 202:
                raise RuntimeError(f"async call answered {status}: {body[:200]!r}")
            ids.append(json.loads(body)["id"])
        accepted = calls / (time.perf_counter() - began)
        for call_id in ids:  # all of them done: none lost
            while b'"status":"ok"' not in client.timed("GET", f"/admin/calls/{call_id}")[2]:
                time.sleep(0.01)
        latencies = []
        for i in range(timed):
            _, _, body = client.timed("POST", "/async-function/aq", b"[%d]" % i)
            began, call_id = time.perf_counter(), json.loads(body)["id"]
            while b'"trigger"' not in client.timed("GET", f"/admin/calls/{call_id}")[2]:
                time.sleep(0.001)
            latencies.append(time.perf_counter() - began)
    return [Row("async calls accepted/s, 1 connection", "calls/s", accepted,
                note=f"{calls} calls, each written to disk before its 202; all ran"),
            Row(f"async call, 202 to done (median of {timed})", "ms", median_ms(latencies),
                note=f"max {max(latencies) * 1e3:.1f} ms; polled each ms")]


def upload_rows(port: int) -> list[Row]:
    """Uploads timed client-side, and the first call right after each plain upload."""
    plain, first_calls = [], []
    for i in range(5):
        plain.append(upload(port, f"up{i}", ADD_CODE))
        first_calls.append(call(port, f"up{i}", [i, 1])[0])
    dist, version, _ = WHEEL
    new_req = upload(port, "req0", REQ_CODE, f"{dist}\n")
    same_req = [upload(port, f"req{i}", REQ_CODE, f"{dist}\n") for i in (1, 2, 3)]
    _, value = call(port, "req3", [])
    if value != 42:
        raise RuntimeError(f"the function with a requirement answered {value!r}, not 42")
    return [
        Row("upload, no requirements (median of 5)", "s", statistics.median(plain), goal=at_most(0.1, "<= 0.1 s"),
            note=f"max {max(plain):.3f} s"),
        Row("upload, same requirements as another (med. of 3)", "s", statistics.median(same_req),
            goal=at_most(0.2, "<= 0.2 s")),
        Row("upload, new requirement (pip, local wheel)", "s", new_req, note=f"{dist}=={version}, 1 upload"),
        Row("first call after upload (median of 5)", "ms", median_ms(first_calls), goal=at_most(20, "<= 20 ms"),
            note=f"max {max(first_calls) * 1e3:.1f} ms"),
    ]


def status_rows(port: int) -> list[Row]:
    samples = repeat_get(port, "/admin/status", 200)
    return [Row("GET /admin/status, median of 200", "ms", median_ms(samples), goal=at_most(2, "<= 2 ms")),
            Row("GET /admin/status, max of 200", "ms", max(samples) * 1e3, note="one keep-alive connection")]


def worker_rss(target: Target) -> tuple[int, float]:
    """How many workers the server has (each is its direct child, the worker's launcher, with the worker's
    processes below it), and the memory of all of them in MB, as PSS (RSS would count the pages that the
    launcher, its init and the worker share, such as the interpreter's, once per process)."""
    total, count = 0, 0
    for launcher in target.ps.children():
        try:
            tree = [launcher, *launcher.children(recursive=True)]
            count += 1
        except psutil.Error:
            continue
        for proc in tree:
            try:
                total += proc.memory_full_info().pss
            except (psutil.Error, AttributeError):
                pass
    return count, total / MB


def invocations(port: int) -> int:
    return get_json(port, "/admin/functions/add")["invocations"]


def soak_rows(target: Target, plan: Plan, lua: Path) -> list[Row]:
    """64 and 256 connections for `soak_seconds` each; the server's own error count shows what the non-2xx were."""
    rows = []
    for connections in (64, 256):
        errors_before = get_json(target.port, "/admin/functions/add")["errors"]
        load = run_wrk(target, connections, plan.soak_seconds, lua)
        logged = get_json(target.port, "/admin/functions/add")["errors"] - errors_before
        rows.append(Row(f"soak {connections} conn, {plan.soak_seconds} s: errors", "count", load.errors,
                        goal=at_most(0, "0"),
                        note=f"{load.non_2xx} non-2xx, {load.socket_errors} socket, {logged} error records logged; "
                             f"{load.calls_per_s:.0f} calls/s, p99 {load.p99_ms:.0f} ms"))
    return rows


def fill_log(target: Target, plan: Plan, lua: Path) -> int:
    """Calls `add` at 8 connections until its log holds `plan.log_records` records; at most 5 bounded runs."""
    for _ in range(5):
        have = invocations(target.port)
        if have >= plan.log_records:
            return have
        rate = run_wrk(target, 8, 1, lua).calls_per_s
        seconds = min(120, int((plan.log_records - invocations(target.port)) / max(rate, 100) * 1.15) + 1)
        log(f"filling the log: {have} records, {seconds} s more at ~{rate:.0f} calls/s")
        run_wrk(target, 8, seconds, lua)
    have = invocations(target.port)
    if have < plan.log_records:
        raise RuntimeError(f"the log of add holds {have} records after 5 runs, not {plan.log_records}")
    return have


def growth_rows(target: Target, fresh_folder: ServerFolder, plan: Plan, lua: Path, records: int) -> list[Row]:
    """The server whose log holds `records` calls against a fresh one with an empty log, in alternating wrk runs
    (A/B, so the machine's drift over the run cancels out), then the log endpoint on the full log."""
    fresh = fresh_folder.start()
    try:
        upload(fresh.port, "add", ADD_CODE)
        run_wrk(fresh, 8, 1, lua)  # warm its workers as the other's are
        grown_runs, fresh_runs = [], []
        for _ in range(plan.rounds):
            grown_runs.append(run_wrk(target, 8, plan.load_seconds, lua))
            fresh_runs.append(run_wrk(fresh, 8, plan.load_seconds, lua))
    finally:
        fresh_folder.stop()
    after, start = median_load(grown_runs), median_load(fresh_runs)
    logs = repeat_get(target.port, "/admin/logs/add?limit=100", 20)
    n = f"{records // 1000}k"
    return [
        Row(f"CPU per call, 8 conn, {n} records / empty log", "us", after.cpu_us_per_call,
            note=f"empty log, same rounds: {start.cpu_us_per_call:.1f} us; other processes' CPU "
                 f"{after.other_cores:.2f} / {start.other_cores:.2f} cores"),
        Row(f"CPU per call: empty log / {n} records", "ratio", _ratio(start.cpu_us_per_call, after.cpu_us_per_call),
            goal=at_least(0.9, ">= 0.9")),
        Row(f"calls/s, 8 conn: {n} records / empty log", "ratio", _ratio(after.calls_per_s, start.calls_per_s),
            note=f"{after.calls_per_s:.0f} vs {start.calls_per_s:.0f} calls/s; {after.errors} errors"),
        Row(f"GET /admin/logs/add?limit=100, {n} records", "ms", median_ms(logs),
            goal=at_most(10, "<= 10 ms"), note=f"median of 20; max {max(logs) * 1e3:.1f} ms"),
        Row(f"server RSS after {n} calls", "MB", target.rss_mb(), goal=at_most(40, "<= 40 MB")),
    ]


def restart_rows(main: ServerFolder, times: int = 3) -> list[Row]:
    """SIGTERM, start again on the same folders, time the first call to `add`; the median of `times`."""
    first_calls, startups = [], []
    for _ in range(times):
        main.stop()
        began = time.perf_counter()
        target = main.start()
        startups.append(time.perf_counter() - began)
        first_calls.append(call(target.port, "add", [1, 2])[0])
    return [Row(f"first call after restart (median of {times})", "ms", median_ms(first_calls),
                goal=at_most(150, "<= 150 ms"),
                note=f"max {max(first_calls) * 1e3:.0f} ms; start to serving {median_ms(startups):.0f} ms")]


def many_functions_rows(folder: ServerFolder, plan: Plan) -> list[Row]:
    """Deploy `plan.functions` trivial functions on a server with --idle-timeout 5, call each once, and count
    their workers right after and again after `plan.idle_wait` seconds."""
    target = folder.start()
    uploads, first_calls = [], []
    for i in range(plan.functions):
        uploads.append(upload(target.port, f"f{i:03d}", ADD_CODE))
    for i in range(len(uploads)):
        first_calls.append(call(target.port, f"f{i:03d}", [1, 2])[0])
    count, total = worker_rss(target)
    server_rss = target.rss_mb()
    log(f"{len(uploads)} functions deployed and called; waiting {plan.idle_wait:g} s for idle workers to stop")
    idle_since = time.monotonic()
    time.sleep(plan.idle_wait)
    later_count, later_total = worker_rss(target)
    gone_after = seconds_until_no_workers(target, idle_since, plan.idle_wait + POLL_SECONDS)
    target.stop()
    n = len(uploads)
    gone = (f"none after {gone_after:.1f} s" if gone_after else
            f"some still alive after {plan.idle_wait + POLL_SECONDS:g} s")
    return [
        Row(f"{n} functions: upload time, last 10 (median)", "s", statistics.median(uploads[-10:]),
            note=f"first 10: {statistics.median(uploads[:10]):.3f} s; whole deploy {sum(uploads):.1f} s"),
        Row(f"{n} functions: one call each (median)", "ms", median_ms(first_calls),
            note=f"max {max(first_calls) * 1e3:.0f} ms; a worker idle past 5 s during the deploy restarts"),
        Row(f"{n} functions: server RSS", "MB", server_rss),
        Row(f"{n} functions: workers' total PSS", "MB", total, note=f"{count} workers alive"),
        Row(f"{n} functions, {plan.idle_wait:g} s later: workers' PSS", "MB", later_total,
            note=f"{later_count} workers alive (--idle-timeout 5); {gone}"),
    ]


def seconds_until_no_workers(target: Target, since: float, limit: float) -> float | None:
    """Seconds from `since` until the server has no worker left, polled up to `limit`; None if some remain."""
    while worker_rss(target)[0]:
        if time.monotonic() - since > limit:
            return None
        time.sleep(0.25)
    return time.monotonic() - since


# ---------------------------------------------------------------------------------------------------- the run

def raise_fd_limit(wanted: int = 8192) -> None:
    """wrk with 256 connections, and the server accepting them, need more than 1024 descriptors; children inherit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def server_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def pip_env(wheels: Path) -> dict[str, str]:
    """The servers' environment: pip installs only from the folder of wheels this benchmark builds."""
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_CONFIG_FILE": os.devnull,
           "PYTHONUNBUFFERED": "1"}
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        env.pop(name, None)
    return env


def main_server_rows(main: ServerFolder, references: list[Path], plan: Plan, lua: Path,
                     stack: ExitStack) -> list[Row]:
    """Everything measured on the server that holds `add`, in an order where no part disturbs a later one."""
    server = main.start()
    upload(server.port, "add", ADD_CODE)
    idle_rss = server.rss_mb()
    targets = [server]
    for script in references:
        folder = main.root.parent / script.stem
        folder.mkdir()
        targets.append(start_reference(script, folder))
        stack.callback(targets[-1].stop)
    log("serving: " + ", ".join(f"{t.name} on {t.port}" for t in targets))

    loads = load_rounds(targets, plan, lua)
    for ref in targets[1:]:
        ref.stop()
    count, total = worker_rss(server)
    rows = load_rows(loads, server.name) + convention_rows(server, plan, lua, main.root.parent) + [
        Row("server RSS idle (after upload, before load)", "MB", idle_rss, goal=at_most(30, "<= 30 MB")),
        Row("server RSS under load (peak, 64 conn)", "MB", loads[(server.name, 64)].peak_rss_mb),
        Row("memory per warm worker (mean PSS)", "MB", total / count if count else None,
            goal=at_most(16, "<= 16 MB"),
            note=f"{count} workers of add after the load; each is its launcher, init and interpreter"),
    ]
    rows += status_rows(server.port)
    log("uploads")
    rows += upload_rows(server.port)
    log("users")
    rows += users_rows(server, plan, lua, main.root.parent)
    log("async calls")
    rows += async_rows(server.port)
    log("soak runs")
    rows += soak_rows(server, plan, lua)
    records = fill_log(server, plan, lua)
    log(f"{records} records in the log of add: measuring again")
    fresh = ServerFolder(main.root.parent / "fresh", main.env, python=main.python)
    rows += growth_rows(server, fresh, plan, lua, records)
    log("restarts")
    rows += restart_rows(main)
    main.stop()
    return rows


def run(plan: Plan, tmp: Path) -> list[Row]:
    bench = SHARED / "bench"
    references = [bench / "ceiling_stdlib.py", bench / "ceiling_raw.py"]
    if not all(path.exists() for path in references):
        log(f"{bench} not found (set TINYFAAS_SHARED): absolute figures only, no ratios")
        references = []
    lua = bench / "post.lua"
    if not lua.exists():
        lua = tmp / "post.lua"
        lua.write_text(POST_LUA)
    build_wheel(tmp / "wheels", *WHEEL)
    env = pip_env(tmp / "wheels")
    main = ServerFolder(tmp / "main", env, python=server_python())
    many = ServerFolder(tmp / "many", env, ["--idle-timeout", "5"], python=server_python())
    with ExitStack() as stack:
        stack.callback(main.stop)
        stack.callback(many.stop)
        rows = main_server_rows(main, references, plan, lua, stack)
        log(f"{plan.functions} functions")
        rows += many_functions_rows(many, plan)
    return rows


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit in ("ratio", "cores"):
        return f"{value:.2f}"
    if unit in ("count", "calls/s"):
        return f"{value:,.0f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def print_table(rows: list[Row]) -> None:
    head = ["figure", "unit", "tinyfaas_std", "ceiling_stdlib", "ceiling_raw", "/stdlib", "/raw", "goal", "", "note"]
    body = [[r.figure, r.unit, fmt(r.server, r.unit), fmt(r.stdlib, r.unit), fmt(r.raw, r.unit),
             fmt(r.vs_stdlib, "x"), fmt(r.vs_raw, "x"), r.goal.text if r.goal else "", r.verdict, r.note]
            for r in rows]
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]
    right = {2, 3, 4, 5, 6}
    for line in [head, ["-" * w for w in widths]] + body:
        print("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="load measurements repeated; the median is reported")
    parser.add_argument("--quick", action="store_true", help="short runs (1 s loads, 5 s soaks, 20k records)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    plan = Plan.quick(args.rounds) if args.quick else Plan(rounds=args.rounds)
    raise_fd_limit()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind the `finally`s: every process is stopped
    with tempfile.TemporaryDirectory(prefix="tinyfaas-bench-") as tmp:
        rows = run(plan, Path(tmp))
    elapsed = time.monotonic() - START
    print_table(rows)
    failed = [r.figure for r in rows if r.verdict == "FAIL"]
    print(f"\n{sum(r.verdict == 'PASS' for r in rows)} goals met, {len(failed)} missed; "
          f"{plan.rounds} round(s) of {plan.load_seconds} s (8 conn) / {plan.short_seconds} s per load figure; "
          f"elapsed {elapsed:.0f} s")
    if args.json:
        doc = {"plan": asdict(plan), "elapsed_seconds": round(elapsed, 1), "cpu_count": os.cpu_count(),
               "references": str(SHARED / "bench"), "rows": [r.as_json() for r in rows]}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


START = time.monotonic()

if __name__ == "__main__":
    sys.exit(main())

"""How a worker is started: its environment, uid, namespaces, filesystem view and limits; nothing about calls.

Strategy: the one place that builds a worker's environment and starts its process. At start the server probes,
once, which containment the machine allows, strongest first, and uses that for every worker:
- `namespace-root`: the server is root. Each function runs under a uid and gid of its own from `--uid-range`,
  in its own PID and mount namespaces, seeing only the system folders, its interpreter, venv, code and scratch.
- `namespace-user`: not root, but user namespaces are allowed. The same namespaces and view, under the server's
  own uid (a user namespace maps only that one), so no per-function uid and no process bound.
- `subreaper`: no namespaces. The launcher adopts every orphan of the worker's tree and kills it when the worker
  ends; the function shares the server's uid and view of the files.
`_launcher.py` does the work inside the new process (see there); this module decides what it is told, on
the launcher's stdin (never in its arguments, which any process may read), and none of the server's environment
reaches the launcher either. The server keeps the write end of a "lifeline" pipe that every launcher watches: when
the server ends, even by SIGKILL, the pipe closes and every worker's tree is killed.

In `subreaper` mode functions share the server's uid and see its processes: the server makes itself not dumpable,
so its /proc files (its environment: TINYFAAS_PASSWORD) and its memory are closed to them, and ptrace is refused.
Nothing but another uid stops their signals. serve-one, whose only children are launchers, also adopts what a dead
launcher leaves behind (`adopt_orphans`, `end_orphans`): a function that kills its own launcher could otherwise
leave a daemon running.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


__all__ = ["Sandbox", "SandboxUnavailable", "Isolation", "WorkerSpec", "LAUNCHER", "WORKER_SCRIPT",
           "report_isolation", "adopt_orphans", "end_orphans"]

log = logging.getLogger("tinyfaas_std")

PACKAGE = Path(__file__).resolve().parent
LAUNCHER = PACKAGE / "_launcher.py"
WORKER_SCRIPT = PACKAGE / "_worker.py"
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
_MODES = ("namespace-root", "namespace-user", "subreaper")
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
_libc = ctypes.CDLL(None, use_errno=True)


class SandboxUnavailable(Exception):
    """The isolation mode asked for (--isolation) cannot be set up on this machine."""


@dataclass(frozen=True, slots=True)
class Isolation:
    """What is in force, as `/admin/status` reports it (SPEC 9)."""
    mode: str
    per_function_user: bool
    process_tree: str        # "pid-namespace" | "subreaper"
    max_processes: int       # 0: not enforced (the server is not root, processes share its uid)

    def public(self) -> dict[str, Any]:
        return {"per_function_user": self.per_function_user, "process_tree": self.process_tree,
                "max_processes": self.max_processes, "mode": self.mode}


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One worker to start: whose it is and where its files are."""
    function: str
    version: str
    uid: int
    python: Path       # the venv's interpreter
    venv: Path
    code: Path         # the version folder holding func.py
    scratch: Path      # HOME and TMPDIR: the only folder the function may write
    calling: str = "args"  # its calling convention (SPEC 10)
    args: tuple[str, ...] = ()  # arguments of _worker.py (workers.start_worker fills them in)
    env: Mapping[str, str] = ()  # type: ignore[assignment]  # the function's own env and secrets (SPEC 10)
    memory_mb: int = 0  # the function's own memory limit; 0: the server's --memory-mb


class Sandbox:
    def __init__(self, *, root_dir: Path, hidden: list[Path], memory_mb: int, max_processes: int,
                 max_file_mb: int, mode: str | None = None) -> None:
        """`root_dir`: an empty folder of the server's to mount worker roots on; `hidden`: folders no worker may
        see even when they lie inside a folder it is shown (data/, functions/)."""
        self._root_dir = root_dir
        root_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(root_dir, 0o700)
        self._hidden = [str(p.resolve()) for p in hidden]
        self._memory = memory_mb * 1024 * 1024
        self._max_file = max_file_mb * 1024 * 1024
        self._max_processes = max_processes
        self._system = sorted({str(Path(sys.base_prefix).resolve()), str(PACKAGE)})
        life_r, self._lifeline = os.pipe()  # the write end stays here, never written, closed when we end
        os.set_inheritable(self._lifeline, False)
        self._life_r = life_r
        self._lock = threading.Lock()
        if mode is not None and not self._works(mode):
            raise SandboxUnavailable(f"the isolation mode {mode!r} does not work here")
        self.isolation = self._isolation(mode or self._probe())
        if self.isolation.mode == "subreaper":
            _prctl(PR_SET_DUMPABLE, 0)  # its environment and memory closed to functions of its own uid (see above)

    def _isolation(self, mode: str) -> Isolation:
        root = mode == "namespace-root"
        return Isolation(mode, root, "subreaper" if mode == "subreaper" else "pid-namespace",
                         self._max_processes if root else 0)

    def _probe(self) -> str:
        """The strongest mode that works here."""
        candidates = _MODES if os.geteuid() == 0 else _MODES[1:]
        return next((mode for mode in candidates if self._works(mode)), "subreaper")

    def _works(self, mode: str) -> bool:
        """Whether `python -c pass` starts in this mode. A root server never uses `namespace-user`: the
        worker would be root inside a user namespace that maps root, with root's power over root's files."""
        if (mode == "namespace-root") != (os.geteuid() == 0) and mode != "subreaper":
            return False
        python = os.path.realpath(sys.executable)  # inside sys.base_prefix, which every worker is shown
        scratch = self._root_dir / "probe"
        scratch.mkdir(exist_ok=True)
        spec = self._launch_spec(mode, [python, "-I", "-S", "-c", "pass"], {}, None, -1, [(str(scratch), "rw")],
                                 str(PACKAGE))
        try:
            done = subprocess.run([sys.executable, "-I", "-S", str(LAUNCHER)], input=json.dumps(spec).encode(),
                                  pass_fds=(self._life_r,), capture_output=True, timeout=30, env={})
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def start(self, spec: WorkerSpec, channel: int) -> subprocess.Popen[bytes]:
        """Start the launcher of one worker; `channel` is the worker's end of its socket pair."""
        scratch = str(spec.scratch)
        env = {"PATH": f"{spec.venv / 'bin'}:{BASE_PATH}", "HOME": scratch, "TMPDIR": scratch,
               "LANG": "C.UTF-8", "TINYFAAS_FUNCTION": spec.function, "TINYFAAS_VERSION": spec.version,
               **dict(spec.env)}
        mounts = [(path, "mask") for path in self._hidden]
        mounts += [(str(spec.venv), "ro"), (str(spec.code), "ro"), (scratch, "rw")]
        uid = spec.uid if self.isolation.per_function_user else None
        argv = [str(spec.python), "-I", str(WORKER_SCRIPT), str(3), *spec.args]
        launch = self._launch_spec(self.isolation.mode, argv, env, uid, channel, mounts, str(spec.code))
        if spec.memory_mb:
            launch["memory_bytes"] = spec.memory_mb * 1024 * 1024
        # No environment: a function of the server's uid may read its launcher's (/proc/<pid>/environ).
        proc = subprocess.Popen([sys.executable, "-I", "-S", str(LAUNCHER)], pass_fds=(channel, self._life_r),
                                stdin=subprocess.PIPE, stdout=_server_stderr(), cwd="/", env={})
        with proc.stdin:  # type: ignore[union-attr]  # the spec holds the function's secrets: never in argv
            proc.stdin.write(json.dumps(launch).encode())  # type: ignore[union-attr]
        return proc

    def prepare_scratch(self, scratch: Path, uid: int) -> None:
        """The function's scratch folder: created if missing, its own (as root: owned by its uid), 0700."""
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.isolation.per_function_user:
            os.chown(scratch, uid, uid)
        os.chmod(scratch, 0o700)

    def _launch_spec(self, mode: str, argv: list[str], env: dict[str, str], uid: int | None, channel: int,
                     mounts: list[tuple[str, str]], cwd: str) -> dict[str, Any]:
        with self._lock:
            root = self._root_dir / "root"
            root.mkdir(exist_ok=True)
        return {"mode": mode, "argv": argv, "env": env, "uid": uid, "channel": channel, "lifeline": self._life_r,
                "root": str(root), "mounts": [(p, "ro") for p in self._system] + mounts,
                "cwd": cwd, "memory_bytes": self._memory, "max_file_bytes": self._max_file,
                "max_processes": self._max_processes if mode == "namespace-root" else 0}


def report_isolation(isolation: Isolation, host: str) -> None:
    """Say at start what containment is in force (SPEC 9); `host`: "the server" or "serve-one"."""
    if isolation.per_function_user:
        log.info("containment: each function under its own uid, in its own PID and mount namespaces")
        return
    log.warning("containment (%s): functions run under %s's own uid %d, with no bound on their processes; %s. For "
                "a uid per function, run %s as root where namespaces are allowed.", isolation.mode, host, os.geteuid(),
                "namespaces hide data/, other functions and the server from them"
                if isolation.process_tree == "pid-namespace" else
                f"no namespaces are allowed here, so they can read the files {host} can and signal it (its "
                "environment and memory are closed to them)", host)


def adopt_orphans() -> None:
    """Become a child subreaper: a process orphaned below this one (a launcher's, when the launcher died) becomes
    this process's child, as it does anyway for PID 1 of a container, rather than the host's init's."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def end_orphans() -> None:
    """Kill and reap this process's children that it did not start. Only for a process that starts children in its
    own session alone (serve-one: its launchers; the server's pip runs would leave theirs behind). Every process of
    a worker's tree is in a session of its own (the worker's, a namespace init's, or a later one), so a child in
    another session was orphaned when its launcher died, e.g. killed by its own function, which may signal it in
    subreaper mode. SPEC 9: it ends with its worker, and is reaped."""
    session = os.getsid(0)
    for pid in _children():
        try:
            if os.getsid(pid) != session:
                os.kill(pid, signal.SIGKILL)  # our child: its pid is not reused before we reap it
                os.waitpid(pid, os.WNOHANG)   # reaped now if it was a zombie, else at the next sweep
        except (ProcessLookupError, ChildProcessError):
            pass  # reaped meanwhile


def _children() -> list[int]:
    """This process's children: each thread's (a child belongs to the thread that forked it, or adopted it)."""
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found += [int(pid) for pid in f.read().split()]
        except OSError:
            pass  # the thread ended meanwhile
    return found


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise SandboxUnavailable(f"prctl({option}, {value}): {os.strerror(ctypes.get_errno())}")


def _server_stderr() -> int | None:
    """Where a worker's file descriptors 1 and 2 go: the server's stderr, so C-level output is not lost."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        return None

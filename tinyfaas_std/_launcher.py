"""The launcher: puts one worker in its sandbox, stays beside it as its init, and ends its whole process tree.

Started by the server (`sandbox.py`) as `<server python> -I -S _launcher.py`, its spec as JSON on stdin, with the worker's
channel and the server's lifeline pipe as its only extra descriptors. Standard library only (ctypes for the
system calls Python 3.11 lacks). Strategy, by mode:

- `namespace-root` (the server is root) and `namespace-user` (not root, but user namespaces are allowed): the
  launcher unshares a mount and a PID namespace (and a user namespace in the second mode) and forks. The child is
  PID 1 of the new namespace (which has its own System V IPC too, so shared memory dies with it): it builds the worker's view of the filesystem (a tmpfs root holding, at their own
  paths, read-only binds of the system folders, the interpreter, the venv, the code and the package, the scratch
  folder writable, a small private /tmp, /dev and /proc; nothing of `data/` or of other functions), chroots
  into it and forks the worker, which drops to the function's uid and gid (root mode), sets its rlimits and execs
  the venv's python. PID 1 then only reaps orphans and watches. When the worker exits, PID 1 exits, and the
  kernel kills every process left in the namespace: daemons that forked twice and called setsid included.
- `subreaper` (no namespaces allowed): the launcher marks itself a child subreaper, so every orphan of the
  worker's tree is reparented to it, forks the worker, and when the worker exits kills whatever is left.

Either way the watcher (PID 1, or the subreaper) exits when the server goes away, however it ended: the
server holds the write end of the lifeline pipe, and its end of file is the signal. It also sums the memory
(PSS) of the worker's processes a few times a second and kills the tree past `--memory-mb` (RLIMIT_AS bounds each
process, not their sum). Setup failures are reported over the channel as a failed hello (see protocol.py).
"""

import ctypes
import json
import os
import resource
import select
import signal
import sys

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x08000000, 0x10000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
CHANNEL_FD = 3          # where the worker finds its channel
WATCH_INTERVAL = 0.2    # seconds between memory checks of the worker's tree
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom")
_STATVFS_TO_MS = ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
                  (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
                  (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))

_libc = ctypes.CDLL(None, use_errno=True)


def _load_protocol():
    """protocol.py, by path: under `-I -S` the package itself is not importable."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_tinyfaas_protocol",
                                                  os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                               "protocol.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


protocol = _load_protocol()


class SandboxError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(errno)}")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def _bind(source: str, target: str, writable: bool, device: bool = False) -> None:
    if os.path.isdir(source):
        os.makedirs(target, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        if not os.path.exists(target):
            open(target, "wb").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    locked = os.statvfs(target).f_flag  # flags a user namespace may not clear must be kept on remount
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (0 if device else MS_NODEV)
    for st, ms in _STATVFS_TO_MS:
        if locked & st:
            flags |= ms
    if not writable:
        flags |= MS_RDONLY
    _mount(None, target, None, flags)


def _build_root(spec: dict) -> None:
    """The worker's filesystem: a tmpfs root with only what it needs, at the same paths as on the host."""
    root = spec["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount reaches the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            _bind(path, root + path, False)
    dev = root + "/dev"
    os.mkdir(dev, 0o755)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for name in DEVICES:
        _bind("/dev/" + name, f"{dev}/{name}", True, device=True)
    os.mkdir(dev + "/shm")
    _mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=64m")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(root + "/proc", 0o555)
    try:
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except SandboxError:
        pass  # some user namespaces may not mount proc; the worker runs without it (and no memory sum)
    # Parents before children, so a folder hidden by a mask (or /tmp) can still hold the function's own binds.
    for path, kind in sorted([*spec["mounts"], ("/tmp", "tmp")], key=lambda item: item[0].count("/")):
        target = root + path
        if kind == "tmp":  # a small /tmp of this worker's own; TMPDIR is the scratch folder
            os.makedirs(target, 0o755, exist_ok=True)
            _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=16m")
        elif kind == "mask":
            if os.path.isdir(target):  # visible through a bind above it: hide it
                _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        else:
            _bind(path, target, kind == "rw")
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chroot(root)


def _exec_worker(spec: dict, channel: int) -> None:
    """In the worker's process: drop privileges, set limits, keep only stdio and the channel, exec."""
    os.setsid()
    if spec["uid"] is not None:
        os.setgroups([])
        os.setresgid(spec["uid"], spec["uid"], spec["uid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    limits = [(resource.RLIMIT_FSIZE, spec["max_file_bytes"]), (resource.RLIMIT_NOFILE, 1024),
              (resource.RLIMIT_CORE, 0)]
    if spec["memory_bytes"]:
        limits.append((resource.RLIMIT_AS, spec["memory_bytes"]))
    if spec["max_processes"]:
        limits.append((resource.RLIMIT_NPROC, spec["max_processes"]))
    for kind, value in limits:
        resource.setrlimit(kind, (value, value))
    os.chdir(spec["cwd"])
    quiet = os.open(os.devnull, os.O_WRONLY)  # not the server's stderr: a worker could read, rewind or flood it
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    os.close(quiet)
    if 0 <= channel != CHANNEL_FD:  # (no channel: the server's probe)
        os.dup2(channel, CHANNEL_FD)
    os.closerange(CHANNEL_FD + 1, 1 << 16)
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


def _memory(pids) -> int:
    """Bytes the processes hold, by PSS: pages shared after a fork count once in all, not once per process."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            pass  # it ended meanwhile
    return total


def _namespace_pids() -> list:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and p != "1"] if os.path.isdir("/proc/1") else []


def _descendants(pid: int) -> list:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _kill_descendants() -> None:
    """SIGKILL everything under this subreaper until nothing is left (orphans keep arriving here)."""
    for _ in range(1000):
        kids = _descendants(os.getpid())
        if not kids:
            break
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _reap(None)


def _reap(worker):
    """Reap every finished child; the worker's exit code if it was among them, else None."""
    code = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return code
        if pid == 0:
            return code
        if pid == worker:
            code = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code


def _watch(spec: dict, worker: int, lifeline: int, tree) -> int:
    """Reap orphans, kill the tree past its memory, stop with the worker or the server. Returns an exit code."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    stop = []
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    limit = spec["memory_bytes"]
    while True:
        code = _reap(worker)
        if code is not None:
            return code
        if stop:
            return 143
        ready, _, _ = select.select([lifeline, wake_r], [], [], WATCH_INTERVAL)
        if lifeline in ready and not os.read(lifeline, 64):
            return 137  # the server is gone
        if wake_r in ready:
            os.read(wake_r, 512)
        if limit and _memory(tree()) > limit:
            return protocol.EXIT_MEMORY


def _fail(channel: int, exc: BaseException, exit_code: int) -> None:
    """Report a setup failure as the worker's failed hello (or on stderr to the server's probe), and exit."""
    message = f"the worker could not be started in its sandbox: {exc}"
    if channel >= 0:
        info = {"type": "SandboxError", "message": message, "line": None, "traceback": ""}
        try:
            os.write(channel, protocol.frame(0, protocol.ERROR + json.dumps(info).encode()))
        except OSError:
            pass
    else:
        sys.stderr.write(message + "\n")
    os._exit(exit_code)


def _namespaces(spec: dict, channel: int, lifeline: int) -> int:
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | (CLONE_NEWUSER if spec["mode"] == "namespace-user" else 0)
    try:
        _check(_libc.unshare(flags), "unshare")
        if spec["mode"] == "namespace-user":  # map only ourselves: the worker stays an ordinary user
            for name, text in (("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1"), ("uid_map", f"{uid} {uid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
    except (OSError, SandboxError) as exc:
        _fail(channel, exc, protocol.EXIT_SANDBOX)
    here_r, here_w = os.pipe()  # open in this process until it ends: how its PID 1 knows it was there at all
    init = os.fork()
    if init:  # outside the namespace: wait for its PID 1, which dies with us (PDEATHSIG)
        os.close(here_r)
        os.close(lifeline)
        if channel >= 0:
            os.close(channel)
        return os.waitstatus_to_exitcode(os.waitpid(init, 0)[1]) % 256
    try:
        os.setsid()  # like everything of the worker's tree, never in the server's session (sandbox.end_orphans)
        os.close(here_w)
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        if select.select([here_r], [], [], 0)[0]:  # end of file: we died before PDEATHSIG was set
            os._exit(protocol.EXIT_SANDBOX)
        os.close(here_r)
        _build_root(spec)
    except (OSError, SandboxError) as exc:
        _fail(channel, exc, protocol.EXIT_SANDBOX)
    worker = _fork_worker(spec, channel, lifeline)
    os._exit(_watch(spec, worker, lifeline, _namespace_pids))  # PID 1 exits: the kernel kills the rest


def _fork_worker(spec: dict, channel: int, lifeline: int) -> int:
    worker = os.fork()
    if worker == 0:
        try:
            os.close(lifeline)
            _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
            _exec_worker(spec, channel)
        except BaseException as exc:  # noqa: B902 - whatever it was, the worker must not run unsandboxed
            _fail(channel, exc, protocol.EXIT_SANDBOX)
    if channel >= 0:
        os.close(channel)
    return worker


def _subreaper(spec: dict, channel: int, lifeline: int) -> int:
    try:
        _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "subreaper")
    except SandboxError as exc:
        _fail(channel, exc, protocol.EXIT_SANDBOX)
    worker = _fork_worker(spec, channel, lifeline)
    me = os.getpid()
    code = _watch(spec, worker, lifeline, lambda: _descendants(me))
    _kill_descendants()
    return code


def main() -> None:
    spec = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the worker's stdin
    os.close(devnull)
    channel, lifeline = spec["channel"], spec["lifeline"]
    run = _subreaper if spec["mode"] == "subreaper" else _namespaces
    sys.exit(run(spec, channel, lifeline))


if __name__ == "__main__":
    main()

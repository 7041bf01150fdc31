"""`python -m tinyfaas_std serve-one DIR` (SPEC 14): one exported function, served the way the server serves it.

Strategy: nothing here runs a call or speaks HTTP itself. The folder's `tinyfaas.json` (written by export.py) becomes
a `FunctionRecord` with one `Version` in a `LiveTable`; its workers are started by the server's own machinery
(`workers.start_worker` in a `Sandbox`, lent by a `Pool`), calls go through the server's `Caller`, and requests
through the server's handler (httpd.py) with a route table of its own (`routes_for`): `/` and
`/function/<name>[/<sub/path>]` call the function, `/healthz` (and OpenFaaS's default probe paths `/_/health`,
`/_/ready`) need no credentials, and every other path is 404, but for an http function, which answers every path.
So a function answers here as it did on the server, and its workers are contained the same way.

What differs, because a container platform runs it:
- settings come from `tinyfaas.json`, checked by the server's rules (settings.py); an env value there is overridden
  by the process environment's, and each secret is read by name from the process environment (how Knative passes a
  Secret) or from OpenFaaS's secret files. The worker still sees only its env and secrets, never this process's env;
- the workers run `--python`, by default this interpreter: in the image, the venv the Dockerfile installed exactly
  the requirements into, so nothing is built at start (no network, no pip, a start in well under a second);
- Basic Auth only when TINYFAAS_PASSWORD is set (the platform may authenticate in front), and no throttle of failed
  logins (behind a proxy every client has the proxy's address);
- each call's record is one JSON line on stdout, where platforms collect logs, instead of a log on disk;
- the first worker starts before the port opens: a function that does not import fails the container at once;
- idle workers are not stopped: the platform scales the container, to zero if it wants;
- its only children are its workers' launchers, so it can adopt every orphan (a child subreaper, and a container's
  PID 1 anyway) and end whatever a dead launcher left behind (sandbox.end_orphans): in subreaper mode a function may
  kill its own launcher.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from . import export, http11, routes, settings
from .auth import Authenticator, NoAuth
from .calls import Answer, Caller
from .config import Config, ServeOneConfig, parse_serve_one
from .deploy import check_name
from .errors import FaasError, WorkerCrashed
from .httpd import HttpServer, configure_socket, stop_on_signals
from .live import Live, LiveTable
from .logs import FunctionLog
from .metrics import Metrics
from .routes import Reply, RouteSpec
from .sandbox import Sandbox, SandboxUnavailable, WorkerSpec, adopt_orphans, end_orphans, report_isolation
from .state import FunctionRecord, Version
from .users import Access, User
from .workers import Pool, StartFailed, Worker, start_worker

__all__ = ["main", "load", "routes_for", "Function", "FolderError", "OneFunction", "OneServer"]

log = logging.getLogger("tinyfaas_std")

ANSWER_GRACE = 2.0   # seconds for answers to calls that ended at shutdown to go out (as the server)
ORPHAN_SWEEP = 0.5   # seconds between looks for orphans: a read of /proc per thread, cheap while few threads run


class FolderError(Exception):
    """The folder, its tinyfaas.json, a secret or the interpreter is not usable: exit status 2, with the reason."""


@dataclass(frozen=True, slots=True)
class Function:
    """What the folder's function runs with: `env` without the secrets, `secrets` read by name."""
    folder: Path
    name: str
    version: str
    calling: str
    env: dict[str, str]
    secrets: dict[str, str]
    timeout: float
    memory_mb: int
    max_workers: int


def load(folder: Path, environ: Mapping[str, str], secrets_dir: Path) -> Function:
    """The function of an export folder, its settings checked by the server's own rules."""
    folder = folder.resolve()
    if not (folder / "func.py").is_file():
        raise FolderError(f"{folder}: no func.py (serve-one serves a folder written by `export`)")
    try:
        doc = json.loads((folder / export.SETTINGS_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        raise FolderError(f"{folder / export.SETTINGS_FILE}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != export.SETTINGS_FORMAT:
        raise FolderError(f"{export.SETTINGS_FILE}: not a settings file of format {export.SETTINGS_FORMAT}")
    missing = [key for key in ("name", "version", "calling", "timeout", "memory_mb", "max_workers") if doc.get(key)
               is None]
    names = doc.get("secrets", [])
    if missing or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FolderError(f"{export.SETTINGS_FILE}: missing {', '.join(missing) or 'a list of secret names'}")
    env = doc.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(value, str) for value in env.values()):
        raise FolderError(f"{export.SETTINGS_FILE}: env must be an object of names and string values")
    env = {key: environ.get(key, value) for key, value in env.items()}  # the platform's value wins (a manifest's)
    secrets = _secrets(names, environ, secrets_dir, str(doc.get("secret_name", "")))
    try:
        check_name(str(doc["name"]))
        changes = settings.from_patch({"calling": doc["calling"], "env": env, "secrets": secrets,
                                       **{key: doc[key] for key in ("timeout", "memory_mb", "max_workers")}})
        settings.check_environment(cast(dict[str, str], changes.env), cast(dict[str, str], changes.secrets))
    except FaasError as exc:  # the message names the setting, never a secret's value
        raise FolderError(f"{export.SETTINGS_FILE}: {exc.message}") from None
    return Function(folder=folder, name=str(doc["name"]), version=str(doc["version"]),
                    calling=changes.settings["calling"], env=cast(dict[str, str], changes.env), secrets=secrets,
                    **{key: changes.settings[key] for key in ("timeout", "memory_mb", "max_workers")})


def _secrets(names: list[str], environ: Mapping[str, str], folder: Path, bundle: str) -> dict[str, str]:
    """Each secret by name: from the environment (Knative's secretKeyRef, `docker run -e`), else from OpenFaaS's
    files: `<folder>/<NAME>` (a key of a Kubernetes Secret) or a `NAME=VALUE` line of `<folder>/<bundle>` (one
    secret made by `faas-cli secret create --from-file`). A missing one is an error: the function expects it."""
    found: dict[str, str] = {}
    lines: dict[str, str] | None = None
    for name in names:
        if name in environ:
            found[name] = environ[name]
            continue
        value = _secret_file(folder / name) if _NAME.fullmatch(name) else None
        if value is not None:
            found[name] = value.removesuffix("\n")  # a file written by `echo` ends in a newline
            continue
        if lines is None:
            text = _secret_file(folder / bundle) if _NAME_OR_DASH.fullmatch(bundle) else None
            try:
                lines = settings.parse_env_lines(text or "", str(folder / bundle))
            except FaasError as exc:
                raise FolderError(exc.message) from None
        if name not in lines:
            raise FolderError(f"the secret {name} is not set: give it in the environment (a Kubernetes Secret's "
                              f"key), as the file {folder / name}, or as a line of {folder / bundle}")
        found[name] = lines[name]
    return found


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_OR_DASH = re.compile(r"[a-z0-9][a-z0-9.-]*")


def _secret_file(path: Path) -> str | None:
    """A secret file's text, or None when there is none. Bounded as env and secrets are (settings.py)."""
    try:
        with open(path, "rb") as f:
            data = f.read(settings.MAX_ENV_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as exc:
        raise FolderError(f"{path}: {exc.strerror}") from None
    if len(data) > settings.MAX_ENV_BYTES:
        raise FolderError(f"{path} is larger than {settings.MAX_ENV_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FolderError(f"{path} is not UTF-8 text") from None


def _check_import_path(folder: Path) -> None:
    """Refuse a folder on this interpreter's import path (as the current folder is when `python -m` runs from it):
    a function's `gzip.py` or `tempfile.py` would be imported by serve-one itself, beside its credentials. Some
    module may have run already; this refusal keeps a process that may have run one from serving at all."""
    folder = folder.resolve()
    for entry in sys.path:
        if Path(entry or os.curdir).resolve() == folder:
            raise FolderError(f"{folder} is on this interpreter's import path ({entry or 'the current folder'}), so "
                              "the function's files would be imported by serve-one itself: run it from the folder's "
                              f"runtime, `cd {folder / export.RUNTIME} && python -m tinyfaas_std serve-one ..`, or "
                              f"from any other folder with PYTHONPATH={folder / export.RUNTIME}")


def _interpreter(python: str) -> tuple[Path, Path]:
    """`--python` as an absolute path (links kept: a venv's python is a link) and its `sys.prefix`, the folder the
    worker's PATH and view of the files start from (a venv, or the image's /usr/local)."""
    found = shutil.which(python)
    if found is None:
        raise FolderError(f"--python {python}: no such interpreter")
    try:
        done = subprocess.run([found, "-I", "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FolderError(f"--python {python}: {exc}") from None
    if done.returncode != 0:
        raise FolderError(f"--python {python} does not run: {done.stderr.strip()[-500:]}")
    return Path(os.path.abspath(found)), Path(done.stdout.strip())


class _CallLog:
    """Where the Caller writes each call's record (it only appends; the table closes it at the end): one JSON line
    on `stream`, whole (a lock keeps lines from interleaving), or nowhere."""

    def __init__(self, stream: BinaryIO | None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def append(self, line: bytes, is_error: bool) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.write(line)
                self._stream.flush()

    def close(self) -> None:
        with self._lock:
            self._stream = None


class OneFunction:
    """The core behind serve-one's handler: one function's live table, the server's `Caller`, and the counters the
    handler adds to. Starts the first worker, or raises `StartFailed`."""

    def __init__(self, function: Function, python: Path, prefix: Path, options: ServeOneConfig, state: Path) -> None:
        config = options.server
        self.name, self.calling = function.name, function.calling
        self.metrics = Metrics()
        self.sandbox = Sandbox(root_dir=state / "sandbox", hidden=[state], memory_mb=function.memory_mb,
                               max_processes=config.max_processes, max_file_mb=config.max_file_mb,
                               mode=None if config.isolation == "auto" else config.isolation)
        uid = config.uids.start  # as root: the function's own uid, as the server gives its first function
        scratch = state / "scratch"
        self.sandbox.prepare_scratch(scratch, uid)
        spec = WorkerSpec(function=function.name, version=function.version, uid=uid, python=python, venv=prefix,
                          code=function.folder, scratch=scratch, calling=function.calling,
                          env={**function.env, **function.secrets}, memory_mb=function.memory_mb)

        def spawn() -> Worker:  # as the server's pools do (deploy.py): a later start that fails is a 502
            try:
                return start_worker(self.sandbox, spec, timeout=function.timeout, max_body=config.max_body_bytes)
            except StartFailed as exc:
                raise WorkerCrashed(f"the function failed to start: {exc.info.get('type')}: "
                                    f"{exc.info.get('message')}", code="function_start_failed") from None

        first = start_worker(self.sandbox, spec, timeout=function.timeout, max_body=config.max_body_bytes)
        now = time.time()
        version = Version(version=function.version, created=now, code=str(function.folder), calling=function.calling,
                          env=function.env, timeout=function.timeout, memory_mb=function.memory_mb,
                          max_workers=function.max_workers)
        record = FunctionRecord(name=function.name, created=now, updated=now, uid=uid, live=version.version,
                                versions=(version,))
        calls = _CallLog(sys.stdout.buffer if options.call_log else None)
        self._table = LiveTable()
        self._table.swap(Live(record, version, Pool(spawn, function.max_workers, config.max_queue, first),
                              cast(FunctionLog, calls), function.timeout))
        self._caller = Caller(self._table, self.metrics)

    def invoke(self, name: str, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> Answer:
        return self._caller.invoke(name, method, path, query, headers, body)

    @property
    def stopping(self) -> bool:
        return self._table.closing

    def drain(self, grace: float) -> None:
        """Refuse new calls and let calls in flight finish, for up to `grace` seconds, while still answering."""
        self._table.drain(grace)

    def close(self, grace: float) -> None:
        """Drain, then stop every worker."""
        self._table.close(grace)


def _root(server: OneServer, req: http11.RequestHead, _: str, body: bytes, __: User) -> Reply:
    """`/`: the function itself, as `/function/<name>` is on the server."""
    return routes.call(server, req, server.manager.name, "", body)


def _any_path(server: OneServer, req: http11.RequestHead, path: str, body: bytes, __: User) -> Reply:
    """Any other path: an http function's own path, as `/function/<name><path>` is on the server."""
    return routes.call(server, req, server.manager.name, path, body)


_METHODS = ("POST", *routes.OTHER_METHODS)  # the others answer 405 but for http functions, as on the server
_ROOT, _ANY_PATH = re.compile(r"/"), re.compile(r"(/.*)")


def routes_for(name: str, calling: str) -> list[RouteSpec]:
    """serve-one's table: `/function/<name>[/<sub/path>]` as on the server, then the function's own root. An http
    function answers every path at the root too: on Knative its URL is the host's root, and OpenFaaS's gateway
    strips `/function/<name>` before it forwards a call. So only its own name is matched under `/function/`
    (`/function/other` is one of its paths); an args or event function answers `/` only, and another name under
    `/function/` is `404 function_not_found` as on the server."""
    if calling != "http":
        return [*(RouteSpec(method, routes.FUNCTION, routes.invoke, "max_body_bytes", Access.CALL, True)
                  for method in _METHODS),
                *(RouteSpec(method, _ROOT, _root, "max_body_bytes", Access.CALL) for method in _METHODS)]
    own = re.compile(rf"/function/({re.escape(name)})(?:/.*)?")
    return [*(RouteSpec(method, own, routes.invoke, "max_body_bytes", Access.CALL, True) for method in _METHODS),
            *(RouteSpec(method, _ANY_PATH, _any_path, "max_body_bytes", Access.CALL) for method in _METHODS)]


PUBLIC: dict[tuple[str, str], Callable[[Any], Reply]] = {
    ("GET", path): routes.healthz for path in (export.HEALTH_PATH, "/_/health", "/_/ready")}


class OneServer(HttpServer):
    """The server's HTTP side (handler, error boundary, limits) with serve-one's routes: no admin route exists, so
    every path is a call, which any site's page may make (on the server, only `/function/` paths are)."""
    public = PUBLIC
    open_to_other_sites = ("/",)
    manager: OneFunction

    def __init__(self, address: tuple[str, int], config: Config, manager: OneFunction,
                 auth: Authenticator | NoAuth) -> None:
        self.routes = routes_for(manager.name, manager.calling)
        super().__init__(address, config, manager, auth)


def main(argv: list[str], environ: Mapping[str, str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT: 0; 1 when the function does not start; 2 when the folder or a setting is
    wrong."""
    environ = os.environ if environ is None else environ  # the secrets are read from it by name, beside the flags
    options = parse_serve_one(argv, environ)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    os.umask(0o022)  # a worker under its own uid (as root) must read what is written for it
    try:
        _check_import_path(options.folder)
        function = load(options.folder, environ, options.secrets_dir)
        python, prefix = _interpreter(options.python)
    except FolderError as exc:
        log.error("serve-one: %s", exc)
        return 2
    state = Path(tempfile.mkdtemp(prefix="tinyfaas-serve-one-"))  # the sandbox's mount point and the scratch folder
    try:
        return _serve(function, python, prefix, options, state)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _serve(function: Function, python: Path, prefix: Path, options: ServeOneConfig, state: Path) -> int:
    config = options.server
    try:
        adopt_orphans()  # before the first launcher starts
        core = OneFunction(function, python, prefix, options, state)
    except SandboxUnavailable as exc:
        log.error("serve-one: %s", exc)
        return 2
    except StartFailed as exc:
        where = f" at line {exc.info['line']}" if exc.info.get("line") else ""
        log.error("serve-one: %s failed to start%s: %s: %s\n%s", function.name, where, exc.info.get("type"),
                  exc.info.get("message"), exc.info.get("traceback") or "")
        return 1
    auth = Authenticator(*options.credentials) if options.credentials else NoAuth()
    try:
        server = OneServer((config.host, config.port), config, core, auth)
    except OSError as exc:
        core.close(0)
        log.error("serve-one: cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
        return 2
    configure_socket(server)
    ended = threading.Event()
    threading.Thread(target=_sweep_orphans, args=(ended,), name="orphans", daemon=True).start()
    stop_on_signals(server, config.grace)
    host, port = server.socket.getsockname()[:2]
    print(f"tinyfaas_std serve-one serving {function.name} ({function.calling}, version {function.version}) on "
          f"http://{host}:{port}", flush=True)
    if options.credentials:
        log.info("Basic Auth: calls need the user %s and TINYFAAS_PASSWORD", options.credentials[0])
    else:
        log.warning("no authentication: TINYFAAS_PASSWORD is not set, so whoever reaches this port may call the "
                    "function (set TINYFAAS_USERNAME and TINYFAAS_PASSWORD to require Basic Auth)")
    log.info("containment: %s", json.dumps(core.sandbox.isolation.public()))
    report_isolation(core.sandbox.isolation, "serve-one")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        core.close(config.grace)
        ended.set()
        end_orphans()
        server.wait_idle(ANSWER_GRACE)
        server.server_close()
        log.info("stopped")
    return 0


def _sweep_orphans(ended: threading.Event) -> None:
    """serve-one is a subreaper (or a container's PID 1): whatever a dead launcher left behind comes here, and is
    killed and reaped (sandbox.end_orphans) within ORPHAN_SWEEP seconds, until the workers are stopped."""
    while not ended.wait(ORPHAN_SWEEP):
        end_orphans()

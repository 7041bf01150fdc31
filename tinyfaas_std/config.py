"""Settings: one frozen `Config` built from the command line, with every flag also read from `TINYFAAS_<FLAG>`.

Precedence: a flag on the command line beats the environment, which beats the default. Nothing else in the
package reads `os.environ` for settings. `serve-one` (SPEC 14) takes a few of the same flags, and reads what a
container platform sets: `PORT`, and `TINYFAAS_USERNAME`/`TINYFAAS_PASSWORD` for optional Basic Auth.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .callbacks import parse_allow

__all__ = ["Config", "parse_config", "DEFAULT_PASSWORD", "ServeOneConfig", "parse_serve_one"]

DEFAULT_USERNAME = "admin"
DEFAULT_PASSWORD = "1234"  # the original design's default; the server warns when it guards a public address


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 8080
    functions_dir: Path = Path("functions")
    data_dir: Path = Path("data")
    username: str = DEFAULT_USERNAME
    password: str = DEFAULT_PASSWORD
    timeout: float = 30.0
    log_retention: int = 10000
    max_upload_mb: float = 16.0
    max_body_mb: float = 6.0
    client_timeout: float = 30.0
    memory_mb: int = 512
    max_workers: int = 4
    max_queue: int = 1024  # a waiting call is only a blocked connection thread; 256 connections must fit
    idle_timeout: float = 300.0
    pip_timeout: float = 300.0
    grace: float = 10.0
    uid_range: str = "200000-299999"  # per-function uids when the server runs as root (SPEC 9)
    max_processes: int = 64     # processes (and threads) per function's uid; enforced only as root
    max_file_mb: int = 1024     # largest file a worker may write, MiB (RLIMIT_FSIZE)
    log_retention_mb: float = 100.0  # bytes of log kept per function on disk, MiB (0: no byte bound)
    max_connections: int = 1024  # connections served at once; the next one gets 503 and is closed
    isolation: str = "auto"     # how workers are contained: auto (the strongest that works) or a mode of sandbox.py
    source_builds: str = "refuse"  # "allow": pip may build sdists (their build code runs as the server's user)
    keep_versions: int = 5      # versions of each function kept for rollback (SPEC 10)
    max_async_queue: int = 10000  # async calls that may wait per function (SPEC 11)
    callback_allow: str = ""    # origins async calls may be called back at, comma-separated (SPEC 11)
    access_log: bool = False    # one line per request on stderr (SPEC 12)
    max_failed_logins: int = 10  # failed logins from one address within 60 s before it is blocked (0: never)
    tls_cert: str = ""          # PEM certificate chain: serve HTTPS (with tls_key)
    tls_key: str = ""           # PEM private key of tls_cert

    @property
    def uids(self) -> range:
        """`--uid-range` as a range of uids, checked by `parse_config`."""
        low, _, high = self.uid_range.partition("-")
        return range(int(low), int(high) + 1)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


# flag -> (type, help). The default comes from Config so it is written once.
_FLAGS: dict[str, tuple[type, str]] = {
    "host": (str, "address to listen on"),
    "port": (int, "port to listen on (0 picks a free one)"),
    "functions_dir": (Path, "where function code and virtualenvs live"),
    "data_dir": (Path, "where the registry and logs live"),
    "username": (str, "Basic Auth user name"),
    "password": (str, "Basic Auth password"),
    "timeout": (float, "seconds a call may run before its worker is killed (504)"),
    "log_retention": (int, "newest log records kept per function (0 keeps all)"),
    "max_upload_mb": (float, "largest upload body, MiB"),
    "max_body_mb": (float, "largest invocation body, MiB"),
    "client_timeout": (float, "seconds a connection may stall mid-request or idle between requests"),
    "memory_mb": (int, "address-space limit of each worker process, MiB (0: none)"),
    "max_workers": (int, "warm worker processes per function (concurrent calls)"),
    "max_queue": (int, "calls that may wait for a busy function's worker before 429"),
    "idle_timeout": (float, "seconds an idle worker is kept warm"),
    "pip_timeout": (float, "seconds pip may take to install a function's requirements (422 past it)"),
    "grace": (float, "seconds in-flight calls get to finish on SIGTERM"),
    "uid_range": (str, "uids (and gids) given to functions, one each, when the server runs as root"),
    "max_processes": (int, "processes and threads a function may run at once (as root: RLIMIT_NPROC of its uid)"),
    "max_file_mb": (int, "largest file a worker may write, MiB"),
    "log_retention_mb": (float, "bytes of log kept per function on disk, MiB (0: no byte bound)"),
    "max_connections": (int, "connections served at once; the next one gets 503"),
    "isolation": (str, "auto, namespace-root, namespace-user or subreaper: how workers are contained"),
    "source_builds": (str, "refuse (wheels only) or allow: whether pip may build requirements from source, which "
                           "runs their build code as the server's user"),
    "keep_versions": (int, "versions of each function kept, with their code and venv, for rollback"),
    "max_async_queue": (int, "async calls that may wait per function before 429"),
    "tls_cert": (str, "PEM certificate (chain) file: serve HTTPS, TLS 1.2 or newer (with --tls-key)"),
    "tls_key": (str, "PEM private key file of --tls-cert"),
    "max_failed_logins": (int, "failed logins from one address within 60 s before it gets 429 for a while "
                               "(0: never blocked)"),
    "callback_allow": (str, "origins (scheme://host:port, comma-separated) that X-Callback-Url may name; none "
                            "by default"),
}


def parse_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m tinyfaas_std", description="A single-host FaaS server.")
    _add_flags(parser, _FLAGS, environ)
    ns = parser.parse_args(argv)
    config = Config(**_values(parser, ns, _FLAGS), access_log=ns.access_log)
    _check(parser, config)
    return config


def _add_flags(parser: argparse.ArgumentParser, names: Iterable[str], environ: Mapping[str, str]) -> None:
    """`--flag` for each of `names`, its default from TINYFAAS_<FLAG> or Config; and --access-log."""
    defaults = Config()
    for name in names:
        kind, help_text = _FLAGS[name]
        env_name = "TINYFAAS_" + name.upper()
        default = environ.get(env_name, getattr(defaults, name))
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=default,
                            help=f"{help_text} (env {env_name}; default %(default)s)")
    access_default = environ.get("TINYFAAS_ACCESS_LOG", "").strip().lower() in ("1", "true", "yes", "on")
    parser.add_argument("--access-log", dest="access_log", action="store_true", default=access_default,
                        help="log one line per request on stderr: client, method, path, status, bytes, "
                             "milliseconds, call id (env TINYFAAS_ACCESS_LOG=1)")


def _values(parser: argparse.ArgumentParser, ns: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    values = {}
    for name in names:
        kind, raw = _FLAGS[name][0], getattr(ns, name)
        try:
            values[name] = kind(raw)  # environment values arrive as strings
        except ValueError:
            parser.error(f"TINYFAAS_{name.upper()}: invalid {kind.__name__} value {raw!r}")
    return values


def _check(parser: argparse.ArgumentParser, config: Config) -> None:
    """Refuse values no server could run with (argparse's error: exit status 2 with the reason)."""
    for name in ("timeout", "client_timeout", "max_upload_mb", "max_body_mb", "idle_timeout", "pip_timeout"):
        value = getattr(config, name)
        if not (0 < value < 1e9):  # also refuses nan and inf
            parser.error(f"--{name.replace('_', '-')} must be a positive number of reasonable size")
    if not 0 <= config.grace < 1e9:
        parser.error("--grace must be a number of seconds >= 0")
    if config.max_workers < 1 or config.log_retention < 0 or config.max_queue < 0:
        parser.error("--max-workers must be >= 1, --log-retention and --max-queue >= 0")
    if min(config.max_processes, config.max_file_mb, config.max_connections, config.keep_versions) < 1:
        parser.error("--max-processes, --max-file-mb, --max-connections and --keep-versions must be >= 1")
    if bool(config.tls_cert) != bool(config.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    for name in ("tls_cert", "tls_key"):
        if getattr(config, name) and not os.path.isfile(getattr(config, name)):
            parser.error(f"--{name.replace('_', '-')}: no such file {getattr(config, name)!r}")
    if config.max_async_queue < 1 or config.max_failed_logins < 0:
        parser.error("--max-async-queue must be >= 1, --max-failed-logins >= 0")
    try:
        parse_allow(config.callback_allow)
    except ValueError as exc:
        parser.error(str(exc))
    if config.isolation not in ("auto", "namespace-root", "namespace-user", "subreaper"):
        parser.error("--isolation must be auto, namespace-root, namespace-user or subreaper")
    if config.source_builds not in ("refuse", "allow"):
        parser.error("--source-builds must be refuse or allow")
    if not 0 <= config.log_retention_mb < 1e9:
        parser.error("--log-retention-mb must be a number of MiB >= 0")
    if not re.fullmatch(r"[0-9]{1,10}-[0-9]{1,10}", config.uid_range) or not (
            1000 <= config.uids.start < config.uids.stop <= 2**32 - 2):
        parser.error("--uid-range must be LOW-HIGH with 1000 <= LOW <= HIGH < 4294967295")


@dataclass(frozen=True, slots=True)
class ServeOneConfig:
    """`serve-one DIR` (SPEC 14): the export folder, the workers' interpreter, where OpenFaaS mounts secrets, whether
    call records go to stdout, the Basic Auth credentials (None: none asked), and in `server` the settings it shares
    with the server (address, HTTP limits, containment)."""
    folder: Path
    python: str
    secrets_dir: Path
    call_log: bool
    credentials: tuple[str, str] | None
    server: Config


# the server's flags that mean the same for serve-one; the function's own limits come from its tinyfaas.json
_SERVE_ONE_FLAGS = ("host", "client_timeout", "max_body_mb", "max_connections", "max_queue", "grace", "isolation",
                    "uid_range", "max_processes", "max_file_mb")


def parse_serve_one(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServeOneConfig:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m tinyfaas_std serve-one",
                                     description="Serve one function from a folder written by `export` (SPEC 14). "
                                                 "Basic Auth when TINYFAAS_PASSWORD is set (user TINYFAAS_USERNAME, "
                                                 "default admin); none otherwise.")
    parser.add_argument("folder", type=Path, help="the export folder: func.py and tinyfaas.json")
    parser.add_argument("--port", type=int, default=environ.get("PORT", 8080),
                        help="port to listen on, 0 picks a free one (env PORT, which Knative sets; default 8080)")
    parser.add_argument("--python", default=environ.get("TINYFAAS_PYTHON", sys.executable),
                        help="the interpreter the workers run, which has the function's requirements (env "
                             "TINYFAAS_PYTHON; default: this one; the exported image gives its venv)")
    parser.add_argument("--secrets-dir", type=Path,
                        default=environ.get("TINYFAAS_SECRETS_DIR", "/var/openfaas/secrets"),
                        help="where secrets not in the environment are read from, as OpenFaaS mounts them (env "
                             "TINYFAAS_SECRETS_DIR; default %(default)s)")
    parser.add_argument("--call-log", choices=("stdout", "off"), default=environ.get("TINYFAAS_CALL_LOG", "stdout"),
                        help="each call's record as one JSON line on stdout, for the platform's log, or not (env "
                             "TINYFAAS_CALL_LOG; default %(default)s)")
    _add_flags(parser, _SERVE_ONE_FLAGS, environ)
    ns = parser.parse_args(argv)
    if ns.call_log not in ("stdout", "off"):
        parser.error("TINYFAAS_CALL_LOG must be stdout or off")
    username, password = environ.get("TINYFAAS_USERNAME", ""), environ.get("TINYFAAS_PASSWORD", "")
    if username and not password:
        parser.error("TINYFAAS_USERNAME is set without TINYFAAS_PASSWORD: set both for Basic Auth, or neither")
    # No throttle of failed logins: behind a platform's proxy every client comes from the proxy's address.
    config = Config(**_values(parser, ns, _SERVE_ONE_FLAGS), port=ns.port, access_log=ns.access_log,
                    max_failed_logins=0)
    _check(parser, config)
    if not 0 <= config.port <= 65535:
        parser.error("--port (or PORT) must be 0-65535")
    return ServeOneConfig(folder=ns.folder, python=ns.python, secrets_dir=ns.secrets_dir,
                          call_log=ns.call_log == "stdout",
                          credentials=(username or DEFAULT_USERNAME, password) if password else None, server=config)

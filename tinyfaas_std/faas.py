"""The core the HTTP layer calls: one small facade over deploying (deploy.py) and calling (calls.py).

Strategy: `FunctionManager` builds the parts once and wires them; it holds no state of its own. Its parts, each
the one owner of what it keeps:
- `LiveTable` (live.py): what runs now, per function its live version's pool and log;
- `Deployer` (deploy.py): uploads, settings, versions, rollback, delete, collection;
- `Caller` (calls.py): calls, their records and answers;
- `AsyncCalls` (queue.py) and `Scheduler` (scheduler.py): calls that do not wait, and calls on a timetable;
- `Registry`/`SecretStore` (state.py) and `LogStore` (logs.py): what is on disk;
- `VenvBuilder` (venvs.py) and `Sandbox` (sandbox.py): venvs, and how a worker process is started.
Uploaded code never runs in this process: it is compiled here (syntax errors are cheap to report) and imported
by a worker of the function's own venv interpreter, in its sandbox.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Iterator
from typing import Any

import psutil

from . import export
from .callbacks import parse_allow
from .calls import Answer, Caller
from .config import Config
from .errors import BadRequest
from .deploy import Deployer, Lifecycle, NAME_PATTERN, check_name
from .live import LiveTable
from .logs import LogStore
from .metrics import Metrics
from .sandbox import Sandbox
from .settings import Changes
from .queue import AsyncCalls
from .scheduler import Scheduler
from .state import Registry, SecretStore, Version
from .venvs import VenvBuilder

__all__ = ["FunctionManager", "Answer", "Lifecycle", "NAME_PATTERN", "check_name"]

CODE_SHOWN = 512 * 1024  # bytes of a function's source that GET /admin/functions/<name>/code answers as text
KEEP_DONE = 10_000  # finished async calls whose records stay readable by id, at least (--log-retention if more)


class FunctionManager:
    def __init__(self, config: Config) -> None:
        self.config = config
        os.umask(0o022)  # functions run under other uids and must be able to read their code and venv
        functions_dir = config.functions_dir.resolve()
        functions_dir.mkdir(parents=True, exist_ok=True)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(config.data_dir, 0o700)  # the registry, secrets and every function's log: the server's alone
        self.sandbox = Sandbox(root_dir=functions_dir / ".sandbox", hidden=[config.data_dir, functions_dir],
                               memory_mb=config.memory_mb, max_processes=config.max_processes,
                               max_file_mb=config.max_file_mb,
                               mode=None if config.isolation == "auto" else config.isolation)
        self._table = LiveTable()
        self._logs = LogStore(config.data_dir / "logs", config.log_retention, retention_mb=config.log_retention_mb)
        self._deployer = Deployer(
            config, self._table, Registry(config.data_dir / "functions.json"), SecretStore(config.data_dir / "secrets"),
            self._logs, VenvBuilder(functions_dir / ".venvs", config.pip_timeout,
                                    source_builds=config.source_builds == "allow"),
            self.sandbox, functions_dir, on_change=self._changed)
        self.metrics = Metrics()
        self._caller = Caller(self._table, self.metrics)
        self._async = AsyncCalls(config.data_dir / "async", self._caller, self._table,
                                 max_queue=config.max_async_queue, callback_allow=parse_allow(config.callback_allow),
                                 keep_done=max(config.log_retention, KEEP_DONE))
        self._scheduler = Scheduler(self._async)
        self._deployer.load()
        self._async.recover()
        self._scheduler.start()
        self._deployer.collect_garbage()

    # -- admin -------------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return self._deployer.names()

    def describe(self, name: str) -> dict[str, Any]:
        return {**self._deployer.describe(name), "next_run": self._scheduler.next_run(name)}

    def versions(self, name: str) -> list[dict[str, Any]]:
        return self._deployer.versions(name)

    def read_logs(self, name: str, limit: int | None, after: str | None = None) -> Iterator[bytes]:
        log = self._table.get(name).log
        if after is None:
            return log.read(limit)
        lines = log.read_after(after)
        if lines is None:
            raise BadRequest(f"no call {after} in the kept log of {name}", code="unknown_after")
        return iter(lines[-limit:] if limit else lines)

    def upload(self, name: str, data: bytes, requirements: str | None, changes: Changes | None = None) -> dict:
        return self._deployer.upload(name, data, requirements, changes or Changes())

    def patch(self, name: str, changes: Changes) -> dict[str, Any]:
        self._deployer.patch(name, changes)
        return self.describe(name)

    def rollback(self, name: str, version: str | None) -> dict[str, Any]:
        self._deployer.rollback(name, version)
        return self.describe(name)

    def delete(self, name: str) -> dict[str, str]:
        return self._deployer.delete(name)

    def export(self, name: str) -> tuple[bytes, str]:
        """SPEC 14: the live version as an export folder (export.py), packed: (the .tar.gz, its file name)."""
        source = self._deployer.export_source(name)
        files = export.build(source, export.runtime_files(), sys.version_info[:2], _psutil_requirement())
        return export.pack(files, source.created), export.filename(source)

    def code(self, name: str) -> dict[str, Any]:
        """The live version's files as text where they are UTF-8 and small (the dashboard shows them): each
        `{"path", "size", "text"}`, `text` null for a binary or large file, or once `CODE_SHOWN` bytes are shown."""
        source = self._deployer.export_source(name)
        files, budget = [], CODE_SHOWN
        for path, data in sorted(source.files.items()):
            text = None
            if len(data) <= budget:
                try:
                    text = data.decode("utf-8")
                    budget -= len(data)
                except UnicodeDecodeError:
                    pass
            files.append({"path": path, "size": len(data), "text": text})
        return {"name": name, "version": source.version, "files": files}

    # -- calls -------------------------------------------------------------------------------------------------

    def invoke(self, name: str, method: str, path: str, query: str, headers: dict[str, str],
               body: bytes) -> Answer:
        return self._caller.invoke(name, method, path, query, headers, body)

    def submit(self, name: str, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
               callback: str | None) -> tuple[str, dict[str, str]]:
        """An async call, on disk when this returns: (its id, the 202's body)."""
        call_id = self._async.submit(name, (method, path, query, headers), body, callback)
        return call_id, {"id": call_id, "status": "queued"}

    def call_state(self, call_id: str) -> dict[str, Any] | bytes:
        return self._async.state(call_id)

    def call_function(self, call_id: str) -> str:
        return self._async.function_of(call_id)

    def cancel_call(self, call_id: str) -> dict[str, Any]:
        return self._async.cancel(call_id)

    def _changed(self, name: str, version: Version | None) -> None:
        """A version went live (or the function was deleted): its schedule follows; a deleted one's calls go."""
        if version is None:
            self._scheduler.set(name, None, "")
            self._async.drop(name)
            self.metrics.forget(name)
        else:
            self._scheduler.set(name, version.schedule, version.calling)

    def metrics_text(self) -> bytes:
        """`/metrics`: the counters, with what is counted elsewhere asked for now."""
        process = psutil.Process()
        times = process.cpu_times()
        gauges = {"workers": {name: len(pool.pids()) for name, pool in self._table.named_pools()},
                  "queue": self._async.depths(), "functions": len(self.names()),
                  "cpu_seconds": times.user + times.system, "rss_bytes": process.memory_info().rss}
        return self.metrics.render(gauges)

    @property
    def stopping(self) -> bool:
        return self._table.closing

    # -- upkeep ------------------------------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        return [pid for pool in self._table.pools() for pid in pool.pids()]

    def reap_idle_workers(self) -> None:
        for pool in self._table.pools(retiring=False):
            pool.reap_idle(self.config.idle_timeout)

    def collect_garbage(self) -> None:
        self._deployer.collect_garbage()
        self._async.prune()

    def drain(self, grace: float) -> None:
        """Refuse new calls (and schedule none) and let calls in flight finish, for up to `grace` seconds, while
        the server still answers: /healthz then says `stopping`, a new call `503 shutting_down`."""
        self._scheduler.stop()
        self._table.drain(grace)

    def close(self, grace: float) -> None:
        """Drain, then stop every worker. Async calls that have not started stay on disk for the next start."""
        self._scheduler.stop()
        self._table.close(grace)


def _psutil_requirement() -> str:
    """psutil as the runtime of an export needs it: the version this server runs with."""
    try:
        return f"psutil=={importlib.metadata.version('psutil')}"
    except importlib.metadata.PackageNotFoundError:  # run from a source tree without installed metadata
        return "psutil>=5.9"

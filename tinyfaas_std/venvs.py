"""Virtualenvs for functions, one per distinct set of requirements.

Strategy: a venv is named by a hash of its normalised requirements (and the Python version), lives in
`<functions>/.venvs/<key>/` and is built once: functions with identical requirements share it, so an upload
whose requirements match an existing function's runs no pip at all. A venv is created with
`python -m venv --without-pip` (~0.1 s instead of ~3.5 s for ensurepip) and the server's own pip installs into
it (`pip --python <venv python>`). A venv is built in place and marked ready only at the end; an unmarked folder
is a build that was interrupted and is built again. Venvs are not relocatable (scripts carry absolute paths),
which is why nothing is renamed.

Requirements policy: only PEP 508 names with extras, version specifiers and markers. Lines that would make pip
read other files or change where it installs from (`-r`, `-c`, `-e`, `--index-url` and every other option,
local paths, URLs, `name @ url`) are rejected with 422, so pip reads nothing on the server but what the admin
configured (pip.conf, PIP_* environment). pip runs as the server's user, outside any sandbox, so it installs wheels
only (building a source distribution runs the package's own code) unless `--source-builds allow`, and it sees only
the part of the server's environment that concerns it (never TINYFAAS_PASSWORD).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import PayloadTooLarge, Unprocessable

__all__ = ["Venv", "VenvBuilder", "parse_requirements", "MAX_REQUIREMENTS_BYTES", "MAX_REQUIREMENTS_LINES"]

MAX_REQUIREMENTS_BYTES = 64 * 1024   # a requirements.txt is a list of names; far below this in practice
MAX_REQUIREMENTS_LINES = 200         # likewise: more is a mistake or an attempt to make pip work for hours
PIP_TAIL_CHARS = 2000                # how much of pip's output a 422 quotes
_READY = ".tinyfaas-ready"

# name [extras] [specifiers] [; markers] -- PEP 508 without direct references
_REQUIREMENT = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"      # name
    r"\s*(?:\[\s*[A-Za-z0-9._,\s-]*\])?"                 # extras
    r"\s*(?:(?:===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+"
    r"(?:\s*,\s*(?:===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)*)?"  # specifiers
    r"\s*(?:;[^@]*)?"                                    # markers
)


_OPTION = re.compile(r"(?:^|\s)-")  # pip reads options anywhere on a line, even after a marker


def parse_requirements(text: str) -> list[str]:
    """Normalised requirement lines, or 422/413 naming the line that breaks the policy."""
    if len(text.encode()) > MAX_REQUIREMENTS_BYTES:
        raise PayloadTooLarge(f"requirements exceed {MAX_REQUIREMENTS_BYTES} bytes", code="requirements_too_large")
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if not _REQUIREMENT.fullmatch(line) or "/" in line.split(";", 1)[0] or _OPTION.search(line):
            raise Unprocessable(f"requirements line {number} is not a plain requirement: {line[:200]!r} "
                                "(options, paths and URLs are not allowed)", code="requirements_rejected",
                                line=number)
        lines.append(" ".join(line.split()))
    if len(lines) > MAX_REQUIREMENTS_LINES:
        raise Unprocessable(f"more than {MAX_REQUIREMENTS_LINES} requirements", code="requirements_rejected")
    return lines


@dataclass(frozen=True, slots=True)
class Venv:
    key: str
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


class VenvBuilder:
    """Owns `<functions>/.venvs/`: builds, finds and removes venvs; one build per key at a time."""

    def __init__(self, root: Path, pip_timeout: float, source_builds: bool = False) -> None:
        self.root = root
        self._pip_timeout = pip_timeout
        self._source_builds = source_builds
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._pins: dict[str, int] = {}  # key -> uploads using it right now
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(requirements: list[str]) -> str:
        text = "\n".join(sorted(r.lower() for r in requirements))
        digest = hashlib.sha256(f"{sys.version_info[:3]}\n{text}".encode()).hexdigest()
        return digest[:24]

    def get(self, key: str) -> Venv:
        return Venv(key, self.root / key)

    @contextlib.contextmanager
    def use(self, requirements: list[str]) -> Iterator[tuple[Venv, bool]]:
        """The venv for these requirements and whether it had to be built. It is pinned (never removed as
        unused) until the block ends, by which time the caller has recorded that a function uses it."""
        venv = self.get(self.key(requirements))
        with self._lock:
            key_lock = self._key_locks.setdefault(venv.key, threading.Lock())
            self._pins[venv.key] = self._pins.get(venv.key, 0) + 1
        try:
            with key_lock:
                built = not (venv.path / _READY).exists()
                if built:
                    self._build_clean(venv, requirements)
            yield venv, built
        finally:
            with self._lock:
                self._pins[venv.key] -= 1
                if not self._pins[venv.key]:
                    del self._pins[venv.key]

    def _build_clean(self, venv: Venv, requirements: list[str]) -> None:
        shutil.rmtree(venv.path, ignore_errors=True)
        try:
            self._build(venv, requirements)
        except BaseException:
            shutil.rmtree(venv.path, ignore_errors=True)
            raise

    def _build(self, venv: Venv, requirements: list[str]) -> None:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv.path)],
                       check=True, capture_output=True, timeout=120)
        if requirements:
            req_file = venv.path / "requirements.txt"
            req_file.write_text("\n".join(requirements) + "\n")
            cmd = [sys.executable, "-m", "pip", "--python", str(venv.python), "install", "--no-input",
                   "--disable-pip-version-check", "--no-warn-script-location", "-r", str(req_file)]
            if not self._source_builds:  # building an sdist runs the package's own code, as the server's user
                cmd.insert(cmd.index("-r"), "--only-binary=:all:")
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=self._pip_timeout,
                                      stdin=subprocess.DEVNULL, env=_pip_environment())
            except subprocess.TimeoutExpired:
                raise Unprocessable(f"pip did not finish within {self._pip_timeout:g} s",
                                    code="requirements_timeout") from None
            if done.returncode != 0:
                tail = (done.stdout + done.stderr)[-PIP_TAIL_CHARS:]
                raise Unprocessable("pip could not install the requirements", code="requirements_failed",
                                    pip_output=tail)
        (venv.path / _READY).write_text("\n".join(requirements) + "\n")

    def remove_unused(self, in_use: Callable[[], set[str]]) -> None:
        """Remove venvs that are neither pinned by an upload nor in `in_use()`, asked under this lock so that
        an upload that has just released its pin is already counted by its caller."""
        with self._lock:
            used = in_use()
            for path in self.root.iterdir():
                if path.name not in used and path.name not in self._pins and path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)


_PIP_NAMES = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "NETRC", "SSL_CERT_FILE", "SSL_CERT_DIR",
              "REQUESTS_CA_BUNDLE", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"}


def _pip_environment() -> dict[str, str]:
    """What pip may see of the server's environment: where it installs from and how it gets there (PIP_*, pip's
    config, proxies, certificates), never the server's own settings such as TINYFAAS_PASSWORD."""
    return {key: value for key, value in os.environ.items()
            if key in _PIP_NAMES or key.startswith(("PIP_", "XDG_"))}

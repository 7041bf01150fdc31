"""Test helpers: the real server in a subprocess, a multipart encoder, and a wheel builder (no network)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUTH = "Basic " + base64.b64encode(b"admin:1234").decode()
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


def multipart_body(fields: dict[str, str | tuple[str, bytes]]) -> tuple[bytes, str]:
    """Encode form fields; a tuple value is a file part (filename, data)."""
    boundary = "----tinyfaas" + uuid.uuid4().hex
    out = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename, data = value
            out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                       f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        else:
            out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                       + value.encode() + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def build_wheel(folder: Path, dist: str, version: str, module: str, code: str) -> Path:
    """A minimal pure-Python wheel (PEP 427) holding one module, written with zipfile."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{module}.py": code.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tinyfaas-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    records = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{name},sha256={digest},{len(data)}")
    records.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(records) + "\n").encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@dataclass
class Server:
    """`python -m tinyfaas_std` on 127.0.0.1, port 0, with its own folders."""
    root: Path
    wheels: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    port: int = 0
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)   # added to the server's environment
    prefix: list[str] = field(default_factory=list)     # e.g. setpriv ... to run it as another user
    python: str = sys.executable
    cwd: Path = REPO

    def start(self) -> Server:
        self.log_path = self.root / "server.log"
        env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(self.wheels),
               "PIP_CONFIG_FILE": os.devnull, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("PIP_EXTRA_INDEX_URL", None)
        # Tests send wrong credentials on purpose, from one address: only the throttling tests turn it on.
        throttle = [] if "--max-failed-logins" in self.args else ["--max-failed-logins", "0"]
        cmd = [*self.prefix, self.python, "-m", "tinyfaas_std", "--host", "127.0.0.1", "--port", "0",
               "--functions-dir", str(self.root / "functions"), "--data-dir", str(self.root / "data"), *throttle,
               *self.args]
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=open(self.log_path, "ab"), text=True)
        line = self.proc.stdout.readline()
        if "serving on" not in line:
            raise RuntimeError(f"server did not start: {line!r}\n{self.log()}")
        self.port = int(line.split("://", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc.stdout.close()
        return code

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def connect(self, timeout: float = 60) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None,
                auth: str | None = AUTH, conn: http.client.HTTPConnection | None = None) -> Response:
        own = conn is None
        conn = conn or self.connect()
        hdrs = dict(headers or {})
        if auth is not None:
            hdrs["Authorization"] = auth
        if isinstance(body, str):
            body = body.encode()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, raw)
        finally:
            if own:
                conn.close()

    def upload(self, name: str, source: str | bytes, requirements: str | None = None,
               fields: dict[str, str] | None = None, **kw: Any) -> Response:
        """Upload `source` (code, or an archive's bytes) as `name`; `fields` are more form fields (calling, env,
        secrets, timeout, memory_mb, max_workers), sent as text fields."""
        fields = {"name": name, "file": ("func.py", source.encode() if isinstance(source, str) else source),
                  **(fields or {})}
        if requirements is not None:
            fields["requirements"] = ("requirements.txt", requirements.encode())
        body, ctype = multipart_body(fields)  # type: ignore[arg-type]
        return self.request("POST", "/admin/upload", body, {"Content-Type": ctype}, **kw)

    def call(self, name: str, payload: Any = None, **kw: Any) -> Response:
        body = b"" if payload is None else json.dumps(payload).encode()
        return self.request("POST", f"/function/{name}", body, {"Content-Type": "application/json"}, **kw)


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh socket and read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

"""Export (SPEC 14), end to end with real parts: functions of the three calling conventions, each with env, a secret
and a requirement, deployed to the real server; exported through the client verb and through the HTTP route; each
export served by `serve-one` from its own folder (a subprocess on 127.0.0.1, run from that folder so it uses the
runtime copied into it, its workers in a venv this module builds from the local wheels), which must answer the same
calls as the server the same way. The manifests are read back with PyYAML; the secret's value must be nowhere.

One server, one venv and three serve-one processes serve the whole module."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from hypothesis import example, given, strategies as st

from harness import AUTH, REPO, Response, Server
from tinyfaas_std import export

SECRET = "s3cret-" + uuid.uuid4().hex
NOTE = ' a: "quoted" # not a comment \\ ü'   # an env value YAML would misread if written carelessly
ONE_AUTH = ("ops", "one-password-" + uuid.uuid4().hex[:8])
SETTINGS = {"env": f"UNITS=metric\nNOTE={NOTE}\n", "secrets": f"API_KEY={SECRET}\n", "timeout": "5",
            "memory_mb": "256", "max_workers": "2"}

ARGS = """import os
import greetlib


def main(who, shout=False, fail=False, what="greet"):
    if fail:
        raise ValueError("asked to fail: " + who)
    if what == "pid":
        return os.getpid()
    print("greeting", who)
    text = greetlib.greet(who)
    return {"text": text.upper() if shout else text, "units": os.environ.get("UNITS"),
            "note": os.environ.get("NOTE"), "key": os.environ.get("API_KEY"), "env": sorted(os.environ),
            "function": os.environ.get("TINYFAAS_FUNCTION"), "version": os.environ.get("TINYFAAS_VERSION")}
"""
EVENT = """import os
import greetlib


def main(event, context):
    if isinstance(event, dict) and event.get("fail"):
        raise RuntimeError("the event asked to fail")
    who = event.get("who") if isinstance(event, dict) else event
    return {"greeting": greetlib.greet(str(who)), "event": event, "function": context.function,
            "version": context.version, "key": os.environ.get("API_KEY"), "env": sorted(os.environ)}
"""
HTTP = """import os
from pathlib import Path

import greetlib
from lib.helpers import shout

HERE = Path(__file__).parent


def main(request):
    path = request["path"]
    if path == "/fail":
        raise KeyError("no such thing")
    if path == "/text":
        return shout(greetlib.greet(request["params"].get("who", "nobody")))
    if path == "/data":
        return {"statusCode": 201, "headers": {"X-Custom": "yes", "Content-Type": "text/plain; charset=utf-8"},
                "body": (HERE / "data" / "hello.txt").read_text()}
    if path == "/empty":
        return None
    return {"method": request["method"], "path": path, "query": request["query"], "body": request["body"],
            "type": request["headers"].get("content-type"), "key": os.environ.get("API_KEY"),
            "units": os.environ.get("UNITS"), "env": sorted(os.environ)}
"""
MARKER = "shadow-module-imported-" + uuid.uuid4().hex[:8]
SHADOWED = {  # modules named like the standard library's, which serve-one itself imports: they must stay the function's
    "func.py": b"import gzip\nimport tempfile\n\n\ndef main():\n    return [gzip.WHO, tempfile.WHO]\n",
    **{f"{module}.py": (f"import sys\nprint({MARKER!r})\nprint({MARKER!r}, file=sys.stderr)\n"
                        f"WHO = 'the function\\'s {module}'\n").encode() for module in ("gzip", "tempfile")}}
HTTP_FILES = {"func.py": HTTP.encode(), "lib/__init__.py": b"", "lib/helpers.py": b"def shout(s):\n    return "
              b"s.upper() + '!'\n", "data/hello.txt": "hello from a data file \u263a\n".encode()}


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tf(port: int, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    """The client, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYFAAS_")}
    env.update(HOME=str(REPO / "tests" / "no-such-home"), TINYFAAS_USER="admin", TINYFAAS_PASSWORD="1234")
    return subprocess.run([sys.executable, "-m", "tinyfaas_std", *args, "--url", f"http://127.0.0.1:{port}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60, umask=umask)


# -- the module's server, exports, venv and serve-one processes ---------------------------------------------------

@pytest.fixture(scope="module")
def deployed(server: Server) -> Server:
    uploads = [("ex-args", ARGS.encode(), {"calling": "args"}), ("ex-event", EVENT.encode(), {"calling": "event"}),
               ("ex-http", _tar_gz(HTTP_FILES), {"calling": "http"})]
    for name, source, calling in uploads:
        resp = server.upload(name, source, requirements="greetlib==1.0\n", fields={**SETTINGS, **calling})
        assert resp.status == 200, resp.raw
    assert server.upload("ex-plain", "def main():\n    return 1\n").status == 200
    assert server.upload("ex-shadow", _tar_gz(SHADOWED)).status == 200
    return server


@pytest.fixture(scope="module")
def exports(deployed: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each function's export, written by the client verb."""
    root = tmp_path_factory.mktemp("exports")
    folders = {}
    for name in ("ex-args", "ex-event", "ex-http", "ex-plain", "ex-shadow"):
        done = tf(deployed.port, "export", name, "--out", str(root / name))
        assert done.returncode == 0, done.stderr
        assert f"exported to {root / name}" in done.stdout
        folders[name] = root / name
    return folders


@pytest.fixture(scope="module")
def worker_python(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> str:
    """A venv with the functions' requirement, from the local wheels: the image's Python, as a test has it."""
    venv = tmp_path_factory.mktemp("worker-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_CONFIG_FILE": os.devnull}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--disable-pip-version-check", "greetlib==1.0"], check=True, env=env, timeout=120)
    return str(venv / "bin" / "python")


@dataclass
class One:
    """A serve-one process; its stdout (the address line, then call records) and stderr are files."""
    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    err: Path
    auth: str | None = None

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                auth: str | None = "default") -> Response:
        return _request(self.port, method, path, body, headers, self.auth if auth == "default" else auth)


def _request(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
             auth: str | None = None) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={**(headers or {}), **({"Authorization": auth} if auth else {})})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def _basic(user: str, password: str) -> str:
    import base64
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def serve_one(folder: Path, python: str, env: dict[str, str] | None = None, *args: str, wait: bool = True,
              cwd: Path | None = None, prefix: tuple[str, ...] = (),
              runner: str = sys.executable) -> One | subprocess.CompletedProcess[bytes]:
    """`python -m tinyfaas_std serve-one FOLDER` run from FOLDER/runtime (so the runtime copied there is the one
    imported, as in the image), on a free port, by `runner` after `prefix` (setpriv, to run it as another user). The
    environment carries a marker no worker may see."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TINYFAAS_", "PORT"))}
    base["HOST_ONLY_MARKER"] = "must-not-reach-a-worker"
    cmd = [*prefix, runner, "-m", "tinyfaas_std", "serve-one", str(folder), "--host", "127.0.0.1", "--port", "0",
           "--python", python, "--secrets-dir", str(folder.parent / "no-secrets-here"), *args]
    cwd = cwd or folder / "runtime"
    if not wait:
        return subprocess.run(cmd, cwd=cwd, env={**base, **(env or {})}, capture_output=True, timeout=60)
    out, err = folder.parent / f"{folder.name}.out", folder.parent / f"{folder.name}.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**base, **(env or {})}, stdout=stdout, stderr=stderr)
    deadline = time.monotonic() + 30
    while "serving" not in (text := out.read_text()) and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve-one exited {proc.returncode}:\n{err.read_text()}")
        time.sleep(0.02)
    line = text.splitlines()[0]
    return One(proc, int(line.rsplit(":", 1)[1]), out, err)


@pytest.fixture(scope="module")
def ones(exports: dict[str, Path], worker_python: str) -> Iterator[dict[str, One]]:
    """serve-one for each convention: the args one with Basic Auth, the event one reading its secret from an
    OpenFaaS-style secret file, the others from the environment."""
    secrets_dir = exports["ex-event"].parent / "openfaas-secrets"
    secrets_dir.mkdir()
    (secrets_dir / export.secret_name("ex-event")).write_text(f"# faas-cli secret create --from-file\n"
                                                              f"API_KEY={SECRET}\n")
    starts = {
        "ex-args": ({"API_KEY": SECRET, "TINYFAAS_USERNAME": ONE_AUTH[0], "TINYFAAS_PASSWORD": ONE_AUTH[1]}, ()),
        "ex-event": ({}, ("--secrets-dir", str(secrets_dir))),
        "ex-http": ({"API_KEY": SECRET}, ()),
        "ex-shadow": ({}, ()),
    }
    ones: dict[str, One] = {}
    try:
        for name, (env, args) in starts.items():
            ones[name] = serve_one(exports[name], worker_python, env, *args)  # type: ignore[assignment]
        ones["ex-args"].auth = _basic(*ONE_AUTH)
        yield ones
    finally:  # also when a later one failed to start: none is left running
        for one in ones.values():
            one.proc.send_signal(signal.SIGTERM)
        codes = {name: one.proc.wait(30) for name, one in ones.items()}
    assert codes == {name: 0 for name in ones}, {name: one.err.read_text()[-2000:] for name, one in ones.items()}


# -- the export's files ----------------------------------------------------------------------------------------------

def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_export_holds_the_function_as_uploaded_and_the_runtime(exports: dict[str, Path]) -> None:
    args = _files(exports["ex-args"])
    generated = {"func.py", "requirements.txt", "tinyfaas.json", "Dockerfile", ".dockerignore", "knative.yaml",
                 "openfaas.yml", "README.md"}
    assert {p for p in args if not p.startswith("runtime/")} == generated
    assert args["func.py"] == ARGS.encode() and args["requirements.txt"] == b"greetlib==1.0\n"
    runtime = {p.name for p in (REPO / "tinyfaas_std").glob("*.py")}
    assert {p.removeprefix("runtime/tinyfaas_std/") for p in args if p.startswith("runtime/")} == runtime
    http = _files(exports["ex-http"])  # from an archive: its module layout kept
    assert {p: http[p] for p in HTTP_FILES} == HTTP_FILES
    assert _files(exports["ex-plain"])["requirements.txt"] == b""
    assert os.stat(exports["ex-args"] / "func.py").st_mode & 0o777 == 0o644


def test_no_secret_value_is_anywhere_in_an_export(deployed: Server, exports: dict[str, Path]) -> None:
    for folder in exports.values():
        for path, data in _files(folder).items():
            assert SECRET.encode() not in data, f"{folder.name}/{path}"
    for name in exports:
        answer = deployed.request("GET", f"/admin/functions/{name}/export")
        with tarfile.open(fileobj=io.BytesIO(answer.raw), mode="r:gz") as tar:
            for member in tar.getmembers():
                assert SECRET.encode() not in tar.extractfile(member).read(), member.name  # type: ignore[union-attr]
    assert "API_KEY" in (exports["ex-args"] / "tinyfaas.json").read_text()  # the name is there, not the value


def test_the_route_answers_the_same_files_as_a_tar_gz(deployed: Server, exports: dict[str, Path]) -> None:
    answer = deployed.request("GET", "/admin/functions/ex-http/export")
    assert answer.status == 200 and answer.headers["content-type"] == "application/gzip"
    assert answer.headers["content-disposition"] == 'attachment; filename="ex-http-v1.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(answer.raw), mode="r:gz") as tar:
        members = tar.getmembers()
        assert all(m.isreg() and m.mode == 0o644 and m.uid == 0 and not m.name.startswith(("/", "..")) for m in members)
        files = {m.name: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    assert files == _files(exports["ex-http"])
    assert deployed.request("GET", "/admin/functions/ex-http/export").raw == answer.raw  # the same bytes again
    head = deployed.request("HEAD", "/admin/functions/ex-http/export")
    assert head.status == 200 and head.raw == b"" and head.headers["content-length"] == str(len(answer.raw))
    missing = deployed.request("GET", "/admin/functions/ex-none/export")
    assert missing.status == 404 and missing.json["error"]["code"] == "function_not_found"
    assert deployed.request("GET", "/admin/functions/ex-http/export", auth=None).status == 401


def test_files_the_export_writes_itself_cannot_come_from_the_function(deployed: Server) -> None:
    clashes = ["Dockerfile.dockerignore", "Dockerfile/x.txt", "OpenFaaS.yml", "README.md/y",
               "Requirements.txt", "dockerfile", "runtime/x.py"]  # as named, in a folder so named, or but for case
    fine = {"func.py": b"def main():\n    return 1\n", "lib/README.md": b"", "lib/Dockerfile": b"",
            "requirements.txt": b"", "runtimes.py": b""}
    assert deployed.upload("ex-clash", _tar_gz({**fine, **{path: b"mine\n" for path in clashes}})).status == 200
    answer = deployed.request("GET", "/admin/functions/ex-clash/export")
    assert answer.status == 409 and answer.json["error"]["code"] == "export_conflict"
    assert answer.json["error"]["files"] == clashes


def test_under_a_strict_umask_the_client_still_writes_files_others_may_read(deployed: Server, tmp_path: Path) -> None:
    out = tmp_path / "private" / "ex-http"  # the image's non-root user reads what COPY takes from here
    assert tf(deployed.port, "export", "ex-http", "--out", str(out), umask=0o077).returncode == 0
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert {path: mode for path, mode in modes.items() if mode != (0o755 if (out / path).is_dir() else 0o644)} == {}
    assert {"lib", "runtime/tinyfaas_std", "data/hello.txt"} <= set(modes)


def test_env_names_the_platforms_reserve_cannot_be_exported(deployed: Server) -> None:
    assert deployed.upload("ex-reserved", "def main():\n    return 1\n",
                           fields={"env": "PORT=9000\nK_SERVICE=x\nOK=1\n", "secrets": "K_REVISION=y\n"}).status == 200
    answer = deployed.request("GET", "/admin/functions/ex-reserved/export")
    assert answer.status == 409 and answer.json["error"]["code"] == "export_conflict"
    assert answer.json["error"]["env"] == ["K_REVISION", "K_SERVICE", "PORT"]
    assert "K_REVISION, K_SERVICE, PORT" in answer.json["error"]["message"]


def test_the_client_writes_only_into_a_new_or_empty_folder(deployed: Server, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    full = tf(deployed.port, "export", "ex-plain", "--out", str(tmp_path / "full"))
    assert full.returncode == 2 and "not an empty folder" in full.stderr
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    assert tf(deployed.port, "export", "ex-plain", "--out", str(tmp_path / "file")).returncode == 2
    unknown = tf(deployed.port, "export", "ex-none", "--out", str(tmp_path / "new"))
    assert unknown.returncode == 3 and "function_not_found" in unknown.stderr and not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    done = tf(deployed.port, "export", "ex-plain", "--out", str(tmp_path / "empty"), "--json")
    assert done.returncode == 0 and "func.py" in json.loads(done.stdout)["files"]


# -- the manifests -----------------------------------------------------------------------------------------------

def test_knative_yaml_is_a_service_with_the_functions_settings(exports: dict[str, Path]) -> None:
    doc = yaml.safe_load((exports["ex-args"] / "knative.yaml").read_text())
    assert doc["apiVersion"] == "serving.knative.dev/v1" and doc["kind"] == "Service"
    assert doc["metadata"]["name"] == "ex-args"
    spec = doc["spec"]["template"]["spec"]
    assert spec["containerConcurrency"] == 2 and spec["timeoutSeconds"] == 5 + 5  # serve-one's own 504 first
    assert type(spec["containerConcurrency"]) is int and type(spec["timeoutSeconds"]) is int  # as Knative reads them
    (container,) = spec["containers"]
    assert container["image"] == "REGISTRY/ex-args:latest"
    assert container["resources"]["limits"]["memory"] == "576Mi"  # 2 workers of 256 MiB, and serve-one's 64
    assert "2 workers of 256 MiB" in (exports["ex-args"] / "knative.yaml").read_text().splitlines()[2]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"] == [{"containerPort": 8080}]
    env = {item["name"]: item for item in container["env"]}
    assert len(env) == len(container["env"]) == 3  # each name once: a secret is never also a value
    assert env["UNITS"] == {"name": "UNITS", "value": "metric"} and env["NOTE"]["value"] == NOTE
    assert env["API_KEY"] == {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "ex-args-secrets",
                                                                               "key": "API_KEY"}}}
    plain = yaml.safe_load((exports["ex-plain"] / "knative.yaml").read_text())["spec"]["template"]["spec"]
    assert "env" not in plain["containers"][0] and plain["containerConcurrency"] == 4  # the server's flag
    assert plain["timeoutSeconds"] == 2 + 5  # the module server's --timeout 2


def test_openfaas_yml_is_a_stack_file_with_the_same_settings(exports: dict[str, Path]) -> None:
    text = (exports["ex-event"] / "openfaas.yml").read_text()
    assert "# serve-one ends a call after 5s;" in text  # a Go duration, beside the gateway's
    doc = yaml.safe_load(text)
    assert str(doc["version"]) == "1.0" and doc["provider"]["name"] == "openfaas"
    function = doc["functions"]["ex-event"]
    assert function["image"] == "REGISTRY/ex-event:latest"
    assert (function["lang"], function["handler"]) == ("dockerfile", ".")  # faas-cli up builds this Dockerfile
    assert function["secrets"] == ["ex-event-secrets"] and function["limits"]["memory"] == "576Mi"
    environment = function["environment"]
    assert environment == {"UNITS": "metric", "NOTE": NOTE}  # no of-watchdog settings: there is no watchdog
    assert function["labels"]["com.openfaas.scale.target"] == "2"
    assert function["annotations"]["com.openfaas.health.http.path"] == "/healthz"
    assert function["annotations"]["com.openfaas.ready.http.path"] == "/healthz"


def test_the_dockerfile_installs_exactly_the_requirements_as_a_numeric_non_root_user(
        exports: dict[str, Path]) -> None:
    def instructions(name: str) -> list[tuple[str, str]]:
        lines = (exports[name] / "Dockerfile").read_text().splitlines()
        return [tuple(line.split(" ", 1)) for line in lines if line and not line.startswith("#")]  # type: ignore

    steps = instructions("ex-args")
    assert steps[0] == ("FROM", f"python:{sys.version_info[0]}.{sys.version_info[1]}-slim")
    runs = [json.loads(arg) for op, arg in steps if op == "RUN"]
    assert runs[0][:4] == ["python", "-m", "pip", "install"] and runs[0][4].startswith("psutil")  # serve-one's
    assert runs[1] == ["python", "-m", "venv", "/opt/function"]  # the function's own: it sees no psutil
    assert runs[2] == ["/opt/function/bin/pip", "install", "-r", "requirements.txt"]
    assert runs[3] == ["chmod", "-R", "a+rX", "/app"] and steps.index(("RUN", json.dumps(runs[3]))) < \
        steps.index(("USER", "10001:10001"))  # as root: files private to whoever exported them become readable
    assert (exports["ex-args"] / "requirements.txt").read_text().splitlines() == ["greetlib==1.0"]
    user = dict(steps)["USER"].split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user)
    assert dict(steps)["EXPOSE"] == "8080"
    assert json.loads(dict(steps)["CMD"]) == ["python", "-m", "tinyfaas_std", "serve-one", "/app", "--python",
                                              "/opt/function/bin/python"]
    assert [arg for op, arg in steps if op == "WORKDIR"][-1] == "/app/runtime"  # python -m: the cwd comes first
    plain = [json.loads(arg) for op, arg in instructions("ex-plain") if op == "RUN"]
    assert plain[1:] == [["python", "-m", "venv", "--without-pip", "/opt/function"], ["chmod", "-R", "a+rX", "/app"]]


def test_the_settings_file_and_readme(exports: dict[str, Path]) -> None:
    doc = json.loads((exports["ex-http"] / "tinyfaas.json").read_text())
    assert doc == {"format": 1, "name": "ex-http", "version": "1", "calling": "http",
                   "env": {"UNITS": "metric", "NOTE": NOTE}, "secrets": ["API_KEY"],
                   "secret_name": "ex-http-secrets", "timeout": 5.0, "memory_mb": 256, "max_workers": 2,
                   "requirements": ["greetlib==1.0"]}
    readme = (exports["ex-http"] / "README.md").read_text()
    for command in ("docker build -t REGISTRY/ex-http:latest .", "docker push", "kubectl apply -f knative.yaml",
                    'kubectl create secret generic ex-http-secrets --from-literal=API_KEY="$API_KEY"',
                    "faas-cli secret create ex-http-secrets", "faas-cli deploy -f openfaas.yml"):
        assert command in readme


def test_an_export_follows_the_live_version(deployed: Server, tmp_path: Path) -> None:
    assert deployed.request("PATCH", "/admin/functions/ex-plain", b'{"timeout": 7, "memory_mb": 128, '
                                                                  b'"max_workers": 3, "env": {"MODE": "on"}}').status == 200
    assert tf(deployed.port, "export", "ex-plain", "--out", str(tmp_path / "v2")).returncode == 0
    doc = yaml.safe_load((tmp_path / "v2" / "knative.yaml").read_text())["spec"]["template"]["spec"]
    assert (doc["containerConcurrency"], doc["timeoutSeconds"]) == (3, 7 + 5)
    assert doc["containers"][0]["resources"]["limits"]["memory"] == f"{3 * 128 + 64}Mi"
    assert doc["containers"][0]["env"] == [{"name": "MODE", "value": "on"}]
    assert json.loads((tmp_path / "v2" / "tinyfaas.json").read_text())["version"] == "2"


def test_kubernetes_names_never_collide_and_leave_room_for_revisions() -> None:
    label = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # DNS-1035
    changed = ["My_Fn", "MY_FN", "my_fn", "9lives", "a" * 64, "a" * 63 + "b", "x" * 58]
    names = {name: export.resource_name(name) for name in ["my-fn", "x" * 57, *changed]}
    assert names["my-fn"] == "my-fn" and names["x" * 57] == "x" * 57  # a name that is a label stays as it is
    assert len(set(names.values())) == len(names)  # a name that had to change carries a hash of the original
    assert all(label.fullmatch(n) and len(n) + len("-00001") <= 63 for n in names.values())  # Knative's revisions
    assert names["My_Fn"].startswith("my-fn-") and names["9lives"].startswith("fn-9lives-")
    assert export.secret_name("a" * 64) == names["a" * 64] + "-secrets"  # a Secret's name may be longer


def test_yaml_keys_longer_than_yaml_allows_implicit_keys_are_explicit() -> None:
    long = {"E" * 1100: "value", "n": {"K" * 2000: {"x": 1}, "L" * 1024: [1]}, "l": [{"M" * 1500: "y", "z": 2}]}
    assert yaml.safe_load(export.yaml(long)) == long  # YAML caps an implicit key at 1024 characters


@given(st.text(), st.text())
@example("\ud800\x85\u2028\u2029\x7f\ufeff", "on")
@example("", "null")
def test_yaml_written_by_hand_reads_back_the_same(value: str, key: str) -> None:
    doc = {key or "k": [value, {"k": value, "n": 1}], "plain": {}}
    assert yaml.safe_load(export.yaml(doc)) == doc


# -- serve-one answers as the server does -------------------------------------------------------------------------

def _shape(resp: Response) -> tuple[Any, ...]:
    """What must be the same on both: status, the headers a caller reads, the body without the call's own id,
    duration and traceback (its file paths differ); the length of any other body (HEAD has none to compare)."""
    body: Any = resp.raw
    headers = {k: resp.headers.get(k) for k in ("content-type", "allow", "x-custom")}
    if resp.headers.get("content-type") != "application/json":
        headers["content-length"] = resp.headers.get("content-length")
    elif resp.raw:
        body = json.loads(resp.raw)
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in ("id", "duration")}
            if isinstance(body.get("error"), dict):
                body["error"] = {k: v for k, v in body["error"].items() if k != "traceback"}
    return resp.status, headers, "x-call-id" in resp.headers, body


def _compare(server: Server, one: One, name: str, calls: list[tuple[str, str, bytes, dict[str, str]]]) -> None:
    for method, sub, body, headers in calls:
        expected = _shape(server.request(method, f"/function/{name}{sub}", body, headers))
        assert _shape(one.request(method, f"/function/{name}{sub}", body, headers)) == expected, (method, sub)
        if not sub:  # the function's own root, at / as well
            assert _shape(one.request(method, "/", body, headers)) == expected, (method, "/")


def test_an_args_function_answers_as_on_the_server(deployed: Server, ones: dict[str, One]) -> None:
    json_type = {"Content-Type": "application/json"}
    _compare(deployed, ones["ex-args"], "ex-args", [
        ("POST", "", b'["ann"]', json_type),
        ("POST", "", b'{"args": ["bob"], "kwargs": {"shout": true}}', json_type),
        ("POST", "", b'{"args": ["cy"], "kwargs": {"fail": true}}', json_type),   # raises: 500
        ("POST", "", b"[]", json_type),                                            # TypeError: 500
        ("POST", "", b'{"args": [', json_type),                                    # 400 bad_json
        ("GET", "", b"", {}),                                                      # 405, Allow: POST
        ("POST", "/sub", b"[]", json_type),                                        # 404: no sub-paths
    ])
    assert ones["ex-args"].request("POST", "/sub", b"[]").json["error"]["code"] == "path_not_found"  # only http's
    failed = ones["ex-args"].request("POST", "/", b'{"args": ["cy"], "kwargs": {"fail": true}}').json
    assert failed["error"]["type"] == "ValueError" and failed["error"]["code"] == "function_error"


def test_an_event_function_answers_as_on_the_server(deployed: Server, ones: dict[str, One]) -> None:
    _compare(deployed, ones["ex-event"], "ex-event", [
        ("POST", "", b'{"who": "eve"}', {}), ("POST", "", b'"plain"', {}), ("POST", "", b"", {}),
        ("POST", "", b'{"fail": true}', {}), ("POST", "", b"[1,", {}), ("PUT", "", b"{}", {})])


def test_an_http_function_answers_as_on_the_server(deployed: Server, ones: dict[str, One]) -> None:
    _compare(deployed, ones["ex-http"], "ex-http", [
        ("GET", "", b"", {}), ("GET", "/text?who=zed", b"", {}), ("POST", "/echo?a=1&a=2", b"hello",
                                                                     {"Content-Type": "text/plain"}),
        ("PUT", "", b"\xff\xfe", {}), ("GET", "/data", b"", {}), ("HEAD", "/data", b"", {}),
        ("GET", "/empty", b"", {}), ("GET", "/fail", b"", {}), ("OPTIONS", "/x/y", b"", {}),
        ("DELETE", "", b"", {})])
    for method, sub in (("GET", "/foo/bar?x=1"), ("POST", "/echo?a=1"), ("GET", "/data"), ("GET", "/function"),
                        ("GET", "/function/other/x")):
        expected = _shape(deployed.request(method, f"/function/ex-http{sub}", b"hi"))
        assert _shape(ones["ex-http"].request(method, sub, b"hi")) == expected, sub  # Knative's URL is the root
    data = ones["ex-http"].request("GET", "/function/ex-http/data")
    assert data.status == 201 and data.headers["x-custom"] == "yes" and "\u263a" in data.raw.decode()


def test_workers_get_their_env_and_secrets_and_nothing_of_serve_ones_environment(deployed: Server,
                                                                                 ones: dict[str, One]) -> None:
    on_server = deployed.call("ex-args", ["ann"]).json["result"]
    here = ones["ex-args"].request("POST", "/", b'["ann"]').json["result"]
    assert here == on_server
    assert (here["key"], here["units"], here["note"], here["version"]) == (SECRET, "metric", NOTE, "1")
    assert set(here["env"]) == {"PATH", "HOME", "TMPDIR", "LANG", "TINYFAAS_FUNCTION", "TINYFAAS_VERSION", "UNITS",
                                "NOTE", "API_KEY"}  # no HOST_ONLY_MARKER, no TINYFAAS_PASSWORD
    event = ones["ex-event"].request("POST", "/", b'{"who": "x"}').json["result"]
    assert event["key"] == SECRET  # read from the OpenFaaS secret file


def test_a_browser_on_another_site_may_call_the_function(ones: dict[str, One]) -> None:
    browser = {"Origin": "https://app.example", "Sec-Fetch-Site": "cross-site"}  # serve-one has no admin routes
    assert ones["ex-event"].request("POST", "/", b'{"who": "web"}', browser).status == 200
    assert ones["ex-http"].request("PUT", "/any/path", b"x", browser).status == 200


def test_workers_stay_warm(ones: dict[str, One]) -> None:
    pids = {ones["ex-args"].request("POST", "/", b'{"args": ["p"], "kwargs": {"what": "pid"}}').json["result"]
            for _ in range(3)}
    assert len(pids) == 1 and pids != {ones["ex-args"].proc.pid}


def test_health_answers_without_credentials_and_no_admin_route_exists(ones: dict[str, One]) -> None:
    one = ones["ex-args"]  # the one with Basic Auth
    for path in ("/healthz", "/_/health", "/_/ready"):
        health = one.request("GET", path, auth=None)
        assert health.status == 200 and health.json == {"status": "ok"}
    for method, path in (("GET", "/admin/functions"), ("GET", "/admin/functions/ex-args"), ("POST", "/admin/upload"),
                         ("GET", "/admin/status"), ("GET", "/metrics"), ("GET", "/admin/logs/ex-args")):
        answer = one.request(method, path)
        assert answer.status == 404 and answer.json["error"]["code"] == "path_not_found", path
    other = one.request("POST", "/function/ex-event", b"[]")
    assert other.status == 404 and other.json["error"]["code"] == "function_not_found"


def test_basic_auth_only_when_its_variables_are_set(ones: dict[str, One]) -> None:
    guarded = ones["ex-args"]
    refused = guarded.request("POST", "/", b'["a"]', auth=None)
    assert refused.status == 401 and refused.headers["www-authenticate"] == 'Basic realm="Login Required"'
    assert guarded.request("POST", "/", b'["a"]', auth=_basic(ONE_AUTH[0], "wrong")).status == 401
    assert guarded.request("POST", "/", b'["a"]', auth=AUTH).status == 401  # not the server's account
    assert guarded.request("POST", "/", b'["a"]').status == 200
    assert ones["ex-event"].request("POST", "/", b"1").status == 200
    assert "no authentication" in ones["ex-event"].err.read_text()
    assert "no authentication" not in guarded.err.read_text()


def test_each_call_is_a_json_line_on_stdout(ones: dict[str, One]) -> None:
    call_id = ones["ex-http"].request("GET", "/function/ex-http/text?who=log").headers["x-call-id"]
    deadline = time.monotonic() + 5
    while call_id not in ones["ex-http"].out.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    records = [json.loads(line) for line in ones["ex-http"].out.read_text().splitlines()[1:]]
    record = next(r for r in records if r["id"] == call_id)
    assert record["function"] == "ex-http" and record["status"] == "ok" and record["request"]["path"] == "/text"


def test_settings_from_the_folder_env_from_the_platform_and_secrets_by_name(exports: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    from tinyfaas_std import serve_one

    keys = tmp_path / "keys"  # a Kubernetes Secret as OpenFaaS mounts it: a file per key
    keys.mkdir()
    (keys / "API_KEY").write_text("from-a-file\n")
    function = serve_one.load(exports["ex-args"], {"UNITS": "imperial", "OTHER": "x"}, keys)
    assert function.env == {"UNITS": "imperial", "NOTE": NOTE} and function.secrets == {"API_KEY": "from-a-file"}
    assert (function.name, function.version, function.calling) == ("ex-args", "1", "args")
    assert (function.timeout, function.memory_mb, function.max_workers) == (5.0, 256, 2)
    assert serve_one.load(exports["ex-args"], {"API_KEY": "env-wins"}, keys).secrets == {"API_KEY": "env-wins"}
    with pytest.raises(serve_one.FolderError, match="the secret API_KEY is not set"):
        serve_one.load(exports["ex-args"], {}, tmp_path / "none")


def test_the_functions_modules_never_run_in_serve_one_itself(ones: dict[str, One]) -> None:
    one = ones["ex-shadow"]
    for _ in range(2):
        answer = one.request("POST", "/", b"[]")
        assert answer.status == 200 and answer.json["result"] == ["the function's gzip", "the function's tempfile"]
    assert MARKER not in one.out.read_text() + one.err.read_text()


def test_serve_one_runs_the_runtime_copied_into_the_folder(exports: dict[str, Path]) -> None:
    done = subprocess.run([sys.executable, "-c", "import tinyfaas_std.serve_one as m; print(m.__file__)"],
                          cwd=exports["ex-plain"] / "runtime", capture_output=True, text=True, timeout=30)
    assert Path(done.stdout.strip()).parent == exports["ex-plain"] / "runtime" / "tinyfaas_std"


def test_serve_one_refuses_a_folder_on_its_own_import_path(exports: dict[str, Path], worker_python: str) -> None:
    folder = exports["ex-plain"]
    done = serve_one(folder, worker_python, {"PYTHONPATH": str(folder / "runtime")}, wait=False, cwd=folder)
    assert done.returncode == 2 and b"is on this interpreter's import path" in done.stderr  # type: ignore


def test_serve_one_refuses_what_it_cannot_serve(exports: dict[str, Path], worker_python: str,
                                                tmp_path: Path) -> None:
    no_secret = serve_one(exports["ex-args"], worker_python, {}, wait=False)
    assert no_secret.returncode == 2 and b"the secret API_KEY is not set" in no_secret.stderr  # type: ignore
    half = serve_one(exports["ex-plain"], worker_python, {"TINYFAAS_USERNAME": "u"}, wait=False)
    assert half.returncode == 2 and b"TINYFAAS_PASSWORD" in half.stderr  # type: ignore[union-attr]
    broken = tmp_path / "broken"
    shutil.copytree(exports["ex-plain"], broken)
    (broken / "tinyfaas.json").write_text('{"format": 1, "name": "x", "version": "1", "calling": "soap", '
                                          '"timeout": 1, "memory_mb": 128, "max_workers": 1}')
    bad = serve_one(broken, worker_python, {}, wait=False)
    assert bad.returncode == 2 and b"calling must be one of" in bad.stderr  # type: ignore[union-attr]
    shutil.copy(exports["ex-plain"] / "tinyfaas.json", broken / "tinyfaas.json")
    (broken / "func.py").write_text("import no_such_module\n\ndef main():\n    return 1\n")
    failing = serve_one(broken, worker_python, {}, wait=False)
    assert failing.returncode == 1 and b"No module named 'no_such_module'" in failing.stderr  # type: ignore


# -- serve-one as an ordinary user: what containment holds in subreaper mode ----------------------------------------

GUEST = """import os, signal, time


def main(what, pid=0, mark=""):
    if what == "environ":  # serve-one's (pid) and its own launcher's (its parent)
        found = {}
        for name, process in (("serve-one", pid), ("launcher", os.getppid())):
            try:
                with open(f"/proc/{process}/environ", "rb") as f:
                    found[name] = f.read().decode("latin-1")
            except PermissionError:
                found[name] = "denied"
        return found
    child = os.fork()  # a daemon (forked twice, setsid), then its launcher killed: the daemon leaves its tree
    if child == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", mark])
        os._exit(0)
    os.waitpid(child, 0)
    os.kill(os.getppid(), signal.SIGKILL)  # this worker dies with it (PDEATHSIG)
    time.sleep(10)
"""
NOBODY = 65534


def _unprivileged_python() -> str | None:
    """An interpreter (3.10 or newer) that uid 65534 may run: the clone's may lie under a folder only root enters."""
    check = "import sys; print(sys.version_info >= (3, 10))"
    for python in ("/usr/bin/python3", os.path.realpath(sys.executable)):
        done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python, "-c",
                               check], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == "True":
            return python
    return None


def _sleeping(mark: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if p.info["cmdline"] == ["sleep", mark] and p.info["status"] != psutil.STATUS_ZOMBIE]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run serve-one as another user")
def test_as_an_ordinary_user_serve_one_keeps_its_environment_and_ends_orphans(deployed: Server) -> None:
    python = _unprivileged_python()
    assert python is not None, "no Python interpreter here that an unprivileged user may run"
    home = Path("/tmp") / f"tinyfaas-one-nobody-{os.getpid()}"  # pytest's tmp_path is under a folder 65534 can't enter
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(Path(psutil.__file__).parent, home / "lib" / "psutil", ignore=shutil.ignore_patterns("__pycache__"))
    assert deployed.upload("ex-guest", GUEST).status == 200
    assert tf(deployed.port, "export", "ex-guest", "--out", str(home / "ex-guest")).returncode == 0
    subprocess.run(["chmod", "-R", "a+rX", str(home)], check=True)
    mark = f"{700 + os.getpid() % 100}.{int(time.time()) % 100000}"
    password = "one-password-" + uuid.uuid4().hex
    one = serve_one(home / "ex-guest", python, {"PYTHONPATH": str(home / "lib"), "TINYFAAS_PASSWORD": password},
                    "--isolation", "subreaper", prefix=("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                                                        "--clear-groups"), runner=python)
    assert isinstance(one, One)
    one.auth = _basic("admin", password)
    try:
        assert f"functions run under serve-one's own uid {NOBODY}" in one.err.read_text()
        seen = one.request("POST", "/", json.dumps(["environ", one.proc.pid]).encode()).json["result"]
        assert seen["serve-one"] == "denied" and password not in seen["launcher"], seen
        orphaned = one.request("POST", "/", json.dumps(["orphan", 0, mark]).encode())
        assert orphaned.status == 502
        deadline = time.monotonic() + 5
        while (_sleeping(mark) or _zombies(one.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sleeping(mark) == [] and _zombies(one.proc.pid) == []
        assert one.request("POST", "/", b'["environ", 1]').status == 200  # a new worker serves the next call
    finally:
        one.proc.send_signal(signal.SIGTERM)
        one.proc.wait(30)
        for proc in _sleeping(mark):
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def _zombies(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children() if p.status() == psutil.STATUS_ZOMBIE]

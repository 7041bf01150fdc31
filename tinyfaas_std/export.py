"""Export (SPEC 14): a function's live version as a folder that runs on a container platform once one host is outgrown.

Strategy: pure, but for `runtime_files`, which reads this package's own modules. `build` turns what the server knows
of a function (a `Source`: its files, requirements, settings and the NAMES of its secrets, never their values) into
the folder's files, {relative path: bytes}; `pack` makes them a .tar.gz, the same bytes for the same version. The
folder, so that `serve-one DIR` serves it as it is and the image is `COPY . /app`:
- the function's own files as uploaded (`func.py` and, from an archive, its modules and data, same layout) and
  `requirements.txt` (exactly its requirements; empty when it has none);
- `tinyfaas.json`: what `serve-one` (serve_one.py) reads: calling convention, env, secret names, limits;
- `runtime/tinyfaas_std/`: the runtime, so that the image builds from the folder alone. It is a folder down, and
  serve-one runs from `runtime/` (`python -m` puts the current folder first on the import path), so that the
  function's folder is never on serve-one's import path: a function's `gzip.py` or `tempfile.py` is imported by
  its workers, as on the server, never by serve-one itself;
- `Dockerfile` (serve-one in the image's Python with its psutil; the function's requirements in a venv of their
  own, which its workers run) and `.dockerignore`, `knative.yaml`, `openfaas.yml` and a `README.md` of the commands.
A function's file or folder with one of these names at the top, also but for case, cannot be exported (409
`export_conflict`): either file would be lost.

Manifests are YAML written here (the server has no YAML library): every string, and every key that is not plainly
safe, is written in JSON's string syntax, which YAML reads as a double-quoted scalar with the same meaning once the
few characters YAML treats differently are escaped too (`quote`). Secrets are references to one Kubernetes Secret,
`<name>-secrets`, with a key per secret: its values exist only where the user creates that Secret.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Conflict

__all__ = ["Source", "build", "pack", "filename", "runtime_files", "resource_name", "secret_name", "quote", "yaml",
           "SETTINGS_FILE", "SETTINGS_FORMAT", "RUNTIME", "PORT", "USER_ID", "HEALTH_PATH", "REGISTRY"]

SETTINGS_FILE = "tinyfaas.json"
SETTINGS_FORMAT = 1          # bumped when tinyfaas.json changes meaning; serve-one refuses formats it does not know
PORT = 8080                  # OpenFaaS requires 8080; Knative sends $PORT, 8080 unless the manifest says otherwise
USER_ID = 10001              # the image's user: not root, numeric (needs no /etc/passwd entry; runAsNonRoot checks it)
HEALTH_PATH = "/healthz"
TIMEOUT_MARGIN = 5           # seconds Knative waits beyond the function's timeout: serve-one's own JSON 504 comes first
FUNCTION_VENV = "/opt/function"  # in the image: the venv of the function's requirements, which its workers run
REGISTRY = "REGISTRY"        # the placeholder the user replaces with their registry, in the image name
SERVE_ONE_MB = 64            # serve-one itself (about 30 MB resident) and headroom, beside its workers' memory
MAX_RESOURCE_NAME = 63 - len("-00001")  # a DNS-1035 label (63), less the suffix of Knative's revision names
_NAME_HASH = 7               # hex digits of a hash that tell apart names made alike (49 characters of name, '-', 7)
# env names Knative sets itself and refuses in a Service; PORT would also move serve-one's port under OpenFaaS
_RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
RUNTIME = "runtime"          # holds tinyfaas_std/: serve-one's working folder and import path
_GENERATED = ("Dockerfile", ".dockerignore", "knative.yaml", "openfaas.yml", "README.md", SETTINGS_FILE)
# top-level names, in lower case, that no file or folder of the function may have (see _clashes)
_TAKEN = frozenset(name.lower() for name in (*_GENERATED, RUNTIME, "requirements.txt", "Dockerfile.dockerignore"))


@dataclass(frozen=True, slots=True)
class Source:
    """A function's live version as an export needs it. `files` are its code folder's (requirements.txt, when
    there, is rewritten from `requirements`); `secrets` are names only."""
    name: str
    version: str
    created: float
    calling: str
    env: dict[str, str]
    secrets: tuple[str, ...]
    requirements: tuple[str, ...]
    timeout: float
    memory_mb: int
    max_workers: int
    schedule: str | None
    files: dict[str, bytes]


def build(source: Source, runtime: dict[str, bytes], python: tuple[int, int], psutil: str) -> dict[str, bytes]:
    """The export folder's files. `runtime`: this package's modules (`runtime_files`); `python`: the (major, minor)
    of the image's base; `psutil`: the runtime's requirement, pinned to the server's own version."""
    clash = sorted(path for path in source.files if _clashes(path))
    if clash:
        raise Conflict(f"{source.name} has files the export writes itself: {', '.join(clash)}; rename them to "
                       "export it", code="export_conflict", files=clash)
    reserved = sorted(_RESERVED_ENV & {*source.env, *source.secrets})
    if reserved:
        raise Conflict(f"{source.name} has env or secrets named as the platforms' own: {', '.join(reserved)} (Knative "
                       "refuses them, and PORT is the port serve-one listens on); rename them to export it",
                       code="export_conflict", env=reserved)
    files = {path: data for path, data in source.files.items() if path != "requirements.txt"}
    files["requirements.txt"] = "".join(f"{line}\n" for line in source.requirements).encode()
    files[SETTINGS_FILE] = (json.dumps(settings(source), indent=2) + "\n").encode()
    files["Dockerfile"] = dockerfile(source, python, psutil).encode()
    files[".dockerignore"] = "".join(f"{path}\n" for path in ("**/__pycache__", *_GENERATED[:-1])).encode()
    files["knative.yaml"] = (_header(source, "A Knative Serving Service", "kubectl apply -f knative.yaml")
                             + yaml(knative(source))).encode()
    files["openfaas.yml"] = (_header(source, "An OpenFaaS stack file", "faas-cli deploy -f openfaas.yml")
                             + _gateway_note(source) + yaml(openfaas(source))).encode()
    files["README.md"] = readme(source).encode()
    files.update(runtime)
    return files


def _clashes(path: str) -> bool:
    """Whether a function's file would meet one the export writes: a file or folder of that name at the top, also
    but for case (one file on a case-insensitive disk; BuildKit reads `dockerfile` and `Dockerfile.dockerignore`).
    Only `requirements.txt` itself is not a clash: the export rewrites it from the requirements."""
    top = path.split("/", 1)[0].lower()
    return top in _TAKEN and path != "requirements.txt"


def settings(source: Source) -> dict[str, Any]:
    """`tinyfaas.json`, what serve-one needs: the settings the server ran the function with (its own, or the
    server's flags where it had none), the names of its secrets and where a platform keeps their values."""
    return {"format": SETTINGS_FORMAT, "name": source.name, "version": source.version, "calling": source.calling,
            "env": source.env, "secrets": list(source.secrets), "secret_name": secret_name(source.name),
            "timeout": source.timeout, "memory_mb": source.memory_mb, "max_workers": source.max_workers,
            "requirements": list(source.requirements)}


def dockerfile(source: Source, python: tuple[int, int], psutil: str) -> str:
    """The image: the server's Python minor version; serve-one's psutil in that Python, and exactly the function's
    requirements in a venv of their own, which its workers run (`--python`), so the function sees its requirements
    and nothing of serve-one's, as on the server; the folder in /app, a numeric non-root user. RUN in exec form: no
    shell reads a requirement."""
    install = [f'RUN ["{FUNCTION_VENV}/bin/pip", "install", "-r", "requirements.txt"]\n'] if source.requirements else []
    venv = ["python", "-m", "venv", *([] if source.requirements else ["--without-pip"]), FUNCTION_VENV]
    return "".join([
        f"# The function {source.name} (version {source.version}) of a tinyfaas_std server, served by serve-one.\n",
        f"# docker build -t {image(source)} .   (see README.md)\n",
        f"FROM python:{python[0]}.{python[1]}-slim\n",
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1\n",
        "WORKDIR /app\n",
        f'RUN ["python", "-m", "pip", "install", {json.dumps(psutil)}]\n',
        f"RUN {json.dumps(venv)}\n",
        "COPY requirements.txt ./\n",
        *install,
        "COPY . ./\n",
        'RUN ["chmod", "-R", "a+rX", "/app"]\n',  # as root: COPY keeps modes, private ones (a strict umask) too
        f"USER {USER_ID}:{USER_ID}\n",
        f"WORKDIR /app/{RUNTIME}\n",  # serve-one's import path: the runtime, never the function's files
        f"EXPOSE {PORT}\n",
        f'CMD ["python", "-m", "tinyfaas_std", "serve-one", "/app", "--python", "{FUNCTION_VENV}/bin/python"]\n',
    ])


def knative(source: Source) -> dict[str, Any]:
    """A Knative Serving Service: one request per worker at a time (containerConcurrency), the function's timeout
    for a request (whole seconds, and a margin), room for serve-one and every worker in the container's memory
    limit, ready when /healthz says so."""
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in sorted(source.env.items())]
    env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name(source.name), "key": key}}}
            for key in source.secrets]
    container: dict[str, Any] = {"image": image(source), "ports": [{"containerPort": PORT}]}
    if env:
        container["env"] = env
    container.update({
        "resources": {"limits": {"memory": memory_limit(source)}},
        "readinessProbe": {"httpGet": {"path": HEALTH_PATH}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    })
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": resource_name(source.name)},
            "spec": {"template": {"spec": {"containerConcurrency": source.max_workers,
                                           "timeoutSeconds": math.ceil(source.timeout) + TIMEOUT_MARGIN,
                                           "containers": [container]}}}}


def openfaas(source: Source) -> dict[str, Any]:
    """An OpenFaaS stack file: the same image and settings, built from this folder's Dockerfile by `faas-cli up`
    (`lang: dockerfile`, `handler: .`). Its secrets are files under /var/openfaas/secrets (OpenFaaS never puts them
    in the environment); serve-one reads them there. The image has no of-watchdog, so none of its variables: serve-one
    bounds concurrency and each call's time itself, and the gateway's timeouts are the cluster's (the header says).
    The scaling labels are for OpenFaaS's autoscaler."""
    function: dict[str, Any] = {
        "lang": "dockerfile",
        "handler": ".",
        "image": image(source),
        "environment": dict(sorted(source.env.items())),
        "limits": {"memory": memory_limit(source)},
        "labels": {"com.openfaas.scale.type": "capacity", "com.openfaas.scale.target": str(source.max_workers)},
        "annotations": {"com.openfaas.health.http.path": HEALTH_PATH, "com.openfaas.ready.http.path": HEALTH_PATH},
    }
    if source.secrets:
        function["secrets"] = [secret_name(source.name)]
    return {"version": 1.0, "provider": {"name": "openfaas", "gateway": "http://127.0.0.1:8080"},
            "functions": {resource_name(source.name): function}}


def readme(source: Source) -> str:
    name, tag, secret = source.name, image(source), secret_name(source.name)
    keys = " ".join(f'--from-literal={key}="${key}"' for key in source.secrets)
    lines = [
        f"# {name}, exported from tinyfaas_std",
        "",
        f"Version {source.version} of `{name}` ({source.calling} calling convention, timeout {source.timeout:g} s, "
        f"{source.memory_mb} MiB, {source.max_workers} workers), ready for a container platform. The image runs "
        f"`python -m tinyfaas_std serve-one /app --python {FUNCTION_VENV}/bin/python` (workers in a venv of exactly "
        "its requirements): the same answers as on the server, at `/function/" + name + "` "
        "and at `/`, with `/healthz` for probes. `tinyfaas.json` holds its settings; set `TINYFAAS_PASSWORD` (and "
        "`TINYFAAS_USERNAME`, default `admin`) in its environment to require Basic Auth.",
        "",
        "Build and push the image, then put its name in place of `" + tag + "` in `knative.yaml` and `openfaas.yml`:",
        "",
        "```sh",
        f"docker build -t {tag} .",
        f"docker push {tag}",
        f"docker run --rm -p {PORT}:{PORT} " + "".join(f"-e {key} " for key in source.secrets) + tag
        + "   # try it: its secrets from your environment",
        "```",
        "",
        "Or try it without a container: serve-one runs from `runtime/`, so that only the runtime is on its import "
        "path, never the function's files (a `gzip.py` of the function's is its own, not serve-one's); its workers "
        "run an interpreter with the function's requirements, and serve-one's own needs `psutil`:",
        "",
        "```sh",
        f"python3 -m venv /tmp/{resource_name(name)}-venv && /tmp/{resource_name(name)}-venv/bin/pip install "
        "-r requirements.txt",
        f"cd {RUNTIME} && " + "".join(f"{key}=... " for key in source.secrets) + "python3 -m tinyfaas_std serve-one .. "
        f"--port {PORT} --python /tmp/{resource_name(name)}-venv/bin/python",
        "```",
        "",
    ]
    if source.secrets:
        lines += [
            f"Its secrets ({', '.join(source.secrets)}) are not in this folder: their values stay with you. Knative "
            f"reads them from the Kubernetes Secret `{secret}`, one key each; OpenFaaS mounts that Secret as files, "
            f"and serve-one reads `/var/openfaas/secrets/<KEY>`, or the `KEY=VALUE` lines of "
            f"`/var/openfaas/secrets/{secret}` (made by `faas-cli secret create` from an env file).",
            "",
        ]
    lines += ["Knative Serving:", "", "```sh"]
    if source.secrets:
        lines.append(f"kubectl create secret generic {secret} {keys}")
    lines += ["kubectl apply -f knative.yaml", "kubectl get ksvc " + resource_name(name) + "   # its URL", "```", "",
              "OpenFaaS:", "", "```sh"]
    if source.secrets:
        lines.append(f"faas-cli secret create {secret} --from-file=secrets.env   # KEY=VALUE lines: "
                     + ", ".join(source.secrets))
    lines += ["faas-cli deploy -f openfaas.yml", "```", ""]
    if source.schedule:
        lines += [f"On the server it also ran on the schedule `{source.schedule}`; serve-one has no scheduler: use "
                  "a Kubernetes CronJob or the OpenFaaS cron-connector to call it.", ""]
    return "\n".join(lines)


def _header(source: Source, what: str, command: str) -> str:
    return (f"# {what} for the function {source.name} (version {source.version}) of a tinyfaas_std server.\n"
            f"# Replace {REGISTRY} with your registry, build and push the image (README.md), then: {command}\n"
            f"# The memory limit holds the whole container: {source.max_workers} workers of {source.memory_mb} MiB "
            f"each (serve-one bounds each worker so) and {SERVE_ONE_MB} MiB for serve-one itself.\n")


def _gateway_note(source: Source) -> str:
    seconds = f"{math.ceil(source.timeout)}s"  # a Go duration, as the gateway's settings are written
    return (f"# serve-one ends a call after {seconds}; the gateway's own timeouts are the cluster's settings (the "
            f"chart's gateway.upstreamTimeout, 60s by default, and readTimeout, writeTimeout): keep them above it.\n")


def memory_limit(source: Source) -> str:
    """The container's memory limit: it holds serve-one and up to max_workers workers, each within memory_mb."""
    return f"{source.max_workers * source.memory_mb + SERVE_ONE_MB}Mi"


def image(source: Source) -> str:
    return f"{REGISTRY}/{resource_name(source.name)}:latest"


def secret_name(name: str) -> str:
    """The Kubernetes Secret (and OpenFaaS secret) that holds the function's secrets, one key each. A Secret's name
    is a DNS subdomain (up to 253 characters), so the suffix never shortens the function's part."""
    return resource_name(name) + "-secrets"


def resource_name(name: str) -> str:
    """`name` as a DNS-1035 label, what Kubernetes, Knative and OpenFaaS name things by: lower case letters,
    digits and '-', starting with a letter, short enough for Knative's revision names (`<name>-00001`). A name
    that had to change carries a hash of the original, so `My_Fn`, `MY_FN` and `my-fn` stay three names."""
    label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not label[:1].isalpha():
        label = "fn-" + label
    if label == name and len(label) <= MAX_RESOURCE_NAME:
        return label
    digest = hashlib.sha256(name.encode()).hexdigest()[:_NAME_HASH]
    return f"{label[:MAX_RESOURCE_NAME - _NAME_HASH - 1].rstrip('-')}-{digest}"


def filename(source: Source) -> str:
    return f"{source.name}-v{source.version}.tar.gz"


def pack(files: dict[str, bytes], mtime: float) -> bytes:
    """A .tar.gz of `files`: regular files, mode 0644, owned by root, dated `mtime`, in path order; the gzip header
    carries that date too and no name, so the same files make the same bytes."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=int(mtime)) as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(files):
                info = tarfile.TarInfo(path)
                info.size, info.mode, info.mtime = len(files[path]), 0o644, int(mtime)
                tar.addfile(info, io.BytesIO(files[path]))
    return out.getvalue()


def runtime_files() -> dict[str, bytes]:
    """This package's modules as `runtime/tinyfaas_std/<module>.py`: what serve-one and its workers run (the
    dashboard's files are not needed)."""
    package = Path(__file__).resolve().parent
    return {f"{RUNTIME}/tinyfaas_std/{path.name}": path.read_bytes() for path in sorted(package.glob("*.py"))}


# -- YAML, written by hand ----------------------------------------------------------------------------------------

# Characters JSON leaves raw that YAML must not see raw: C1 controls and DEL (not printable in YAML), NEL, U+2028 and
# U+2029 (line breaks to a YAML 1.1 reader, folded inside a quoted scalar), the BOM, non-characters, lone surrogates.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_./-]*")
MAX_IMPLICIT_KEY = 1024  # YAML 1.2 7.4.2 (and 1.1): an implicit key is at most 1024 characters, quotes included
_YAML11_WORDS = {"y", "yes", "n", "no", "true", "false", "on", "off", "null"}  # read as booleans or null when plain


def quote(text: str) -> str:
    """`text` as a YAML double-quoted scalar: JSON's string syntax, which YAML reads the same, plus escapes for the
    characters above."""
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False))


def yaml(value: dict[str, Any]) -> str:
    """Block-style YAML of nested dicts and lists of str, int, float and bool."""
    return "".join(line + "\n" for line in _block(value, ""))


def _block(value: dict[str, Any] | list[Any], pad: str) -> list[str]:
    lines = []
    for key, item in (value.items() if isinstance(value, dict) else ((None, v) for v in value)):
        lead = _lead(key, pad) if key is not None else [f"{pad}-"]
        if isinstance(item, (dict, list)) and item:
            nested = _block(item, pad + "  ")
            if key is None and isinstance(item, dict):  # "- first: x" with the rest of the mapping below it
                lines += [f"{lead[0]} {nested[0].lstrip()}", *nested[1:]]
            else:
                lines += [*lead, *nested]
        else:
            lines += [*lead[:-1], f"{lead[-1]} {_scalar(item)}"]
    return lines


def _lead(key: str, pad: str) -> list[str]:
    """The line(s) that open a key's entry: `key:`, or for a key too long to be implicit, `? key` then `:`."""
    text = key if _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML11_WORDS else quote(key)
    return [f"{pad}{text}:"] if len(text) < MAX_IMPLICIT_KEY else [f"{pad}? {text}", f"{pad}:"]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    if value == {} or value == []:
        return json.dumps(value)
    raise TypeError(f"no YAML for {type(value).__name__}")

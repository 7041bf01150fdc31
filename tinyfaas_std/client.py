"""The command-line client (SPEC 12): `python -m tinyfaas_std <verb> ...` and the console script `tinyfaas`.

Strategy: each verb is one function that turns its arguments into one or a few HTTP requests and prints the answer:
a table or text for people or, with `--json`, the server's JSON exactly as it came (what curl would show). It keeps
no state: the server's address, the credentials and the TLS context travel in one frozen `Target`. Failures are
exceptions carrying their exit status (`ClientError` 3: the server refused or could not be reached; `UsageError` 2),
turned into a message and a status in `main` only. Exit status 1 is an answer, not an error: the function failed.
Standard library only; of the server's modules it imports only `archive.py` (pure), to unpack an export as safely
as the server unpacks an upload.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import netrc
import os
import ssl
import sys
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlencode, urlsplit

from . import archive
from .errors import FaasError

__all__ = ["NAMES", "VERBS", "main"]

DEFAULT_URL = "http://127.0.0.1:8080"
ADMIN_TIMEOUT = 60.0            # seconds for an admin answer; deploys and calls wait as long as the server lets them
FOLLOW_INTERVAL = 0.3           # seconds between two polls of `logs --follow`
WAIT_INTERVALS = (0.05, 1.0)    # first and longest pause between polls of `invoke --wait` (growing by half)
FOLLOW_SEEN = 10_000            # ids `logs --follow` remembers to skip repeats (the server's default retention)
FUNCTION_FAILED = {500, 502, 504}   # the function raised, crashed or ran past its timeout (SPEC 5)
NUMERIC = {"timeout", "memory_mb", "max_workers"}
SKIPPED = {"__pycache__", ".git", ".hg", ".svn", ".venv", ".mypy_cache", ".pytest_cache"}  # left out by `deploy`
MAX_EXPORT_MB = 256     # unpacked, at most: a function's files are bounded by the server's --max-upload-mb (16 by
                        # default); this bounds what a server that is not one could make `export` write


class ClientError(Exception):
    """The server answered an error (`status`: its HTTP status), or could not be reached: exit status 3."""
    exit_status = 3

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UsageError(ClientError):
    exit_status = 2


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ClientError(f"the server answered {self.status} with a body that is not JSON") from None


@dataclass(frozen=True)
class Target:
    """The server (`http[s]://host[:port][/prefix]`), the Basic Auth header to send (or None) and the TLS context."""
    url: str
    auth: str | None
    context: ssl.SSLContext | None

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                timeout: float | None = ADMIN_TIMEOUT) -> Answer:
        url = urlsplit(self.url)
        conn = (http.client.HTTPSConnection(url.hostname or "", url.port, timeout=timeout, context=self.context)
                if url.scheme == "https" else http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout))
        try:
            conn.request(method, url.path.rstrip("/") + path, body=body,
                         headers={**(headers or {}), **({"Authorization": self.auth} if self.auth else {})})
            resp = conn.getresponse()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError(f"cannot reach {self.url}: {exc}") from None
        finally:
            conn.close()

    def admin(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
              timeout: float | None = ADMIN_TIMEOUT) -> Answer:
        """A request whose error answers (4xx/5xx) raise `_refused`."""
        answer = self.request(method, path, body, headers, timeout)
        if answer.status >= 400:
            raise _refused(answer)
        return answer


def _json(doc: Any) -> tuple[bytes, dict[str, str]]:
    return (b"", {}) if doc is None else (json.dumps(doc).encode(), {"Content-Type": "application/json"})


def _refused(answer: Answer) -> ClientError:
    """A 4xx/5xx answer as an error, with the server's code and message (SPEC 3) or the start of its body."""
    try:
        error = json.loads(answer.body)["error"]
        return ClientError(f"{answer.status} {error['code']}: {error['message']}", answer.status)
    except (ValueError, KeyError, TypeError):
        return ClientError(f"{answer.status}: {answer.body[:300].decode('utf-8', 'replace').strip()}", answer.status)


def _target(args: argparse.Namespace, environ: dict[str, str]) -> Target:
    url = urlsplit(args.url)
    try:
        url.port  # raises ValueError for a port that is not a number in range
        context = ssl.create_default_context(cafile=args.cacert) if url.scheme == "https" else None
    except (ValueError, OSError) as exc:
        raise UsageError(f"{args.url if isinstance(exc, ValueError) else args.cacert}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UsageError(f"--url {args.url!r}: expected http[s]://host[:port]")
    user, password = args.user or environ.get("TINYFAAS_USER"), environ.get("TINYFAAS_PASSWORD") or None
    return Target(args.url, _credentials(user, password, url.hostname), context)


def _credentials(user: str | None, password: str | None, host: str) -> str | None:
    """A user with TINYFAAS_PASSWORD, else the ~/.netrc entry of the URL's host, else none (no default account)."""
    if password is None or not user:
        try:
            entry = netrc.netrc().authenticators(host)  # refuses a file that others may read
        except FileNotFoundError:
            entry = None
        except (OSError, netrc.NetrcParseError) as exc:
            raise UsageError(f"~/.netrc: {exc}") from None
        if entry and entry[2] is not None and (not user or user == entry[0]):
            user, password = entry[0], entry[2]
        elif user:
            raise UsageError(f"no password for {user}: set TINYFAAS_PASSWORD or a ~/.netrc entry for {host}")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if user else None


# -- output --------------------------------------------------------------------------------------------------------

def _emit(args: argparse.Namespace, answer: Answer, human: Callable[[Any], object]) -> None:
    if args.json:
        text = answer.body.decode("utf-8", "replace")
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        human(answer.json())


def _table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [header, *[["-" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _value(value: Any, width: int = 100) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else json.dumps(value, ensure_ascii=False, indent=2)


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _record_line(rec: dict[str, Any]) -> str:
    error = rec.get("error") or {}
    outcome = (json.dumps(rec.get("result", rec.get("response")), ensure_ascii=False)[:80]
               if rec.get("status") == "ok" else f"{error.get('type')}: {error.get('message')}")
    return (f"{_when(rec.get('start'))}  {rec.get('id')}  {rec.get('status', '?'):<7} "
            f"{(rec.get('duration') or 0) * 1000:9.1f}ms  {rec.get('trigger', ''):<8}  {outcome}")


def _show_record(rec: dict[str, Any]) -> None:
    print(_record_line(rec))
    for stream in ("stdout", "stderr"):
        if rec.get(stream):
            print(f"--- {stream}\n{rec[stream].rstrip()}")
    if rec.get("status") != "ok" and (rec.get("error") or {}).get("traceback"):
        print(rec["error"]["traceback"].rstrip(), file=sys.stderr)


def _flat(doc: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in doc.items():
        if isinstance(value, dict) and value and key != "env":
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield prefix + key, _when(value) if key in ("created", "updated") and value else value


def _fields(doc: dict[str, Any]) -> None:
    """An object as aligned `key: value` lines, nested objects flattened (`limits.memory_mb: 512`)."""
    pairs = list(_flat(doc))
    for key, value in pairs:
        print(f"{key + ':':<{max(len(k) for k, _ in pairs) + 1}} {value if isinstance(value, str) else _value(value)}")


def _live(d: dict[str, Any]) -> None:
    print(f"{d['name']}: version {d['version']} is live")


# -- verbs ---------------------------------------------------------------------------------------------------------

def _fn(name: str, *rest: str) -> str:
    return "/".join(["/admin/functions", quote(name, safe=""), *rest])


def _lines(items: list[str], flag: str) -> str | None:
    """Repeated --env/--secret as the KEY=VALUE lines of an upload field (SPEC 10); None when there are none."""
    for item in items:
        if not item.partition("=")[0] or "=" not in item or "\n" in item:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE on one line")
    return "".join(item + "\n" for item in items) or None


def _folder_archive(folder: Path) -> bytes:
    """The folder's contents at the root of a tar.gz (links followed, owners dropped), as SPEC 10 reads it."""
    if not (folder / "func.py").is_file():
        raise UsageError(f"{folder}: a function folder needs func.py at its top")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for root, dirs, files in os.walk(folder, followlinks=True):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED)
            for name in sorted(f for f in files if not f.endswith(".pyc")):
                path = Path(root, name)
                info = tar.gettarinfo(os.path.realpath(path), arcname=path.relative_to(folder).as_posix())
                info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    return buf.getvalue()


def _multipart(fields: dict[str, str | tuple[str, bytes]]) -> tuple[bytes, str]:
    """RFC 7578 form-data; a tuple is a file part (filename, bytes)."""
    boundary, out = "tinyfaas-" + uuid.uuid4().hex, []
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename = "".join(c for c in value[0] if c.isprintable() and c not in '"\\')
            head, data = f'; filename="{filename}"\r\nContent-Type: application/octet-stream', value[1]
        else:
            head, data = "", value.encode()
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{head}\r\n\r\n'.encode() + data
                   + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def deploy(target: Target, args: argparse.Namespace) -> int:
    source = Path(args.source)
    try:
        code = ("func.tar.gz", _folder_archive(source)) if source.is_dir() else (source.name, source.read_bytes())
        reqs = ("requirements.txt", Path(args.requirements).read_bytes()) if args.requirements else None
    except OSError as exc:
        raise UsageError(str(exc)) from None
    optional = {"requirements": reqs, "env": _lines(args.env, "--env"), "secrets": _lines(args.secret, "--secret"),
                "calling": args.calling, "timeout": args.timeout, "memory_mb": args.memory_mb,
                "max_workers": args.max_workers, "schedule": args.schedule}
    body, ctype = _multipart({"name": args.name, "file": code, **{k: v for k, v in optional.items() if v is not None}})
    answer = target.admin("POST", "/admin/upload", body, {"Content-Type": ctype}, timeout=None)
    _emit(args, answer, lambda d: print(f"{d['name']}: {'created' if d.get('created') else 'replaced'}, version "
                                        f"{d.get('version')} ready in {d.get('build_seconds', 0):.2f}s"))
    return 0


def invoke(target: Target, args: argparse.Namespace) -> int:
    body, headers = sys.stdin.buffer.read() if args.payload == "-" else (args.payload or "").encode(), {
        "Content-Type": "application/json"}
    if args.async_ or args.wait:
        return _invoke_async(target, args, body, headers)
    answer = target.request("POST", "/function/" + quote(args.name, safe=""), body, headers, timeout=None)
    doc = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else None
    function_answered = not (isinstance(doc, dict) and isinstance(doc.get("error"), dict) and "id" not in doc)
    if answer.status >= 400 and answer.status not in FUNCTION_FAILED and not function_answered:
        raise _refused(answer)  # the server's own error (SPEC 3), not one a function answered
    if args.json or not isinstance(doc, dict) or not {"id", "result", "error"} & set(doc):
        sys.stdout.buffer.write(answer.body)  # --json, or what an `http` function answered itself
        sys.stdout.flush()
    elif answer.status < 400:
        print(_value(doc.get("result")))
    else:
        error = doc["error"]
        print(f"{answer.status} {error.get('type') or error.get('code')}: {error.get('message')}\n"
              f"{error.get('traceback') or ''}".rstrip(), file=sys.stderr)
    return 1 if answer.status >= 400 else 0


def _invoke_async(target: Target, args: argparse.Namespace, body: bytes, headers: dict[str, str]) -> int:
    answer = target.admin("POST", "/async-function/" + quote(args.name, safe=""), body, headers)
    if not args.wait:
        _emit(args, answer, lambda d: print(d["id"]))
        return 0
    path, pause = "/admin/calls/" + quote(answer.json()["id"], safe=""), WAIT_INTERVALS[0]
    while (answer := target.admin("GET", path)).json().get("status") in ("queued", "running"):
        time.sleep(pause)
        pause = min(pause * 1.5, WAIT_INTERVALS[1])
    _emit(args, answer, _show_record)
    return 0 if answer.json().get("status") == "ok" else 1


def ls(target: Target, args: argparse.Namespace) -> int:
    def human(names: list[str]) -> None:
        described = [target.request("GET", _fn(name)) for name in names]  # one gone meanwhile answers 404: skipped
        _table(["NAME", "VERSION", "CALLING", "CALLS", "ERRORS", "SCHEDULE"], [
            [d.get(k) for k in ("name", "version", "calling", "invocations", "errors", "schedule")]
            for d in (a.json() for a in described if a.status == 200)])
    _emit(args, target.admin("GET", "/admin/functions"), human)
    return 0


def describe(target: Target, args: argparse.Namespace) -> int:
    _emit(args, target.admin("GET", _fn(args.name)), _fields)
    return 0


def logs(target: Target, args: argparse.Namespace) -> int:
    def fetch(**query: Any) -> Answer:
        query = {k: v for k, v in query.items() if v}
        return target.admin("GET", "/admin/logs/" + quote(args.name, safe="") + ("?" + urlencode(query) * bool(query)))
    if args.follow:
        return _follow(args, fetch)
    _emit(args, fetch(limit=args.n), lambda records: [print(_record_line(r)) for r in records])
    return 0


def _follow(args: argparse.Namespace, fetch: Callable[..., Answer]) -> int:
    """The newest records, then every FOLLOW_INTERVAL those after the last one printed (`?after=<id>`), until Ctrl-C.
    A 400 means the server lost that call (it left the kept log) or has no `?after=`: then the kept log is read and
    what ended since is printed, once (the ids printed are remembered)."""
    seen: dict[str, None] = {}  # an ordered set, oldest first
    records, last = fetch(limit=args.n).json(), None
    try:
        while True:
            for rec in (r for r in records if r.get("id") not in seen):
                seen[rec.get("id")] = None
                if len(seen) > FOLLOW_SEEN:
                    del seen[next(iter(seen))]
                last = rec
                print(json.dumps(rec) if args.json else _record_line(rec), flush=True)
            time.sleep(FOLLOW_INTERVAL)
            try:
                records = (fetch(after=last["id"]) if last else fetch(limit=args.n)).json()
            except ClientError as exc:
                if exc.status != 400 or last is None:
                    raise
                records = [r for r in fetch().json() if (r.get("end") or 0) >= (last.get("end") or 0)]
    except KeyboardInterrupt:
        return 0


def rm(target: Target, args: argparse.Namespace) -> int:
    _emit(args, target.admin("DELETE", _fn(args.name)), lambda d: print(f"deleted {d['deleted']}"))
    return 0


def versions(target: Target, args: argparse.Namespace) -> int:
    _emit(args, target.admin("GET", _fn(args.name, "versions")), lambda vs: _table(
        ["VERSION", "CREATED", "CALLING", "SHA256", "REQUIREMENTS", "LIVE"],
        [[v["version"], _when(v.get("created")), v.get("calling"), (v.get("code_sha256") or "")[:12],
          ",".join(v.get("requirements") or []) or None, "*" if v.get("live") else ""] for v in vs]))
    return 0


def rollback(target: Target, args: argparse.Namespace) -> int:
    doc = {"version": args.version} if args.version else None
    _emit(args, target.admin("POST", _fn(args.name, "rollback"), *_json(doc)), _live)
    return 0


def _setting(item: str) -> tuple[str, str | None, Any]:
    """`KEY=VALUE` of `set` as (key, name inside env/secrets or None, JSON value); `null` is JSON null."""
    key, sep, raw = item.partition("=")
    value: Any = None if raw == "null" else raw
    head, dot, name = (key := key.strip().replace("-", "_")).partition(".")
    if sep and dot and name and head in ("env", "secret", "secrets"):
        return ("env" if head == "env" else "secrets"), name, value
    if not sep or key not in NUMERIC | {"calling", "schedule"}:
        raise UsageError(f"{item!r}: expected KEY=VALUE, KEY one of calling, timeout, memory_mb, max_workers, "
                         "schedule, env.NAME, secret.NAME")
    if key in NUMERIC and value is not None:
        try:
            value = int(raw) if raw.isascii() and raw.isdigit() else float(raw)
        except ValueError:
            raise UsageError(f"{key}: {raw!r} is not a number") from None
    return key, None, value


def set_(target: Target, args: argparse.Namespace) -> int:
    doc: dict[str, Any] = {}
    for key, name, value in map(_setting, args.settings):
        if name is None:
            doc[key] = value
        else:
            doc.setdefault(key, {})[name] = value
    _emit(args, target.admin("PATCH", _fn(args.name), *_json(doc)), _live)
    return 0


def export(target: Target, args: argparse.Namespace) -> int:
    """SPEC 14: the function's export folder, from `GET /admin/functions/<name>/export`, into a new or empty DIR."""
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} is not an empty folder: export writes into a new or empty one")
    answer = target.admin("GET", _fn(args.name, "export"), timeout=None)  # it waits for a change in progress
    try:
        bundle = archive.unpack(answer.body, max_bytes=MAX_EXPORT_MB * 1024 * 1024)
    except FaasError as exc:
        raise ClientError(f"the server's export is not a safe archive: {exc.message}") from None
    if not bundle.archive:
        raise ClientError("the server's answer is not an archive")
    try:
        _write_tree(out, bundle.files)
    except OSError as exc:
        raise UsageError(f"{out}: {exc}") from None
    if args.json:
        print(json.dumps({"name": args.name, "out": str(out), "files": sorted(bundle.files)}))
    else:
        print(f"{args.name}: exported to {out} ({len(bundle.files)} files); {out / 'README.md'} says what next")
    return 0


def _write_tree(out: Path, files: dict[str, bytes]) -> None:
    """Write clean relative paths (archive.py checked them) under `out`, never over an existing file or link. Files
    are 0644 and folders 0755 whatever the umask: an image's non-root user reads what `COPY` takes from here."""
    _make_folder(out)
    for path, data in sorted(files.items()):
        target = out.joinpath(*path.split("/"))
        _make_folder(target.parent)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        os.fchmod(fd, 0o644)
        with open(fd, "wb") as f:
            f.write(data)


def _make_folder(folder: Path) -> None:
    """`folder` and the folders missing above it, each 0755."""
    if folder.is_dir():
        return
    _make_folder(folder.parent)
    folder.mkdir()
    os.chmod(folder, 0o755)


def status(target: Target, args: argparse.Namespace) -> int:
    _emit(args, target.admin("GET", "/admin/status"), _fields)
    return 0


VERBS: dict[str, Callable[[Target, argparse.Namespace], int]] = {
    "deploy": deploy, "invoke": invoke, "ls": ls, "describe": describe, "logs": logs, "rm": rm,
    "versions": versions, "rollback": rollback, "set": set_, "status": status, "export": export}
NAMES = frozenset(VERBS)   # the first arguments `__main__` hands to this client


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}")
    return int(text)


def _parser(environ: dict[str, str]) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=environ.get("TINYFAAS_URL", DEFAULT_URL),
                        help=f"the server (env TINYFAAS_URL; default {DEFAULT_URL})")
    common.add_argument("--user", help="user name (env TINYFAAS_USER; password in TINYFAAS_PASSWORD), else ~/.netrc")
    common.add_argument("--cacert", help="a PEM file of CA certificates to trust for https")
    common.add_argument("--json", action="store_true", help="print the server's JSON answer as it came")
    parser = argparse.ArgumentParser(prog="tinyfaas", description="The client of a tinyfaas_std server. Exit status: "
                                     "0 ok, 1 the function failed, 2 usage, 3 server or connection error.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, text: str, *positional: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, parents=[common], help=text, description=text)
        for arg in positional:
            p.add_argument(arg)
        return p

    p = verb("deploy", "upload a function: a .py file, a .zip or .tar.gz, or a folder holding func.py", "name")
    p.add_argument("source", metavar="FILE|FOLDER")
    p.add_argument("-r", "--requirements", metavar="REQS", help="a requirements.txt file")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="an environment variable (repeatable)")
    p.add_argument("--secret", action="append", default=[], metavar="K=V", help="a secret (repeatable)")
    p.add_argument("--calling", choices=["args", "event", "http"])
    for flag in ("--timeout", "--memory-mb", "--max-workers", "--schedule"):
        p.add_argument(flag)
    p = verb("invoke", "call a function with a JSON body (from stdin with -)", "name")
    p.add_argument("payload", nargs="?", metavar="JSON | -")
    p.add_argument("--async", dest="async_", action="store_true", help="queue the call and print its id")
    p.add_argument("--wait", action="store_true", help="queue the call, wait for its end and print its record")
    verb("ls", "list the functions")
    verb("describe", "a function's settings and counts", "name")
    p = verb("logs", "a function's newest call records", "name")
    p.add_argument("-n", type=_count, default=20, help="how many (default 20; 0: all)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="then print new records as they come, until Ctrl-C (JSON lines with --json)")
    verb("rm", "delete a function", "name")
    verb("versions", "a function's kept versions, newest first", "name")
    verb("rollback", "make an earlier version live (default: the one before)", "name").add_argument("version",
                                                                                                  nargs="?")
    verb("set", "change settings: timeout=5 memory_mb=null env.X=v secret.X=null calling=event schedule='@daily'",
         "name").add_argument("settings", nargs="+", metavar="KEY=VALUE")
    verb("status", "the resources of the server and its workers")
    p = verb("export", "write what runs the function on Knative or OpenFaaS (SPEC 14) into a new or empty folder",
             "name")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (new, or empty)")
    return parser


def main(argv: list[str], environ: dict[str, str] | None = None) -> int:
    """Run one verb (`argv` starts with it) and return the exit status."""
    environ = dict(os.environ if environ is None else environ)
    args = _parser(environ).parse_args(argv)
    try:
        return VERBS[args.verb](_target(args, environ), args)
    except ClientError as exc:
        print(f"tinyfaas: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130

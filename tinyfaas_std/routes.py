"""The route table and the routes: what each path does, who may do it (users.py), and its answer.

Strategy: each route is a small function `(server, request head, path parameter, body, user) -> Reply` that
parses what it needs (pure parsers: multipart.py, bodies.py, settings.py), calls the core (`server.manager`, a
FunctionManager) or the user store, and returns JSON. `ROUTES` is data: method, path pattern, body limit and what
the route does for permissions, so the handler (httpd.py) authorises every request in one place before reading
its body. The handler owns the socket; nothing here reads or writes one.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import bodies, http11, metrics, multipart, openapi, settings, ui
from .errors import BadRequest, Forbidden, MethodNotAllowed, NotFound, UnsupportedMediaType
from .users import Access, User, check_user, may

if TYPE_CHECKING:
    from .httpd import Server

__all__ = ["Reply", "ROUTES", "PUBLIC", "RouteSpec", "Route", "find_route", "allow", "forbidden", "invoke", "call",
           "healthz", "FUNCTION", "OTHER_METHODS"]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs the hot path about half a microsecond
class Reply:
    """An answer: `body`, or for an answer of unknown size `stream`, its pieces (then `body` is unused). A JSON
    body gets a final newline (so curl output ends its line); a `raw` one (an http function's) is sent as it is,
    its Content-Type among `headers`."""
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    stream: Generator[bytes, None, None] | None = None
    call_id: str = ""   # X-Call-Id, on every answer of /function/...
    raw: bool = False


def _json(value: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(value, ensure_ascii=True, allow_nan=False).encode())



# -- routes: each takes (server, request head, path parameter, body, user) and returns a Reply --------------

Route = Callable[[Any, http11.RequestHead, str, bytes, User], Reply]


def _upload(server: Server, req: http11.RequestHead, _: str, body: bytes, user: User) -> Reply:
    content_type = req.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise UnsupportedMediaType("upload with Content-Type multipart/form-data (curl -F)", code="not_multipart")
    form = _form(multipart.parse(body, content_type))
    allow(user, Access.CHANGE, form["name"])
    changes = settings.from_form({key: value for key, value in form.items() if key in _SETTING_FIELDS})
    return _json(server.manager.upload(form["name"], form["file"], form.get("requirements"), changes))


_SETTING_FIELDS = ("calling", "env", "secrets", "timeout", "memory_mb", "max_workers", "schedule")
_FORM_FIELDS = ("name", "file", "requirements", *_SETTING_FIELDS)


def _form(parts: list[multipart.Part]) -> dict[str, Any]:
    """The upload's fields: `file` as bytes, the others as text (each may be a text field or a file part)."""
    by_name = {part.name: part for part in parts}
    repeated = sorted({p.name for p in parts if p.name in _FORM_FIELDS and by_name[p.name] is not p})
    if repeated:
        raise BadRequest(f"form field(s) sent twice: {', '.join(repeated)}", code="duplicate_field", fields=repeated)
    missing = [field for field in ("name", "file") if field not in by_name]
    if missing:
        raise BadRequest(f"missing form field(s): {', '.join(missing)}", code="missing_field", fields=missing)
    form: dict[str, Any] = {"file": by_name["file"].data}
    for name in _FORM_FIELDS:
        if name in by_name and name != "file":
            form[name] = _text(by_name[name])
    return form


def _text(part: multipart.Part) -> str:
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"form field {part.name!r} is not UTF-8 text", code="bad_field") from None


def _list(server: Server, _: http11.RequestHead, __: str, ___: bytes, user: User) -> Reply:
    return _json([name for name in server.manager.names() if user.matches(name)])


def _describe(server: Server, _: http11.RequestHead, name: str, __: bytes, ___: User) -> Reply:
    return _json(server.manager.describe(name))


def _delete(server: Server, _: http11.RequestHead, name: str, __: bytes, ___: User) -> Reply:
    return _json(server.manager.delete(name))


def _patch(server: Server, _: http11.RequestHead, name: str, body: bytes, __: User) -> Reply:
    return _json(server.manager.patch(name, settings.from_patch(_json_body(body))))


def _versions(server: Server, _: http11.RequestHead, name: str, __: bytes, ___: User) -> Reply:
    return _json(server.manager.versions(name))


def _rollback(server: Server, _: http11.RequestHead, name: str, body: bytes, __: User) -> Reply:
    doc = _json_body(body) if body.strip() else {}
    version = doc.get("version") if isinstance(doc, dict) and set(doc) <= {"version"} else False
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if version is not None and not isinstance(version, str):
        raise BadRequest('send nothing, or {"version": "<id>"}', code="bad_rollback")
    return _json(server.manager.rollback(name, version))


def _code(server: Server, _: http11.RequestHead, name: str, __: bytes, ___: User) -> Reply:
    return _json(server.manager.code(name))


def _export(server: Server, _: http11.RequestHead, name: str, __: bytes, ___: User) -> Reply:
    """SPEC 14: the folder `tinyfaas export` writes, as a .tar.gz (export.py)."""
    data, filename = server.manager.export(name)
    return Reply(200, data, (("Content-Type", "application/gzip"),
                             ("Content-Disposition", f'attachment; filename="{filename}"')), raw=True)


def _json_body(body: bytes) -> Any:
    try:
        return bodies.loads_strict(body)
    except bodies.BadBody as exc:
        raise BadRequest(str(exc), code=exc.code) from None


def _logs(server: Server, req: http11.RequestHead, name: str, _: bytes, __: User) -> Reply:
    limit, after = _log_query(req.query)
    lines = server.manager.read_logs(name, limit, after)  # a lazy iterator: a log can be large
    return Reply(200, b"", stream=_json_array(lines))


def _json_array(items: Iterable[bytes]) -> Generator[bytes, None, None]:
    """Already-encoded JSON values as the pieces of one JSON array. The first value is read now, inside the
    error boundary, so a failure to read it is still a JSON error answer rather than a cut connection."""
    rest = iter(items)
    first = next(rest, None)
    return _array_pieces(first, rest)


def _array_pieces(first: bytes | None, rest: Iterator[bytes]) -> Generator[bytes, None, None]:
    if first is None:
        yield b"[]"
        return
    yield b"["
    yield first
    for item in rest:
        yield b","
        yield item
    yield b"]"


_CALL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _log_query(query: str) -> tuple[int | None, str | None]:
    """`?limit=N` (the newest N) and `?after=<call id>` (the records after that call), both optional."""
    try:
        params = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query),
                                       max_num_fields=8)
    except ValueError:
        raise BadRequest("the query string is malformed", code="bad_query") from None
    limit, after = params.get("limit"), params.get("after")
    if limit is not None and (len(limit) != 1 or not (limit[0].isascii() and limit[0].isdigit())
                              or int(limit[0]) < 1):
        raise BadRequest("limit must be one positive integer", code="bad_query")
    if after is not None and (len(after) != 1 or not _CALL_ID.fullmatch(after[0])):
        raise BadRequest("after must be one call id", code="bad_query")
    return (int(limit[0]) if limit else None), (after[0] if after else None)


def _metrics(server: Server, *_: Any) -> Reply:
    return Reply(200, server.manager.metrics_text(), (("Content-Type", metrics.CONTENT_TYPE),), raw=True)


def healthz(server: Server) -> Reply:
    """For load balancers and supervisors: no credentials, no details; 503 once the server is stopping."""
    if server.manager.stopping:
        return _json({"status": "stopping"}, 503)
    return _json({"status": "ok"})


# (method, exact path) -> route, for the routes that need no credentials
PUBLIC: dict[tuple[str, str], Callable[[Server], Reply]] = {("GET", "/healthz"): healthz}


def _status(server: Server, *_: Any) -> Reply:
    return _json({**server.sampler.snapshot(), "functions": len(server.manager.names())})


def invoke(server: Server, req: http11.RequestHead, name: str, body: bytes, _: User) -> Reply:
    return call(server, req, name, req.path[len("/function/") + len(name):], body)


def call(server: Any, req: http11.RequestHead, name: str, sub_path: str, body: bytes) -> Reply:
    """A synchronous call of `name`; `sub_path` is what follows the name (an http function's own path). `server`:
    this server, or serve-one's (serve_one.py), whose core answers `invoke` the same way."""
    answer = server.manager.invoke(name, req.method, sub_path, req.query, req.headers, body)
    headers = answer.headers + server.function_page_headers if answer.raw else answer.headers
    return Reply(answer.status, answer.body, headers, call_id=answer.call_id, raw=answer.raw)


def _submit(server: Server, req: http11.RequestHead, name: str, body: bytes, _: User) -> Reply:
    sub_path = req.path[len("/async-function/") + len(name):]
    call_id, answer = server.manager.submit(name, req.method, sub_path, req.query, req.headers, body,
                                            req.headers.get("x-callback-url"))
    return Reply(202, _json(answer).body, call_id=call_id)


def _call_state(server: Server, _: http11.RequestHead, call_id: str, __: bytes, user: User) -> Reply:
    function = server.manager.call_function(call_id)  # 404 when unknown
    if not (may(user, Access.CALL, function) or may(user, Access.READ, function)):
        raise forbidden(user)
    state = server.manager.call_state(call_id)
    return Reply(200, state) if isinstance(state, bytes) else _json(state)


def _cancel_call(server: Server, _: http11.RequestHead, call_id: str, __: bytes, user: User) -> Reply:
    allow(user, Access.CANCEL, server.manager.call_function(call_id))
    return _json(server.manager.cancel_call(call_id))


def _me(_: Server, __: http11.RequestHead, ___: str, ____: bytes, user: User) -> Reply:
    """Who the credentials are: for the dashboard, to show only what this user may do."""
    return _json(user.public())


def _openapi(*_: Any) -> Reply:
    return Reply(200, openapi.document_bytes(), (("Content-Type", "application/json"),), raw=True)


def _ui(_: Server, __: http11.RequestHead, file: str, ___: bytes, ____: User) -> Reply:
    """The dashboard (SPEC 13): `/ui` (and `/ui/`) is its page, `/ui/<file>` one of its other files."""
    body, headers = ui.file(file or "index.html")
    return Reply(200, body, headers, raw=True)


def _users(server: Server, *_: Any) -> Reply:
    return _json([user.public() for user in server.users.all()])


def _add_user(server: Server, _: http11.RequestHead, __: str, body: bytes, ___: User) -> Reply:
    doc = check_user(_json_body(body), new=True)
    user = server.users.add(doc["name"], doc["password"], doc["role"], doc.get("functions"))
    return _json(user.public(), 201)


def _change_user(server: Server, _: http11.RequestHead, name: str, body: bytes, __: User) -> Reply:
    return _json(server.users.change(name, check_user(_json_body(body), new=False)).public())


def _remove_user(server: Server, _: http11.RequestHead, name: str, __: bytes, ___: User) -> Reply:
    server.users.remove(name)
    return _json({"deleted": name})


def allow(user: User, access: Access, function: str | None) -> None:
    """403 unless `user` may do `access` (to `function`): the one check, for the handler and for routes."""
    if not may(user, access, function):
        raise forbidden(user)


def forbidden(user: User) -> Forbidden:
    return Forbidden(f"the {user.role} {user.name!r} may not do this", code="forbidden", role=user.role)


FUNCTION = re.compile(r"/function/([^/]+)(?:/.*)?")
_ASYNC_FUNCTION = re.compile(r"/async-function/([^/]+)(?:/.*)?")
OTHER_METHODS = ("GET", "PUT", "PATCH", "DELETE", "OPTIONS")  # http functions answer them too (SPEC 10)

_CALL, _CHANGE, _READ = Access.CALL, Access.CHANGE, Access.READ
_FUNCTIONS = re.compile(r"/admin/functions/([^/]+)")
_USER = re.compile(r"/admin/users/([^/]+)")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A route and what it needs: its body limit (an attribute of Config; None: no body expected), what it does
    for permissions, and whether its path parameter is the function that permission concerns (SPEC 12). Routes
    whose function is known only later (an upload's form, an async call's id) check it themselves."""
    method: str
    pattern: re.Pattern[str]
    route: Route
    limit: str | None
    access: Access
    scoped: bool = False


ROUTES: list[RouteSpec] = [
    RouteSpec("POST", FUNCTION, invoke, "max_body_bytes", _CALL, True),  # first: the hot path
    *(RouteSpec(method, FUNCTION, invoke, "max_body_bytes", _CALL, True) for method in OTHER_METHODS),
    RouteSpec("POST", _ASYNC_FUNCTION, _submit, "max_body_bytes", _CALL, True),
    *(RouteSpec(method, _ASYNC_FUNCTION, _submit, "max_body_bytes", _CALL, True) for method in OTHER_METHODS),
    RouteSpec("GET", re.compile(r"/admin/calls/([^/]+)"), _call_state, None, Access.CALL_STATE),
    RouteSpec("DELETE", re.compile(r"/admin/calls/([^/]+)"), _cancel_call, None, Access.CANCEL),
    RouteSpec("POST", re.compile(r"/admin/upload"), _upload, "max_upload_bytes", _CHANGE),
    RouteSpec("GET", re.compile(r"/admin/functions"), _list, None, _READ),
    RouteSpec("GET", _FUNCTIONS, _describe, None, _READ, True),
    RouteSpec("DELETE", _FUNCTIONS, _delete, None, _CHANGE, True),
    RouteSpec("PATCH", _FUNCTIONS, _patch, None, _CHANGE, True),
    RouteSpec("GET", re.compile(r"/admin/functions/([^/]+)/versions"), _versions, None, _READ, True),
    RouteSpec("POST", re.compile(r"/admin/functions/([^/]+)/rollback"), _rollback, None, _CHANGE, True),
    RouteSpec("GET", re.compile(r"/admin/functions/([^/]+)/code"), _code, None, _READ, True),
    RouteSpec("GET", re.compile(r"/admin/functions/([^/]+)/export"), _export, None, _READ, True),
    RouteSpec("GET", re.compile(r"/admin/logs/([^/]+)"), _logs, None, _READ, True),
    RouteSpec("GET", re.compile(r"/admin/status"), _status, None, Access.STATUS),
    RouteSpec("GET", re.compile(r"/metrics"), _metrics, None, Access.METRICS),
    RouteSpec("GET", re.compile(r"/admin/me"), _me, None, Access.SELF),
    RouteSpec("GET", re.compile(r"/openapi\.json"), _openapi, None, Access.SELF),
    RouteSpec("GET", re.compile(r"/ui"), _ui, None, Access.SELF),
    RouteSpec("GET", re.compile(r"/ui/([^/]*)"), _ui, None, Access.SELF),
    RouteSpec("GET", re.compile(r"/admin/users"), _users, None, Access.USERS),
    RouteSpec("POST", re.compile(r"/admin/users"), _add_user, None, Access.USERS),
    RouteSpec("PATCH", _USER, _change_user, None, Access.USERS),
    RouteSpec("DELETE", _USER, _remove_user, None, Access.USERS),
]


def find_route(method: str, path: str, table: list[RouteSpec] = ROUTES) -> tuple[RouteSpec, str]:
    """The route of `table` for `method` on `path` and its path parameter; HEAD takes GET's (the handler drops the
    body)."""
    wanted = "GET" if method == "HEAD" else method
    allowed = []
    for spec in table:
        match = spec.pattern.fullmatch(path)
        if match:
            if spec.method == wanted:
                return spec, (match.group(1) if match.groups() else "")
            allowed.append(spec.method)
    if allowed:
        raise MethodNotAllowed(f"{method} is not allowed here", headers={"Allow": ", ".join(allowed)},
                               allow=allowed)
    raise NotFound("no such path", code="path_not_found")

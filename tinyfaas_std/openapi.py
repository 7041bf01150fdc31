"""`GET /openapi.json`: the API described as OpenAPI 3.1 (SPEC 12).

Strategy: the document is data built once, from a few helpers that say what every route has in common (the
error shape, Basic Auth, the answers any authenticated route can give). It is written by hand beside the route
table rather than derived from it, because the table knows paths and permissions but not bodies and answers;
tests keep the two in step (every row of `routes.ROUTES` is described here, and the described paths exist) and
run schemathesis against the live server, so the document cannot drift from what the server does.
"""

from __future__ import annotations

import functools
import json
from typing import Any

__all__ = ["document", "document_bytes"]

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    """A JSON object schema; further properties are allowed (answers may grow)."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


_STR, _INT, _NUM, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_REQUIREMENTS = {"type": "array", "items": _STR, "description": "the requirement lines"}
_NULLABLE_STR = {"type": ["string", "null"]}
_CHANGES = {"type": "object", "additionalProperties": _NULLABLE_STR, "description": "null removes a name"}
_ANY: dict[str, Any] = {}

_SCHEMAS: dict[str, Any] = {
    "Error": _obj(("error",), error=_obj(("code", "message"), code=_STR, message=_STR)),
    "Function": _obj(
        ("name", "status", "version", "calling"), name=_STR, status=_STR, version=_STR, created=_NUM,
        updated=_NUM, calling={"enum": ["args", "event", "http"]}, env=_STRINGS,
        secrets={"type": "array", "items": _STR}, timeout=_NUM, memory_mb=_INT, max_workers=_INT,
        schedule=_NULLABLE_STR, next_run={**_NULLABLE_STR, "description": "UTC, ISO 8601"}, requirements=_REQUIREMENTS,
        files=_INT, code_sha256=_STR, code_size=_INT, invocations=_INT, errors=_INT,
        limits={"type": "object"}),
    "Uploaded": _obj(("name", "status", "version"), name=_STR, status={"const": "ready"}, created=_BOOL,
                     version=_STR, requirements=_REQUIREMENTS, files=_INT,
                     build_seconds=_NUM),
    "Version": _obj(("version", "live"), version=_STR, created=_NUM, code_sha256=_STR,
                    requirements=_REQUIREMENTS, calling=_STR, live=_BOOL),
    "CallRecord": _obj(("id",), id=_STR, function=_STR, status=_STR, trigger=_STR, duration=_NUM),
    "CallState": _obj(("id",), id=_STR, function=_STR, status=_STR),
    "Result": _obj(("id", "duration"), id=_STR, result=_ANY, error={"type": "object"}, duration=_NUM),
    "User": _obj(("name", "role", "functions"), name=_STR, role={"enum": ["admin", "developer", "invoker", "viewer"]},
                 functions={"type": ["array", "null"], "items": _STR}),
    "NewUser": {**_obj(("name", "password", "role"), name=_STR, password=_STR, role=_STR,
                       functions={"type": ["array", "null"], "items": _STR})},
    "UserChange": _obj(password=_STR, role=_STR, functions={"type": ["array", "null"], "items": _STR}),
    "Settings": _obj(calling={"enum": ["args", "event", "http"]}, env=_CHANGES, secrets=_CHANGES,
                     timeout={"type": ["number", "null"]}, memory_mb={"type": ["integer", "null"]},
                     max_workers={"type": ["integer", "null"]}, schedule=_NULLABLE_STR),
}

_ERRORS = {
    400: "a malformed request: its head, or a bad JSON body, field, name or query",
    401: "no, or wrong, Basic Auth credentials (with WWW-Authenticate)",
    403: "authenticated, but this user's role or function patterns do not allow it",
    404: "no such function, version, call, user or path",
    408: "the request was not sent in time (--client-timeout)",
    405: "the method is not allowed here (with Allow)",
    409: "a conflict with the present state",
    411: "a body without Content-Length",
    413: "a body over its limit (64 KiB where a route takes no body or a small JSON one)",
    414: "a request target over 8 KiB",
    415: "a body of the wrong Content-Type",
    422: "code, archive, requirements or settings rejected",
    429: "too many: failed logins from this address, or calls waiting (with Retry-After)",
    431: "request headers over their limit",
    502: "the function's worker crashed",
    503: "the server is stopping, or has too many connections",
    504: "the function ran past its timeout",
}
_TRANSPORT = (400, 408, 413, 414, 431)              # any route: a request that is not well formed or too big
_COMMON = (*_TRANSPORT, 401, 403, 429, 503)          # any authenticated route
_HEADERS = {  # headers an error answer always carries
    401: {"WWW-Authenticate": {"required": True, "schema": _STR}},
    405: {"Allow": {"required": True, "schema": _STR}},
    429: {"Retry-After": {"required": True, "schema": _STR, "description": "seconds"}},
}
_CALL_ID = {"X-Call-Id": {"required": False, "schema": _STR, "description": "the call's id, once it has one"}}


def _error(status: int) -> dict[str, Any]:
    answer = {"description": _ERRORS[status], "content": {_JSON: {"schema": _ref("Error")}}}
    if status in _HEADERS:
        answer["headers"] = _HEADERS[status]
    return answer


def _ok(schema: dict[str, Any], description: str = "done", status: int = 200) -> dict[int, Any]:
    return {status: {"description": description, "content": {_JSON: {"schema": schema}}}}


def _op(summary: str, answers: dict[int, Any], errors: tuple[int, ...] = (), *, params: tuple[str, ...] = (),
        body: dict[str, Any] | None = None, public: bool = False, extra_params: list | None = None) -> dict:
    statuses = sorted({*errors, *(_TRANSPORT if public else _COMMON)})
    responses = {str(status): answer for status, answer in answers.items()}
    responses.update({str(status): _error(status) for status in statuses})
    op: dict[str, Any] = {"summary": summary, "responses": responses,
                          "parameters": [_PARAMS[name] for name in params] + (extra_params or [])}
    if body is not None:
        op["requestBody"] = body
    if public:
        op["security"] = []
    return op


def _path(name: str, description: str, pattern: str = r"^[A-Za-z0-9_.-]+$", example: str = "") -> dict:
    schema = {"type": "string", "pattern": pattern, "minLength": 1}
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema,
            **({"example": example} if example else {})}


_PARAMS = {
    "name": _path("name", "a function's name", r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", "hello"),
    "subpath": _path("subpath", "an http function's own path: described here as one segment, though the server "
                                "takes any number (`/function/{name}/a/b/c`)", r"^[^/?#]+$"),
    "id": _path("id", "an async call's id (a uuid)", r"^[0-9a-f-]{36}$"),
    "user": _path("user", "a user's name", r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"),
}

_JSON_BODY = {"required": True, "content": {_JSON: {"schema": _ANY}}}
_ANY_BODY = {"required": False, "content": {"*/*": {"schema": _ANY}}}


def _function_ops(prefix: str, sub: bool) -> dict[str, Any]:
    """The methods of `/function/...` or `/async-function/...`: POST for every convention; for http functions
    also GET, PUT, PATCH, DELETE and OPTIONS, with or without a sub-path."""
    params = ("name", "subpath") if sub else ("name",)
    if prefix == "function":
        answers = {200: {"description": "an args or event function's `{id, result, duration}`, or what an http "
                                        "function answered (any status, headers and body)",
                         "headers": _CALL_ID, "content": {"*/*": {"schema": _ANY}}},
                   "default": {"description": "an http function's own answer, or `{id, error, duration}` (500) "
                                              "when main raised", "headers": _CALL_ID,
                               "content": {"*/*": {"schema": _ANY}}}}
        errors = (400, 404, 405, 411, 413, 502, 504)
        summary = "call a function and wait for its answer (X-Call-Id on every answer)"
    else:
        answers = _ok(_obj(("id", "status"), id=_STR, status={"const": "queued"}), "queued on disk", 202)
        errors = (400, 404, 405, 411, 413)
        summary = "queue a call; its record comes later from /admin/calls/{id} (optional X-Callback-Url)"
    ops = {}
    for method in ("post", "get", "put", "patch", "delete", "options"):
        body = _ANY_BODY if method in ("post", "put", "patch") else None
        ops[method] = _op(summary if method == "post" else f"{method.upper()} for an http function",
                          answers, errors, params=params, body=body)
    return ops


def _upload_body() -> dict[str, Any]:
    text_fields = ("calling", "env", "secrets", "timeout", "memory_mb", "max_workers", "schedule", "requirements")
    return {"required": True, "content": {"multipart/form-data": {"schema": _obj(
        ("name", "file"), name=_STR, file={"type": "string", "contentMediaType": "application/octet-stream"},
        **{field: _STR for field in text_fields})}}}


_UI_FILE = {200: {"description": "the file, under `Content-Security-Policy: default-src 'self'`",
                  "content": {media: {"schema": _STR} for media in ("text/html", "text/javascript", "text/css",
                                                                   "image/svg+xml")}}}


def _paths() -> dict[str, Any]:
    fn = ("name",)
    return {
        "/function/{name}": _function_ops("function", False),
        "/function/{name}/{subpath}": _function_ops("function", True),
        "/async-function/{name}": _function_ops("async-function", False),
        "/async-function/{name}/{subpath}": _function_ops("async-function", True),
        "/admin/calls/{id}": {
            "get": _op("an async call: queued or running, then its record", _ok(_ref("CallRecord")), (404,),
                       params=("id",)),
            "delete": _op("cancel a queued async call", _ok(_ref("CallState"), "cancelled"), (404, 409),
                          params=("id",))},
        "/admin/upload": {"post": _op(
            "deploy a function (a new one, or a new version)", _ok(_ref("Uploaded"), "ready"),
            (400, 411, 413, 415, 422), body=_upload_body())},
        "/admin/functions": {"get": _op(
            "the names of the functions this user may see", _ok({"type": "array", "items": _STR}))},
        "/admin/functions/{name}": {
            "get": _op("a function's description", _ok(_ref("Function")), (404,), params=fn),
            "patch": _op("change settings: a new version with the same code and venv", _ok(_ref("Function")),
                         (400, 404, 422), params=fn,
                         body={"required": True, "content": {_JSON: {"schema": _ref("Settings")}}}),
            "delete": _op("delete a function, its versions, secrets and logs",
                          _ok(_obj(("deleted",), deleted=_STR)), (404,), params=fn)},
        "/admin/functions/{name}/versions": {"get": _op(
            "the kept versions, newest first", _ok({"type": "array", "items": _ref("Version")}), (404,), params=fn)},
        "/admin/functions/{name}/rollback": {"post": _op(
            "make a kept version live (default: the one before)", _ok(_ref("Function")), (400, 404, 409),
            params=fn, body={"required": False, "content": {_JSON: {"schema": _obj(
                version={"type": ["string", "integer"]})}}})},
        "/admin/functions/{name}/code": {"get": _op(
            "the live version's files: text where UTF-8 and small, else `text` null", _ok(_obj(
                ("name", "version", "files"), name=_STR, version=_STR, files={"type": "array", "items": _obj(
                    ("path", "size", "text"), path=_STR, size=_INT, text={"type": ["string", "null"]})})),
            (404,), params=fn)},
        "/admin/functions/{name}/export": {"get": _op(
            "the live version as a folder for a container platform (SPEC 14), packed",
            {200: {"description": "a .tar.gz (Content-Disposition names it); the same bytes for the same version",
                   "content": {"application/gzip": {"schema": {"type": "string",
                                                               "contentMediaType": "application/gzip"}}}}},
            (404, 409), params=fn)},
        "/admin/logs/{name}": {"get": _op(
            "the call records, oldest first", _ok({"type": "array", "items": _ref("CallRecord")}), (400, 404),
            params=fn, extra_params=[
                {"name": "limit", "in": "query", "description": "the newest N records",
                 "schema": {"type": "integer", "minimum": 1}},
                {"name": "after", "in": "query", "description": "only the records after this call",
                 "schema": {"type": "string", "format": "uuid"}}])},
        "/admin/status": {"get": _op("CPU and memory of the server and its workers, containment in force",
                                     _ok(_obj(("process", "workers", "system", "functions"), functions=_INT)))},
        "/admin/me": {"get": _op("who these credentials are", _ok(_ref("User")))},
        "/admin/users": {
            "get": _op("the users (never a hash)", _ok({"type": "array", "items": _ref("User")})),
            "post": _op("add a user", _ok(_ref("User"), "added", 201), (400, 409),
                        body={"required": True, "content": {_JSON: {"schema": _ref("NewUser")}}})},
        "/admin/users/{user}": {
            "patch": _op("change a user's password, role or patterns", _ok(_ref("User")), (400, 404),
                         params=("user",), body={"required": True, "content": {_JSON: {"schema": _ref("UserChange")}}}),
            "delete": _op("remove a user", _ok(_obj(("deleted",), deleted=_STR)), (404,), params=("user",))},
        "/metrics": {"get": _op("Prometheus text format 0.0.4", {200: {
            "description": "the metrics", "content": {"text/plain": {"schema": _STR}}}})},
        "/openapi.json": {"get": _op("this document", _ok({"type": "object"}))},
        "/ui": {"get": _op("the dashboard's page (SPEC 13)", _UI_FILE)},
        "/ui/{file}": {"get": _op("one of the dashboard's files", _UI_FILE, (404,), extra_params=[
            {"name": "file", "in": "path", "required": True,
             "schema": {"type": "string", "enum": ["index.html", "app.js", "style.css", "favicon.svg"]}}])},
        "/healthz": {"get": _op("for load balancers: no credentials", {
            200: {"description": "serving", "content": {_JSON: {"schema": _obj(("status",), status={"const": "ok"})}}},
            503: {"description": "stopping",
                  "content": {_JSON: {"schema": _obj(("status",), status={"const": "stopping"})}}}}, public=True)},
    }


@functools.cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "tinyfaas_std", "version": "1",
                 "description": "A single-host Function-as-a-Service server. Every route but /healthz takes HTTP "
                                "Basic Auth; every error answer is `{\"error\": {\"code\", \"message\", ...}}`. "
                                "HEAD is answered wherever GET is."},
        "security": [{"basicAuth": []}],
        "paths": _paths(),
        "components": {"securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic"}},
                       "schemas": _SCHEMAS},
    }


@functools.cache
def document_bytes() -> bytes:
    return json.dumps(document(), ensure_ascii=True, separators=(",", ":")).encode()

"""`GET /openapi.json` (SPEC 12): it validates, it describes exactly the route table, and a bounded schemathesis
run against the live server finds no server error and no answer the document does not allow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
from openapi_spec_validator import validate

from harness import Server
from tinyfaas_std import routes

METHODS = ("get", "post", "put", "patch", "delete", "options")


def _document(server: Server) -> dict:
    resp = server.request("GET", "/openapi.json")
    assert resp.status == 200 and resp.headers["content-type"] == "application/json"
    return resp.json


def _template_regex(template: str) -> re.Pattern[str]:
    """`/admin/functions/{name}` -> a regex; `{subpath}` may span slashes, as the server's routes allow."""
    parts = re.split(r"(\{[^}]+\})", template)
    out = "".join("(.+)" if p == "{subpath}" else "([^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(out)


def _example_path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x-1", template)


def test_the_document_is_valid_openapi_3_1(server: Server) -> None:
    doc = _document(server)
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["basicAuth"] == {"type": "http", "scheme": "basic"}


def test_every_route_is_described_and_every_described_route_exists(server: Server) -> None:
    doc = _document(server)
    described = {(method.upper(), template) for template, ops in doc["paths"].items() for method in ops
                 if method in METHODS}
    undescribed = [f"{spec.method} {spec.pattern.pattern}" for spec in routes.ROUTES
                   if not any(m == spec.method and _template_regex(t).fullmatch(_example(spec.pattern.pattern))
                              for m, t in described)]
    assert undescribed == []
    missing = [f"{m} {t}" for m, t in described if t != "/healthz"
               and not any(spec.method == m and spec.pattern.fullmatch(_example_path(t)) for spec in routes.ROUTES)]
    assert missing == []
    assert doc["paths"]["/healthz"]["get"]["security"] == []


def _example(pattern: str) -> str:
    """A path one of the table's patterns matches (each group: a name; a trailing optional sub-path left out)."""
    return re.sub(r"\(\?:/\.\*\)\?", "", re.sub(r"\(\[\^/\][+*]\)", "x-1", pattern)).replace("\\", "")


def test_every_error_answer_in_the_document_has_the_error_shape(server: Server) -> None:
    doc = _document(server)
    for template, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, answer in op["responses"].items():
                if status.isdigit() and int(status) >= 400 and template != "/healthz":
                    assert answer["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"}, (method, template, status)


def test_schemathesis_finds_no_server_error_and_no_answer_against_the_document(server: Server,
                                                                               tmp_path: Path) -> None:
    """A bounded run (about a minute) of generated requests, positive and negative, against the live server with
    functions of each convention deployed (the document's examples name `hello`), which take any input: a
    function that raises answers 500 by design (SPEC 5), and that is not the server's error."""
    server.upload("hello", "def main(*args, **kwargs):\n    return [args, kwargs]\n")
    server.upload("hello-event", "def main(event, context):\n    return event\n", fields={"calling": "event"})
    server.upload("hello-http", "def main(request):\n    return {'statusCode': 200, 'body': request['path']}\n",
                  fields={"calling": "http"})
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "run", f"http://127.0.0.1:{server.port}/openapi.json",
           "--auth", "admin:1234", "--checks",
           "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
           "response_headers_conformance",
           "--max-examples", "25", "--max-time", "60", "--seed", "1", "--workers", "2",
           "--request-timeout", "20", "--no-color"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env,
                         cwd=tmp_path)  # its state folder lands there
    assert run.returncode == 0, run.stdout[-6000:]
    assert "passed" in run.stdout.rsplit("SUMMARY", 1)[-1]
    # it reached the server's logic, not only its 401s and 404s: many answers were 200
    metrics = server.request("GET", "/metrics").raw.decode()
    ok = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
             if line.startswith('tinyfaas_http_requests_total{code="200"}'))
    assert ok > 300, metrics
    assert server.request("GET", "/healthz").status == 200
    assert "Traceback" not in server.log()


def _check_answer(doc: dict, method: str, template: str, resp) -> None:
    """`resp` is an answer the document allows: its status is listed (or `default`), its media type is one of
    that answer's, a JSON body fits the schema, and the headers the document requires are there."""
    responses = doc["paths"][template][method.lower()]["responses"]
    answer = responses.get(str(resp.status)) or responses.get("default")
    assert answer is not None, f"{method} {template}: {resp.status} is not documented"
    media = resp.headers.get("content-type", "").split(";")[0].strip()
    content = answer.get("content", {})
    assert media in content or "*/*" in content, f"{method} {template} {resp.status}: {media} is not documented"
    schema = (content.get(media) or content["*/*"])["schema"]
    if media == "application/json" and schema:
        jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(resp.json)
    for header, spec in answer.get("headers", {}).items():
        assert not spec.get("required") or header.lower() in resp.headers, (method, template, header)


def test_real_answers_fit_the_document(server: Server) -> None:
    """Answers of every documented kind, from a function with env, a secret, a schedule and a requirement,
    checked against the document's schemas: the schemas a generated run rarely reaches."""
    doc = _document(server)
    fields = {"env": "GREETING=hi", "secrets": "TOKEN=s3cret", "schedule": "@every 1h", "timeout": "9"}
    seen = [("POST", "/admin/upload", server.upload("documented", "import greetlib\n\ndef main(*a):\n    return a\n",
                                                    requirements="greetlib==1.0\n", fields=fields))]
    seen.append(("POST", "/function/{name}", server.call("documented", [1, "x"])))
    submitted = server.request("POST", "/async-function/documented", "[2]")
    seen.append(("POST", "/async-function/{name}", submitted))
    call_id = submitted.json["id"]
    for _ in range(100):
        state = server.request("GET", f"/admin/calls/{call_id}")
        if state.json.get("status") not in ("queued", "running"):
            break
        time.sleep(0.05)
    seen.append(("GET", "/admin/calls/{id}", state))
    seen.append(("DELETE", "/admin/calls/{id}", server.request("DELETE", f"/admin/calls/{call_id}")))
    patched = server.request("PATCH", "/admin/functions/documented", '{"env": {"MORE": "yes"}, "max_workers": 2}')
    seen += [("PATCH", "/admin/functions/{name}", patched),
             ("GET", "/admin/functions", server.request("GET", "/admin/functions")),
             ("GET", "/admin/functions/{name}", server.request("GET", "/admin/functions/documented")),
             ("GET", "/admin/functions/{name}/versions", server.request("GET", "/admin/functions/documented/versions")),
             ("POST", "/admin/functions/{name}/rollback",
              server.request("POST", "/admin/functions/documented/rollback", '{"version": 1}')),
             ("GET", "/admin/functions/{name}/code", server.request("GET", "/admin/functions/documented/code")),
             ("GET", "/admin/functions/{name}/export", server.request("GET", "/admin/functions/documented/export")),
             ("GET", "/admin/logs/{name}", server.request("GET", "/admin/logs/documented?limit=5")),
             ("GET", "/admin/status", server.request("GET", "/admin/status")),
             ("GET", "/admin/me", server.request("GET", "/admin/me")),
             ("POST", "/admin/users", server.request("POST", "/admin/users", '{"name": "doc", "password": '
                                                     '"doc-password", "role": "developer", "functions": ["d*"]}')),
             ("GET", "/admin/users", server.request("GET", "/admin/users")),
             ("PATCH", "/admin/users/{user}", server.request("PATCH", "/admin/users/doc", '{"role": "viewer"}')),
             ("DELETE", "/admin/users/{user}", server.request("DELETE", "/admin/users/doc")),
             ("GET", "/metrics", server.request("GET", "/metrics")),
             ("GET", "/healthz", server.request("GET", "/healthz", auth=None)),
             ("GET", "/ui", server.request("GET", "/ui")),
             ("GET", "/ui/{file}", server.request("GET", "/ui/app.js")),
             # errors
             ("GET", "/admin/functions/{name}", server.request("GET", "/admin/functions/nothing-here")),
             ("GET", "/admin/status", server.request("GET", "/admin/status", auth=None)),
             ("POST", "/admin/functions/{name}/rollback",
              server.request("POST", "/admin/functions/documented/rollback", '{"version": "99"}')),
             ("PATCH", "/admin/functions/{name}", server.request("PATCH", "/admin/functions/documented", '{"env": 1}')),
             ("PATCH", "/admin/users/{user}", server.request("PATCH", "/admin/users/doc", "x" * 70_000)),
             ("POST", "/function/{name}", server.request("POST", "/function/documented", "{bad json")),
             ("POST", "/admin/upload", server.request("POST", "/admin/upload", "x", {"Content-Type": "text/plain"}))]
    statuses = [resp.status for *_, resp in seen]
    assert statuses[:3] == [200, 200, 202] and {401, 404, 400, 413, 415} <= set(statuses), statuses
    described = server.request("GET", "/admin/functions/documented").json
    assert described["schedule"] == "@every 1h" and described["secrets"] == ["TOKEN"]
    for method, template, resp in seen:
        _check_answer(doc, method, template, resp)

"""`GET /openapi.json` (SPEC 12): it validates, it describes exactly the route table, and a bounded schemathesis
run against the live server finds no server error and no answer the document does not allow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
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

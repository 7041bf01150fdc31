"""Another site's page must not use the credentials a browser holds for this server (cross-site request forgery),
and a page an http function serves must not use them either: it shares the dashboard's origin."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator

import pytest

from harness import Server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
NEW_USER = json.dumps({"name": "intruder", "password": "intruder-password", "role": "admin"})
_PAGE_HTML = ('<!doctype html><title>waiting</title><script>fetch("/admin/users", {method: "POST", credentials: '
              f'"include", body: {json.dumps(NEW_USER)}}}).then(r => {{ document.title = "posted " + r.status; }}, '
              '() => { document.title = "post failed"; });</script>')
PAGE = ("def main(request):\n    return {'statusCode': 200, 'headers': {'Content-Type': 'text/html'}, 'body': "
        + repr(_PAGE_HTML) + "}\n")


def _users(server: Server) -> list[str]:
    return [user["name"] for user in server.request("GET", "/admin/users").json]


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port of the same host is the same site
    {"Origin": "http://evil.example"},
    {"Origin": "null"},  # a sandboxed page
    {"Origin": "http://127.0.0.1:1"},
])
def test_a_change_another_site_asks_for_is_refused_whatever_its_credentials(server: Server,
                                                                            headers: dict[str, str]) -> None:
    for method, path, body in (("POST", "/admin/users", NEW_USER), ("DELETE", "/admin/functions/kept", ""),
                               ("PATCH", "/admin/functions/kept", '{"timeout": 3}')):
        if method == "POST":
            assert server.upload("kept", "def main():\n    return 1\n").status == 200
        resp = server.request(method, path, body, headers)
        assert resp.status == 403 and resp.json["error"]["code"] == "cross_site", (method, path, resp.raw)
    assert "intruder" not in _users(server)
    assert server.request("GET", "/admin/functions/kept").json["timeout"] != 3


def test_this_origin_reads_and_calls_are_served(server: Server) -> None:
    server.upload("kept", "def main():\n    return 1\n")
    same = {"Origin": f"http://127.0.0.1:{server.port}", "Sec-Fetch-Site": "same-origin"}
    assert server.request("PATCH", "/admin/functions/kept", '{"timeout": 4}', {**same, "Host": f"127.0.0.1:{server.port}"}
                          ).status == 200
    other = {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}
    assert server.request("GET", "/admin/functions/kept", headers=other).status == 200  # unreadable there anyway
    assert server.request("POST", "/function/kept", "[]", other).json["result"] == 1  # a call is a call
    assert server.request("POST", "/async-function/kept", "[]", other).status == 202


def test_an_http_functions_answer_is_a_sandbox_of_its_own(server: Server) -> None:
    server.upload("page", PAGE, fields={"calling": "http"})
    resp = server.request("GET", "/function/page")
    assert resp.status == 200 and resp.headers["content-security-policy"].startswith("sandbox allow-scripts")
    assert "allow-same-origin" not in resp.headers["content-security-policy"]


# -- in a real browser --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def other_site() -> Iterator[str]:
    """Another origin on this host (another port: the same site, as far as browsers go), serving one page that
    posts to the server with whatever credentials the browser holds for it."""
    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            target = self.path.split("?target=", 1)[1]
            page = (f'<!doctype html><title>waiting</title><script>fetch("{target}/admin/users", {{method: "POST", '
                    f'mode: "no-cors", credentials: "include", body: {json.dumps(NEW_USER)}}}).then('
                    '() => { document.title = "sent"; }, () => { document.title = "failed"; });</script>').encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_: object) -> None:
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{evil.server_address[1]}"
    evil.shutdown()
    evil.server_close()


def test_another_sites_page_cannot_add_a_user_with_the_admins_browser(server: Server, browser, other_site: str) -> None:
    base = f"http://127.0.0.1:{server.port}"
    context = browser.new_context(http_credentials={"username": "admin", "password": "1234"})
    try:
        page = context.new_page()
        assert page.goto(f"{base}/ui").status == 200  # the admin is logged in
        page.goto(f"{other_site}/?target={base}")
        page.wait_for_function("document.title !== 'waiting'", timeout=10_000)
        assert page.title() == "sent"  # the request left the browser...
    finally:
        context.close()
    assert "intruder" not in _users(server)  # ...and changed nothing


def test_an_http_functions_page_cannot_use_the_admins_browser(server: Server, browser) -> None:
    server.upload("page", PAGE, fields={"calling": "http"})
    context = browser.new_context(http_credentials={"username": "admin", "password": "1234"})
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/function/page")
        page.wait_for_function("document.title !== 'waiting'", timeout=10_000)
        assert page.title() in ("posted 403", "post failed"), page.title()
    finally:
        context.close()
    assert "intruder" not in _users(server)

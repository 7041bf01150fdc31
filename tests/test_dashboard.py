"""The dashboard (SPEC 13): its files and their headers over plain HTTP, then the page itself in a real headless
Chromium (Debian's, driven by Playwright) against the real server: deploy through the form, invoke, see the
result, the new call and the code, change a setting, roll back, delete; what functions return or print, and their
source, stays text; each role sees what it may use and asks for nothing else; the page asks nothing of any other
host, and nothing at all once signed out or blocked, nor while in the background; late answers, paths that would
leave a function, settings that are not numbers, a server that does not answer and records that were cut are each
shown for what they are.

The admin's tests share one page, loaded again for each; the others open their own. `/ui?poll=0.25` shortens the
page's polling where a test waits for it (the page's CSP forbids `wait_for_function`: waits are `expect()`s).

Screenshots of each state go to the test's tmp_path (their paths are printed: `pytest -s`). With
TINYFAAS_SCREENSHOT_OUT=docs/dashboard.png the first browser test also writes the README's picture there.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from harness import REPO, Server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT_OUT = os.environ.get("TINYFAAS_SCREENSHOT_OUT")  # the README's picture, e.g. docs/dashboard.png
EVIL = "<img src=x onerror=alert(1)>"
PASSWORD = "a-long-password"
UI = REPO / "tinyfaas_std" / "ui"

RESIZE = """import time

def main(width, height=100):
    time.sleep(width / 20000)
    print("resizing to", width, "x", height)
    return {"width": width, "height": height}
"""
GREET = "def main(request):\n    return 'hello ' + request['path']\n"
ADDER = "def main(a, b=0):\n    print('adding', a, b)\n    return a + b\n"


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[Server]:
    """A server with two functions that have a history, an invoker of both and a viewer."""
    server = Server(tmp_path_factory.mktemp("ui"), wheels).start()
    assert server.upload("resize", RESIZE).status == 200
    assert server.upload("greet", GREET, fields={"calling": "http"}).status == 200
    for width in (120, 480, 200, 900, 64, 640, 320, 1024, 150, 720):
        assert server.call("resize", [width]).status == 200
    assert server.call("resize", ["wide"]).status == 500
    for path in ("/", "/world"):
        assert server.request("GET", f"/function/greet{path}").status == 200
    for name, role in (("inv", "invoker"), ("view", "viewer")):
        doc = {"name": name, "password": PASSWORD, "role": role, "functions": ["resize", "greet"]}
        assert server.request("POST", "/admin/users", json.dumps(doc)).status == 201
    yield server
    server.stop()


# -- without a browser: the files and their headers ---------------------------------------------------------

def test_the_page_needs_credentials_and_lets_the_browser_ask_for_them(ui_server: Server) -> None:
    for path in ("/ui", "/ui/app.js", "/ui/nothing"):
        resp = ui_server.request("GET", path, auth=None)
        assert resp.status == 401 and resp.json["error"]["code"].startswith("auth_")
        assert resp.headers["www-authenticate"] == 'Basic realm="Login Required"'


@pytest.mark.parametrize("path, content_type", [
    ("/ui", "text/html"), ("/ui/", "text/html"), ("/ui/index.html", "text/html"),
    ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css"), ("/ui/favicon.svg", "image/svg+xml"),
])
def test_each_file_is_served_with_strict_headers_and_head_works(ui_server: Server, path: str,
                                                                 content_type: str) -> None:
    resp = ui_server.request("GET", path)
    assert resp.status == 200 and resp.raw
    assert resp.headers["content-type"].split(";")[0] == content_type
    assert resp.headers["content-security-policy"] == "default-src 'self'"
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["cache-control"] == "no-cache"
    assert int(resp.headers["content-length"]) == len(resp.raw)
    head = ui_server.request("HEAD", path)
    assert head.status == 200 and head.raw == b""
    assert {k: v for k, v in head.headers.items()} == resp.headers


def test_only_the_dashboards_own_files_are_served(ui_server: Server) -> None:
    for path in ("/ui/x", "/ui/app.js.map", "/ui/ui.py", "/ui/..%2f__init__.py", "/ui/../routes.py", "/ui/a/b"):
        resp = ui_server.request("GET", path)
        assert resp.status == 404, path
        assert resp.headers["content-type"] == "application/json" and resp.json["error"]["code"] == "path_not_found"
    resp = ui_server.request("POST", "/ui", b"")
    assert resp.status == 405 and resp.headers["allow"] == "GET"


def test_the_files_hold_no_inline_code_and_name_no_other_host() -> None:
    html = (UI / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/ui/app.js" defer>']
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html)
    script = (UI / "app.js").read_text()
    assert not re.search(r"\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write|\beval\(|new Function", script)
    for path in UI.iterdir():
        hosts = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", path.read_text()))
        assert hosts <= {"http://www.w3.org"}, path  # the SVG namespace is a name, never fetched


# -- in the browser ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Visit:
    """One user's page, and what it asked of the network and what went wrong in it along the way."""
    page: Page
    base: str
    requests: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)   # answers 403: asked for what the role may not do
    problems: list[str] = field(default_factory=list)    # script errors, CSP violations
    dialogs: list[str] = field(default_factory=list)     # alert(), confirm(): none is expected

    def assert_clean(self) -> None:
        assert [url for url in self.requests if not url.startswith(self.base + "/")] == []
        assert self.forbidden == [] and self.problems == [] and self.dialogs == []


def _open(browser: Browser, base: str, user: str, password: str, query: str = "",
          before: Callable[[Page], object] | None = None) -> Visit:
    """Opens /ui as a user (the browser answers the Basic Auth prompt) and records what happens; `before` is
    done to the page before it loads (e.g. routes that fail some requests)."""
    context = browser.new_context(http_credentials={"username": user, "password": password},
                                  viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    if before:
        before(page)
    seen = Visit(page, base)
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on("response", lambda response: response.status == 403 and seen.forbidden.append(response.url))
    page.on("pageerror", lambda error: seen.problems.append(str(error)))
    page.on("console", lambda message: message.type == "error" and "Failed to load resource" not in message.text
            and seen.problems.append(message.text))
    page.on("dialog", lambda dialog: (seen.dialogs.append(dialog.message), dialog.dismiss()))
    return _load(seen, user, query)


def _load(seen: Visit, user: str, query: str = "") -> Visit:
    response = seen.page.goto(f"{seen.base}/ui{query}")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"] == "default-src 'self'"
    expect(seen.page.locator("#me")).to_contain_text(user)
    return seen


@pytest.fixture
def visit(browser: Browser, ui_server: Server) -> Iterator[Callable[..., Visit]]:
    """`visit(user, password, query="", server=ui_server, before=None)`: a page of its own browser context (see
    _open), closed after the test."""
    pages: list[Page] = []

    def open_as(user: str, password: str, query: str = "", server: Server = ui_server,
                before: Callable[[Page], object] | None = None) -> Visit:
        seen = _open(browser, f"http://127.0.0.1:{server.port}", user, password, query, before)
        pages.append(seen.page)
        return seen

    yield open_as
    for page in pages:
        page.context.close()


@pytest.fixture(scope="module")
def admin_page(browser: Browser, ui_server: Server) -> Iterator[Visit]:
    seen = _open(browser, f"http://127.0.0.1:{ui_server.port}", "admin", "1234")
    yield seen
    seen.page.context.close()


@pytest.fixture
def admin(admin_page: Visit) -> Callable[[], Visit]:
    """`admin()`: the admin's page, loaded again (cheaper than a browser context of its own) once the test has
    made what it needs; what it records from then on is the test's. A test leaves no route on it."""
    def load() -> Visit:
        for record in (admin_page.requests, admin_page.forbidden, admin_page.problems, admin_page.dialogs):
            record.clear()
        return _load(admin_page, "admin")
    return load


def _shot(page: Page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")


def _invoke(page: Page, arguments: str) -> None:
    page.locator("#invoke-form [name=args]").fill(arguments)
    page.locator("#invoke-form button[type=submit]").click()


def test_deploy_invoke_change_roll_back_and_delete_through_the_page(ui_server: Server, admin: Callable[[], Visit],
                                                                    tmp_path: Path) -> None:
    seen = admin()
    page = seen.page
    expect(page.locator("#function-list [data-name=resize]")).to_contain_text("11 calls · 1 error")
    expect(page.locator("#cpu-chart polyline.server")).to_have_count(1)  # live status, as inline SVG
    expect(page.locator("#memory-now")).to_contain_text("MB")
    _shot(page, tmp_path, "1-list")

    page.click("#show-deploy")
    form = page.locator("#deploy-form")
    form.locator("[name=name]").fill("adder")
    form.locator("[name=file]").set_input_files(files=[{"name": "adder.py", "mimeType": "text/x-python",
                                                        "buffer": ADDER.encode()}])
    form.locator("[name=env]").fill("GREETING=hello")
    _shot(page, tmp_path, "2-deploy-form")
    form.locator("button[type=submit]").click()
    expect(page.locator("#detail-name")).to_have_text("adder")
    expect(page.locator("#function-list li.selected")).to_contain_text("adder")
    expect(page.locator("#setting-env")).to_have_text("GREETING=hello")
    expect(page.locator("#code-text")).to_have_text(ADDER)  # its code, as deployed
    assert ui_server.request("GET", "/admin/functions/adder").json["env"] == {"GREETING": "hello"}

    calls = page.locator("#calls tbody tr")
    expect(calls).to_have_count(0)
    _invoke(page, "[2, 3]")
    expect(page.locator("#invoke-result")).to_have_text("5")
    expect(page.locator("#invoke-output")).to_contain_text("adding 2 3")
    expect(page.locator("#invoke-duration")).to_have_text(re.compile(r"in \d+(\.\d+)? ms"))
    expect(calls).to_have_count(1)
    _invoke(page, '["two", 3]')
    expect(page.locator("#invoke-status")).to_have_text("500")
    expect(page.locator("#invoke-result")).to_contain_text("TypeError")
    expect(calls).to_have_count(2)
    expect(calls.first).to_have_class(re.compile(r"\berror\b"))  # newest first, in its status colour
    expect(calls.last).to_have_class(re.compile(r"\bok\b"))
    expect(page.locator("#duration-chart rect.bar.ok")).to_have_count(1)
    expect(page.locator("#duration-chart rect.bar.error")).to_have_count(1)
    logged = [record["id"] for record in ui_server.request("GET", "/admin/logs/adder").json]
    assert [calls.nth(i).get_attribute("data-id") for i in (1, 0)] == logged
    _shot(page, tmp_path, "3-invoked")
    if SCREENSHOT_OUT:
        _readme_picture(page)

    patch = page.locator("#patch-form")
    patch.locator("[name=key]").select_option("timeout")
    patch.locator("[name=value]").fill("7")
    patch.locator("button").click()
    expect(page.locator("#setting-timeout")).to_have_text("7 s")
    expect(page.locator("#detail-badges")).to_contain_text("v2")
    assert ui_server.request("GET", "/admin/functions/adder").json["timeout"] == 7
    patch.locator("[name=key]").select_option("env")
    patch.locator("[name=value]").fill("GREETING=bye")
    patch.locator("button").click()
    expect(page.locator("#setting-env")).to_have_text("GREETING=bye")
    expect(page.locator("#versions tbody tr")).to_have_count(3)
    _shot(page, tmp_path, "4-patched")

    page.click("#versions button[data-version='1']")  # not the default (the one before the live one: v2)
    expect(page.locator("#versions tr.live")).to_contain_text("v1")
    expect(page.locator("#setting-timeout")).to_have_text("30 s")
    expect(page.locator("#setting-env")).to_have_text("GREETING=hello")
    described = ui_server.request("GET", "/admin/functions/adder").json
    assert (described["version"], described["timeout"], described["env"]) == ("1", 30, {"GREETING": "hello"})
    _shot(page, tmp_path, "5-rolled-back")

    page.click("#delete")
    page.click("#delete-yes")
    expect(page.locator("#function-list [data-name=adder]")).to_have_count(0)
    expect(page.locator("#detail")).to_be_hidden()
    assert ui_server.request("GET", "/admin/functions/adder").status == 404
    _shot(page, tmp_path, "6-deleted")
    seen.assert_clean()


def _readme_picture(page: Page) -> None:
    """The README's picture: a function with a history, a call just made, a few status samples."""
    page.click("#function-list [data-name=resize]")
    expect(page.locator("#calls tbody tr")).to_have_count(11)
    _invoke(page, "[800, 600]")
    expect(page.locator("#invoke-output")).to_contain_text("resizing to 800 x 600")
    four_samples = re.compile(r"^(\S+ ){3}\S+")  # (the page's CSP forbids wait_for_function's eval)
    expect(page.locator("#cpu-chart polyline.server")).to_have_attribute("points", four_samples, timeout=20_000)
    out = REPO / SCREENSHOT_OUT if not os.path.isabs(SCREENSHOT_OUT or "") else Path(SCREENSHOT_OUT or "")
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=out)
    print(f"README picture: {out}")
    page.click("#function-list [data-name=adder]")
    expect(page.locator("#detail-name")).to_have_text("adder")


def test_what_functions_return_or_print_is_shown_as_text(ui_server: Server, admin: Callable[[], Visit],
                                                         tmp_path: Path) -> None:
    assert ui_server.upload("evil", f"def main():\n    print({EVIL!r})\n    return {EVIL!r}\n").status == 200
    assert ui_server.upload("evil_error", f"def main():\n    raise ValueError({EVIL!r})\n").status == 200
    page_source = f"def main(request):\n    return {{'statusCode': 200, 'headers': {{'Content-Type': 'text/html'}}, 'body': {EVIL!r}}}\n"
    assert ui_server.upload("evil_page", page_source, fields={"calling": "http"}).status == 200
    seen = admin()
    page = seen.page

    page.click("#function-list [data-name=evil]")
    _invoke(page, "")
    expect(page.locator("#invoke-result")).to_have_text(EVIL)
    expect(page.locator("#invoke-output")).to_have_text(EVIL)
    expect(page.locator("#calls tbody tr").first).to_contain_text(EVIL)
    page.locator("#calls tbody tr").first.click()
    expect(page.locator("#call-detail")).to_contain_text(EVIL)

    page.click("#function-list [data-name=evil_error]")
    _invoke(page, "")
    expect(page.locator("#invoke-result")).to_contain_text(f"ValueError: {EVIL}")

    page.click("#function-list [data-name=evil_page]")
    expect(page.locator("#http-box")).to_be_visible()
    page.locator("#invoke-form [name=method]").select_option("GET")
    page.locator("#invoke-form button[type=submit]").click()
    expect(page.locator("#invoke-result")).to_have_text(EVIL)
    expect(page.locator("#calls tbody tr").first).to_contain_text(EVIL)
    _shot(page, tmp_path, "text-not-markup")

    assert page.locator("img").count() == 0
    seen.assert_clean()  # no dialog among the rest


def test_an_invoker_gets_an_invoke_box_and_nothing_to_change(visit: Callable[..., Visit], tmp_path: Path) -> None:
    seen = visit("inv", PASSWORD)
    page = seen.page
    expect(page.locator("#card-invoke")).to_be_visible()
    expect(page.locator("#invoke-form [name=function]")).to_have_value("resize")
    for part in ("#sidebar", "#show-deploy", "#deploy-form", "#delete-box", "#card-settings", "#patch-form",
                 "#card-versions", "#card-calls", "#server-status"):
        expect(page.locator(part)).to_be_hidden()
    _invoke(page, "[40]")
    expect(page.locator("#invoke-status")).to_have_text("200")
    expect(page.locator("#invoke-result")).to_contain_text('"width": 40')
    expect(page.locator("#invoke-output-box")).to_be_hidden()  # the log is not the invoker's to read

    page.locator("#invoke-form [name=function]").fill("greet")
    page.locator("#invoke-form [name=calling]").select_option("http")
    page.locator("#invoke-form [name=path]").fill("/there")
    page.locator("#invoke-form button[type=submit]").click()
    expect(page.locator("#invoke-result")).to_have_text("hello /there")
    expect(page.locator("#versions button")).to_have_count(0)
    _shot(page, tmp_path, "invoker")
    seen.assert_clean()  # and no 403: the page asked only for what an invoker may do


def test_a_viewer_sees_functions_calls_and_status_and_can_change_nothing(visit: Callable[..., Visit],
                                                                          tmp_path: Path) -> None:
    seen = visit("view", PASSWORD)
    page = seen.page
    page.click("#function-list [data-name=resize]")
    expect(page.locator("#calls tbody tr").first).to_be_visible()
    expect(page.locator("#duration-chart rect.bar").first).to_be_visible()
    expect(page.locator("#setting-calling")).to_have_text("args")
    expect(page.locator("#versions tr.live")).to_contain_text("v1")
    expect(page.locator("#memory-chart polyline")).to_have_count(2)
    for part in ("#show-deploy", "#card-invoke", "#patch-form", "#delete-box"):
        expect(page.locator(part)).to_be_hidden()
    expect(page.locator("#versions button")).to_have_count(0)
    _shot(page, tmp_path, "viewer")
    seen.assert_clean()



def test_a_developer_of_some_functions_sees_and_changes_only_those_and_asks_nothing_forbidden(
        ui_server: Server, visit: Callable[..., Visit], tmp_path: Path) -> None:
    assert ui_server.upload("report-daily", ADDER).status == 200
    doc = {"name": "dev", "password": PASSWORD, "role": "developer", "functions": ["report-*"]}
    assert ui_server.request("POST", "/admin/users", json.dumps(doc)).status == 201
    seen = visit("dev", PASSWORD)
    page = seen.page
    expect(page.locator("#function-list li")).to_have_count(1)
    expect(page.locator("#server-status")).to_be_visible()
    _deploy(page, "report-x", ADDER)
    expect(page.locator("#detail-name")).to_have_text("report-x")
    expect(page.locator("#code-text")).to_have_text(ADDER)
    expect(page.locator("#function-list li")).to_have_count(2)
    _invoke(page, "[2, 3]")
    expect(page.locator("#invoke-output")).to_contain_text("adding 2 3")
    _shot(page, tmp_path, "developer")
    _change(page, "max_workers", "2")
    expect(page.locator("#setting-max_workers")).to_have_text("2")
    page.click("#versions button[data-version='1']")
    expect(page.locator("#versions tr.live")).to_contain_text("v1")
    page.click("#function-list [data-name=report-daily]")
    expect(page.locator("#code-text")).to_have_text(ADDER)
    page.click("#delete")
    page.click("#delete-yes")
    expect(page.locator("#function-list li")).to_have_count(1)
    seen.assert_clean()  # and no 403: every request was one a developer of report-* may make

# -- when the credentials stop working ---------------------------------------------------------------------------

POLL = "?poll=0.25"  # the page's periods shortened for the tests (the shortest app.js allows)


HIDDEN = "Object.defineProperty(document, 'hidden', { get: () => true });"  # a tab in the background


def test_a_page_asks_nothing_more_once_signed_out_or_blocked_nor_while_in_the_background(
        ui_server: Server, visit: Callable[..., Visit], admin_page: Visit) -> None:
    doc = {"name": "leaving", "password": PASSWORD, "role": "viewer", "functions": ["resize"]}
    assert ui_server.request("POST", "/admin/users", json.dumps(doc)).status == 201
    leaving = visit("leaving", PASSWORD, POLL)
    background = visit("view", PASSWORD, POLL, before=lambda page: page.add_init_script(HIDDEN))

    leaving.page.click("#function-list [data-name=resize]")
    expect(leaving.page.locator("#calls tbody tr").first).to_be_visible()  # and every poll is running
    assert ui_server.request("DELETE", "/admin/users/leaving").status in (200, 204)
    expect(leaving.page.locator("#stopped")).to_have_text(re.compile(r"signed out: reload to log in again", re.I))

    blocked = _load(admin_page, "admin", POLL)  # (the admin's own page: its route goes again at the end)
    refusal = json.dumps({"error": {"code": "too_many_failed_logins", "message": "too many failed logins"}})
    blocked.page.route("**/admin/status", lambda route: route.fulfill(
        status=429, headers={"Retry-After": "60"}, content_type="application/json", body=refusal))
    expect(blocked.page.locator("#stopped")).to_have_text(re.compile(r"blocked for 60 s", re.I))

    expect(background.page.locator("#function-list [data-name=resize]")).to_be_visible()  # loaded once, then quiet
    expect(background.page.locator("#memory-now")).to_contain_text("MB")
    expect(background.page.locator("#stopped")).to_be_hidden()

    counts = [len(seen.requests) for seen in (leaving, blocked, background)]
    leaving.page.wait_for_timeout(4 * 250)  # four poll periods: what is checked is that nothing happens
    assert [len(seen.requests) for seen in (leaving, blocked, background)] == counts
    blocked.page.unroute("**/admin/status")


# -- answers that come late ------------------------------------------------------------------------------------

SLOW = "import time\n\ndef main():\n    time.sleep(1)\n    return 'the slow answer'\n"


def test_a_slow_answer_never_shows_under_another_function(ui_server: Server, admin: Callable[[], Visit]) -> None:
    assert ui_server.upload("slow", SLOW).status == 200
    seen = admin()
    page = seen.page
    page.click("#function-list [data-name=slow]")
    with page.expect_request_finished(lambda request: request.url.endswith("/function/slow")):
        _invoke(page, "")
        page.click("#function-list [data-name=resize]")
        expect(page.locator("#detail-name")).to_have_text("resize")
    expect(page.locator("#message")).to_contain_text("slow answered 200")  # said, beside the pane
    expect(page.locator("#invoke-answer")).to_be_hidden()
    expect(page.locator("#detail")).not_to_contain_text("the slow answer")
    seen.assert_clean()


# -- the http invoke box stays under /function/<name>/ ----------------------------------------------------------

def _http_invoke(page: Page, method: str, path: str) -> None:
    page.locator("#invoke-form [name=method]").select_option(method)
    page.locator("#invoke-form [name=path]").fill(path)
    page.locator("#invoke-form button[type=submit]").click()


def test_the_http_path_cannot_leave_the_function_and_is_sent_encoded(admin: Callable[[], Visit]) -> None:
    seen = admin()
    page = seen.page
    page.click("#function-list [data-name=greet]")
    expect(page.locator("#http-box")).to_be_visible()
    for path in ("../../admin/users", "/x/%2E%2e/y", "./"):
        _http_invoke(page, "GET", path)
        expect(page.locator("#invoke-problem")).to_contain_text("'.' or '..'")
    assert [url for url in seen.requests if "/function/" in url or url.endswith("/admin/users")] == []

    _http_invoke(page, "GET", "/a b#c/100%?q=1 2#3&r=%41")
    expect(page.locator("#invoke-result")).to_have_text("hello /a b#c/100%")
    expect(page.locator("#invoke-problem")).to_be_empty()
    assert f"{seen.base}/function/greet/a%20b%23c/100%25?q=1%202%233&r=%41" in seen.requests  # query as typed
    seen.assert_clean()


# -- settings -----------------------------------------------------------------------------------------------

def _change(page: Page, key: str, value: str) -> None:
    form = page.locator("#patch-form")
    form.locator("[name=key]").select_option(key)
    form.locator("[name=value]").fill(value)
    form.locator("button").click()


def test_a_number_setting_refuses_what_is_not_a_number_and_empty_means_the_default(
        ui_server: Server, admin: Callable[[], Visit]) -> None:
    assert ui_server.upload("knobs", ADDER).status == 200
    seen = admin()
    page = seen.page
    page.click("#function-list [data-name=knobs]")
    expect(page.locator("#patch-form [name=value]")).to_have_attribute("placeholder", "seconds; empty: default")
    _change(page, "timeout", "7")
    expect(page.locator("#setting-timeout")).to_have_text("7 s")
    for typed in ("abc", "1e999", "NaN"):
        _change(page, "timeout", typed)
        expect(page.locator("#patch-result")).to_have_text(re.compile(r"^timeout must be a number"))
        expect(page.locator("#patch-result")).to_have_class(re.compile(r"\berror\b"))
    assert ui_server.request("GET", "/admin/functions/knobs").json["timeout"] == 7  # unchanged: nothing was sent
    _change(page, "timeout", "")
    expect(page.locator("#setting-timeout")).to_have_text("30 s")  # the server's --timeout
    seen.assert_clean()


# -- a server that does not answer -------------------------------------------------------------------------------

def test_a_lost_server_is_said_where_the_user_acted(browser: Browser, tmp_path_factory: pytest.TempPathFactory,
                                                    wheels: Path) -> None:
    server = Server(tmp_path_factory.mktemp("lost"), wheels).start()
    try:
        assert server.upload("adder", ADDER).status == 200
        assert server.request("PATCH", "/admin/functions/adder", json.dumps({"timeout": 5})).status == 200
        refused: list[str] = []

        def refuse_the_first_list(route: Route) -> None:
            if refused:
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort()

        seen = _open(browser, f"http://127.0.0.1:{server.port}", "admin", "1234", POLL,
                     before=lambda page: page.route("**/admin/functions", refuse_the_first_list))
        page = seen.page
        page.click("#function-list [data-name=adder]")  # there: the polling went on after its first run failed
        assert refused
        expect(page.locator("#versions tbody tr")).to_have_count(2)
        server.stop()

        unreachable = re.compile(r"^no answer from the server")
        _invoke(page, "[1, 2]")
        expect(page.locator("#invoke-problem")).to_have_text(unreachable)
        _change(page, "timeout", "9")
        expect(page.locator("#patch-result")).to_have_text(unreachable)
        page.click("#versions button[data-version='1']")
        expect(page.locator("#versions-result")).to_have_text(unreachable)
        page.click("#delete")
        page.click("#delete-yes")
        expect(page.locator("#delete-result")).to_have_text(unreachable)
        page.click("#show-deploy")
        form = page.locator("#deploy-form")
        form.locator("[name=name]").fill("other")
        form.locator("[name=file]").set_input_files(files=[{"name": "f.py", "mimeType": "text/x-python",
                                                            "buffer": ADDER.encode()}])
        form.locator("button[type=submit]").click()
        expect(page.locator("#deploy-result")).to_have_text(unreachable)
        expect(form.locator("button[type=submit]")).to_be_enabled()
        expect(page.locator("#message")).to_contain_text("lost the server")  # the polls' own failures
        assert seen.problems == []  # nothing escaped as an uncaught error
        page.context.close()
    finally:
        if server.proc and server.proc.poll() is None:
            server.stop()


# -- deploying again ------------------------------------------------------------------------------------------

def _deploy(page: Page, name: str, source: str, filename: str = "func.py") -> None:
    page.click("#show-deploy")
    form = page.locator("#deploy-form")
    form.locator("[name=name]").fill(name)
    form.locator("[name=file]").set_input_files(files=[{"name": filename, "mimeType": "text/x-python",
                                                        "buffer": source.encode()}])
    form.locator("button[type=submit]").click()


def test_deploying_again_keeps_the_requirements_the_form_shows(ui_server: Server, admin: Callable[[], Visit]) -> None:
    uses_lib = "import greetlib\n\ndef main(who):\n    return greetlib.greet(who)\n"
    assert ui_server.upload("needs", uses_lib, requirements="greetlib\n", fields={"calling": "event"}).status == 200
    seen = admin()
    page = seen.page
    page.click("#show-deploy")
    form = page.locator("#deploy-form")
    expect(form).to_contain_text("filled in from the live version")  # the help text says what happens
    form.locator("[name=name]").fill("needs")
    expect(form.locator("[name=requirements]")).to_have_value("greetlib")
    expect(form.locator("[name=calling]")).to_have_value("event")
    expect(page.locator("#deploy-note")).to_contain_text("needs exists")
    form.locator("[name=name]").fill("needs-not")  # another name: what was filled in goes again
    expect(form.locator("[name=requirements]")).to_have_value("")
    expect(form.locator("[name=calling]")).to_have_value("args")
    page.click("#cancel-deploy")
    page.click("#function-list [data-name=needs]")
    expect(page.locator("#code-text")).to_have_text(uses_lib)
    _deploy(page, "needs", uses_lib.replace("return", "return 'again: ' +"))
    expect(page.locator("#detail-badges")).to_contain_text("v2")
    expect(page.locator("#code-text")).to_contain_text("again: ")  # the live version's code, not the one seen before
    described = ui_server.request("GET", "/admin/functions/needs").json
    assert (described["requirements"], described["calling"]) == (["greetlib"], "event")
    assert ui_server.call("needs", "you").json["result"] == "again: hello you"
    seen.assert_clean()


# -- the code ------------------------------------------------------------------------------------------------

def test_the_code_card_shows_each_file_as_text(ui_server: Server, admin: Callable[[], Visit]) -> None:
    source = f"# {EVIL}\ndef main():\n    return 1\n"
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("func.py", source)
        archive.writestr("data/blob.bin", b"\xff\x00\xfe")
        archive.writestr("data/notes.txt", "notes")
    assert ui_server.upload("shown", packed.getvalue()).status == 200
    seen = admin()
    page = seen.page
    page.click("#function-list [data-name=shown]")
    expect(page.locator("#code-text")).to_have_text(source)  # func.py first, as text
    assert page.locator("img").count() == 0
    picker = page.locator("#code-file")
    expect(picker.locator("option")).to_have_text(["data/blob.bin (3 bytes)", "data/notes.txt (5 bytes)",
                                                   f"func.py ({len(source)} bytes)"])
    picker.select_option(label="data/blob.bin (3 bytes)")
    expect(page.locator("#code-text")).to_have_text("(binary or large: 3 bytes)")
    picker.select_option(label="data/notes.txt (5 bytes)")
    expect(page.locator("#code-text")).to_have_text("notes")
    seen.assert_clean()


# -- what the log did not keep ------------------------------------------------------------------------------

CHATTY = "def main(*args):\n    print('x' * 70_000)\n    return 'y' * 70_000\n"


def test_what_a_record_did_not_keep_is_marked_with_its_size(ui_server: Server, admin: Callable[[], Visit]) -> None:
    assert ui_server.upload("chatty", CHATTY).status == 200
    assert ui_server.call("chatty", ["a" * 70_000]).status == 200  # an input past the record's 64 KiB
    seen = admin()
    page = seen.page
    page.click("#function-list [data-name=chatty]")
    _invoke(page, "[]")
    expect(page.locator("#invoke-result")).to_contain_text("y" * 1000)  # the answer itself is whole
    expect(page.locator("#invoke-output")).to_contain_text("(truncated: the first 65536 characters are kept)")
    rows = page.locator("#calls tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td").nth(5)).to_have_text("(truncated, 70002 bytes)")   # its result
    expect(rows.nth(1).locator("td").nth(4)).to_have_text(re.compile(r"^\(truncated, 700\d\d bytes\)$"))  # input
    seen.assert_clean()


# -- small things ---------------------------------------------------------------------------------------------

def test_an_error_names_its_line_once(admin: Callable[[], Visit]) -> None:
    seen = admin()
    page = seen.page
    _deploy(page, "broken", "def main():\n    return (\n")
    expect(page.locator("#deploy-result")).to_contain_text("does not compile")
    assert page.locator("#deploy-result").inner_text().count("line 2") == 1
    page.locator("#deploy-form [name=env]").fill("A=1\nnot a pair")
    page.locator("#deploy-form [name=file]").set_input_files(files=[{"name": "f.py", "mimeType": "text/x-python",
                                                                     "buffer": ADDER.encode()}])
    page.locator("#deploy-form button[type=submit]").click()
    expect(page.locator("#deploy-result")).to_contain_text("expected NAME=VALUE")
    assert page.locator("#deploy-result").inner_text().count("line 2") == 1


def test_credentials_in_the_address_are_explained(browser: Browser, ui_server: Server) -> None:
    page = browser.new_page()
    try:
        page.goto(f"http://admin:1234@127.0.0.1:{ui_server.port}/ui")
        expect(page.locator("#welcome")).to_have_text(re.compile("open /ui without credentials in the URL", re.I))
    finally:
        page.close()


def test_a_function_deleted_elsewhere_leaves_the_pane_with_a_word(ui_server: Server,
                                                                  visit: Callable[..., Visit]) -> None:
    assert ui_server.upload("doomed", ADDER).status == 200
    seen = visit("admin", "1234", POLL)
    page = seen.page
    page.click("#function-list [data-name=doomed]")
    expect(page.locator("#detail-name")).to_have_text("doomed")
    assert ui_server.request("DELETE", "/admin/functions/doomed").status in (200, 204)
    expect(page.locator("#detail")).to_be_hidden()
    expect(page.locator("#welcome")).to_have_text("doomed no longer exists: it was deleted elsewhere.")
    expect(page.locator("#function-list [data-name=doomed]")).to_have_count(0)

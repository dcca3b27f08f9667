"""The dashboard at /ui/: served as static files (plain HTTP checks), inside fleet.pyz too,
and driven in Debian's chromium by selenium against a real manager and daemon.

The browser test needs the Debian packages chromium and chromium-driver
(/usr/bin/chromium, /usr/bin/chromedriver); without them it fails, never skips.
It saves screenshots in tmp_path, and the node page also to $FLEET_SCREENSHOT
when set (docs/dashboard.png is made that way).
"""
import http.client
import os
import shutil
import sys
from pathlib import Path

import pytest

from fleet.manager.api import ui
from fleet.manager.api.routes import make_app
from fleet.manager.api.server import serve_http
from fleet.manager.tokens import ApiAuth
from tests import dashboard_stub
from tests.helpers import wait_for
from tests.procs import FleetProcess
from tests.realfleet import API_TOKEN, Api

UI_DIR = Path(__file__).resolve().parent.parent / "fleet" / "manager" / "ui"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1360,1040")
HELLO = "hello from talker"

# A node with a few agents in different states, for a screenshot that shows them.
AGENTS = """
labels = {{ role = "edge", zone = "eu-west-1" }}

[[agents]]
id = "talker"
type = "demo"
command = ["sh", "-c", "echo '{hello}'; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done"]
start_seconds = 0.2
stop_timeout = 2

[[agents]]
id = "web"
type = "http"
version = "3.11"
command = ["{python}", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"]
start_seconds = 0.2
stop_timeout = 2

[[agents]]
id = "worker"
type = "batch"
command = ["sleep", "3600"]
start_seconds = 0.2
stop_timeout = 2

[[agents]]
id = "collector"
type = "telegraf"
command = ["sleep", "3600"]
autostart = false

[[agents]]
id = "flaky"
type = "demo"
command = ["sh", "-c", "echo 'config missing' >&2; exit 3"]
start_seconds = 1
start_retries = 1
backoff_initial = 0.1
backoff_max = 0.2
"""


# ---- plain HTTP: the files, the redirect, the headers ----

@pytest.fixture
def server():
    """The HTTP app on port 0 (the UI routes need no service behind them)."""
    http = serve_http(make_app(None, ApiAuth([("default", API_TOKEN)])), "127.0.0.1:0")
    http.start_background()
    yield http
    http.stop()


def fetch(port, path, headers=None, method="GET"):
    """(status, {lower-case header: value}, body bytes) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def test_ui_serves_every_file_with_its_type_and_a_strict_csp(server):
    """/ui/ and /ui/<file> answer without a token, with the right type, CSP and an ETag."""
    status, headers, body = fetch(server.port, "/ui/")
    assert status == 200 and body == (UI_DIR / "index.html").read_bytes()
    assert headers["content-type"] == "text/html; charset=utf-8"
    types = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
    for name, kind in types.items():
        status, headers, body = fetch(server.port, "/ui/" + name)
        assert status == 200 and headers["content-type"].split(";")[0] == kind
        assert body == (UI_DIR / name).read_bytes()
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert "frame-ancestors 'none'" in csp and headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-cache" and headers["etag"]


def test_ui_answers_304_to_a_browser_holding_the_current_file(server):
    """A matching If-None-Match gets 304 without a body; a stale one gets the file."""
    _, headers, _ = fetch(server.port, "/ui/app.js")
    status, again, body = fetch(server.port, "/ui/app.js", {"If-None-Match": headers["etag"]})
    assert (status, body, again["etag"]) == (304, b"", headers["etag"])
    assert fetch(server.port, "/ui/app.js", {"If-None-Match": '"old"'})[0] == 200


def test_root_sends_a_browser_to_ui_and_keeps_json_for_api_clients(server):
    """GET / with Accept: text/html is a 302 to ui/; without it, the JSON index as before."""
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    status, headers, _ = fetch(server.port, "/", browser)
    assert status == 302 and headers["location"] == "ui/" and "Accept" in headers["vary"]
    assert fetch(server.port, "/ui", browser)[:2][1]["location"] == "ui/"
    for accept in ({}, {"Accept": "application/json"}, {"Accept": "*/*"}):
        status, headers, body = fetch(server.port, "/", accept)
        assert status == 200 and headers["content-type"] == "application/json"
        assert b'"openapi"' in body


@pytest.mark.parametrize("path", [
    "/ui/../fleet.db", "/ui/%2e%2e/fleet.db", "/ui/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/ui/..%2fapi%2fui.py", "/ui/ui.py", "/ui/./app.js", "/ui//etc/passwd", "/ui/a/app.js",
    "/ui/.hidden", "/ui/%00app.js", "/ui/app.js%00.css", "/ui/index.html/",
])
def test_ui_refuses_every_path_outside_its_files(server, path):
    """Traversal, other names and sub-paths are a JSON 404 that reveals nothing."""
    status, headers, body = fetch(server.port, path)
    assert status == 404 and headers["content-type"] == "application/json"
    assert b"not_found" in body and b"root:" not in body


def test_ui_files_load_nothing_from_elsewhere():
    """No CDN, no external font, no inline script or handler: the CSP would refuse them."""
    text = "\n".join(p.read_text() for p in UI_DIR.iterdir() if p.suffix in (".html", ".js", ".css"))
    for banned in ("http://", "https://", "//cdn", "@import", "url(", " onclick=", " onload=",
                   ".innerHTML", ".outerHTML", "insertAdjacentHTML(", "document.write(",
                   "eval(", "new Function(", "localStorage.", "document.cookie"):
        assert banned not in text.replace("http://www.w3.org", ""), banned
    assert "<script>" not in (UI_DIR / "index.html").read_text()
    assert set(ui.load_files()) >= {"index.html", "app.js", "style.css"}


def test_pyz_manager_serves_the_dashboard(pyz, tmp_path):
    """The manager run from fleet.pyz finds the files it bundles and serves them."""
    config = tmp_path / "manager.toml"
    config.write_text(f'[manager]\nhttp = "127.0.0.1:0"\ngrpc = "127.0.0.1:0"\n'
                      f'db = "sqlite:///{tmp_path}/fleet.db"\napi_token = "{API_TOKEN}"\n'
                      'cluster_token = "another-token-for-the-cluster-0123"\n')
    manager = FleetProcess("--role", "manager", "--config", str(config), log_dir=tmp_path,
                           entry=[sys.executable, str(pyz)],
                           env={"FLEET_CACHE_DIR": str(tmp_path / "cache")})
    try:
        port = manager.port("http")
        for name in ("", "app.js", "style.css"):
            status, _, body = fetch(port, "/ui/" + name)
            assert status == 200 and body == (UI_DIR / (name or "index.html")).read_bytes()
    finally:
        assert manager.terminate() == 0, manager.read()


# ---- the browser ----

@pytest.fixture
def browser(tmp_path):
    """Headless Debian chromium driven by selenium; fails (never skips) without them."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(f"the dashboard test needs {', '.join(missing)}: "
                    "install the Debian packages chromium and chromium-driver", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.fail(f"the dashboard test needs selenium (requirements-test.txt): {exc}",
                    pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM        # else selenium-manager tries to download one
    for arg in CHROMIUM_ARGS + (f"--user-data-dir={tmp_path / 'chromium'}",):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    try:    # shown by pytest when the test failed: what the page logged, and how it looked
        print("\n".join(entry["message"] for entry in driver.get_log("browser")))
        driver.save_screenshot(str(tmp_path / "last.png"))
        print(f"last screenshot: {tmp_path / 'last.png'}")
    finally:
        driver.quit()


@pytest.fixture
def fleet_node(cluster):
    """A real manager and a daemon "n1" with five agents; (base URL, Api) once all reported."""
    manager = cluster.run("manager", cluster.manager_config())
    agents = AGENTS.format(hello=HELLO, python=sys.executable)
    cluster.run("daemon", cluster.daemon_config("n1", manager.port(), agents))
    port = manager.port("http")
    api = Api(port)
    wait_for(lambda: settled(api.agents("n1")), timeout=30)
    return f"http://127.0.0.1:{port}", api


def settled(agents):
    """The five agents are in their steady states (and the talker has written its line)."""
    wanted = {"talker": "running", "web": "running", "worker": "running",
              "collector": "stopped", "flaky": "fatal"}
    return {a: agents.get(a, {}).get("status") for a in wanted} == wanted


class Page:
    """Looks and clicks that retry while the dashboard redraws (its refresh replaces
    tables every few seconds, so an element found a moment ago may be gone)."""

    def __init__(self, driver):
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By
        self.driver, self.by, self.gone = driver, By, WebDriverException

    def text(self, css):
        """The visible text of the first match, or None."""
        try:
            return self.driver.find_element(self.by.CSS_SELECTOR, css).text
        except self.gone:
            return None

    def shown(self, css):
        try:
            return self.driver.find_element(self.by.CSS_SELECTOR, css).is_displayed()
        except self.gone:
            return False

    def click(self, css):
        """Click the first match; True once done (for wait_for)."""
        try:
            self.driver.find_element(self.by.CSS_SELECTOR, css).click()
            return True
        except self.gone:
            return False

    def type(self, css, text):
        element = self.driver.find_element(self.by.CSS_SELECTOR, css)
        element.clear()
        element.send_keys(text)


def screenshot(driver, path):
    """Save a PNG of the window to path (and make its directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)), path


def test_dashboard_restarts_an_agent_and_reads_its_logs(fleet_node, browser, tmp_path):
    """In chromium: / lands on /ui/, a bad token is refused with the API's message, the good
    one shows node n1; restart (confirmed) changes the agent's pid; its page shows its logs."""
    base, api = fleet_node
    page = Page(browser)
    browser.get(base + "/")
    assert wait_for(lambda: browser.current_url == base + "/ui/", timeout=10)
    wait_for(lambda: page.shown("#token"), timeout=10)

    page.type("#token", "not-the-token")
    page.click("#token-submit")
    wait_for(lambda: "invalid token" in (page.text("#login-error") or ""), timeout=10)

    page.type("#token", API_TOKEN)
    page.click("#token-submit")
    wait_for(lambda: page.shown("#nav"), timeout=10)
    wait_for(lambda: page.text("#refreshed"), timeout=10)
    screenshot(browser, tmp_path / "dashboard-overview.png")
    wait_for(lambda: page.click('#nav a[data-route="nodes"]'))
    wait_for(lambda: "n1" in (page.text('tr[data-node="n1"]') or ""), timeout=10)
    assert "online" in page.text('tr[data-node="n1"]')
    assert browser.execute_script("return sessionStorage.getItem('fleet.api-token')") == API_TOKEN
    assert browser.get_cookies() == []

    wait_for(lambda: page.click('tr[data-node="n1"] a'))
    row = 'tr[data-agent="talker"]'
    old_pid = api.agents("n1")["talker"]["pid"]
    wait_for(lambda: page.text(f"{row} td.pid") == str(old_pid), timeout=10)
    assert "fatal" in page.text('tr[data-agent="flaky"]')
    assert "code 3" in page.text('tr[data-agent="flaky"]')

    wait_for(lambda: page.click(f'{row} button[data-op="restart"]'))
    wait_for(lambda: page.shown("#confirm"), timeout=5)
    assert "talker" in page.text("#confirm-text")
    page.click("#confirm-ok")
    wait_for(lambda: "restart talker: " in (page.text(".result.ok") or ""), timeout=30)
    new_pid = wait_for(lambda: (page.text(f"{row} td.pid") or str(old_pid)).isdigit()
                       and int(page.text(f"{row} td.pid")) != old_pid
                       and int(page.text(f"{row} td.pid")), timeout=15)
    assert new_pid == api.agents("n1")["talker"]["pid"]
    wait_for(lambda: "running" in (page.text(row) or ""), timeout=15)   # a tidy screenshot
    screenshot(browser, tmp_path / "dashboard-node.png")
    if os.environ.get("FLEET_SCREENSHOT"):
        screenshot(browser, os.environ["FLEET_SCREENSHOT"])

    wait_for(lambda: page.click(f"{row} a"))
    wait_for(lambda: HELLO in (page.text("pre.log") or ""), timeout=15)
    page.type("input.grep", "tick")
    page.click(".log-controls button")
    wait_for(lambda: (page.text("pre.log") or "").startswith("tick"), timeout=10)
    assert HELLO not in page.text("pre.log")
    wait_for(lambda: "restart" in (page.text(".panel table") or ""), timeout=15)   # the events
    screenshot(browser, tmp_path / "dashboard-agent.png")

    problems = [entry["message"] for entry in browser.get_log("browser")
                if "Content Security Policy" in entry["message"] or "Uncaught" in entry["message"]]
    assert problems == []


# ---- the contract's newer endpoints, against a stub of the API ----

@pytest.fixture
def stub_api():
    """/ui/ with a stub /api/v1 (tests/dashboard_stub.py); (base URL, StubLog)."""
    with dashboard_stub.stub_api(API_TOKEN) as served:
        yield served


def test_dashboard_renders_the_contracts_overview_resources_and_follows_by_offset(
        stub_api, browser, tmp_path):
    """Overview counts, a node's cpu and memory, and a log follower that asks only for
    what follows next_offset, shown against the contract's JSON (stub API)."""
    base, log = stub_api
    page = Page(browser)
    browser.get(base + "/ui/")
    wait_for(lambda: page.shown("#token"), timeout=10)
    page.type("#token", API_TOKEN)
    page.click("#token-submit")
    wait_for(lambda: page.text('[data-count="running"]') == "6\nrunning", timeout=10)
    assert page.text('[data-count="online"]') == "2\nonline"
    assert "a1" in page.text(".panel table") and "7" in page.text(".panel table")
    screenshot(browser, tmp_path / "stub-overview.png")

    browser.get(base + "/ui/#/nodes")
    wait_for(lambda: "37.5 %" in (page.text('tr[data-node="n1"]') or ""), timeout=10)
    assert "3.0 GiB / 8.0 GiB" in page.text('tr[data-node="n1"]')
    browser.get(base + "/ui/#/nodes/n1")
    wait_for(lambda: "-> 500" in (page.text('tr[data-agent="a1"]') or ""), timeout=10)
    assert "signal 9 (KILL)" in page.text('tr[data-agent="a1"]')
    screenshot(browser, tmp_path / "stub-node.png")

    browser.get(base + "/ui/#/nodes/n1/agents/a1")
    wait_for(lambda: (page.text("pre.log") or "").endswith("line 5"), timeout=10)
    size = len(log.data)
    page.click("input.follow")
    wait_for(lambda: size in log.offsets, timeout=10)
    log.data += b"line 6\nline 7\n"
    wait_for(lambda: (page.text("pre.log") or "").endswith("line 6\nline 7"), timeout=10)
    assert page.text("pre.log").count("line 5") == 1          # nothing read twice
    wait_for(lambda: len(log.data) in log.offsets, timeout=10)
    screenshot(browser, tmp_path / "stub-agent.png")

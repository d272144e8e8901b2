"""The playground page in a real headless Chromium (Debian's, driven by Playwright) on a live server."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests.support.server import new_records, read_log

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "playground-key-123456"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no system chromium: apt-get install chromium (.ci/run does)"),
]


def wait_until(check, timeout: float = 20.0, what: str = "the page"):
    """Poll `check` from the test (the page's CSP forbids the eval Playwright's wait_for_function needs)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    with sync_api.sync_playwright() as p:
        # Playwright cannot download its own browser here: drive the system one
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


def test_page_is_self_contained(live_server):
    r = httpx.get(live_server + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    # no external assets: nothing is loaded from another origin, nothing but inline script and style
    assert "http://" not in r.text and "https://" not in r.text and " src=" not in r.text and "<link" not in r.text
    assert 'data-keys="off"' in r.text


def test_stream_grows_in_the_page_and_stop_cancels_on_the_server(browser, start_server, long_model, tmp_path):
    server = start_server(long_model, MINIVAULT_API_KEYS=KEY)
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    external: list[str] = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(server.url) else None)
    page.goto(server.url + "/")
    assert page.is_visible("#key")  # keys are on: the page asks for one

    page.fill("#prompt", "Tell me a long story")
    page.fill("#max_new_tokens", "1000")
    page.fill("#key", KEY)
    page.click("#generate")
    first = wait_until(lambda: len(page.text_content("#output")), what="the first tokens")
    grown = wait_until(lambda: (n := len(page.text_content("#output"))) > first + 20 and n, what="more tokens")
    assert grown > first
    assert page.text_content("#ttft").endswith(" ms")
    assert float(wait_until(lambda: page.text_content("#tps").replace("–", ""), what="tokens/s")) > 0

    page.click("#stop")
    wait_until(lambda: page.text_content("#status") == "stopped", what="the stop")
    (record,) = new_records(server.log_file, 0, timeout=10)
    assert record["status"] == "cancelled" and record["finish_reason"] == "cancelled", record
    assert record["key_id"] and KEY not in server.log_file.read_text()
    assert 0 < record["usage"]["completion_tokens"] < 1000  # stopped long before max_new_tokens
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    assert (tmp_path / "playground.png").stat().st_size > 10_000
    assert errors == [] and external == []


def test_wrong_key_is_reported_in_the_page(browser, start_server, tiny_model):
    server = start_server(tiny_model, MINIVAULT_API_KEYS=KEY)
    page = browser.new_page()
    page.goto(server.url + "/")
    page.fill("#key", "not-the-key-at-all")
    page.click("#generate")
    wait_until(lambda: page.text_content("#status").startswith("401"), what="the 401")
    assert "the API key is not valid" in page.text_content("#status")
    time.sleep(0.2)
    assert read_log(server.log_file) == []  # refused, not run

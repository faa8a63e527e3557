"""The dashboard at GET /: its files, served by streamd alone, and a real browser driving it on a live pipeline.

The browser is Debian's Chromium driven by Playwright (no browser download); the test is skipped, with
the reason, only where /usr/bin/chromium is not installed. Its screenshot lands in artifacts/.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import falcon.testing
import pytest

from streamd import config as config_module
from streamd.api import create_app
from streamd.api.dashboard import STATIC
from streamd.api_keys import issue, keys_path
from streamd.config import Config
from streamd.producer import produce_once

from .probes import REPO, free_port, wait_until
from .supervisor_process import PIPELINE, SupervisorProcess, api_url, descendants, process_gone, start_streamd

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "artifacts"
# Short, so the page lives through several planned reconnects; long enough to tell a stop that waited for it.
STREAM_SECONDS = 6


@pytest.fixture
def client() -> Iterator[falcon.testing.TestClient]:
    config = config_module.from_mapping({"kafka": {"brokers": f"127.0.0.1:{free_port()}"}})
    yield falcon.testing.TestClient(create_app(config))


# --- the files ---------------------------------------------------------------------------------------


def test_the_page_and_every_file_it_names_come_from_streamd(client):
    page = client.simulate_get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    referenced = re.findall(r'(?:href|src)="([^"#]+)"', page.text)
    assert referenced, "the page names its stylesheet, script and icon"
    for url in referenced:
        assert url.startswith("/static/"), f"{url} is not served by streamd"
        asset = client.simulate_get(url)
        assert asset.status_code == 200, url
        assert asset.headers["x-content-type-options"] == "nosniff"


def test_no_file_reaches_for_the_network():
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), f"{path.name} names an outside URL"
        assert "@import" not in text and "<script>" not in text, f"{path.name} has inline or imported code"


def test_only_the_dashboard_files_exist_under_static_and_unchanged_files_are_not_sent_again(client):
    assert client.simulate_get("/static/..%2Fstats.py").status_code == 404
    assert client.simulate_get("/static/nothing.js").status_code == 404
    first = client.simulate_get("/static/dashboard.js")
    again = client.simulate_get("/static/dashboard.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.text == ""


def test_the_page_is_built_from_landmarks_headings_and_labelled_controls(client):
    html = client.simulate_get("/").text
    assert '<html lang="en">' in html
    for landmark in ("<header", "<main", "<dialog"):
        assert landmark in html
    sections = re.findall(r'<section[^>]*aria-labelledby="([^"]+)"', html)
    assert len(sections) == 6 and all(f'id="{heading}"' in html for heading in sections)
    assert '<label for="source">' in html and '<select id="source"' in html
    assert 'role="status"' in html, "connection changes are announced"
    assert "tabindex=" not in html.replace('tabindex="-1"', ""), "the natural tab order is the reading order"


# --- a real browser on a real pipeline ----------------------------------------------------------------


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); the browser test needs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def pipeline(pipeline_config: Config, tmp_path: Path) -> Iterator[SupervisorProcess]:
    sup = start_streamd(
        tmp_path,
        pipeline_config,
        producer={"rate": 4.0},
        consumer={"processes": 2, "batch_timeout_ms": 50},
        api={"workers": 2, "stream_seconds": STREAM_SECONDS},
    )
    yield sup
    sup.kill()


def wait_for_page(page, expression: str, arg=None, timeout: float = 10.0) -> None:
    """Poll `expression` (a JS function) until it returns true. Playwright's wait_for_function would
    evaluate it with eval(), which the page's Content-Security-Policy rightly refuses."""
    wait_until(lambda: page.evaluate(expression, arg), timeout=timeout, what=expression)


NEW_MESSAGE_SHOWN = (
    "known => [...document.querySelectorAll('#messages button.message')].some(b => !known.includes(b.dataset.id))"
)


def shown_ids(page) -> list[str]:
    return page.eval_on_selector_all("#messages button.message", "buttons => buttons.map(b => b.dataset.id)")


@pytest.mark.integration
def test_the_dashboard_shows_the_pipeline_live_in_a_browser(pipeline, browser, pipeline_config):
    pipeline.wait_running(*PIPELINE, timeout=60)
    base = api_url(pipeline, "")
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda message: message.type in ("error", "warning") and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    # The console names no URL for a failed request; this says which one it was.
    refused: list[str] = []
    page.on("response", lambda response: response.status >= 400 and refused.append(f"{response.status} {response.url}"))
    outside: list[str] = []
    page.on("request", lambda request: request.url.startswith(base) or outside.append(request.url))

    page.goto(base + "/")
    page.wait_for_selector("#messages button.message", timeout=30_000)
    assert page.title() == "streamd dashboard"
    wait_for_page(page, "() => document.getElementById('connection').dataset.state === 'live'")

    # New messages appear without a reload, within five seconds.
    before = set(shown_ids(page))
    started = time.monotonic()
    wait_for_page(page, NEW_MESSAGE_SHOWN, list(before), timeout=5)
    assert time.monotonic() - started < 5

    # The figures, the children and the lag come from /stats.
    children = len(PIPELINE)
    wait_for_page(page, "n => document.querySelectorAll('#children tr .state').length === n", children)
    assert page.locator("#children").inner_text().count("RUNNING") == children
    assert page.locator("#partitions tr").count() == 3
    # /stats may have been computed just before the first messages were stored: wait for a later one.
    wait_for_page(page, "() => Number(document.getElementById('total').textContent.replace(/\\D/g, '')) > 0")

    # The source filter narrows the list to that source.
    source = "dashboard-test"
    assert produce_once(pipeline_config, 5, source=source).acked == 5
    page.wait_for_selector(f'#source option[value="{source}"]', state="attached", timeout=15_000)

    # The analyzer's one-minute windows count them, per source, live (the 5 may straddle a minute).
    wait_for_page(
        page,
        """source => [...document.querySelectorAll('#per-minute td')]
            .filter(td => td.dataset.group === source)
            .reduce((sum, td) => sum + (Number(td.textContent) || 0), 0) === 5""",
        source,
        timeout=30,
    )
    assert "system-generator" in page.locator("#per-minute-head").inner_text()
    page.select_option("#source", source)
    wait_for_page(
        page,
        """source => {
            const shown = [...document.querySelectorAll('#messages button.message')];
            return shown.length === 5 && shown.every(b => b.dataset.source === source);
        }""",
        source,
    )

    # The detail view opens from the keyboard, shows the whole message, and closes with Escape.
    first = page.locator("#messages button.message").first
    message_id = first.get_attribute("data-id")
    first.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail[open]", timeout=5_000)
    detail = page.locator("#detail-fields").inner_text()
    assert message_id in detail and source in detail and pipeline_config.kafka.topic in detail
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail:not([open])", state="attached", timeout=5_000)
    assert page.evaluate("document.activeElement.dataset.id") == message_id, "focus returns to the message"

    # Back to every source, after a planned reconnect or two, for the screenshot.
    page.select_option("#source", "")
    wait_for_page(page, "() => document.querySelectorAll('#messages button.message').length >= 20")
    page.wait_for_timeout(STREAM_SECONDS * 1000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"))

    assert not problems, f"the browser console reported: {problems}; failed requests: {refused}"
    assert not outside, f"the page reached beyond streamd: {outside}"

    # A graceful stop does not wait for an open feed to run out: open a fresh one, then stop.
    page.select_option("#source", source)
    page.wait_for_selector(f'#messages button.message[data-source="{source}"]', timeout=5_000)
    assert pipeline.process is not None
    everyone = descendants(pipeline.process.pid)
    started = time.monotonic()
    pipeline.signal(signal.SIGTERM)
    assert pipeline.wait_exit(timeout=30) == 0, pipeline.log_tail()
    stopped_in = time.monotonic() - started
    assert stopped_in < STREAM_SECONDS - 2, f"the stop took {stopped_in:.1f} s: it waited for the open feed"
    wait_until(lambda: all(process_gone(pid) for pid in everyone), timeout=10, what="every process gone")
    page.close()


@pytest.mark.integration
def test_with_keys_required_the_browser_asks_for_a_key_and_the_page_runs_live_on_it(pipeline_config, browser, tmp_path):
    from playwright.sync_api import Error as PlaywrightError

    settings = config_module.from_mapping({**config_module.to_mapping(pipeline_config), "auth": {"required": True}})
    _, token = issue(keys_path(settings), "wall-screen", ["read"])
    sup = start_streamd(
        tmp_path,
        settings,
        producer={"rate": 4.0},
        consumer={"batch_timeout_ms": 50},
        api={"workers": 1, "stream_seconds": STREAM_SECONDS},
    )
    try:
        sup.wait_running("producer", "consumer-1", "api", timeout=60)
        # Without a key, not even the page: the answer asks for Basic credentials, which a browser prompts for.
        try:
            urllib.request.urlopen(api_url(sup, "/"), timeout=10)
            raise AssertionError("the page was served without a key")
        except urllib.error.HTTPError as refused:
            assert refused.code == 401 and 'Basic realm="streamd"' in refused.headers["WWW-Authenticate"]
        # Headless Chromium has no one to answer the prompt: it gives up. A wrong key answers it, and is refused.
        anonymous = browser.new_context()
        with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            anonymous.new_page().goto(api_url(sup, "/"))
        anonymous.close()
        wrong = browser.new_context(http_credentials={"username": "me", "password": "sdk_0123456789ab_not-a-key"})
        assert wrong.new_page().goto(api_url(sup, "/")).status == 401
        wrong.close()

        # The key typed as the password of the browser's prompt (any user name).
        context = browser.new_context(http_credentials={"username": "wall-screen", "password": token})
        page = context.new_page()
        crashes: list[str] = []
        page.on("pageerror", lambda error: crashes.append(str(error)))
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        assert page.goto(api_url(sup, "/")).status == 200
        page.wait_for_selector("#messages button.message", timeout=30_000)
        wait_for_page(page, "() => document.getElementById('connection').dataset.state === 'live'")
        # Past a planned end of the feed, new messages still arrive: the reconnect sent the key too.
        # (Playwright serves its events only inside its own calls: it waits for the reconnect itself.)
        with page.expect_request(lambda request: "/stream" in request.url, timeout=STREAM_SECONDS * 3000):
            pass
        before = shown_ids(page)
        wait_for_page(page, NEW_MESSAGE_SHOWN, before)
        assert not [url for url in urls if token in url], "the key never travels in a URL"
        assert not crashes, crashes
        context.close()
    finally:
        sup.kill()

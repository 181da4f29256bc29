"""The validation pages render offline in a real browser: headless Chromium (Debian's package, installed by
scripts/install-system-packages.sh) opens them from disk with the network off and reports every request, failed
load, script error and console error over the DevTools protocol (on a pipe, so no port is needed).

GX's Data Docs failed exactly this way: Bootstrap, jQuery and vega came from CDNs (16 failed requests, `$ is not
defined`, empty index lists). A control page with CDN resources proves the harness sees such failures.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from cv_dataops.core.storage import LocalStorage
from cv_dataops.quality.tables import QUALITY
from cv_dataops.quality.validation_report import validate_and_report
from cv_dataops_tests.unit.test_expectations import valid_quality_rows

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def _browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def _isolated_network() -> list[str]:
    """``unshare -n`` (a network namespace with nothing in it) when this user may make one; else nothing, and the
    browser's own offline mode alone keeps the network off."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


class Browser:
    """Headless Chromium driven over --remote-debugging-pipe (fd 3: commands in, fd 4: replies and events out)."""

    def __init__(self, executable: str, profile: Path):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def child_fds() -> None:
            # the pipe ends go to fd 3 and 4, whatever numbers they had (copied above both first)
            high_read = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            high_write = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                 "--host-resolver-rules=MAP * ~NOTFOUND",
                 f"--user-data-dir={profile}", "about:blank"]
        self.network_isolated = bool(_isolated_network())
        self.process = subprocess.Popen([*_isolated_network(), executable, *flags], preexec_fn=child_fds,
                                        pass_fds=(3, 4), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                       "uploadThroughput": -1}, session=True)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_browser], [], [], remaining)[0]:
                raise TimeoutError("the browser did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"the browser exited (code {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 30) -> dict:
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def open(self, url: str, timeout: float = 30) -> dict:
        """Load ``url`` and wait for its load event; what happened on the way, by kind."""
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._message(deadline))
        urls = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"}
        return {
            "requests": list(urls.values()),
            "failed": [f"{urls.get(e['params']['requestId'], '?')}: {e['params'].get('errorText')}"
                       for e in self.events if e.get("method") == "Network.loadingFailed"],
            "exceptions": [e["params"]["exceptionDetails"].get("text") for e in self.events
                           if e.get("method") == "Runtime.exceptionThrown"],
            "console_errors": [e["params"]["entry"].get("text") for e in self.events
                               if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"],
        }

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(tmp_path):
    executable = _browser()
    if executable is None:
        pytest.skip("no Chromium: scripts/install-system-packages.sh installs Debian's chromium-headless-shell")
    chromium = Browser(executable, tmp_path / "profile")
    try:
        yield chromium
    finally:
        chromium.close()


def _clean(loaded: dict) -> bool:
    return not (loaded["failed"] or loaded["exceptions"] or loaded["console_errors"]) and all(
        url.startswith(("file://", "data:")) for url in loaded["requests"])


@pytest.mark.slow
def test_report_and_index_render_offline_with_every_expectation(tmp_path, browser):
    rows = valid_quality_rows(20)
    good = pd.DataFrame(rows, columns=QUALITY.column_names)
    data_root = LocalStorage(tmp_path / "data")
    first = validate_and_report(good, "quality", "00000001-20261202T060000Z-aaaaaaaa", data_root)
    second = validate_and_report(good.assign(dark_score=1.7), "quality", "00000002-20261202T061000Z-bbbbbbbb",
                                 data_root)
    assert first.success and not second.success

    page = browser.open(Path(second.report_uri).as_uri())
    assert _clean(page), page
    assert browser.evaluate("document.querySelector('h1').innerText") == \
        "Validation of batch 00000002-20261202T061000Z-bbbbbbbb"
    text = browser.evaluate("document.body.innerText")
    assert f"{second.successful} passed, 1 failed of {second.evaluated}" in text
    assert browser.evaluate("document.querySelectorAll('tr.expectation').length") == second.evaluated
    failed = browser.evaluate("[...document.querySelectorAll('tr.expectation.failed')].map(r => r.innerText)")
    assert len(failed) == 1 and "dark_score" in failed[0] and "1.7" in failed[0]
    # the inline style sheet applied: a failed row is tinted, a passed one is not
    tint = "r => getComputedStyle(r.querySelector('td')).backgroundColor"
    assert browser.evaluate(f"({tint})(document.querySelector('tr.failed'))") != \
        browser.evaluate(f"({tint})(document.querySelector('tr.passed'))")

    index = browser.open(Path(second.index_uri).as_uri())
    assert _clean(index), index
    links = browser.evaluate("[...document.querySelectorAll('tr.batch a')].map(a => [a.innerText, a.href])")
    assert [name for name, _ in links] == [second.batch_id, first.batch_id]
    linked = browser.open(links[1][1])  # the index's link leads to the first batch's page
    assert _clean(linked), linked
    assert first.batch_id in browser.evaluate("document.title")


@pytest.mark.slow
def test_the_harness_sees_what_broke_gx_data_docs(tmp_path, browser):
    control = tmp_path / "cdn.html"
    control.write_text('<!DOCTYPE html><html><head><link rel="stylesheet" '
                       'href="https://cdn.example.invalid/bootstrap.min.css">'
                       '<script src="https://cdn.example.invalid/jquery.min.js"></script></head>'
                       '<body><script>$("body").text("x")</script></body></html>')
    loaded = browser.open(control.as_uri())
    assert not _clean(loaded)
    assert len(loaded["failed"]) == 2 and loaded["exceptions"], loaded

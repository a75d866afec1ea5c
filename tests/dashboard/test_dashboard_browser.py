"""End to end: the dashboard server started by ``fedveil.commands.dashboard_cmd`` and every page in headless Chromium.

Uses Debian's ``chromium`` (``/usr/bin/chromium``) through Playwright's Python API with
``executable_path``; no browser is ever downloaded. Skips, naming what is missing, when either
is absent. Screenshots (1366x768 viewport, full page) go to the test's ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.dashboard.store_data import FAIL_MESSAGE, FAILED_RUN, RUNNING_RUN, TEXT_RUN, add_text_round

from fedveil.commands.dashboard_cmd import start
from fedveil.store import Store

CHROMIUM = os.environ.get("FEDVEIL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage"]
# (file stem, path and query, texts that must be on the page)
PAGES = [
    ("runs", "", ["Runs", "Open a run", "ε_LB > ε flags", "Open Leakage audit"]),
    ("run", f"run?run={TEXT_RUN}", ["Run: dp-opd-clinical", "Privacy statement", "Unit protected", "25.43"]),
    ("leakage", f"leakage?run={TEXT_RUN}", ["Leakage audit", "exceeds the claimed", "Canary exposure",
                                            "Membership inference"]),
    ("compare", "compare", ["Compare runs", "Pareto frontier"]),
]


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (.venv/bin/pip install playwright)"
    if not Path(CHROMIUM).is_file():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    return None


pytestmark = pytest.mark.skipif(_missing_browser() is not None, reason=str(_missing_browser()))


LAPTOP: Any = {"width": 1366, "height": 768}
MAIN_HEIGHT_JS = """() => {
  const main = document.querySelector('[data-testid="stMain"]');
  return Math.ceil(main ? main.scrollHeight : document.body.scrollHeight);
}"""
# Script run over, nothing stale or loading, and every visible chart drawn (canvas or svg).
RENDERED_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stSkeleton"], [data-stale="true"]')) return false;
  const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')]
    .filter(c => c.offsetParent !== null);
  return charts.every(c => c.querySelector('canvas, svg'));
}"""


def wait_rendered(page: Any) -> None:
    """Wait until the script run is over, nothing is stale, and charts had time to draw."""
    page.wait_for_function(RENDERED_JS, timeout=60_000)
    page.wait_for_timeout(400)


def check_full_page(page: Any, shot: Path, *, charts_expected: bool) -> None:
    """Screenshot the whole scrolled page; no exception, and every visible chart was drawn."""
    # Streamlit scrolls inside its main section, so grow the viewport to capture the whole page.
    height = page.evaluate(MAIN_HEIGHT_JS)
    page.set_viewport_size({"width": LAPTOP["width"], "height": min(max(height, LAPTOP["height"]), 12_000)})
    wait_rendered(page)
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    assert page.locator('[data-testid="stException"]').count() == 0, f"exception on {shot.stem}"
    charts = page.locator('[data-testid="stVegaLiteChart"]:visible')
    if charts.count() == 0:
        assert not charts_expected, f"no chart on {shot.stem}"
        return
    # Vega-Lite shows an error message instead of a canvas for a spec it cannot compile.
    drawn = page.locator('[data-testid="stVegaLiteChart"]:visible canvas, [data-testid="stVegaLiteChart"]:visible svg')
    assert drawn.count() >= charts.count(), f"a chart on {shot.stem} was not drawn"
    page.set_viewport_size(LAPTOP)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit at {base} not healthy after {timeout:.0f}s")


@contextmanager
def serve(url: str) -> Iterator[str]:
    """Base URL of a dashboard on ``url`` served on a free loopback port, stopped afterwards."""
    port = free_port()
    proc = start(url, port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def chromium() -> Iterator[Any]:
    """A new 1366x768 page in headless Debian Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield browser.new_page(viewport=LAPTOP)
        finally:
            browser.close()


def test_every_page_renders_in_chromium(filled_db: str, tmp_path: Path) -> None:
    with serve(filled_db) as server, chromium() as page:
        for stem, path, expected in PAGES:
            page.set_viewport_size(LAPTOP)
            page.goto(f"{server}/{path}", wait_until="domcontentloaded")
            wait_rendered(page)
            page.screenshot(path=str(tmp_path / f"{stem}.png"))  # what a 1366x768 laptop shows
            body = page.inner_text("body")
            for text in expected:
                assert text in body, f"{text!r} not on the {stem} page"
            # Charts in hidden tabs are not drawn: open every tab once.
            tabs = page.get_by_role("tab")
            for i in range(max(tabs.count(), 1)):
                if tabs.count():
                    tabs.nth(i).click()
                check_full_page(page, tmp_path / f"{stem}-full{i or ''}.png",
                                charts_expected=stem != "runs" and i == 0)


def test_run_in_progress_refreshes_and_failed_run_shows_error(states_db: str, tmp_path: Path) -> None:
    with serve(states_db) as server, chromium() as page:
        page.goto(f"{server}/run?run={RUNNING_RUN}", wait_until="domcontentloaded")
        page.get_by_text("1 of 3 rounds completed").wait_for(timeout=60_000)
        wait_rendered(page)
        page.screenshot(path=str(tmp_path / "running-1.png"))
        with Store(states_db) as store:
            add_text_round(store, RUNNING_RUN, 2, 3, he=True)
        # No reload: the page's auto-refresh picks the new round up within a refresh period or two.
        page.get_by_text("2 of 3 rounds completed").wait_for(timeout=30_000)
        wait_rendered(page)
        page.screenshot(path=str(tmp_path / "running-2.png"))

        page.goto(f"{server}/run?run={FAILED_RUN}", wait_until="domcontentloaded")
        page.get_by_text(FAIL_MESSAGE).wait_for(timeout=60_000)
        wait_rendered(page)
        page.screenshot(path=str(tmp_path / "failed.png"))
        assert "This run failed" in page.inner_text("body")


def _audit_power_db(tmp_path: Path) -> tuple[str, str, str]:
    """A DP run audited with power (pooled bound, its non-DP control) and one audited without enough power."""
    from fedveil.store import sqlite_url
    from privacy.audit.epsilon import one_run_power

    url = sqlite_url(tmp_path / "power.db")
    strong, weak = one_run_power(332, 166, 1e-5), one_run_power(32, 16, 1e-5)
    with Store(url) as store:
        ids = []
        for name, power in (("powered", strong), ("underpowered", weak)):
            run_id = store.create_run({"privacy": {"target_epsilon": 2.0}}, name=name, method="dp-opd",
                                      task="synthetic-text", he_enabled=False, num_clients=4, num_rounds=3, seed=0)
            store.add_epsilon_bound(run_id, method="one-run", epsilon_lb=0.21, accountant_epsilon=1.97,
                                    details={"model": "global", "pooled": True, "power": power, "m": 332})
            ids.append(run_id)
        store.add_epsilon_bound(ids[0], method="one-run", epsilon_lb=3.4, accountant_epsilon=None, flagged=False,
                                details={"model": "global", "pooled": True, "power": strong, "control": True,
                                         "claimed_epsilon": 1.97, "control_exceeds_claim": True})
    return url, ids[0], ids[1]


def test_leakage_page_shows_power_control_and_dp_bound(tmp_path: Path) -> None:
    """Issue 20 Done-when: the DP bound (<= eps), the control (> eps, flagged) and the power on the leakage page,
    and the underpowered audit says so instead of a green banner. Screenshots in tmp_path."""
    url, powered, underpowered = _audit_power_db(tmp_path)
    with serve(url) as server, chromium() as page:
        page.goto(f"{server}/leakage?run={powered}", wait_until="domcontentloaded")
        wait_rendered(page)
        check_full_page(page, tmp_path / "leakage-powered.png", charts_expected=True)
        body = page.inner_text("body")
        assert "the audit bites" in body and "had the power to exceed it" in body
        page.goto(f"{server}/leakage?run={underpowered}", wait_until="domcontentloaded")
        wait_rendered(page)
        check_full_page(page, tmp_path / "leakage-underpowered.png", charts_expected=True)
        body = page.inner_text("body")
        assert "this audit cannot detect leaks above ε = 1.58" in body and "no evidence against" not in body

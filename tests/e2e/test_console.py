"""The web console in a real browser: Debian's Chromium, driven by Playwright.

The non-interactive demo runs with its listener on every address and a token; the page
must show every capture and projection OK, its charts must move under the demo's load,
and a projection broken on purpose (a CHECK constraint its writes violate) must show
its error within 2 s of the metadata saying ERROR, and OK again once mended.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import psycopg
import pytest

from cdcflow.embedded import EmbeddedPostgres
from tests.conftest import ROOT, wait_until
from tests.e2e.test_demo import _dsn, _env
from tests.e2e.test_operate_secrets import free_port

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' installs playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the console test: .ci/run installs it with apt-get")
    pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)

CAPTURES = {"public_customers", "public_orders", "public_payments"}
PROJECTIONS = {"proj_orders_kpi_by_minute_segment", "proj_orders_latest"}
BROKEN = "console_test_refuses_every_row"


class Demo:
    """``cdcflow demo --no-live`` in the background; its output collected line by line."""

    def __init__(self, data_dir, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cdcflow",
                "demo",
                "--reset",
                "--no-live",
                "--duration",
                "300",
                "--data-dir",
                str(data_dir),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
        finally:
            self.reader.join(10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


@pytest.fixture
def demo():
    data_dir = ROOT / ".cdcflow" / "e2e-console"
    shutil.rmtree(data_dir, ignore_errors=True)
    port, token = free_port(), secrets.token_hex(16)
    env = {**_env(), "METRICS_PORT": str(port), "METRICS_ADDRESS": "0.0.0.0", "CONSOLE_TOKEN": token}
    d = Demo(data_dir, env)
    try:
        wait_until(lambda: "console: http" in d.output() or d.proc.poll() is not None, timeout=120, what="console")
        assert d.proc.poll() is None, d.output()
        with psycopg.connect(_dsn(data_dir, "serving"), autocommit=True) as serving:
            yield d, f"http://127.0.0.1:{port}", token, serving
    finally:
        code = d.stop()
        EmbeddedPostgres.wipe(data_dir / "pg")  # the demo leaves its server running for the next demo; no test needs it
    assert code == 0, d.output()[-3000:]
    assert token not in d.output()


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def latest(page) -> dict:
    """The newest point of each chart, as uPlot holds it, and the readouts above them."""
    return page.evaluate(
        """() => Object.fromEntries(Object.entries(window.cdcflowConsole.charts).map(([k, c]) =>
             [k, {t: c.data[0].at(-1), values: c.data.slice(1).map(s => s.at(-1)),
                  shown: document.querySelector(`[data-latest="${k}"]`).textContent}]))"""
    )


def test_console_shows_state_charts_and_errors_live(demo, tmp_path):
    d, base, token, serving = demo
    assert status(base + "/") == 401 and status(base + "/events") == 401  # no token, no console
    assert status(base + "/static/console.js") == 401
    assert status(base + "/metrics") == 200  # Prometheus needs none
    bearer = urllib.request.Request(base + "/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(bearer, timeout=5) as r:
        assert r.status == 200 and "cdcflow console" in r.read().decode()
    assert "console: http" in d.output() and "?token=<CONSOLE_TOKEN>" in d.output()
    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/?token={token}")
            assert page.url == base + "/"  # the token left the address bar for a cookie

            for name in CAPTURES:
                expect(page.locator(f'#captures tr[data-name="{name}"]')).to_have_attribute(
                    "data-state", "OK", timeout=30_000
                )
            for name in PROJECTIONS:
                expect(page.locator(f'#projections tr[data-name="{name}"]')).to_have_attribute(
                    "data-state", "OK", timeout=30_000
                )
            shown = page.eval_on_selector_all(
                "#captures tbody tr, #projections tbody tr", "rs => rs.map(r => r.dataset.name)"
            )
            assert set(shown) == CAPTURES | PROJECTIONS and len(shown) == 5
            expect(page.locator("#health")).to_have_text("healthy", timeout=10_000)
            expect(page.locator("#rows tbody tr").first).to_be_visible(timeout=10_000)
            assert "minute_bucket" in page.locator("#rows thead").inner_text()

            # Under the demo's load every chart's newest point moves within 5 s.
            wait_until(lambda: all(v["t"] for v in latest(page).values()), timeout=20, what="chart points")
            before = latest(page)
            wait_until(
                lambda: all(
                    now["t"] > before[k]["t"]
                    and (now["values"] != before[k]["values"] or now["shown"] != before[k]["shown"])
                    for k, now in latest(page).items()
                ),
                timeout=5,
                interval=0.2,
                what="every chart's latest value to change",
            )
            page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
            shutil.copy(tmp_path / "console.png", ROOT / ".cdcflow" / "console.png")

            # The newest rows of another projection.
            page.select_option("#rows-choice", "proj_orders_latest")
            expect(page.locator("#rows thead")).to_contain_text("order_id", timeout=10_000)

            # A projection whose writes fail: ERROR with its message on the page within 2 s.
            row = page.locator('#projections tr[data-name="proj_orders_latest"]')
            serving.execute(f"ALTER TABLE proj_orders_latest ADD CONSTRAINT {BROKEN} CHECK (false) NOT VALID")
            try:

                def in_error() -> bool:
                    got = serving.execute(
                        "SELECT status FROM ctl_projection_metadata WHERE projection_name = 'proj_orders_latest'"
                    ).fetchone()
                    return got[0] == "ERROR"

                wait_until(in_error, timeout=30, interval=0.05, what="proj_orders_latest in ERROR")
                expect(row).to_have_attribute("data-state", "ERROR", timeout=2_000)
                expect(row.locator("td.error")).to_contain_text(BROKEN, timeout=500)
                expect(page.locator("#problems")).to_contain_text("proj_orders_latest is ERROR")
                expect(page.locator("#chart-fresh")).to_have_class(re.compile(r"\bbad\b"), timeout=3_000)
                page.screenshot(path=str(tmp_path / "console-error.png"), full_page=True)
                shutil.copy(tmp_path / "console-error.png", ROOT / ".cdcflow" / "console-error.png")
            finally:
                serving.execute(f"ALTER TABLE proj_orders_latest DROP CONSTRAINT IF EXISTS {BROKEN}")
            expect(row).to_have_attribute("data-state", "OK", timeout=30_000)
            expect(row.locator("td.error")).to_have_text("\u2013", timeout=5_000)
            expect(page.locator("#health")).to_have_text("healthy", timeout=10_000)
            expect(page.locator("#chart-fresh")).not_to_have_class(re.compile(r"\bbad\b"), timeout=5_000)
        finally:
            browser.close()

"""A real browser: JupyterLab on 127.0.0.1, lesson 00 run from the Run menu, its widget rendered."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from labkit.server import spawn
from labkit.server.lab import URL_ENV
from labkit.server.process import free_port, temp_root

from .notebooks import NOTEBOOKS

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[1] / "build" / "browser"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SETTINGS = {  # a fresh user's settings, minus two prompts that would sit on top of the page
    "@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
}
pytestmark = pytest.mark.browser


@pytest.fixture
def jupyterlab():
    """JupyterLab serving a copy of the notebooks (so the browser never writes into the checkout),
    its kernels on a server of their own (so they never meet the nbval run of the same lesson)."""
    server = spawn()
    work = Path(tempfile.mkdtemp(prefix="labkit-browser-", dir=temp_root()))
    shutil.copytree(NOTEBOOKS, work / "notebooks")
    settings = work / "settings"
    for plugin, values in SETTINGS.items():
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    log = open(work / "jupyter.log", "w")  # noqa: SIM115 (closed after JupyterLab stops)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={work}", "--allow-root",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT,
        env=os.environ | {URL_ENV: server.url, "JUPYTERLAB_SETTINGS_DIR": str(settings)},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=1) as resp:
                json.load(resp)
            break
        except OSError:
            assert proc.poll() is None, (work / "jupyter.log").read_text()[-2000:]
            time.sleep(0.2)
    yield base, token
    request = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
    try:
        urllib.request.urlopen(request, timeout=5)
        proc.wait(20)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    log.close()
    print("JupyterLab log (tail):", (work / "jupyter.log").read_text()[-3000:])  # shown when the test fails
    shutil.rmtree(work, ignore_errors=True)
    server.stop()


def accept_dialogs(page) -> None:
    """Accept whatever dialog JupyterLab shows (a slow kernel start can bring up "Select Kernel")."""
    dialog = page.locator(".jp-Dialog .jp-mod-accept")
    if dialog.count():
        dialog.first.click()


def run_all_cells(page, timeout_s: float = 120) -> None:
    """Run > Run All Cells, until the cells are queued ([*] prompts), accepting dialogs on the way."""
    queued = page.locator(".jp-InputArea-prompt", has_text="[*]")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        accept_dialogs(page)
        try:
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").click(timeout=2000)
            page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click(timeout=2000)
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
            continue
        for _ in range(20):
            accept_dialogs(page)
            if queued.count():
                return
            page.wait_for_timeout(250)
    raise AssertionError("Run > Run All Cells did not start the cells")


def start_lesson(page, attempts: int = 3) -> None:
    """Run All until the first cell shows output (a kernel still starting on a busy machine can drop
    the first request)."""
    first_output = page.locator(".jp-CodeCell").first.locator(".jp-OutputArea-output")
    for _ in range(attempts):
        run_all_cells(page)
        try:
            first_output.wait_for(timeout=60_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the lesson's first cell produced no output after {attempts} Run All")


def test_lesson_00_runs_in_jupyterlab_and_its_widget_renders(jupyterlab):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not here and `make test` could not install it (needs root + apt-get)")
    from playwright.sync_api import sync_playwright

    base, token = jupyterlab
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{base}/lab/tree/notebooks/00_setup.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            start_lesson(page)
            widget = page.locator(".widget-vbox .widget-html", has_text="server ops/s")
            widget.wait_for(timeout=90_000)  # the widget view rendered (live, or already done)
            widget.evaluate("label => label.scrollIntoView({block: 'start'})")
            page.screenshot(path=str(SHOTS / "00_setup.png"))
            assert "ops/s" in widget.inner_text()
            page.locator(".widget-vbox .widget-html", has_text="(done)").wait_for(timeout=90_000)
            cell = page.locator(".jp-CodeCell", has=page.locator(".widget-vbox"))
            assert cell.locator(".jp-OutputArea-output img").count() >= 1  # the final static figure
            page.get_by_text("deleted", exact=False).last.wait_for(timeout=90_000)
            errors = page.get_by_text("Traceback (most recent call last)").count()
            assert errors == 0, "a cell failed in the browser"
        finally:
            page.screenshot(path=str(SHOTS / "00_setup_last.png"))
            browser.close()
    assert (SHOTS / "00_setup.png").stat().st_size > 10_000

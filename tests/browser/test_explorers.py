"""The explorers, in a real JupyterLab, in a real browser.

Widgets that work under nbval can still be blank in JupyterLab (front-end/kernel version mismatch, an
Output widget used wrongly, a callback that raises where nobody sees it). This test starts JupyterLab on a
free loopback port with a random token, opens each explorer notebook in headless Chromium driven by
Playwright, runs all cells, checks that widgets render and that no cell shows an error, moves a slider
and checks that the explorer's output changes. A screenshot of each explorer goes to
tests/browser/screenshots/ (git-ignored) and, as ``<notebook>_jupyterlab.png``, to the figures folder (the notebooks' own
``<notebook>_explorer.png`` is the static figure of the default state; the two must not share a name).

Skipped with a one-line reason where Chromium or Playwright is missing (``.ci/run`` installs Chromium).
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rrsr_lib.figures import figures_dir

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = os.environ.get("RRSR_CHROMIUM", "/usr/bin/chromium")
# Notebooks that carry an ipywidgets explorer (issue 7); those not written yet are skipped, not hidden.
EXPLORER_NOTEBOOKS = ["02_matching.ipynb", "03_alignment.ipynb", "07_reciprocal_training.ipynb",
                      "08_evaluation.ipynb"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: install it with `apt-get install chromium` (.ci/run does)",
                allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1:<free port> with a random token, stopped whatever happens."""
    port, token = _free_port(), secrets.token_hex(16)
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    # JupyterLab autosaves what it runs: serve a copy, so the committed notebooks never get outputs.
    served = tmp_path_factory.mktemp("served") / "notebooks"
    shutil.copytree(ROOT / "notebooks", served)
    # user settings of this server only: no "get notified about Jupyter news?" toast over the screenshots
    settings = tmp_path_factory.mktemp("lab-settings")
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime), JUPYTERLAB_SETTINGS_DIR=str(settings),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    log = open(runtime / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}",
         "--ServerApp.open_browser=False"] + (["--allow-root"] if os.geteuid() == 0 else []) + [ "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=served, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited early: {(runtime / 'lab.log').read_text()[-2000:]}")
        else:
            raise RuntimeError("JupyterLab did not answer within 60 s")
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-quic", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


def _widget_html(page) -> str:
    return "".join(page.locator(".jp-OutputArea-output .jupyter-widgets").evaluate_all(
        "els => els.map(e => e.innerHTML)"))


def _assert_no_errors(page, name: str) -> None:
    """No cell output (widget outputs included) may show a traceback."""
    shown = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']:has-text('Traceback'), "
                         ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']:has-text('Error')")
    assert shown.count() == 0, f"{name}: a cell shows an error: {shown.first.inner_text()[:1500]}"


def _wait_until_executed(page, timeout_s: float = 540):
    """Wait until no cell prompt shows '[*]' and the kernel is idle."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        busy = page.locator(".jp-InputPrompt:has-text('[*]')").count()
        pending = page.locator(".jp-InputPrompt:has-text('[ ]')").count()
        if busy == 0 and pending == 0 and page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle'], .jp-Notebook").count():
            return
        page.wait_for_timeout(1000)
    raise AssertionError(f"cells still running after {timeout_s} s")


@pytest.mark.parametrize("name", EXPLORER_NOTEBOOKS)
def test_explorer_renders_and_reacts(lab, browser, name):
    if not (ROOT / "notebooks" / name).exists():
        pytest.skip(f"notebooks/{name} does not exist yet")
    url, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{url}/lab/tree/{name}?token={token}&reset", wait_until="domcontentloaded", timeout=120_000)
        page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
        # wait for the kernel, then Run > Run All Cells through the command palette
        page.locator(".jp-Notebook-ExecutionIndicator, .jp-KernelStatus").first.wait_for(timeout=120_000)
        page.wait_for_timeout(3000)
        page.locator(".jp-Notebook").first.click()
        page.keyboard.press("Control+Shift+c")
        page.keyboard.type("Run All Cells")
        page.keyboard.press("Enter")
        page.wait_for_timeout(3000)
        _wait_until_executed(page)
        _assert_no_errors(page, name)
        # widgets rendered (a slider at least) and no "Error displaying widget" placeholder
        sliders = page.locator(".jupyter-widgets .noUi-handle, .jupyter-widgets input[type='range']")
        sliders.first.wait_for(timeout=60_000)
        assert page.locator(":text('Error displaying widget')").count() == 0
        assert not page.locator(":text('Loading widget...')").count(), "widgets stuck at 'Loading widget...'"
        slider = sliders.first
        slider.scroll_into_view_if_needed()
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name[:-6]}_before.png"))
        before = _widget_html(page)
        slider.focus()
        for _ in range(3):
            page.keyboard.press("ArrowRight")
            page.wait_for_timeout(300)
        deadline = time.time() + 60
        while time.time() < deadline and _widget_html(page) == before:
            page.wait_for_timeout(500)
        after = _widget_html(page)
        assert after != before, f"{name}: moving the slider changed nothing in the explorer's output"
        page.wait_for_timeout(1500)
        _assert_no_errors(page, name)
        shot = SHOTS / f"{name[:-6]}_jupyterlab.png"
        page.locator(".jupyter-widgets").first.locator("xpath=ancestor::div[contains(@class,'jp-Cell')][1]").screenshot(path=str(shot))
        shutil.copy(shot, figures_dir() / shot.name)
        assert not errors, f"{name}: JavaScript errors in the page: {errors[:3]}"
    finally:
        page.close()

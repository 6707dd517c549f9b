"""Every numbered notebook, in a real JupyterLab, in a real browser, the way a learner runs it.

Widgets that work under nbval can still be blank in JupyterLab (front-end/kernel version mismatch, an
Output widget used wrongly, a callback that raises where nobody sees it), and a warning that nbval lets pass
is red text to a learner. This module starts one JupyterLab on a free loopback port with a random token and
one headless Chromium driven by Playwright. Each notebook/NN_*.ipynb (found by glob) is opened and run with
Run All Cells: no output may be stderr (errors and warnings both; the text is quoted) and the last code cell
must show an execution number. In the explorer notebooks the widgets must render and moving a slider must
change the explorer's output; in notebook 08 two images are uploaded through the page into the own-images
explorer, and its SR must appear. A screenshot of each explorer goes to tests/browser/screenshots/ (git-ignored)
and, as ``<notebook>_jupyterlab.png``, to the figures folder (the notebooks' own ``<notebook>_explorer.png``
is the static figure of the default state; the two must not share a name). Each notebook's kernel is shut
down after its test. JupyterLab autosaves what it runs, so it serves a temporary copy of notebooks/
(SERVED_PARAMETERS, injected by papermill: notebook 07's copy trains 10 steps into a temporary folder,
notebook 08's scores 2 pairs; nbval runs both at their defaults).

Skipped with a one-line reason where Chromium or Playwright is missing (``.ci/run`` installs Chromium).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import papermill
import pytest

from rrsr_lib.figures import figures_dir

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = os.environ.get("RRSR_CHROMIUM", "/usr/bin/chromium")
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Notebooks that carry an ipywidgets explorer (issue 7): run, then a slider is moved
EXPLORER_NOTEBOOKS = ["02_matching.ipynb", "03_alignment.ipynb", "07_reciprocal_training.ipynb",
                      "08_evaluation.ipynb"]
STDERR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: install it with `apt-get install chromium` (.ci/run does)",
                allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Parameters papermill injects into the served copies (as for a full-scale run). `make test` runs this test beside
# nbval's run of the notebooks (two pytest-xdist workers, two cores): nbval runs every notebook at its defaults,
# this test checks what the page shows, so notebook 07 trains into a temporary folder (both would otherwise write
# runs/07_reciprocal_training, and a training moves a folder it finds there aside) for 10 steps instead of 30,
# and notebook 08 scores 2 of its 4 embedded pairs. The explorers, plots and uploads are the same.
SERVED_PARAMETERS = {
    "07_reciprocal_training.ipynb": lambda run: {"overrides": {"output_dir": str(run), "iterations": 10}},
    "08_evaluation.ipynb": lambda run: {"pairs": 2},
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1:<free port> with a random token, stopped whatever happens."""
    port, token = _free_port(), secrets.token_hex(16)
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    # JupyterLab autosaves what it runs: serve a copy, so the committed notebooks never get outputs.
    served = tmp_path_factory.mktemp("served") / "notebooks"
    shutil.copytree(ROOT / "notebooks", served)
    for name, parameters in SERVED_PARAMETERS.items():
        papermill.execute_notebook(served / name, served / name, prepare_only=True, progress_bar=False,
                                   parameters=parameters(tmp_path_factory.mktemp("served-run")))
    # user settings of this server only: no "get notified about Jupyter news?" toast over the screenshots
    settings = tmp_path_factory.mktemp("lab-settings")
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    # every cell attached to the page, so that no output escapes the checks by being off screen
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none"}')
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


def _assert_no_stderr(page, name: str) -> None:
    """No cell output (widget outputs included) may be stderr: JupyterLab shows tracebacks and warnings so."""
    shown = page.locator(STDERR)
    texts = shown.all_inner_texts() if shown.count() else []
    assert not texts, f"{name}: {len(texts)} output(s) on stderr (red text to a learner):\n" + \
        "\n---\n".join(t[:1500] for t in texts[:3])


def _wait_until_executed(page, timeout_s: float = 540):
    """Wait until Run All has finished: no cell prompt shows '[*]', and none shows '[ ]' unless a cell
    stopped the run (an error output is on stderr)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        busy = page.locator(".jp-InputPrompt:has-text('[*]')").count()
        pending = page.locator(".jp-InputPrompt:has-text('[ ]')").count()
        if busy == 0 and (pending == 0 or page.locator(STDERR).count()):
            return
        page.wait_for_timeout(1000)
    raise AssertionError(f"cells still running after {timeout_s} s")


def _assert_last_cell_executed(page, name: str) -> None:
    prompt = page.locator(".jp-CodeCell .jp-InputPrompt").last.inner_text().strip()
    assert re.fullmatch(r"\[\d+\]:", prompt), f"{name}: the last code cell shows {prompt!r}, not [N]:"


def _shut_down_kernels(url: str, token: str) -> None:
    """Stop every kernel of the server (one notebook at a time keeps memory and CPU for the next)."""
    with urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=10) as r:
        sessions = json.load(r)
    for session in sessions:
        request = urllib.request.Request(f"{url}/api/sessions/{session['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()


def _run_all(page, url: str, token: str, name: str) -> None:
    """Open notebooks/<name> in JupyterLab, Run All Cells, wait; no stderr and the last cell executed."""
    page.goto(f"{url}/lab/tree/{name}?token={token}&reset", wait_until="domcontentloaded", timeout=120_000)
    page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
    # wait for the kernel, then Run > Run All Cells through the command palette
    page.locator(".jp-Notebook-ExecutionIndicator, .jp-KernelStatus").first.wait_for(timeout=120_000)
    page.wait_for_timeout(3000)
    page.locator(".jp-Notebook").first.click()
    page.keyboard.press("Control+Shift+c")
    page.keyboard.type("Run All Cells")
    page.keyboard.press("Enter")
    page.wait_for_timeout(1000)
    _wait_until_executed(page)
    _assert_no_stderr(page, name)
    _assert_last_cell_executed(page, name)


def _move_a_slider(page, name: str) -> None:
    """The explorer's widgets rendered; moving its first slider changes what it shows."""
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
    assert _widget_html(page) != before, f"{name}: moving the slider changed nothing in the explorer's output"
    page.wait_for_timeout(1500)
    _assert_no_stderr(page, name)
    shot = SHOTS / f"{name[:-6]}_jupyterlab.png"
    page.locator(".jupyter-widgets").first.locator("xpath=ancestor::div[contains(@class,'jp-Cell')][1]").screenshot(path=str(shot))
    shutil.copy(shot, figures_dir() / shot.name)


def _upload_own_images(page, folder: Path, name: str) -> None:
    """Notebook 08's own-images explorer: two files uploaded through the page, run, and the SR appears."""
    from PIL import Image

    from rrsr_lib.data import EmbeddedTestPairs
    from rrsr_lib.degradation import to_uint8

    item = EmbeddedTestPairs(pairs=["aero"])[0]
    files = []
    for what in ("lr", "ref"):
        files.append(folder / f"aero_{what}.png")
        Image.fromarray(to_uint8(item[what])).save(files[-1])
    # ipywidgets' FileUpload is a button whose <input type=file> is never attached to the page: the button
    # opens the browser's file chooser, which Playwright answers with set_files (its set_input_files)
    uploads = page.locator("button.widget-upload")
    assert uploads.count() >= 2, f"{name}: the own-images explorer's two upload buttons are not on the page"
    for button, path in zip((uploads.nth(0), uploads.nth(1)), files):
        button.scroll_into_view_if_needed()
        with page.expect_file_chooser(timeout=30_000) as chooser:
            button.click()
        chooser.value.set_files(str(path))
    page.wait_for_timeout(1000)
    page.locator("button.jupyter-button:text-is('run')").click()
    h, w = item["hr"].shape[1:]
    page.locator(f"text=SR done: {w}x{h}").first.wait_for(timeout=180_000)
    _assert_no_stderr(page, name)
    shot = SHOTS / "08_own_images_jupyterlab.png"
    page.locator("text=SR done:").first.locator("xpath=ancestor::div[contains(@class,'jp-Cell')][1]").screenshot(path=str(shot))
    shutil.copy(shot, figures_dir() / shot.name)


@pytest.mark.slow
def test_the_explorers_are_among_the_notebooks():
    assert NOTEBOOKS and set(EXPLORER_NOTEBOOKS) <= set(NOTEBOOKS), "EXPLORER_NOTEBOOKS names a missing notebook"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_clean_in_jupyterlab(lab, browser, name, tmp_path):
    url, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        _run_all(page, url, token, name)
        if name in EXPLORER_NOTEBOOKS:
            _move_a_slider(page, name)
        if name == "08_evaluation.ipynb":
            _upload_own_images(page, tmp_path, name)
        assert not errors, f"{name}: JavaScript errors in the page: {errors[:3]}"
    finally:
        page.close()
        _shut_down_kernels(url, token)

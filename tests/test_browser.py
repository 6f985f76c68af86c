"""JupyterLab as the user sees it: notebook 04 in headless Chromium (Debian's chromium + chromium-driver, through
selenium), run all cells, no error output, the UMAP figure and the explorer widget present, a dropdown change
redraws the plot. Screenshots before / after go to test-artifacts/browser/ (kept by CI, ignored by git).

`.ci/run` installs chromium and chromium-driver when they are missing and sets EDGEVL_REQUIRE_BROWSER, so there the
module fails rather than skips without them; elsewhere it is skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER) and os.environ.get("EDGEVL_REQUIRE_BROWSER"):  # CI: fail, never skip silently
    raise RuntimeError("EDGEVL_REQUIRE_BROWSER is set but chromium / chromedriver are missing: "
                       "apt-get install chromium chromium-driver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                "(apt-get install chromium chromium-driver; .ci/run does it)")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
TOKEN = "edgevl-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook_copy(workspace: Path, out_dir: Path) -> Path:
    """notebooks/04 with the smoke recipe and the widgets forced on, as a user would set its parameters cell."""
    nb = json.loads((ROOT / "notebooks" / "04_feature_angles.ipynb").read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    src = "".join(cell["source"])
    for name, value in (("smoke", "True"), ("interactive", "True"), ("out_dir", repr(str(out_dir)))):
        lines = src.split("\n")
        lines = [f"{name} = {value}" if line.startswith(f"{name} =") else line for line in lines]
        src = "\n".join(lines)
    cell["source"] = src
    path = workspace / "04_feature_angles.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free loopback port over a workspace holding the notebook; smoke artifacts prebuilt."""
    workspace = tmp_path_factory.mktemp("lab")
    cache = tmp_path_factory.mktemp("lab_cache")
    env = {**os.environ, "EDGEVL_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    # build what notebook 04 starts from (data, teacher, curation, stage 1, stage 2), so the browser run only analyses
    subprocess.run([sys.executable, "-c", "from edgevl_lib.recipe import load_recipe\n"
                    "from edgevl_lib.pipeline import run_curation, run_stage1, run_stage2\n"
                    "r = load_recipe(smoke=True); a = run_curation(r)\n"
                    "run_stage2(a, run_stage1(a, r).student.cpu().eval(), r)"], env=env, check=True, cwd=ROOT,
                   capture_output=True)
    _notebook_copy(workspace, workspace / "out")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                               f"--ServerApp.port={port}", f"--IdentityProvider.token={TOKEN}",
                               f"--ServerApp.root_dir={workspace}", "--LabApp.expose_app_in_browser=True",
                               "--ServerApp.open_browser=False", "--allow-root"], env=env, cwd=workspace,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("JupyterLab did not start within 60 s")
        yield base, workspace
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, script: str, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


NOTEBOOK = "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget; "
STATE = NOTEBOOK + """if (!w || !w.content || !w.sessionContext.session) { return null; }
const cells = w.content.widgets.filter(c => c.model.type === 'code');
return {status: w.sessionContext.session.kernel.status, pending: cells.filter(c => c.model.executionCount === null).length,
        errors: cells.flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                                     .map(o => o.ename + ': ' + o.evalue)),
        cells: cells.length};"""


def _plot_digest(driver) -> str | None:
    src = driver.execute_script(
        "const img = document.querySelector('.widget-output img, .jupyter-widgets-output-area img');"
        "return img ? img.getAttribute('src') : null;")
    return hashlib.sha256(src.encode()).hexdigest() if src else None


def test_notebook_04_runs_in_jupyterlab_and_the_explorer_redraws(lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, workspace = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get(f"{base}/lab/tree/04_feature_angles.ipynb?token={TOKEN}")
    _wait(browser, NOTEBOOK + "return w && w.sessionContext && w.sessionContext.session && "
          "w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle';", 120,
          "the notebook's kernel")
    browser.execute_script("return window.jupyterapp.commands.execute('notebook:run-all-cells');")
    state = _wait(browser, STATE.replace("return {", "const s = {") + " return (s.pending === 0 && "
                  "s.status === 'idle') || s.errors.length ? s : null;", 420, "all cells to run")
    browser.save_screenshot(str(ARTIFACTS / "notebook_after_run_all.png"))
    assert not state["errors"], f"error outputs in the browser run: {state['errors']}"
    images = browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")
    assert len(images) >= 4  # benchmark of figures: angles, margins, representation, umap ...
    selects = browser.find_elements(By.CSS_SELECTOR, ".widget-dropdown select")
    assert len(selects) >= 3, "the explorer's three dropdowns did not render"
    before = _wait(browser, "return document.querySelector('.widget-output img, .jupyter-widgets-output-area img') "
                   "!== null;", 60, "the explorer's plot") and _plot_digest(browser)
    explorer = selects[0].find_element(By.XPATH, "./ancestor::div[contains(@class, 'widget-vbox')][1]")
    browser.execute_script("arguments[0].scrollIntoView();", explorer)
    explorer.screenshot(str(ARTIFACTS / "explorer_before.png"))
    variant = Select(selects[0])
    assert len(variant.options) >= 2
    variant.select_by_index(1)
    end = time.time() + 60
    while _plot_digest(browser) == before and time.time() < end:
        time.sleep(0.5)
    after = _plot_digest(browser)
    explorer.screenshot(str(ARTIFACTS / "explorer_after.png"))
    assert after is not None and after != before, "changing the variant dropdown did not redraw the plot"
    assert (ARTIFACTS / "explorer_before.png").stat().st_size > 1000


def test_the_report_index_opens_in_chromium_and_every_link_resolves(browser, tmp_path, monkeypatch):
    import functools
    import http.server
    import threading

    import nbformat as nbf

    from edgevl_lib import run

    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    bodies = {"01_ok": "import json, pathlib\nimport matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt\n"
                       "(pathlib.Path(out_dir) / 'figures').mkdir(exist_ok=True)\n"
                       "plt.plot([1, 2]); plt.savefig(pathlib.Path(out_dir, 'figures', 'line.png'))\n"
                       "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'smoke': smoke}))",
              "02_broken": "1 / 0"}
    for stem, body in bodies.items():
        nb = nbf.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbf.v4.new_code_cell("smoke = False\nout_dir = None", metadata={"tags": ["parameters"]}),
                    nbf.v4.new_code_cell(body)]
        nbf.write(nb, nb_dir / f"{stem}.ipynb")
    monkeypatch.setattr(run, "NOTEBOOK_DIR", nb_dir)
    out = tmp_path / "reports"
    run.main(["--smoke", "--out", str(out)])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/index.html")
        _wait(browser, "return document.readyState === 'complete';", 30, "the index page")
        links = browser.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href);")
        assert len(links) >= 3
        status = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all(arguments[0].map(u => fetch(u).then(r => [u, r.status]).catch(e => [u, String(e)])))"
            ".then(done);", links)
        assert all(code == 200 for _, code in status), status
        images = _wait(browser, "const im = [...document.images]; return im.length && im.every(i => i.complete) "
                       "? im.map(i => i.naturalWidth) : null;", 30, "the thumbnails")
        assert images and all(w > 0 for w in images), images
        browser.save_screenshot(str(ARTIFACTS / "report_index.png"))
    finally:
        server.shutdown()

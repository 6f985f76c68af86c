"""Tests for the papermill runner: statuses, exit code, outputs."""
from __future__ import annotations

import contextlib
import json

import nbformat as nbf
import pytest

from edgevl_lib import run


def _notebook(path, body: str) -> None:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_code_cell("smoke = False\nout_dir = None", metadata={"tags": ["parameters"]}),
                nbf.v4.new_code_cell(body)]
    nbf.write(nb, path)


@pytest.fixture()
def books(tmp_path, monkeypatch):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    _notebook(nb_dir / "01_ok.ipynb", "import json, pathlib\n"
              "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'smoke': smoke}))")
    _notebook(nb_dir / "02_todo.ipynb", "raise NotImplementedError('02_todo is not built yet')")
    _notebook(nb_dir / "03_broken.ipynb", "1 / 0")
    monkeypatch.setattr(run, "NOTEBOOK_DIR", nb_dir)
    return tmp_path


def test_statuses_outputs_and_exit_code(books, capsys):
    out = books / "reports"
    code = run.main(["--smoke", "--out", str(out)])
    assert code == 1  # a built notebook failed
    printed = capsys.readouterr().out
    assert "01_ok: ok" in printed and "02_todo: not built" in printed and "03_broken: failed" in printed
    assert "not built yet (NotImplementedError): 02_todo" in printed
    assert json.loads((out / "01_ok" / "metrics.json").read_text()) == {"smoke": True}  # parameters injected
    for stem in ("01_ok", "02_todo", "03_broken"):
        assert (out / stem / f"{stem}.ipynb").is_file() and (out / stem / f"{stem}.html").is_file()


def test_not_built_alone_exits_zero(books):
    assert run.main(["--only", "1", "2", "--out", str(books / "r")]) == 0


def test_only_filters_in_order(books):
    assert [p.stem for p in run.list_notebooks(["03", "01"])] == ["01_ok", "03_broken"]
    with pytest.raises(SystemExit, match="matches no notebook"):
        run.list_notebooks(["09"])


# ----------------------------------------------------------------------------------------------
# One recipe through the real notebooks (smoke): real-format data, the tau hazard, kill + rerun
# ----------------------------------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
STEMS = ("01_curation", "02_stage1", "03_stage2", "04_feature_angles", "05_jetson_benchmark")


def _tiny_open_clip(folder):
    """An open_clip architecture file and a random-weight safetensors checkpoint of it (the paper's teacher's format)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    name = "edgevl-run-tiny-vit"
    config = folder / f"{name}.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    ckpt = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model(name, pretrained=None).state_dict().items()},
              str(ckpt))
    return name, config, ckpt


def _scannet(root, scene_types, frames=4):
    """A ScanNet SensReader export: <scene>/color/<i>.jpg, <scene>/depth/<i>.png (16-bit mm), <scene>/<scene>.txt."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for s, scene_type in enumerate(scene_types):
        scene = root / f"scene{s:04d}_00"
        (scene / "color").mkdir(parents=True)
        (scene / "depth").mkdir()
        (scene / f"{scene.name}.txt").write_text(f"colorHeight = 48\ncolorWidth = 64\nsceneType = {scene_type}\n")
        for i in range(frames):
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(scene / "color" / f"{i}.jpg")
            Image.fromarray(rng.integers(500, 4000, (24, 32), dtype=np.uint16)).save(scene / "depth" / f"{i}.png")
    return root


def _env(cache):
    import os

    return {**os.environ, "EDGEVL_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(run.PROJECT_ROOT)}


def _runner(*args, cache, timeout=900):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "edgevl_lib.run", *map(str, args)], env=_env(cache),
                          cwd=run.PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_real_data_recipe_file_runs_all_notebooks_on_one_curated_set(tmp_path):
    import yaml

    name, config, ckpt = _tiny_open_clip(tmp_path)
    root = _scannet(tmp_path / "scans", ["Bedroom / Hotel", "Kitchen", "Office", "Bathroom"] * 4, frames=2)
    recipe = tmp_path / "scannet_tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"dataset": "scannet", "root": str(root), "classes": ["bedroom/hotel", "kitchen", "office", "bathroom"],
                 "options": {"split_fractions": [0.5, 0.5]}},  # a loader option: eval gets 8 of the 16 scans
        "teacher": {"kind": "open_clip", "model": name, "pretrained": None, "checkpoint": str(ckpt),
                    "model_config": str(config)},
        "curation": {"superset": "scenes_superset.txt"}}))
    done = _runner("--recipe", recipe, "--smoke", "--out", tmp_path / "reports", cache=tmp_path / "cache")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = {s: json.loads((tmp_path / "reports" / s / "metrics.json").read_text()) for s in STEMS}
    hashes = {m["recipe"]["hash"] for m in metrics.values()}
    assert len(hashes) == 1 and all(m["recipe"]["name"] == "scannet_tiny" for m in metrics.values())
    kept = metrics["01_curation"]["curation"]
    assert 0 < kept["kept"] < kept["total"]
    assert {metrics[s]["data"]["kept_ids_digest"] for s in STEMS[1:]} == {kept["kept_ids_digest"]}
    assert metrics["01_curation"]["teacher"].startswith(f"open_clip:{name}")
    assert "stage-1 student reused" in done.stdout and "int8 variants reused" in done.stdout


@pytest.mark.slow
def test_tau_set_on_the_recipe_changes_the_curated_set_downstream_notebooks_see(tmp_path, monkeypatch):
    from edgevl_lib.pipeline import run_curation
    from edgevl_lib.recipe import load_recipe

    monkeypatch.setenv("EDGEVL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    results = run.run_all(smoke=True, only=["03"], out_root=tmp_path / "reports", html=False,
                          overrides=["curation.top_fraction=0.8"])  # 03 alone builds 01's curation itself
    assert [r.status for r in results] == ["ok"]
    seen = json.loads((tmp_path / "reports" / "03_stage2" / "metrics.json").read_text())["data"]
    at_08 = run_curation(load_recipe(overrides=["curation.top_fraction=0.8"], smoke=True))
    at_05 = run_curation(load_recipe(smoke=True))  # the smoke recipe's own top fraction
    assert seen["kept_ids_digest"] == at_08.kept_digest != at_05.kept_digest
    assert seen["curated"] == at_08.result.num_kept > at_05.result.num_kept


def _kernels_of(cache) -> list[int]:
    """pids of the Jupyter kernels started with EDGEVL_CACHE=`cache` (they run in their own session)."""
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"EDGEVL_CACHE={cache}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_a_notebook_killed_mid_training_resumes_on_rerun(tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    cache = tmp_path / "cache"
    args = ["--smoke", "--only", "02", "--set", "stage1.epochs=40"]
    proc = subprocess.Popen([sys.executable, "-m", "edgevl_lib.run", *args, "--out", str(tmp_path / "a")],
                            env=_env(cache), cwd=run.PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    state = None
    while time.time() < deadline and proc.poll() is None:
        found = list(cache.glob("stage1/*/dual/checkpoints/state.json"))
        if found and json.loads(found[0].read_text()).get("epochs_done", 0) >= 1:
            state = found[0]
            break
        time.sleep(0.05)
    for pid in [proc.pid, *_kernels_of(cache)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert state is not None, "the dual student never wrote its first checkpoint"
    killed_at = json.loads(state.read_text())["epochs_done"]
    assert killed_at < 40, "training finished before the kill; make it longer"
    again = _runner(*args, "--out", tmp_path / "b", cache=cache)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = re.search(r"resuming from \S*/dual/checkpoints/state.json after epoch (\d+)", again.stdout)
    assert resumed and 1 <= int(resumed.group(1)) < 40, again.stdout[-3000:]
    assert json.loads(state.read_text())["epochs_done"] == 40


def test_the_runner_writes_an_index_linking_every_report(books):
    import re

    out = books / "reports"
    run.main(["--smoke", "--out", str(out)])
    page = (out / "index.html").read_text()
    assert "recipe <b>embedded_cpu</b>" in page and "01_ok" in page and "03_broken" in page
    links = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert links and all((out / link).is_file() for link in links), links
    assert 'class="failed">failed' in page and 'class="ok">ok' in page


def test_the_runner_starts_kernels_over_ipc_so_ipykernel_has_no_tcp_warning(books, capfd):
    result = run.execute_notebook(run.NOTEBOOK_DIR / "01_ok.ipynb", books / "reports", smoke=True, html=False)
    assert result.status == "ok"
    assert "without encryption" not in capfd.readouterr().err  # the kernel's stderr is this process's fd 2
    assert issubclass(run.ipc_kernel_manager(), __import__("jupyter_client").manager.AsyncKernelManager)
    km = run.ipc_kernel_manager()(kernel_name="python3")
    assert km.transport == "ipc"


def test_html_export_of_figures_prints_no_alt_text_notice(tmp_path, caplog):
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    nb = nbf.v4.new_notebook()
    cell = nbf.v4.new_code_cell("plot()")
    cell.outputs = [nbf.v4.new_output("display_data", data={"image/png": base64.b64encode(buf.getvalue()).decode()})]
    nb.cells = [cell]
    nbf.write(nb, tmp_path / "fig.ipynb")
    with caplog.at_level("WARNING"):
        html = run.export_html(tmp_path / "fig.ipynb", tmp_path / "fig.html")
    assert "<img" in html.read_text() and "alt=" in html.read_text()
    assert not [r for r in caplog.records if "Alternative text" in r.getMessage()]

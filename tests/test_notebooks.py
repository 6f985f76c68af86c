"""Every notebook runs headless with smoke=True through the runner: built ones succeed, the rest say so."""
from __future__ import annotations

import json

import nbformat
import pytest

from edgevl_lib import run


@pytest.fixture(scope="module")
def smoke_reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEVL_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        results = run.run_all(smoke=True, out_root=out)
    finally:
        mp.undo()
    return out, {r.stem: r for r in results}


def test_notebooks_are_committed_without_outputs():
    for path in run.list_notebooks():
        nb = nbformat.read(path, as_version=4)
        assert not [c for c in nb.cells if c.cell_type == "code" and c.get("outputs")], path.name
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), f"{path.name}: no parameters cell"


def test_every_notebook_runs_or_says_it_is_not_built(smoke_reports):
    _, results = smoke_reports
    assert [s for s in results] == [p.stem for p in run.list_notebooks()]
    for stem, r in results.items():
        assert r.status in ("ok", "not built"), f"{stem}: {r.status} {r.message}"
        if r.status == "not built":
            assert "not built yet" in r.message
    assert results["01_curation"].status == "ok"


def test_curation_notebook_writes_its_metrics_and_figures(smoke_reports):
    out, _ = smoke_reports
    m = json.loads((out / "01_curation" / "metrics.json").read_text())
    assert set(m["zero_shot"]) == {"rgb", "depth", "thermal"}
    assert all(0.0 <= v <= 1.0 for v in m["zero_shot"].values())
    cur = m["curation"]
    assert {"mode", "threshold", "kept", "total", "kept_pseudo_acc", "discarded_pseudo_acc"} <= set(cur)
    assert 0 < cur["kept"] <= cur["total"]
    assert m["cache"]["images"] == cur["kept"] and m["cache"]["views"] >= 1
    figures = {p.name for p in (out / "01_curation" / "figures").iterdir()}
    assert {"benchmark_grid.png", "teacher_zero_shot.png", "confidence_histogram.png"} <= figures
    assert (out / "01_curation" / "01_curation.html").stat().st_size > 10_000

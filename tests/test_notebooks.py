"""Every notebook runs headless with smoke=True through the runner, writes the metrics its issue names, and the
same seed gives the same metrics.json (determinism) in a second run from an empty cache."""
from __future__ import annotations

import json
import re
from typing import Any

import nbformat
import pytest

from edgevl_lib import run

# metrics that measure time, hold paths of the run's folders, or are decided by timings: not comparable across runs
VOLATILE = {"seconds", "upstream", "epoch_seconds", "speed", "latency_ms", "latency_stats", "throughput_ips",
            "speedup", "edge_results", "checks", "device", "gpu", "path", "checkpoint", "stage1_checkpoint", "umap",
            "from_cache", "file", "results_dir", "paper_variants", "throughput_stats", "deploy"}


def _run_all(tmp_path_factory, name: str, html: bool = True) -> tuple[Any, dict[str, run.NotebookResult]]:
    out = tmp_path_factory.mktemp(f"reports_{name}")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEVL_CACHE", str(tmp_path_factory.mktemp(f"cache_{name}")))
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        results = run.run_all(smoke=True, out_root=out, html=html)
    finally:
        mp.undo()
    return out, {r.stem: r for r in results}


@pytest.fixture(scope="module")
def smoke_reports(tmp_path_factory):
    return _run_all(tmp_path_factory, "first")


def _metrics(out, stem: str) -> dict[str, Any]:
    return json.loads((out / stem / "metrics.json").read_text())


def _stable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def test_notebooks_are_committed_without_outputs():
    for path in run.list_notebooks():
        nb = nbformat.read(path, as_version=4)
        assert not [c for c in nb.cells if c.cell_type == "code" and c.get("outputs")], path.name
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), f"{path.name}: no parameters cell"


def test_papermill_parses_every_parameter_and_only_shared_names_repeat():
    from papermill.translators import PythonTranslator

    shared = {"recipe", "overrides", "seed", "smoke", "out_dir", "force"}
    seen: dict[str, list[str]] = {}
    for path in run.list_notebooks():
        cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
        declared = [ln.split("=")[0].strip() for ln in cell.source.splitlines() if ln.strip() and ln[0] != "#"]
        parsed = PythonTranslator.inspect(cell)
        assert [p.name for p in parsed] == declared, path.name  # "Unable to parse" drops a parameter
        assert all(p.help for p in parsed), path.name
        assert declared[:5] == ["recipe", "overrides", "seed", "smoke", "out_dir"], path.name
        for name in set(declared) - shared:
            seen.setdefault(name, []).append(path.stem)
    assert {n: s for n, s in seen.items() if len(s) > 1} == {}


def test_every_notebook_runs(smoke_reports):
    _, results = smoke_reports
    assert [s for s in results] == [p.stem for p in run.list_notebooks()]
    for stem, r in results.items():
        assert r.status == "ok", f"{stem}: {r.status} {r.message}"


NOISE = ("No complete tensor found", "No CUDA runtime is found", "running over TCP without encryption",
         "To copy construct from a tensor")
NUMBER = re.compile(r"(?<![\w.])(\d+)\.(\d+)(?![\w.])")


def _too_precise(line: str) -> bool:
    """A printed decimal with more than 5 significant digits (0.42852167279960846, pandas' 0.825417)."""
    return any(len((whole + frac).strip("0")) > 5 for whole, frac in NUMBER.findall(line))


def _printed(notebook) -> list[str]:
    """Every line an executed notebook shows: streams, plain-text results and tables."""
    lines = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain", "")
            lines += "".join(text).splitlines()
    return lines


def test_notebooks_print_rounded_numbers_and_no_known_noise(smoke_reports):
    out, _ = smoke_reports
    for path in run.list_notebooks():
        lines = _printed(out / path.stem / f"{path.stem}.ipynb")
        assert lines, path.stem
        assert [ln for ln in lines if any(n in ln for n in NOISE)] == [], path.stem
        assert [ln for ln in lines if _too_precise(ln)] == [], path.stem


def test_curation_notebook_writes_its_metrics_and_figures(smoke_reports):
    out, _ = smoke_reports
    m = _metrics(out, "01_curation")
    assert set(m["zero_shot"]) == {"rgb", "depth", "thermal"} == set(m["zero_shot_vs_chance"])
    assert all(0.0 <= v <= 1.0 for v in m["zero_shot"].values())
    cur = m["curation"]
    assert {"mode", "threshold", "kept", "total", "kept_pseudo_acc", "discarded_pseudo_acc", "classes_kept",
            "classes_total", "uninformative"} <= set(cur)
    assert 0 < cur["kept"] <= cur["total"] and 0 < cur["classes_kept"] <= cur["classes_total"]
    assert cur["uninformative"]["total"] > 0 and 0 <= cur["uninformative"]["discarded"] <= cur["uninformative"]["total"]
    assert set(m["sweeps"]) == {"threshold", "top_fraction", "class_top_fraction"}
    assert m["cache"]["images"] == cur["kept"] and m["cache"]["views"] >= 1
    figures = {p.name for p in (out / "01_curation" / "figures").iterdir()}
    assert {"benchmark_grid.png", "teacher_zero_shot.png", "confidence_histogram.png",
            "uninformative_samples.png"} <= figures
    assert (out / "01_curation" / "01_curation.html").stat().st_size > 10_000


def test_stage1_notebook_writes_the_ablation_with_claims(smoke_reports):
    out, _ = smoke_reports
    m = _metrics(out, "02_stage1")
    assert set(m["ablation"]) == {"dual", "rgb_only", "nonrgb_only"}
    assert set(m["claims"]) == {"dual_beats_rgb_only", "dual_beats_nonrgb_only"}
    for v, ci in m["ablation_ci"].items():
        assert ci["lo"] <= m["ablation"][v]["mean_trained"] <= ci["hi"]


def test_stage2_notebook_writes_the_ablation_table_and_int8_artifact(smoke_reports):
    out, _ = smoke_reports
    m = _metrics(out, "03_stage2")
    assert set(m["table"]) == {"stage1_fp32", "ptq_int8", "qat_int8", "stage2_int8", "fp32_ld", "fp32_ld_lc"}
    for row in m["table"].values():
        assert {"rgb", "depth", "thermal", "avg"} <= set(row) and 0.0 <= row["avg"] <= 1.0
    assert m["triplets"]["mined"] >= m["triplets"]["anchors"] > 0
    assert set(m["claims"]) == {"stage2_int8_beats_fp32", "stage2_beats_plain_qat", "qat_beats_ptq",
                                "qat_beats_same_float_training", "stage2_beats_same_float_training"}
    for claim in m["claims"].values():
        assert claim["verdict"] in ("holds", "contradicted", "not significant")
        assert claim["ci"][0] <= claim["diff"] <= claim["ci"][1] and claim["p"] <= claim["p_holm"] <= 1
    assert len(m["pairs"]) == 15 and set(m["table_ci"]) == set(m["table"])
    assert m["speed"]["fp32_ms"] > 0 and m["speed"]["int8_ms"] > 0
    artifact = out / "03_stage2" / "student_int8.pt2"
    assert artifact.stat().st_size == m["artifact"]["bytes"] and artifact.with_suffix(".json").is_file()
    assert {"ablation.png", "training.png"} <= {p.name for p in (out / "03_stage2" / "figures").iterdir()}


def test_analysis_notebook_writes_angles_and_consistency(smoke_reports):
    out, _ = smoke_reports
    m = _metrics(out, "04_feature_angles")
    for variant in ("fp32", "ptq", "qat", "stage2"):
        assert set(m["angle_deg"][variant]) == {"rgb", "depth", "thermal"}
        assert all(0.0 <= a <= 180.0 for a in m["angle_deg"][variant].values())
        assert -1.0 <= m["m_rel"][variant] <= 1.0 and 0.0 <= m["m_neigh"][variant] <= 1.0
        assert set(m["margin_angle_deg"][variant]) == {"rgb", "depth", "thermal"}
        assert all(-180.0 <= a <= 180.0 for a in m["margin_angle_deg"][variant].values())
    angle_claims = {"stage2_angle_below_fp32", "ptq_opens_the_angle", "stage2_closes_the_ptq_angle"}
    assert set(m["claims"]) == angle_claims | {f"{c}_margin" for c in angle_claims}
    assert all(c["test"] == "paired bootstrap" for c in m["claims"].values())
    assert m["claims"]["stage2_angle_below_fp32_margin"]["a"] == "stage2_margin"
    assert {"angles.png", "margins.png", "umap.png", "representation.png"} <= {
        p.name for p in (out / "04_feature_angles" / "figures").iterdir()}


def test_benchmark_notebook_writes_sizes_latency_and_agreement(smoke_reports):
    out, _ = smoke_reports
    m = _metrics(out, "05_jetson_benchmark")
    assert {"teacher", "clip_b16", "student_fp32", "student_int8"} <= set(m["size_mb"])
    assert {"int8_vs_clip_b16", "int8_vs_fp32"} <= set(m["speedup"])
    assert m["latency_ms"] and m["throughput_ips"] and {"cosine", "acc_delta"} <= set(m["agreement"])
    assert m["device"]["cpu"]


def test_same_seed_gives_the_same_metrics(smoke_reports, tmp_path_factory):
    out, _ = smoke_reports
    again, results = _run_all(tmp_path_factory, "second", html=False)
    assert all(r.status == "ok" for r in results.values())
    for stem in results:
        first, second = _stable(_metrics(out, stem)), _stable(_metrics(again, stem))
        assert first == second, stem

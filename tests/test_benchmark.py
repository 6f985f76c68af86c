"""Tests for edgevl_lib.benchmark (timing harness, sizes, paper-scale student) and its plots. No timed assertions."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
import torch.nn.functional as F

from edgevl_lib import bench, benchmark, export, plots
from helpers_fake import make_paired_folder


def fake_candidate(name: str, calls: list[tuple[str, int]]) -> benchmark.Candidate:
    def make(batch: int):
        return lambda: calls.append((name, batch))
    return benchmark.Candidate(name, name.split("_")[0], "fp32", "python", make, 8, {"note": name})


def test_measure_latency_counts_interleaves_and_labels():
    calls: list[tuple[str, int]] = []
    cands = [fake_candidate("a_fp32_x", calls), fake_candidate("b_int8_x", calls)]
    lat = benchmark.measure_latency(cands, batch=2, runs={"default": 6, "b_int8_x": 3},
                                    warmup={"default": 1, "b_int8_x": 0}, rounds=3)
    assert lat["a_fp32_x"]["runs"] == 6 and lat["b_int8_x"]["runs"] == 3
    assert lat["a_fp32_x"]["warmup"] == 1 and lat["a_fp32_x"]["note"] == "a_fp32_x" and lat["a_fp32_x"]["batch"] == 2
    assert len(calls) == 6 + 3 + 1 and {b for _, b in calls} == {2}
    assert [n for n, _ in calls[1:]] == ["a_fp32_x"] * 2 + ["b_int8_x"] + ["a_fp32_x"] * 2 + ["b_int8_x"] \
        + ["a_fp32_x"] * 2 + ["b_int8_x"]
    with pytest.raises(ValueError, match="unique"):
        benchmark.measure_latency([cands[0], cands[0]])


def test_speedup_fastest_and_throughput_arithmetic():
    lat = {"int8": {"median_ms": 20.0}, "fp32": {"median_ms": 50.0}, "clip": {"median_ms": 400.0}}
    assert benchmark.speedup(lat, "int8", "clip") == pytest.approx(20.0)
    assert benchmark.speedup(lat, "int8", "fp32") == pytest.approx(2.5)
    assert benchmark.fastest(lat, ["fp32", "clip", "absent"]) == "fp32"
    with pytest.raises(KeyError):
        benchmark.fastest(lat, ["absent"])
    calls: list[tuple[str, int]] = []
    tput = benchmark.measure_throughput([fake_candidate("a", calls)], batch=4, runs=3, warmup=1)
    assert tput["a"]["batch"] == 4 and tput["a"]["runs"] == 3
    assert tput["a"]["images_per_s"] == pytest.approx(4 / (tput["a"]["median_ms"] / 1e3))


def test_torch_and_onnx_candidates_run_the_model(tmp_path, one_thread):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    cand = benchmark.torch_candidate("m_fp32_torch", model, 16)
    out = cand.make(3)()
    assert out.shape == (3, 4) and cand.runtime == "torch" and cand.model == "m"

    class Wrapped(torch.nn.Module):  # the export API expects image_size on the model or as an argument
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    path = export.export_onnx(Wrapped(), tmp_path / "m.onnx", image_size=16)
    ort_cand = benchmark.onnx_candidate("m_fp32_ort", path, 16, threads=1)
    assert ort_cand.precision == "fp32" and ort_cand.info["providers"] == ["CPUExecutionProvider"]
    (result,) = ort_cand.make(2)()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # the candidates' fixed input
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(result), model(x), atol=1e-5)
    lat = benchmark.measure_latency([cand, ort_cand], runs=3, warmup=1, threads=1)
    assert set(benchmark.summarize_latency(lat)) == {"m_fp32_torch", "m_fp32_ort"}


def test_torch_threads_is_restored():
    before = torch.get_num_threads()
    with benchmark.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_nominal_sizes_from_parameter_counts_without_allocating():
    b16 = benchmark.nominal_fp32_bytes("ViT-B-16")
    assert b16["image_params"] == 86_192_640  # open_clip ViT-B-16 image tower, counted on a real CPU model
    assert b16["image_bytes"] == 4 * b16["image_params"] and b16["params"] > b16["image_params"]
    g14 = benchmark.nominal_fp32_bytes("ViT-g-14")
    assert g14["image_params"] == 1_012_645_632 and g14["params"] == 1_366_678_273


def test_parameter_bytes_counts_shared_tensors_once():
    lin = torch.nn.Linear(3, 4)
    assert benchmark.parameter_bytes(lin) == (12 + 4) * 4
    bn = torch.nn.BatchNorm1d(5)  # 2 x 5 parameters + 2 x 5 float buffers + one int64 counter
    assert benchmark.parameter_bytes(bn) == 10 * 4 + 10 * 4 + 8
    assert benchmark.parameter_bytes(lin, lin) == (12 + 4) * 4


def test_teacher_modules_of_both_teacher_kinds():
    class Embedded:
        backbone, head, text = torch.nn.Linear(2, 2), torch.nn.Linear(2, 3), torch.nn.Linear(1, 1)

    parts = benchmark.teacher_modules(Embedded())
    assert parts["image"] == [Embedded.backbone, Embedded.head] and parts["text"] == [Embedded.text]

    class Clip:
        model = torch.nn.Module()

    Clip.model.visual, Clip.model.transformer = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    parts = benchmark.teacher_modules(Clip())
    assert parts["image"] == [Clip.model.visual] and parts["text"] == [Clip.model.transformer]
    with pytest.raises(TypeError):
        benchmark.teacher_modules(object())


def test_paper_scale_student_path_on_a_tiny_vit(one_thread):
    fp32, int8 = benchmark.paper_scale_student("vit_tiny_test", 16, 32, calibration_batches=1, batch_size=4, seed=3)
    assert export.is_quantized(int8) and fp32.image_size == 32
    x = benchmark.random_images(4, 32, seed=9)
    with torch.no_grad():
        assert F.cosine_similarity(int8(x), fp32(x)).min() > 0.98
    again, _ = benchmark.paper_scale_student("vit_tiny_test", 16, 32, calibration_batches=1, batch_size=4, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(fp32.state_dict().values(), again.state_dict().values()))


def test_dataset_batches_concatenate_modalities(tmp_path):
    dataset = make_paired_folder(tmp_path / "data", n=8, size=16)
    batches = benchmark.dataset_batches(dataset, ["rgb", "depth"], batches=2, batch_size=3, image_size=24)
    assert [b.shape for b in batches] == [(6, 3, 24, 24)] * 2
    assert 0.0 <= float(batches[0].min()) and float(batches[0].max()) <= 1.0
    same = benchmark.dataset_batches(dataset, ["rgb", "depth"], batches=2, batch_size=3, image_size=24)
    assert all(torch.equal(a, b) for a, b in zip(batches, same))


def test_edge_results_table_flattens_bench_results():
    result = {"format": bench.RESULT_FORMAT, "label": "orin", "provider": "trtexec", "threads": None, "batch": 1,
              "latency_ms": {"median_ms": 1.5, "p90_ms": 1.8, "runs": 200}, "throughput_ips": {"1": 600.0, "8": 900.0},
              "model": {"bytes": 23_000_000}, "device": {"cpu": "ARMv8", "gpu": "Jetson AGX Orin"}, "file": "x.json"}
    (row,) = benchmark.edge_results_table([result])
    assert row["device"] == "Jetson AGX Orin" and row["median_ms"] == 1.5 and row["images_per_s"] == 900.0
    assert row["mb"] == pytest.approx(23.0)


def test_integer_op_share():
    assert benchmark.integer_op_share({"MatMulIntegerToFloat": 3, "MatMul": 1, "Add": 9}) == pytest.approx(0.75)
    assert benchmark.integer_op_share({"Add": 1}) == 0.0


def test_device_info_adds_torch_fields():
    info = benchmark.device_info(threads=2)
    assert info["threads"] == 2 and info["torch"] == torch.__version__ and isinstance(info["cpu_flags"], list)


def test_benchmark_plots_draw_one_bar_or_point_per_entry():
    fig = plots.latency_bars({"student_int8_ort": 40.0, "clip_b16_fp32_torch": 400.0, "teacher_fp32_torch": 10.0},
                             spread={"student_int8_ort": (35.0, 50.0)})
    ax = fig.axes[0]
    assert len(ax.patches) == 3 and ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "teacher_fp32_torch"  # fastest on top
    fig = plots.size_bars({"student_int8": 23.6, "clip_b16": 345.0}, nominal=["clip_b16"])
    assert sorted(p.get_hatch() or "" for p in fig.axes[0].patches) == ["", "//"]
    fig = plots.accuracy_latency_scatter({"teacher (rgb)": (11.0, 0.8), "int8 (rgb)": (1.2, 0.7)}, {"clip_b16": 400.0})
    ax = fig.axes[0]
    assert len(ax.collections) == 2 and len(ax.lines) == 1 and ax.lines[0].get_xdata()[0] == 400.0


def _latency(**medians: float) -> dict[str, dict[str, float]]:
    return {k: {"median_ms": v} for k, v in medians.items()}


def test_speedups_use_the_fastest_clip_and_fp32_engines():
    lat = _latency(student_int8_ort=20.0, student_fp32_ort=46.0, student_fp32_torch=97.0, clip_b16_fp32_torch=365.0,
                   clip_b16_fp32_ort=172.0, teacher_fp32_torch=6.0, project_int8_ort=0.3, project_fp32_ort=0.6,
                   project_fp32_torch=4.0, project_int8_qdq_ort=0.9)
    tput = {"student_int8_ort": {"images_per_s": 40.0}, "student_fp32_ort": {"images_per_s": 20.0},
            "project_int8_ort": {"images_per_s": 5000.0}, "project_fp32_ort": {"images_per_s": 2000.0}}
    s = benchmark.speedups(lat, tput)
    assert s["clip_b16_engine"] == "clip_b16_fp32_ort" and s["int8_vs_clip_b16"] == pytest.approx(172 / 20)
    assert s["int8_vs_clip_b16_torch"] == pytest.approx(365 / 20) and s["fp32_engine"] == "student_fp32_ort"
    assert s["project_int8_vs_fp32_ort"] == pytest.approx(2.0) and s["project_int8_vs_qdq_ort"] == pytest.approx(3.0)
    assert s["project_fp32_engine"] == "project_fp32_ort" and s["throughput_project_int8_vs_fp32_ort"] == 2.5
    checks = benchmark.edge_checks(s, {"student_int8": 1.08}, {"int8_vs_fp32": {"cosine_mean": 0.999}},
                                   {"same_model": {"cosine": 0.997}})
    assert checks["int8_vs_clip_b16_ge_8"] and not checks["int8_vs_fp32_ge_2_5"]
    assert checks["project_int8_vs_fp32_ort_ge_1_5"] and checks["project_int8_throughput_above_fp32_ort"]
    assert checks["project_int8_vs_its_torch_model_cosine_ge_0_98"]
    slower_clip = benchmark.speedups({**lat, "clip_b16_fp32_ort": {"median_ms": 500.0}}, tput)
    assert slower_clip["clip_b16_engine"] == "clip_b16_fp32_torch"


def test_edge_file_is_the_fastest_int8_variant_that_agrees():
    rows = {"fp32": {"median_ms": 50.0, "cosine_vs_fp32": 1.0},
            "int8": {"median_ms": 22.0, "cosine_vs_fp32": 0.999},
            "int8_static_all": {"median_ms": 18.0, "cosine_vs_fp32": 0.94},  # faster, but disagrees
            "int8_dynamic": {"median_ms": 25.0, "cosine_vs_fp32": 0.997}}
    assert benchmark.edge_file(rows) == "int8"
    assert benchmark.edge_file(rows, min_cosine=0.9) == "int8_static_all"
    with pytest.raises(ValueError, match="no int8 variant"):
        benchmark.edge_file(rows, min_cosine=0.9999)


def test_variant_table_times_every_file_and_ranks_against_the_fastest_fp32(tmp_path, one_thread):
    fp32, int8 = benchmark.paper_scale_student("vit_tiny_test", 16, 32, 1, seed=0)
    files = export.export_pair(fp32, int8, tmp_path, "s", tensorrt=False)
    variants = export.int8_variants(fp32, files, [benchmark.random_images(8, 32, 1)], tmp_path, "s")
    assert set(variants) == set(benchmark.PAPER_VARIANTS) - {"fp32", "int8"} and all(p.is_file() for p in variants.values())
    rows = benchmark.variant_table({"fp32": files["fp32"], "int8": files["int8"], **variants}, 32, runs=3, warmup=1)
    fastest_fp32 = min(r["median_ms"] for k, r in rows.items() if k.startswith("fp32"))
    for k, r in rows.items():
        assert r["ratio_vs_fastest_fp32"] == pytest.approx(fastest_fp32 / r["median_ms"])
        assert -1.0 <= r["cosine_vs_fp32"] <= 1.0 + 1e-6 and r["kernels"]
    assert rows["fp32"]["cosine_vs_fp32"] == pytest.approx(1.0, abs=1e-5)
    assert rows["fp32_torchscript"]["cosine_vs_fp32"] == pytest.approx(1.0, abs=1e-4)  # same function, other exporter
    assert "DynamicQuantizeMatMul" in rows["int8_dynamic"]["kernels"] or "MatMulInteger" in rows["int8_dynamic"]["kernels"]
    profile = export.ort_profile(files["int8"], benchmark.random_images(1, 32, 2).numpy(), runs=2)
    assert profile and all(ms >= 0 for ms in profile.values()) and list(profile.values()) == sorted(profile.values(), reverse=True)

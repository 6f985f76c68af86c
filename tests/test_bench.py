"""Tests for edgevl_lib.bench: the standalone edge benchmark CLI (numpy + onnxruntime only).

The CLI is run in a throwaway venv that holds only numpy and onnxruntime (symlinked from this venv), next to a
copy of just edgevl_lib/__init__.py and bench.py (what an edge box gets), and torch must not be importable there.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevl_lib import bench

ROOT = Path(__file__).resolve().parent.parent


def tiny_onnx(path: Path, image_size: int | None = 16, fixed_batch: int | None = None) -> Path:
    """Conv(3->4, 3x3) -> GlobalAveragePool -> Flatten: N x 3 x S x S -> N x 4, symbolic N (and H, W)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["embeddings"])]
    batch = fixed_batch or "batch"
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                            [batch, 3, "height", "width"])],
                              [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [batch, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if image_size:
        model.metadata_props.add(key="image_size", value=str(image_size))
    onnx.save(model, str(path))
    return path


def test_latency_stats_match_a_hand_computation():
    s = bench.latency_stats([0.004, 0.001, 0.003, 0.002])
    assert s["median_ms"] == pytest.approx(2.5) and s["mean_ms"] == pytest.approx(2.5)
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(4.0)
    assert s["p10_ms"] == pytest.approx(1.3)  # linear interpolation: 1 + 0.1 * 3 * (2 - 1)
    assert s["std_ms"] == pytest.approx(np.sqrt(1.25)) and s["runs"] == 4
    with pytest.raises(ValueError):
        bench.latency_stats([])


def test_time_interleaved_runs_blocks_in_turn_and_exact_counts():
    order: list[str] = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    out = bench.time_interleaved(fns, runs={"a": 7, "b": 3}, warmup={"a": 2, "b": 1}, rounds=3)
    assert [len(out["a"]), len(out["b"])] == [7, 3]
    assert order[:3] == ["a", "a", "b"]  # warm-up first
    timed = "".join(order[3:])
    assert timed == "aa" + "b" + "aa" + "b" + "aaa" + "b"  # blocks of 7 // 3 per round, remainder last
    assert all(t >= 0 for t in out["a"] + out["b"])


def test_input_shape_from_metadata_option_and_errors(tmp_path):
    session = bench.open_session(tiny_onnx(tmp_path / "m.onnx"), threads=1)
    assert bench.input_shape(session, 3) == (3, 3, 16, 16)
    assert bench.input_shape(session, 1, image_size=24) == (1, 3, 24, 24)
    bare = bench.open_session(tiny_onnx(tmp_path / "bare.onnx", image_size=None), threads=1)
    with pytest.raises(bench.BenchError, match="--image-size"):
        bench.input_shape(bare, 1)
    fixed = bench.open_session(tiny_onnx(tmp_path / "fixed.onnx", fixed_batch=2), threads=1)
    with pytest.raises(bench.BenchError, match="batch is fixed to 2"):
        bench.input_shape(fixed, 1)


def test_open_session_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(bench.BenchError, match="missing.onnx: ONNX model not found"):
        bench.open_session(tmp_path / "missing.onnx")
    path = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(bench.BenchError, match="unknown ONNX Runtime provider"):
        bench.open_session(path, "npu")
    if "CUDAExecutionProvider" not in bench.ort.get_available_providers():
        with pytest.raises(bench.BenchError, match="onnxruntime-gpu"):
            bench.open_session(path, "cuda")


def test_benchmark_onnx_result_fields(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx")
    r = bench.benchmark_onnx(path, runs=7, warmup=2, threads=1, throughput_batch=4, throughput_runs=3, label="tiny")
    assert r["format"] == bench.RESULT_FORMAT and r["label"] == "tiny" and r["threads"] == 1
    assert r["latency_ms"]["runs"] == 7 and r["latency_ms"]["median_ms"] > 0
    assert r["input_shape"] == [1, 3, 16, 16] and r["output_shape"] == [1, 4]
    assert set(r["throughput_ips"]) == {"1", "4"}
    assert r["throughput_ips"]["1"] == pytest.approx(1e3 / r["latency_ms"]["median_ms"])
    assert r["model"]["bytes"] == path.stat().st_size and r["model"]["metadata"] == {"image_size": "16"}
    assert r["providers"] == ["CPUExecutionProvider"]
    assert {"cpu", "cpu_count", "onnxruntime", "gpu", "threads"} <= set(r["device"])


TRTEXEC_LOG = """\
[11/22/2026-10:00:00] [I] === Performance summary ===
[11/22/2026-10:00:00] [I] Throughput: 812.345 qps
[11/22/2026-10:00:00] [I] Latency: min = 1.1 ms, max = 2.5 ms, mean = 1.25 ms, median = 1.2 ms, percentile(90%) = 1.4 ms, percentile(95%) = 1.5 ms, percentile(99%) = 2 ms
[11/22/2026-10:00:00] [I] Enqueue Time: min = 0.01 ms, max = 0.1 ms, mean = 0.02 ms, median = 0.02 ms
[11/22/2026-10:00:00] [I] GPU Compute Time: min = 1 ms, max = 2.2 ms, mean = 1.15 ms, median = 1.1 ms, percentile(90%) = 1.3 ms, percentile(95%) = 1.35 ms, percentile(99%) = 1.9 ms
"""


def test_parse_trtexec_performance_summary():
    parsed = bench.parse_trtexec(TRTEXEC_LOG)
    assert parsed["throughput_qps"] == pytest.approx(812.345)
    assert parsed["latency_ms"] == {"min_ms": 1.1, "max_ms": 2.5, "mean_ms": 1.25, "median_ms": 1.2, "p90_ms": 1.4,
                                    "p95_ms": 1.5, "p99_ms": 2.0}
    assert parsed["gpu_compute_ms"]["median_ms"] == pytest.approx(1.1)
    with pytest.raises(bench.BenchError, match="Performance summary"):
        bench.parse_trtexec("[E] Error[4]: ... failed to parse onnx file")


def test_trtexec_command_builds_an_int8_engine_from_qdq():
    cmd = bench.trtexec_command("/usr/src/tensorrt/bin/trtexec", "s_trt.onnx", "images", (1, 3, 224, 224), runs=200,
                                engine_path="s.engine")
    assert cmd[:4] == ["/usr/src/tensorrt/bin/trtexec", "--onnx=s_trt.onnx", "--int8", "--fp16"]
    assert "--shapes=images:1x3x224x224" in cmd and "--iterations=200" in cmd and "--saveEngine=s.engine" in cmd


def test_build_engine_without_tensorrt_says_what_to_install(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    model = tiny_onnx(tmp_path / "m.onnx")
    code = bench.main(["--onnx", str(model), "--out", str(tmp_path / "r.json"), "--runs", "2", "--warmup", "0",
                       "--threads", "1", "--throughput-batch", "0", "--build-engine", str(tmp_path / "m.engine")])
    assert code == 2 and "needs the tensorrt Python package" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_read_results_keeps_only_bench_results(tmp_path, caplog):
    bench.write_result({"format": bench.RESULT_FORMAT, "label": "orin"}, tmp_path / "a" / "orin.json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "broken.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        results = bench.read_results(tmp_path)
    assert [r["label"] for r in results] == ["orin"] and results[0]["file"].endswith("orin.json")
    assert "broken.json" in caplog.text and "other.json" in caplog.text
    assert bench.read_results(tmp_path / "nowhere") == []


def _minimal_venv(tmp_path: Path) -> Path:
    """A venv without pip whose site-packages holds only numpy and onnxruntime (symlinks into this venv's)."""
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    import numpy
    import onnxruntime

    for module in (numpy, onnxruntime):
        src = Path(module.__file__).parent
        for name in (src.name, f"{src.name}.libs"):  # numpy.libs: its bundled OpenBLAS
            if (src.parent / name).exists():
                os.symlink(src.parent / name, site / name)
    return py


def test_cli_runs_with_only_numpy_and_onnxruntime(tmp_path):
    py = _minimal_venv(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    box = tmp_path / "edge_box" / "edgevl_lib"  # what an edge box gets: two files of the package
    box.mkdir(parents=True)
    for name in ("__init__.py", "bench.py"):
        (box / name).write_text((ROOT / "edgevl_lib" / name).read_text())
    model = tiny_onnx(tmp_path / "student_int8.onnx")
    out = tmp_path / "results" / "box.json"
    cli = subprocess.run([str(py), "-m", "edgevl_lib.bench", "--onnx", str(model), "--out", str(out), "--runs", "5",
                          "--warmup", "1", "--threads", "1", "--throughput-batch", "2", "--throughput-runs", "2"],
                         capture_output=True, text=True, env=env, cwd=box.parent, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "student_int8: batch 1 median" in cli.stdout
    result = json.loads(out.read_text())
    assert result["format"] == bench.RESULT_FORMAT and result["latency_ms"]["runs"] == 5
    assert result["threads"] == 1 and set(result["throughput_ips"]) == {"1", "2"}
    assert result["device"]["onnxruntime"] == bench.ort.__version__
    missing = subprocess.run([str(py), "-m", "edgevl_lib.bench", "--onnx", str(tmp_path / "nope.onnx"), "--out",
                              str(out)], capture_output=True, text=True, env=env, cwd=box.parent, timeout=60)
    assert missing.returncode == 2 and "nope.onnx: ONNX model not found" in missing.stderr


def test_device_info_fields():
    info = bench.device_info(threads=3)
    assert info["threads"] == 3 and info["cpu"] and info["cpu_count"] >= 1
    assert "CPUExecutionProvider" in info["ort_providers_available"]


def test_tensorrt_version_reads_trtexec_banners_of_8_and_10():
    assert bench.tensorrt_version("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --help") == (8, 6, 1)
    assert bench.tensorrt_version("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec") == (10, 3, 0)
    assert bench.tensorrt_version("&&&& RUNNING TensorRT.trtexec [TensorRT v110000] # trtexec") == (11, 0, 0)
    assert bench.tensorrt_version("no banner") is None


def test_trtexec_command_is_strongly_typed_for_tensorrt_10_and_11():
    cmd = bench.trtexec_command("trtexec", "s_trt.onnx", "images", (1, 3, 224, 224), mode="strongly-typed")
    assert "--stronglyTyped" in cmd and "--int8" not in cmd and "--fp16" not in cmd
    with pytest.raises(bench.BenchError, match="mode"):
        bench.trtexec_command("trtexec", "s_trt.onnx", "images", (1, 3, 224, 224), mode="auto")


@pytest.mark.parametrize("version, flag", [("8601", "--int8"), ("100300", "--stronglyTyped"),
                                           ("110000", "--stronglyTyped")])
def test_the_cli_picks_the_trtexec_flags_from_its_version(tmp_path, monkeypatch, version, flag):
    fake = tmp_path / "trtexec"
    calls = tmp_path / "calls.txt"
    fake.write_text("#!/bin/sh\n"
                    f"echo \"$@\" >> {calls}\n"
                    f"echo '&&&& RUNNING TensorRT.trtexec [TensorRT v{version}] # trtexec'\n"
                    f"cat <<'LOG'\n{TRTEXEC_LOG}LOG\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    out = tmp_path / "r.json"
    model = tiny_onnx(tmp_path / "m.onnx")
    assert bench.main(["--onnx", str(model), "--out", str(out), "--provider", "trtexec", "--runs", "5"]) == 0
    build = calls.read_text().splitlines()[-1]
    assert flag in build.split() and ("--int8" in build.split()) == (flag == "--int8")
    assert json.loads(out.read_text())["latency_ms"]["median_ms"] == pytest.approx(1.2)

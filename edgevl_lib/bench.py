"""Edge benchmark CLI: time an ONNX image encoder and write one result JSON (numpy + onnxruntime only).

Runs on a Jetson or any edge box without torch: copy `edgevl_lib/__init__.py`, `edgevl_lib/bench.py` and the
`.onnx` files (notebook 05 writes them to `reports/05_jetson_benchmark/onnx/`), then

    python -m edgevl_lib.bench --onnx student_int8.onnx --out result.json
        [--batch 1] [--runs 200] [--warmup 20] [--threads N] [--provider cpu|cuda|tensorrt|trtexec]
        [--image-size auto] [--throughput-batch 8] [--throughput-runs 20] [--label NAME]
        [--engine student.engine (trtexec)] [--build-engine student.engine (tensorrt Python API)]

and copy `result.json` back into notebook 05's `results_dir` (default `reports/05_jetson_benchmark/edge_results/`):
the notebook plots every result JSON it finds there beside its local numbers.

Providers: `cpu`, `cuda`, `tensorrt` are ONNX Runtime execution providers (`tensorrt` = ORT's TensorRT EP, needs
an onnxruntime-gpu build with it, e.g. the Jetson Zoo wheel); `trtexec` runs NVIDIA's `trtexec` (shipped with
TensorRT / JetPack at `/usr/src/tensorrt/bin/trtexec`), which builds an int8 engine from the Q/DQ ONNX and times
it. Explicit quantization everywhere: the engine takes its int8 scales from the Q/DQ nodes, no calibration cache.
The flags depend on the TensorRT version, which `trtexec_mode` reads from trtexec's banner (`[TensorRT v100300]`):

    # TensorRT 8.x / 9.x (JetPack 5): weakly typed; --int8 enables the Q/DQ kernels, --fp16 lets layers without
    # Q/DQ run in half precision
    trtexec --onnx=student_int8_trt.onnx --int8 --fp16 --shapes=images:1x3x224x224 --saveEngine=student_int8.engine
    # TensorRT 10.x (JetPack 6) and 11: strongly typed; every tensor keeps the type the ONNX gives it (int8 between
    # Q and DQ, fp32 elsewhere), no precision flags (TensorRT 10.1 deprecates implicit int8, 11 drops --int8)
    trtexec --onnx=student_int8_trt.onnx --stronglyTyped --shapes=images:1x3x224x224 --saveEngine=student_int8.engine

both followed by the timing flags `--warmUp=500 --iterations=200 --avgRuns=200 --useCudaGraph --noDataTransfers`.

TensorRT accepts only symmetric signed int8 Q/DQ (zero point 0). The x86 int8 student uses unsigned asymmetric
activations, so give TensorRT the `*_trt.onnx` file (`export.to_tensorrt_qdq`), not the x86 one.

Timing: `warmup` untimed calls, then `runs` timed calls of `session.run` on one fixed random input (seeded);
latency is reported as median / mean / percentiles in milliseconds, throughput as images per second at
`--throughput-batch` (batch / median latency). The thread count is fixed (`--threads`, default: all logical
CPUs) and recorded with the device (CPU model, GPU or Jetson model when present, onnxruntime version).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

RESULT_FORMAT = "edgevl-bench/1"
"""`format` field of every result JSON this module writes (notebook 05 reads only this format)."""

ORT_PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
PROVIDERS: tuple[str, ...] = (*ORT_PROVIDERS, "trtexec")
TRTEXEC_PATHS: tuple[str, ...] = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")


class BenchError(RuntimeError):
    """A benchmark that cannot run as asked; the message says which file or option and what to do."""


# ----------------------------------------------------------------------------------------------
# Device
# ----------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo` `model name` / `Hardware`, else `platform.processor()`)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match and match.group(1).strip():
            return match.group(1).strip()
    return platform.processor() or platform.machine() or "unknown"


def gpu_name() -> str | None:
    """The GPU's name from `nvidia-smi`, or the Jetson module from the device tree; None when there is none."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            return out.splitlines()[0].strip()
    model = Path("/proc/device-tree/model")
    if model.is_file():
        name = model.read_text(errors="replace").strip("\x00 \n")
        if "jetson" in name.lower() or "nvidia" in name.lower():
            return name
    return None


def device_info(threads: int | None = None) -> dict[str, Any]:
    """Where a benchmark ran: CPU model, logical CPUs, GPU (or Jetson module), OS, Python, onnxruntime.

    Args:
        threads: the intra-op thread count the benchmark used (recorded as given).
    """
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "system": platform.platform(), "python": platform.python_version(), "onnxruntime": ort.__version__,
            "ort_providers_available": list(ort.get_available_providers()), "gpu": gpu_name(), "threads": threads}


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Summary of per-call wall times, in milliseconds: median, mean, std, min, max, p10, p90, p99, runs.

    >>> latency_stats([0.001, 0.002, 0.003])["median_ms"]
    2.0
    """
    if not len(seconds):
        raise ValueError("no timings to summarise")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"median_ms": float(np.median(ms)), "mean_ms": float(ms.mean()), "std_ms": float(ms.std()),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()), "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)), "runs": int(ms.size)}


def time_calls(fn: Callable[[], Any], runs: int, warmup: int = 0) -> list[float]:
    """`warmup` untimed calls of `fn`, then the wall time in seconds (perf_counter) of each of `runs` calls."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def time_interleaved(fns: dict[str, Callable[[], Any]], runs: dict[str, int], warmup: dict[str, int],
                     rounds: int = 10) -> dict[str, list[float]]:
    """Time several callables in round-robin blocks so that a load change on a shared machine hits them alike.

    Each callable first gets its `warmup` calls; then `rounds` rounds each run a block of about
    `runs[name] / rounds` timed calls of every callable in turn (blocks sum exactly to `runs[name]`).

    Returns:
        {name: per-call seconds, `runs[name]` of them}.
    """
    rounds = max(1, min(rounds, min(runs.values())))
    for name, fn in fns.items():
        for _ in range(warmup.get(name, 0)):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            block = runs[name] * (r + 1) // rounds - runs[name] * r // rounds
            out[name].extend(time_calls(fn, block) if block else [])
    return out


# ----------------------------------------------------------------------------------------------
# ONNX Runtime
# ----------------------------------------------------------------------------------------------


def open_session(path: str | os.PathLike, provider: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session on `provider` with a fixed intra-op thread count (inter-op: 1, sequential).

    Args:
        path: the `.onnx` file.
        provider: `cpu`, `cuda` or `tensorrt` (ORT execution providers, falling back in that order).
        threads: intra-op threads; None = all logical CPUs.

    Raises:
        BenchError: the file is missing or the provider is not in this onnxruntime build.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: ONNX model not found; export one with edgevl_lib.export.export_onnx "
                         "(notebook 05 writes them to reports/05_jetson_benchmark/onnx/)")
    if provider not in ORT_PROVIDERS:
        raise BenchError(f"unknown ONNX Runtime provider {provider!r}; use one of {sorted(ORT_PROVIDERS)}")
    wanted = ORT_PROVIDERS[provider][0]
    available = ort.get_available_providers()
    if wanted not in available:
        raise BenchError(f"--provider {provider}: onnxruntime {ort.__version__} here has {available}, not "
                         f"{wanted}; install an onnxruntime-gpu build with it (Jetson: the Jetson Zoo wheel for "
                         "your JetPack), or use --provider trtexec / cpu")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    providers = [p for p in ORT_PROVIDERS[provider] if p in available]
    return ort.InferenceSession(str(path), options, providers=providers)


def model_metadata(session: ort.InferenceSession) -> dict[str, str]:
    """The ONNX model's `metadata_props` (export.export_onnx writes arch, image_size, precision, params, ...)."""
    return dict(session.get_modelmeta().custom_metadata_map)


def input_shape(session: ort.InferenceSession, batch: int, image_size: int | str = "auto") -> tuple[int, ...]:
    """The concrete shape to feed the model's single image input at `batch`.

    Fixed dimensions of the model's input are kept; a symbolic batch becomes `batch`; symbolic height / width
    become `image_size`, or with `auto` the `image_size` entry of the model's metadata.

    Raises:
        BenchError: several inputs, a fixed batch other than `batch`, or an unknown image size.
    """
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise BenchError(f"the model has {len(inputs)} inputs ({[i.name for i in inputs]}); bench times "
                         "single-input image encoders")
    dims = list(inputs[0].shape)
    if len(dims) != 4:
        raise BenchError(f"input {inputs[0].name} has shape {dims}; expected N x 3 x H x W")
    if isinstance(dims[0], int) and dims[0] != batch:
        raise BenchError(f"the model's batch is fixed to {dims[0]}, not {batch}: pass --batch {dims[0]} or "
                         "re-export with a dynamic batch (export.export_onnx(dynamic_batch=True))")
    size: int | None = None
    if str(image_size) != "auto":
        size = int(image_size)
    elif "image_size" in model_metadata(session):
        size = int(model_metadata(session)["image_size"])
    shape = [batch, dims[1]]
    for d in dims[2:]:
        if isinstance(d, int):
            shape.append(d)
        elif size is None:
            raise BenchError(f"input {inputs[0].name} has symbolic spatial size {dims} and no image_size "
                             "metadata; pass --image-size N")
        else:
            shape.append(size)
    if not isinstance(shape[1], int):
        shape[1] = 3
    return tuple(int(d) for d in shape)


def random_images(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """Seeded uniform [0, 1) float32 images of `shape` (the students' input range)."""
    return np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)


def file_info(path: str | os.PathLike) -> dict[str, Any]:
    """Name, size on disk in bytes (the model file plus an external-data file next to it, if any) and sha256."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    extra = path.with_name(path.name + ".data")
    size = path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)
    return {"name": path.name, "bytes": size, "sha256": digest.hexdigest()[:16]}


def benchmark_onnx(path: str | os.PathLike, *, batch: int = 1, runs: int = 200, warmup: int = 20,
                   threads: int | None = None, provider: str = "cpu", image_size: int | str = "auto",
                   throughput_batch: int | None = 8, throughput_runs: int = 20, seed: int = 0,
                   label: str | None = None) -> dict[str, Any]:
    """Latency at `batch` and throughput at `throughput_batch` of an ONNX image encoder with ONNX Runtime.

    Args:
        path: the `.onnx` file (a single N x 3 x H x W float input).
        batch: batch size of the latency measurement (1 = the paper's setting).
        runs, warmup: timed and untimed calls at `batch`.
        threads: intra-op threads (None: all logical CPUs); recorded in the result.
        provider: `cpu`, `cuda` or `tensorrt` (ORT execution providers).
        image_size: input side for models with symbolic H / W; `auto` reads the model's metadata.
        throughput_batch: batch of the throughput measurement; None or <= `batch` skips it.
        throughput_runs: timed calls at `throughput_batch` (after 2 untimed ones).
        seed: seed of the random input images.
        label: a name for this result (default: the file's stem).

    Returns:
        A JSON-ready dict: format, label, engine, provider(s), model (file, bytes, sha256, metadata), batch,
        input_shape, threads, latency_ms (median / mean / std / min / max / p10 / p90 / p99 / runs),
        throughput_ips ({batch: images per second}), device, created.
    """
    threads = int(threads or os.cpu_count() or 1)
    session = open_session(path, provider, threads)
    name = session.get_inputs()[0].name
    shape = input_shape(session, batch, image_size)
    x = random_images(shape, seed)
    output = session.run(None, {name: x})[0]
    if not np.isfinite(output).all():
        raise BenchError(f"{path}: the model returned non-finite values on random [0, 1) images")
    stats = latency_stats(time_calls(lambda: session.run(None, {name: x}), runs, warmup))
    throughput = {str(batch): batch / (stats["median_ms"] / 1e3)}
    if throughput_batch and throughput_batch > batch:
        xb = random_images((throughput_batch, *shape[1:]), seed + 1)
        tb = latency_stats(time_calls(lambda: session.run(None, {name: xb}), throughput_runs, 2))
        throughput[str(throughput_batch)] = throughput_batch / (tb["median_ms"] / 1e3)
    return {"format": RESULT_FORMAT, "label": label or Path(path).stem, "engine": "onnxruntime",
            "provider": provider, "providers": session.get_providers(),
            "model": {**file_info(path), "metadata": model_metadata(session)},
            "batch": batch, "input_shape": list(shape), "output_shape": list(output.shape), "threads": threads,
            "warmup": warmup, "latency_ms": stats, "throughput_ips": throughput,
            "device": device_info(threads), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ----------------------------------------------------------------------------------------------
# TensorRT: NVIDIA's trtexec (builds an int8 engine from the Q/DQ ONNX and times it)
# ----------------------------------------------------------------------------------------------

_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+)%\))\s*=\s*([0-9.eE+-]+)\s*ms")


def parse_trtexec(text: str) -> dict[str, Any]:
    """Read trtexec's `=== Performance summary ===`: throughput (qps) and the Latency / GPU Compute Time lines.

    Returns:
        {"throughput_qps": float | None, "latency_ms": {...}, "gpu_compute_ms": {...}}, each stats dict with
        `min_ms`, `max_ms`, `mean_ms`, `median_ms`, `p90_ms`, ... as trtexec printed them.

    Raises:
        BenchError: the text holds no performance summary (the build or the run failed).
    """
    result: dict[str, Any] = {"throughput_qps": None, "latency_ms": {}, "gpu_compute_ms": {}}
    keys = {"Latency": "latency_ms", "GPU Compute Time": "gpu_compute_ms"}
    for line in text.splitlines():
        match = re.search(r"\]\s*(?:\[I\]\s*)?(Throughput|Latency|GPU Compute Time):\s*(.*)$", line)
        if not match:
            continue
        what, rest = match.groups()
        if what == "Throughput":
            number = re.match(r"([0-9.eE+-]+)\s*qps", rest)
            result["throughput_qps"] = float(number.group(1)) if number else None
            continue
        stats = {}
        for stat, pct, value in _STAT.findall(rest):
            stats[f"p{pct}_ms" if pct else f"{stat}_ms"] = float(value)
        result[keys[what]] = stats
    if not result["latency_ms"] and not result["gpu_compute_ms"]:
        raise BenchError("no '=== Performance summary ===' in trtexec's output (see its log above: the engine "
                         "build or the run failed)")
    return result


def find_trtexec() -> str | None:
    """`trtexec` on PATH or at JetPack's / TensorRT's usual places; None when absent."""
    found = shutil.which("trtexec")
    if found:
        return found
    return next((p for p in TRTEXEC_PATHS if Path(p).is_file()), None)


TRT_MODES: tuple[str, ...] = ("auto", "int8-flag", "strongly-typed")


def tensorrt_version(banner: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) from trtexec's banner `&&&& RUNNING TensorRT.trtexec [TensorRT v100300]` (10.3.0;
    TensorRT 8 writes v8601 = 8.6.1); None when absent.

    >>> tensorrt_version("&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec"), tensorrt_version("[TensorRT v100300]")
    ((8, 5, 2), (10, 3, 0))
    """
    match = re.search(r"TensorRT v(\d+)\]", banner)
    if not match:
        return None
    v = int(match.group(1))
    return (v // 10000, v // 100 % 100, v % 100) if v >= 100000 else (v // 1000, v // 100 % 10, v % 100)


def trtexec_mode(trtexec: str, mode: str = "auto") -> str:
    """`int8-flag` (TensorRT < 10: `--int8 --fp16`) or `strongly-typed` (TensorRT >= 10: `--stronglyTyped`);
    `auto` asks trtexec its version (`trtexec --help` prints the banner) and falls back to `int8-flag`."""
    if mode not in TRT_MODES:
        raise BenchError(f"--trt-mode {mode!r}: choose one of {list(TRT_MODES)}")
    if mode != "auto":
        return mode
    proc = subprocess.run([trtexec, "--help"], capture_output=True, text=True, check=False)
    version = tensorrt_version(proc.stdout + proc.stderr)
    return "strongly-typed" if version is not None and version[0] >= 10 else "int8-flag"


def trtexec_command(trtexec: str, onnx_path: str | os.PathLike, input_name: str, shape: Sequence[int],
                    runs: int = 200, warmup_ms: int = 500, engine_path: str | os.PathLike | None = None,
                    fp16: bool = True, mode: str = "int8-flag") -> list[str]:
    """The trtexec command line that builds an int8 engine from a Q/DQ ONNX at `shape` and times `runs` calls.

    `mode`: `int8-flag` (TensorRT 8 / 9: `--int8 [--fp16]`) or `strongly-typed` (TensorRT 10 / 11:
    `--stronglyTyped`, no precision flags; the Q/DQ nodes fix every int8 tensor, the rest stays fp32).

    >>> trtexec_command("trtexec", "m.onnx", "images", (1, 3, 224, 224))[:4]
    ['trtexec', '--onnx=m.onnx', '--int8', '--fp16']
    >>> trtexec_command("trtexec", "m.onnx", "images", (1, 3, 224, 224), mode="strongly-typed")[:3]
    ['trtexec', '--onnx=m.onnx', '--stronglyTyped']
    """
    if mode not in TRT_MODES[1:]:
        raise BenchError(f"trtexec mode {mode!r}: choose one of {list(TRT_MODES[1:])}")
    precision = ["--stronglyTyped"] if mode == "strongly-typed" else ["--int8", *(["--fp16"] if fp16 else [])]
    cmd = [trtexec, f"--onnx={onnx_path}", *precision,
           f"--shapes={input_name}:{'x'.join(str(int(d)) for d in shape)}", f"--warmUp={warmup_ms}",
           f"--iterations={runs}", f"--avgRuns={runs}", "--useCudaGraph", "--noDataTransfers"]
    if engine_path:
        cmd.append(f"--saveEngine={engine_path}")
    return cmd


def benchmark_trtexec(path: str | os.PathLike, *, batch: int = 1, runs: int = 200, warmup_ms: int = 500,
                      image_size: int | str = "auto", engine_path: str | os.PathLike | None = None,
                      label: str | None = None, mode: str = "auto") -> dict[str, Any]:
    """Build a TensorRT int8 engine from the Q/DQ ONNX with trtexec and time it (Jetson / NVIDIA GPU only).

    Not exercised by the tests (no GPU here) beyond `parse_trtexec` and `trtexec_command`.

    Raises:
        BenchError: trtexec is not installed, or it failed (its output is logged).
    """
    trtexec = find_trtexec()
    if trtexec is None:
        raise BenchError("--provider trtexec: trtexec not found on PATH nor in "
                         f"{list(TRTEXEC_PATHS)}; it ships with TensorRT / JetPack")
    session = open_session(path, "cpu", 1)  # only to read the input name / shape / metadata
    name, shape = session.get_inputs()[0].name, input_shape(session, batch, image_size)
    cmd = trtexec_command(trtexec, path, name, shape, runs, warmup_ms, engine_path, mode=trtexec_mode(trtexec, mode))
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        log.error("%s", proc.stdout[-4000:] + proc.stderr[-4000:])
        raise BenchError(f"trtexec failed on {path} (exit {proc.returncode}); a Q/DQ model for TensorRT needs "
                         "symmetric int8 (zero point 0): use the *_trt.onnx file from export.to_tensorrt_qdq")
    parsed = parse_trtexec(proc.stdout)
    stats = {**parsed["latency_ms"], "runs": runs}
    return {"format": RESULT_FORMAT, "label": label or Path(path).stem, "engine": "tensorrt (trtexec)",
            "provider": "trtexec", "providers": ["trtexec"], "command": " ".join(cmd),
            "model": {**file_info(path), "metadata": model_metadata(session)}, "batch": batch,
            "input_shape": list(shape), "threads": None, "warmup_ms": warmup_ms, "latency_ms": stats,
            "gpu_compute_ms": parsed["gpu_compute_ms"],
            "throughput_ips": {str(batch): (parsed["throughput_qps"] or 0.0) * batch},
            "device": device_info(None), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def build_tensorrt_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, shape: Sequence[int],
                          input_name: str = "images", fp16: bool = True, workspace_gb: float = 1.0) -> dict[str, Any]:
    """Build and save a TensorRT engine from a Q/DQ ONNX with the `tensorrt` Python API (explicit quantization).

    UNTESTED HERE (no TensorRT on the development machine); written for TensorRT 8.5 (JetPack 5) to 11. The int8
    precision comes from the Q/DQ nodes (no calibrator). TensorRT < 10: a weakly typed network with the INT8 flag
    (`fp16` lets layers without Q/DQ run in half precision); TensorRT >= 10: a strongly typed network, no
    precision flags (10.1 deprecates implicit int8, 11 removes the INT8 flag).
    Time the engine with `trtexec --loadEngine=<engine_path>` (or use `--provider trtexec`, which builds and times).

    Returns:
        {"engine": path, "bytes", "build_s", "tensorrt": version}.

    Raises:
        BenchError: tensorrt is not importable, or parsing / building failed (the parser's errors are included).
    """
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BenchError("--build-engine needs the tensorrt Python package (JetPack ships it as python3-libnvinfer); "
                         "or use --provider trtexec") from err
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = int(trt.__version__.split(".")[0]) >= 10
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed
                                     else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BenchError(f"TensorRT cannot parse {onnx_path}: {errors} (a Q/DQ model for TensorRT must be symmetric "
                         "int8: use the *_trt.onnx file)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if int(trt.__version__.split(".")[0]) < 10:  # TensorRT 10 / 11: the Q/DQ nodes alone make int8 layers
        config.set_flag(trt.BuilderFlag.INT8)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, tuple(shape), tuple(shape), tuple(shape))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise BenchError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    Path(engine_path).write_bytes(bytes(engine))
    return {"engine": str(engine_path), "bytes": Path(engine_path).stat().st_size,
            "build_s": time.perf_counter() - start, "tensorrt": trt.__version__}


# ----------------------------------------------------------------------------------------------
# Result files and the command line
# ----------------------------------------------------------------------------------------------


def write_result(result: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write a result as indented JSON atomically (temporary file in the same folder, then rename), with the
    mode a plain `open()` would give it (0644 under umask 022)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    mask = os.umask(0o022)  # mkstemp makes 0600 files; give the mode open() would (0666 minus the umask)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(result, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def read_results(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Every bench result JSON (`format` == RESULT_FORMAT) under `folder`, sorted by file name.

    Files that are not results (other JSON, unreadable) are skipped with a warning naming them.
    """
    folder = Path(folder)
    results = []
    for path in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            log.warning("%s: not readable as JSON (%s); skipped", path, err)
            continue
        if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
            log.warning("%s: not an edgevl bench result (format %r); skipped", path,
                        data.get("format") if isinstance(data, dict) else None)
            continue
        results.append({**data, "file": str(path)})
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgevl_lib.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True, help="the ONNX image encoder (e.g. student_int8.onnx)")
    p.add_argument("--out", required=True, help="result JSON to write (atomically)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the latency measurement (default 1)")
    p.add_argument("--runs", type=int, default=200, help="timed calls (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls first (default 20)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all logical CPUs)")
    p.add_argument("--provider", choices=PROVIDERS, default="cpu", help="cpu | cuda | tensorrt (ONNX Runtime "
                   "execution providers) | trtexec (NVIDIA's TensorRT CLI)")
    p.add_argument("--image-size", default="auto", help="input side for symbolic H/W (default: model metadata)")
    p.add_argument("--throughput-batch", type=int, default=8, help="batch of the throughput run (0 = skip)")
    p.add_argument("--throughput-runs", type=int, default=20, help="timed calls of the throughput run")
    p.add_argument("--engine", default=None, help="trtexec only: also save the built engine here")
    p.add_argument("--trt-mode", choices=TRT_MODES, default="auto", help="trtexec only: int8-flag (TensorRT 8/9: "
                   "--int8 --fp16), strongly-typed (TensorRT 10/11: --stronglyTyped), auto (from trtexec's version)")
    p.add_argument("--build-engine", default=None, help="also build a TensorRT engine here with the tensorrt Python "
                   "API (needs tensorrt; recorded under tensorrt_engine)")
    p.add_argument("--label", default=None, help="name of this result in plots (default: the file's stem)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input images")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 a BenchError)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.provider == "trtexec":
            result = benchmark_trtexec(args.onnx, batch=args.batch, runs=args.runs, image_size=args.image_size,
                                       engine_path=args.engine, label=args.label, mode=args.trt_mode)
        else:
            result = benchmark_onnx(args.onnx, batch=args.batch, runs=args.runs, warmup=args.warmup,
                                    threads=args.threads, provider=args.provider, image_size=args.image_size,
                                    throughput_batch=args.throughput_batch or None,
                                    throughput_runs=args.throughput_runs, seed=args.seed, label=args.label)
        if args.build_engine:
            session = open_session(args.onnx, "cpu", 1)
            result["tensorrt_engine"] = build_tensorrt_engine(
                args.onnx, args.build_engine, input_shape(session, args.batch, args.image_size),
                session.get_inputs()[0].name)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_result(result, args.out)
    lat = result["latency_ms"]
    print(f"{result['label']}: batch {result['batch']} median {lat['median_ms']:.2f} ms "
          f"(p90 {lat.get('p90_ms', 0):.2f}, "
          f"{lat['runs']} runs, {result['threads']} threads, {result['providers'][0]}); "
          f"throughput {', '.join(f'b{b}: {v:.0f} img/s' for b, v in result['throughput_ips'].items())}; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

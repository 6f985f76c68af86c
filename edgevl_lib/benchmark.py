"""Edge benchmark library (notebook 05): latency, throughput and size of the students against CLIP and the teacher.

EdgeVL's efficiency table compares the int8 student with CLIP image encoders on edge hardware. Here, on the
machine at hand and in one process:

* **engines** (`Candidate`): a model on a runtime, e.g. `student_int8_ort` (the int8 Q/DQ ONNX on ONNX
  Runtime), `student_fp32_ort`, `student_fp32_torch` (eager PyTorch), `clip_b16_fp32_torch` (open_clip ViT-B-16
  image tower, random weights: EdgeVL's "CLIP-B"), `teacher_fp32_torch`, optionally `student_int8_compiled`
  (`quantize.compile_int8`: Inductor + oneDNN int8);
* **latency** at batch 1: `warmup` untimed calls, then the median of `runs` timed calls per engine, timed in
  round-robin blocks (`bench.time_interleaved`) so a load change on a shared machine hits every engine alike;
  torch and ONNX Runtime use the same fixed thread count (`threads`, recorded with `device_info`);
* **throughput** at a larger batch: images per second = batch / median latency;
* **size**: true bytes on disk of the files written (fp32 / int8 ONNX), the nominal fp32 size (parameters x 4
  bytes, as the paper's table) of models never written (CLIP-B/16, the paper's ViT-g-14 teacher);
* **CUDA** (only where a GPU is present): torch fp32 / fp16 and ONNX Runtime's CUDA / TensorRT providers.

    speedup(a vs b) = median latency of b / median latency of a

The standalone CLI for edge boxes without torch is `edgevl_lib.bench`; this module builds on it.

>>> cands = [onnx_candidate("student_int8_ort", "student_int8.onnx", 224, threads=2)]      # doctest: +SKIP
>>> latency = measure_latency(cands, batch=1, runs=200, warmup=20, threads=2)              # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from . import bench

log = logging.getLogger(__name__)

Call = Callable[[], Any]


# ----------------------------------------------------------------------------------------------
# Device and threads
# ----------------------------------------------------------------------------------------------


def cpu_flags() -> list[str]:
    """The int8-relevant ISA flags of this CPU (avx2, avx512f, avx512_vnni, avx_vnni, amx_int8, ...), /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return []
    match = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.MULTILINE)
    flags = set(match.group(1).split()) if match else set()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16", "asimddp", "i8mm")
    return [f for f in wanted if f in flags]


def device_info(threads: int | None = None) -> dict[str, Any]:
    """`bench.device_info` plus torch: version, intra-op threads, int8 ISA flags, CUDA GPU name when present."""
    info = bench.device_info(threads)
    info.update({"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_flags": cpu_flags()})
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run torch on `threads` intra-op threads inside the block (None: leave as is); restored afterwards."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------
# Engines
# ----------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """A model on a runtime, timed by `measure_latency` / `measure_throughput`.

    Attributes:
        name: the engine's key in metrics, `<model>_<precision>_<runtime>`, e.g. `student_int8_ort`.
        model: which model (`student`, `clip_b16`, `teacher`, ...).
        precision: `fp32`, `int8`, `fp16`.
        runtime: `torch`, `onnxruntime`, `torch.compile`, ...
        make: batch size -> a zero-argument call that runs one forward pass on a fixed random input.
        image_size: the input side in pixels.
        info: anything worth recording with the result (file, provider, ...).
    """

    name: str
    model: str
    precision: str
    runtime: str
    make: Callable[[int], Call]
    image_size: int
    info: dict[str, Any] = field(default_factory=dict)


def _images(batch: int, image_size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def torch_candidate(name: str, model: torch.nn.Module, image_size: int, precision: str = "fp32",
                    model_name: str | None = None, device: str | torch.device = "cpu") -> Candidate:
    """Eager PyTorch forward passes of `model` (eval mode, `torch.no_grad`) on a fixed random input."""
    model.eval()

    def make(batch: int) -> Call:
        x = _images(batch, image_size).to(device)
        if precision == "fp16":
            x = x.half()

        def call() -> Any:
            with torch.no_grad():
                out = model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            return out
        return call

    return Candidate(name, model_name or name.split("_")[0], precision, "torch", make, image_size,
                     {"device": str(device)})


def onnx_candidate(name: str, path: str | os.PathLike, image_size: int, threads: int | None = None,
                   provider: str = "cpu", precision: str | None = None, model_name: str | None = None) -> Candidate:
    """ONNX Runtime runs of an exported file (`bench.open_session`: fixed intra-op threads, sequential)."""
    session = bench.open_session(path, provider, threads)
    input_name = session.get_inputs()[0].name
    precision = precision or bench.model_metadata(session).get("precision", "fp32").split("-")[0]

    def make(batch: int) -> Call:
        x = _images(batch, image_size).numpy()
        return lambda: session.run(None, {input_name: x})

    return Candidate(name, model_name or name.split("_")[0], precision, "onnxruntime", make, image_size,
                     {"file": str(path), "provider": provider, "providers": session.get_providers()})


def compiled_int8_candidate(name: str, int8: torch.nn.Module, image_size: int,
                            model_name: str | None = None) -> Candidate:
    """The int8 PT2E model through `quantize.compile_int8` (Inductor freezing: oneDNN int8 kernels).

    The first call per batch size compiles (about 25 s for a ViT-S on one CPU thread); `warmup` absorbs it.
    """
    from .quantize import compile_int8

    compiled = compile_int8(int8)

    def make(batch: int) -> Call:
        x = _images(batch, image_size)
        return lambda: compiled(x)

    return Candidate(name, model_name or name.split("_")[0], "int8", "torch.compile", make, image_size)


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------


def _per_engine(value: int | Mapping[str, int], names: Sequence[str]) -> dict[str, int]:
    if isinstance(value, Mapping):
        return {n: int(value.get(n, value.get("default", 0))) for n in names}
    return {n: int(value) for n in names}


def measure_latency(candidates: Sequence[Candidate], batch: int = 1, runs: int | Mapping[str, int] = 200,
                    warmup: int | Mapping[str, int] = 20, threads: int | None = None,
                    rounds: int = 10) -> dict[str, dict[str, Any]]:
    """Latency of every engine at `batch`: warm-up, then `runs` timed calls, interleaved in `rounds` blocks.

    Args:
        candidates: the engines.
        batch: images per call (1 = the paper's latency setting).
        runs: timed calls per engine (an int, or {name: runs} with an optional "default").
        warmup: untimed calls per engine first (int or mapping, as `runs`).
        threads: torch intra-op threads during the measurement (ONNX Runtime sessions fix their own).
        rounds: round-robin blocks (see `bench.time_interleaved`).

    Returns:
        {name: {**bench.latency_stats (ms), "batch", "model", "precision", "runtime", "image_size", **info}}.
    """
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"engine names must be unique: {names}")
    runs_by, warm_by = _per_engine(runs, names), _per_engine(warmup, names)
    with torch_threads(threads):
        calls = {c.name: c.make(batch) for c in candidates}
        seconds = bench.time_interleaved(calls, runs_by, warm_by, rounds)
    out = {}
    for c in candidates:
        stats = bench.latency_stats(seconds[c.name])
        out[c.name] = {**stats, "batch": batch, "model": c.model, "precision": c.precision, "runtime": c.runtime,
                       "image_size": c.image_size, "warmup": warm_by[c.name], **c.info}
        log.info("%s: batch %d median %.2f ms (%d runs)", c.name, batch, stats["median_ms"], stats["runs"])
    return out


def measure_throughput(candidates: Sequence[Candidate], batch: int = 16, runs: int | Mapping[str, int] = 10,
                       warmup: int | Mapping[str, int] = 2, threads: int | None = None) -> dict[str, dict[str, float]]:
    """Images per second at `batch` (= batch / median latency of `runs` calls), interleaved as `measure_latency`.

    Returns:
        {name: {"batch", "images_per_s", "median_ms", "p10_ms", "p90_ms", "runs"}}.
    """
    lat = measure_latency(candidates, batch, runs, warmup, threads, rounds=2)
    return {n: {"batch": batch, "images_per_s": batch / (s["median_ms"] / 1e3), "median_ms": s["median_ms"],
                "p10_ms": s["p10_ms"], "p90_ms": s["p90_ms"], "runs": s["runs"]} for n, s in lat.items()}


def speedup(latency: Mapping[str, Mapping[str, float]], fast: str, slow: str) -> float:
    """speedup = median latency of `slow` / median latency of `fast` (> 1: `fast` is faster)."""
    return float(latency[slow]["median_ms"] / latency[fast]["median_ms"])


def fastest(latency: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> str:
    """The engine among `names` (those measured) with the lowest median latency."""
    present = [n for n in names if n in latency]
    if not present:
        raise KeyError(f"none of {list(names)} was measured")
    return min(present, key=lambda n: latency[n]["median_ms"])


# ----------------------------------------------------------------------------------------------
# Models and sizes
# ----------------------------------------------------------------------------------------------


def clip_image_tower(model_name: str = "ViT-B-16", seed: int = 0) -> tuple[torch.nn.Module, int]:
    """An open_clip image tower with RANDOM weights, for timing only (EdgeVL's "CLIP-B" is ViT-B-16).

    Built through `teachers.RandomOpenClipTeacher` (same architecture and input size as the real model;
    nothing is downloaded). Input: already normalised N x 3 x S x S images.

    Returns:
        (the `visual` module in eval mode on CPU, its input side S).
    """
    from .teachers import RandomOpenClipTeacher

    teacher = RandomOpenClipTeacher(model_name, seed=seed, device="cpu")
    return teacher.model.visual.eval(), int(teacher.image_size)


def nominal_fp32_bytes(model_name: str = "ViT-g-14") -> dict[str, int]:
    """Parameter counts and fp32 sizes (4 bytes per parameter) of an open_clip model, without allocating it.

    The model is built on the `meta` device (shapes only), so ViT-g-14 (1.37 G parameters) costs nothing.

    Returns:
        {"params", "image_params", "bytes", "image_bytes"} (whole model and image tower).
    """
    from .teachers import open_clip_parameter_counts  # open_clip is imported in teachers/openclip.py only

    params, image = open_clip_parameter_counts(model_name)
    return {"params": int(params), "image_params": int(image), "bytes": 4 * int(params), "image_bytes": 4 * int(image)}


def parameter_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of `modules` as stored (numel x element size), shared tensors once."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def teacher_modules(teacher: Any) -> dict[str, list[torch.nn.Module]]:
    """The image and text modules of a teacher (EmbeddedTeacher: backbone + head / MiniLM; open_clip: visual / rest)."""
    if hasattr(teacher, "backbone") and hasattr(teacher, "head"):
        text = getattr(teacher, "text", None)
        return {"image": [teacher.backbone, teacher.head], "text": [text] if isinstance(text, torch.nn.Module) else []}
    model = getattr(teacher, "model", None)
    if isinstance(model, torch.nn.Module) and hasattr(model, "visual"):
        rest = [m for n, m in model.named_children() if n != "visual"]
        return {"image": [model.visual], "text": rest}
    raise TypeError(f"{type(teacher).__name__}: no image modules found (expected backbone/head or model.visual)")


def teacher_image_call(teacher: Any, image_size: int) -> Candidate:
    """The teacher's image encoder as an engine (`encode_image` on [0, 1] images, its own resize included)."""
    def make(batch: int) -> Call:
        x = _images(batch, image_size)
        return lambda: teacher.encode_image(x)

    return Candidate("teacher_fp32_torch", "teacher", "fp32", "torch", make, image_size,
                     {"id": getattr(teacher, "id", type(teacher).__name__)})


# ----------------------------------------------------------------------------------------------
# Paper-scale student
# ----------------------------------------------------------------------------------------------


def paper_scale_student(arch: str = "vit_small_patch16_224", embed_dim: int = 512, image_size: int = 224,
                        calibration_batches: int = 4, batch_size: int = 8, seed: int = 0
                        ) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A paper-scale student (random weights, timm `pretrained=False`) and its PTQ int8 version.

    Same path as the project's student: `quantize.prepare_ptq` -> `quantize.calibrate` on seeded uniform
    [0, 1) images (random weights have no data distribution to match) -> `quantize.convert`.

    Returns:
        (fp32 `students.Student` in eval mode, int8 converted GraphModule).
    """
    from . import quantize
    from .students import create_student

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = create_student(arch, embed_dim, image_size).eval()
    prepared = quantize.prepare_ptq(student, (_images(2, image_size, seed),))
    quantize.calibrate(prepared, [_images(batch_size, image_size, seed + 1 + i) for i in range(calibration_batches)])
    return student, quantize.convert(prepared)


# ----------------------------------------------------------------------------------------------
# CUDA (runs only where a GPU is present; not exercised on the CPU-only test machine)
# ----------------------------------------------------------------------------------------------


def cuda_candidates(models: Mapping[str, tuple[torch.nn.Module, int]], dtypes: Sequence[str] = ("fp32", "fp16"),
                    onnx_files: Mapping[str, str | os.PathLike] | None = None) -> list[Candidate]:
    """GPU engines: each torch model in each dtype on `cuda:0`, plus ONNX files on ORT's CUDA / TensorRT providers.

    Args:
        models: {model name: (module, image side)}; copies are moved to the GPU (`.half()` for fp16).
        dtypes: torch precisions to time.
        onnx_files: {model name: .onnx} timed on `CUDAExecutionProvider` and, when this onnxruntime has it,
            `TensorrtExecutionProvider` (int8 Q/DQ files: give TensorRT the `*_trt.onnx` flavour).

    Returns:
        Candidates named `<model>_<dtype>_cuda`, `<model>_ort_cuda`, `<model>_ort_tensorrt`; [] without CUDA.
    """
    if not torch.cuda.is_available():
        return []
    import copy

    out = []
    for name, (module, size) in models.items():
        for dtype in dtypes:
            gpu = copy.deepcopy(module).to("cuda")
            gpu = gpu.half() if dtype == "fp16" else gpu
            out.append(torch_candidate(f"{name}_{dtype}_cuda", gpu, size, dtype, name, device="cuda"))
    available = bench.ort.get_available_providers()
    for name, path in (onnx_files or {}).items():
        size = int(bench.model_metadata(bench.open_session(path, "cpu", 1)).get("image_size", 224))
        for provider, ep in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
            if ep not in available:
                continue
            try:  # an EP can be listed while its libraries (CUDA / TensorRT) are missing: skip it, say why
                out.append(onnx_candidate(f"{name}_ort_{provider}", path, size, provider=provider, model_name=name))
            except Exception as err:  # noqa: BLE001 (onnxruntime raises its own exception types)
                log.warning("skipping %s on ONNX Runtime %s: %s", name, ep, str(err)[:300])
    return out


# ----------------------------------------------------------------------------------------------
# Edge results (JSON files from `python -m edgevl_lib.bench`)
# ----------------------------------------------------------------------------------------------


def edge_results_table(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Flatten `bench.read_results` output into rows: label, device, provider, batch, median / p90 ms, img/s, MB."""
    rows = []
    for r in results:
        device = r.get("device", {}) or {}
        lat = r.get("latency_ms", {}) or {}
        rows.append({"label": r.get("label"), "device": device.get("gpu") or device.get("cpu"),
                     "provider": r.get("provider"), "threads": r.get("threads"), "batch": r.get("batch"),
                     "median_ms": lat.get("median_ms"), "p90_ms": lat.get("p90_ms"), "runs": lat.get("runs"),
                     "images_per_s": max((r.get("throughput_ips") or {"0": 0.0}).values()),
                     "mb": (r.get("model", {}) or {}).get("bytes", 0) / 1e6, "file": r.get("file")})
    return rows


def summarize_latency(latency: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """{engine: median ms} (the `latency_ms.<engine>` entries of notebook 05's metrics)."""
    return {n: float(s["median_ms"]) for n, s in latency.items()}


def integer_op_share(ops: Mapping[str, int]) -> float:
    """Share of integer kernels among the matmul / conv ops ORT runs (from `export.ort_fused_ops`), in [0, 1]."""
    integer = sum(v for k, v in ops.items() if k.startswith("QLinear") or "Integer" in k or k.startswith("QGemm"))
    float_ops = sum(v for k, v in ops.items() if k in ("MatMul", "FusedMatMul", "Conv", "FusedConv", "Gemm"))
    return integer / max(1, integer + float_ops)


def dataset_batches(dataset: Any, modalities: Sequence[str], batches: int, batch_size: int = 16,
                    image_size: int | None = None, encodings: Mapping[str, Any] | None = None,
                    seed: int = 0) -> list[torch.Tensor]:
    """`batches` seeded random batches of encoder inputs from a paired dataset, every modality concatenated
    ([x; x'] per batch, as `data.encoder_inputs` encodes them), e.g. PTQ calibration data covering RGB and depth."""
    from torch.utils.data import DataLoader, RandomSampler

    from .data import collate_samples, encoder_inputs

    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_samples)
    out: list[torch.Tensor] = []
    for batch in loader:
        if len(out) >= batches:
            break
        inputs = encoder_inputs(batch, list(modalities), dict(encodings or {}), size=image_size)
        out.append(torch.cat([inputs[m] for m in modalities]))
    return out


def random_images(n: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """Seeded uniform [0, 1) images N x 3 x S x S (calibration / agreement inputs for random-weight models)."""
    return _images(n, image_size, seed)



# ----------------------------------------------------------------------------------------------
# Notebook 05's report: speed-ups, sizes and checks from the measurements
# ----------------------------------------------------------------------------------------------

SLOW_ENGINES: tuple[str, ...] = ("student_fp32_torch", "clip_b16_fp32_torch", "clip_b16_fp32_ort")
"""fp32 engines of the 224 px baselines: `baseline_runs` timed calls, at most 5 warm-up calls, no throughput run."""

CLIP_ENGINES: tuple[str, ...] = ("clip_b16_fp32_torch", "clip_b16_fp32_ort")
PROJECT_ENGINES: tuple[str, ...] = ("project_int8_ort", "project_int8_qdq_ort", "project_fp32_ort",
                                    "project_fp32_torch")


def speedups(latency: Mapping[str, Mapping[str, Any]], throughput: Mapping[str, Mapping[str, Any]]
             ) -> dict[str, Any]:
    """The headline ratios (`speedup`: median latency of the slow engine / that of the fast one).

    `int8_vs_fp32` compares the fastest int8 engine of the paper-scale student with its FASTEST fp32 engine;
    the other entries name both sides.
    """
    fp32 = fastest(latency, [n for n in ("student_fp32_ort", "student_fp32_torch") if n in latency])
    int8 = fastest(latency, [n for n in ("student_int8_ort", "student_int8_compiled") if n in latency])
    clip = fastest(latency, CLIP_ENGINES)
    project_fp32 = fastest(latency, ("project_fp32_ort", "project_fp32_torch"))
    out = {
        "int8_vs_clip_b16": speedup(latency, int8, clip),
        "int8_vs_clip_b16_torch": speedup(latency, int8, "clip_b16_fp32_torch"),
        "int8_vs_fp32": speedup(latency, int8, fp32),
        "int8_vs_fp32_ort": speedup(latency, "student_int8_ort", "student_fp32_ort"),
        "int8_vs_fp32_torch": speedup(latency, int8, "student_fp32_torch"),
        "int8_vs_teacher": speedup(latency, int8, "teacher_fp32_torch"),
        "project_int8_vs_fp32_ort": speedup(latency, "project_int8_ort", "project_fp32_ort"),
        "project_int8_vs_fp32": speedup(latency, "project_int8_ort", project_fp32),
        "project_int8_vs_clip_b16": speedup(latency, "project_int8_ort", clip),
        "throughput_int8_vs_fp32_ort": (throughput["student_int8_ort"]["images_per_s"]
                                        / throughput["student_fp32_ort"]["images_per_s"]),
        "int8_engine": int8, "fp32_engine": fp32, "clip_b16_engine": clip, "project_fp32_engine": project_fp32}
    if "project_int8_qdq_ort" in latency:
        out["project_int8_vs_qdq_ort"] = speedup(latency, "project_int8_ort", "project_int8_qdq_ort")
    if "project_int8_ort" in throughput and "project_fp32_ort" in throughput:
        out["throughput_project_int8_vs_fp32_ort"] = (throughput["project_int8_ort"]["images_per_s"]
                                                      / throughput["project_fp32_ort"]["images_per_s"])
    return out


def model_sizes(teacher: Any, clip_tower: torch.nn.Module, paper_export: Mapping[str, Any],
                project_export: Mapping[str, Any], teacher_nominal: str = "ViT-g-14") -> dict[str, Any]:
    """Sizes in MB: true bytes of the ONNX files written; nominal fp32 (parameters x 4) of CLIP-B and the paper's
    teacher, never written; the embedded teacher's image encoder as it runs here (parameters and buffers).

    Returns:
        {"size_mb": {...}, "bytes_per_param": {...}, "nominal": nominal_fp32_bytes(teacher_nominal)}.
    """
    from .students import count_params

    nominal = nominal_fp32_bytes(teacher_nominal)
    deployed = "int8_ort" if "int8_ort" in project_export else "int8"  # the file the README says to deploy
    size_mb = {
        "teacher": parameter_bytes(*teacher_modules(teacher)["image"]) / 1e6,
        "teacher_vit_g14": nominal["image_bytes"] / 1e6,
        "clip_b16": 4 * count_params(clip_tower) / 1e6,
        "student_fp32": paper_export["fp32"]["bytes"] / 1e6,
        "student_int8": paper_export["int8"]["bytes"] / 1e6,
        "student_int8_trt": paper_export["int8_trt"]["bytes"] / 1e6,
        "project_fp32": project_export["fp32"]["bytes"] / 1e6,
        "project_int8": project_export[deployed]["bytes"] / 1e6}
    per_param = {"student_int8": paper_export["int8"]["bytes_per_param"],
                 "student_fp32": paper_export["fp32"]["bytes_per_param"],
                 "project_int8": project_export[deployed]["bytes_per_param"]}
    return {"size_mb": size_mb, "bytes_per_param": per_param, "nominal": nominal}


def edge_checks(speedup: Mapping[str, Any], bytes_per_param: Mapping[str, float],
                paper_agreement: Mapping[str, Mapping[str, float]],
                project_agreement: Mapping[str, Any] | None = None) -> dict[str, bool]:
    """The efficiency targets of the edge benchmark, each True / False as measured (CLIP-B: its fastest engine)."""
    checks = {"int8_vs_clip_b16_ge_8": speedup["int8_vs_clip_b16"] >= 8,
              "int8_vs_fp32_ge_2_5": speedup["int8_vs_fp32"] >= 2.5,
              "int8_vs_fp32_torch_ge_2_5": speedup["int8_vs_fp32_torch"] >= 2.5,
              "int8_bytes_per_param_le_1_1": bytes_per_param["student_int8"] <= 1.1,
              "int8_vs_fp32_cosine_ge_0_98": paper_agreement["int8_vs_fp32"]["cosine_mean"] >= 0.98,
              "project_int8_vs_fp32_ort_ge_1_5": speedup["project_int8_vs_fp32_ort"] >= 1.5}
    if "throughput_project_int8_vs_fp32_ort" in speedup:
        checks["project_int8_throughput_above_fp32_ort"] = speedup["throughput_project_int8_vs_fp32_ort"] > 1
    if project_agreement is not None:
        checks["project_int8_vs_its_torch_model_cosine_ge_0_98"] = project_agreement["same_model"]["cosine"] >= 0.98
    return checks


def latency_table(latency: Mapping[str, Mapping[str, Any]], throughput: Mapping[str, Mapping[str, Any]],
                  batch: int) -> dict[str, dict[str, float]]:
    """{engine: median / p10 / p90 ms, runs, images per second at `batch`} for display."""
    return {n: {"median ms": s["median_ms"], "p10 ms": s["p10_ms"], "p90 ms": s["p90_ms"], "runs": s["runs"],
                f"img/s @ {batch}": throughput.get(n, {}).get("images_per_s")}
            for n, s in latency.items()}


def clip_onnx(clip_tower: torch.nn.Module, clip_size: int, model_name: str, seed: int = 0) -> Path:
    """CLIP's image tower as an fp32 ONNX file (random weights, timing only), exported once into the cache
    (`<cache>/onnx/<model>-seed<seed>-<size>.onnx`; a ViT-B/16 file is ~350 MB, so not under reports/)."""
    from .export import export_onnx
    from .utils import cache_dir

    path = cache_dir() / "onnx" / f"{model_name}-seed{seed}-{clip_size}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(clip_tower, path, clip_size, metadata={"arch": f"open_clip {model_name} image tower (random)"})
    return path


PAPER_VARIANTS: dict[str, str] = {
    "fp32": "fp32, dynamo export (export_onnx)",
    "fp32_torchscript": "fp32, TorchScript export",
    "fp32_fused": "fp32, ORT transformer fusions (optimizer, vit)",
    "int8": "int8 PT2E Q/DQ, linears static (export_onnx)",
    "int8_dynamic": "int8 ORT dynamic (quantize_dynamic), plain graph",
    "int8_dynamic_fused": "int8 ORT dynamic on the fused graph",
    "int8_static_all": "int8 ORT static, every MatMul incl. attention (ort_int8)",
}


def variant_table(files: Mapping[str, Path], image_size: int, threads: int = 1, runs: int = 30, warmup: int = 3,
                  seed: int = 0) -> dict[str, dict[str, Any]]:
    """The table of what was tried for one model: every file in `files` (keys of `PAPER_VARIANTS`, `fp32` needed)
    timed at batch 1 in one interleaved measurement, with its cosine to the fp32 file on 8 seeded random images.

    ratio = median latency of the FASTEST fp32 file / that of the row (> 1: faster than the best fp32).

    Returns:
        {variant: {"what", "file", "median_ms", "p10_ms", "p90_ms", "ratio_vs_fastest_fp32", "cosine_vs_fp32",
        "kernels": the three most frequent op types ORT runs}}.
    """
    from .export import onnx_agreement, ort_fused_ops

    candidates = [onnx_candidate(f"variant_{k}", path, image_size, threads) for k, path in files.items()]
    latency = measure_latency(candidates, batch=1, runs=runs, warmup=warmup, threads=threads)
    fp32_best = min(latency[f"variant_{k}"]["median_ms"] for k in files if k.startswith("fp32"))
    images = random_images(8, image_size, seed)
    rows = {}
    for k, path in files.items():
        stats = latency[f"variant_{k}"]
        ops = ort_fused_ops(path, threads)
        rows[k] = {"what": PAPER_VARIANTS.get(k, k), "file": str(path), "median_ms": stats["median_ms"],
                   "p10_ms": stats["p10_ms"], "p90_ms": stats["p90_ms"],
                   "ratio_vs_fastest_fp32": fp32_best / stats["median_ms"],
                   "cosine_vs_fp32": onnx_agreement(files["fp32"], path, images, threads)["cosine_mean"],
                   "kernels": ", ".join(f"{op} x{n}" for op, n in list(ops.items())[:3])}
    return rows


def edge_file(rows: Mapping[str, Mapping[str, Any]], min_cosine: float = 0.98) -> str:
    """The fastest int8 variant whose cosine to fp32 is at least `min_cosine` (the file to deploy)."""
    ok = [k for k, r in rows.items() if k.startswith("int8") and r["cosine_vs_fp32"] >= min_cosine]
    if not ok:
        raise ValueError(f"no int8 variant reaches cosine {min_cosine}: {sorted(rows)}")
    return min(ok, key=lambda k: rows[k]["median_ms"])


def edge_candidates(paper_files: Mapping[str, Path], paper_fp32: torch.nn.Module, clip_tower: torch.nn.Module,
                    clip_size: int, teacher: Any, teacher_input_size: int, project_files: Mapping[str, Path],
                    project_fp32: torch.nn.Module, cfg: Any, paper_int8: torch.nn.Module | None = None,
                    clip_file: Path | None = None) -> list[Candidate]:
    """Notebook 05's engines: the paper-scale student (int8 / fp32 ONNX Runtime, fp32 eager torch), CLIP-B/16
    (fp32 eager torch, and fp32 ONNX Runtime with `clip_file`), the teacher's image encoder, and the project's
    student: `project_int8_ort` (the deployed `int8_ort` file when exported, else the PT2E Q/DQ file),
    `project_int8_qdq_ort` (the PT2E Q/DQ file, beside it), fp32 ONNX Runtime and fp32 eager torch; with
    `cfg.compile_int8` also the paper-scale student through `quantize.compile_int8`.

    Args:
        cfg: the recipe's `benchmark` section (`config.EdgeBenchmarkConfig`: threads, paper_image_size, ...).
    """
    size, threads, project_size = cfg.paper_image_size, cfg.threads, project_fp32.image_size
    deployed = project_files.get("int8_ort", project_files["int8"])
    candidates = [
        onnx_candidate("student_int8_ort", paper_files["int8"], size, threads),
        onnx_candidate("student_fp32_ort", paper_files["fp32"], size, threads),
        torch_candidate("student_fp32_torch", paper_fp32, size),
        torch_candidate("clip_b16_fp32_torch", clip_tower, clip_size),
        teacher_image_call(teacher, teacher_input_size),
        onnx_candidate("project_int8_ort", deployed, project_size, threads),
        onnx_candidate("project_fp32_ort", project_files["fp32"], project_size, threads),
        torch_candidate("project_fp32_torch", project_fp32, project_size)]
    if "int8_ort" in project_files:
        candidates.append(onnx_candidate("project_int8_qdq_ort", project_files["int8"], project_size, threads))
    if clip_file is not None:
        candidates.append(onnx_candidate("clip_b16_fp32_ort", clip_file, clip_size, threads, model_name="clip"))
    if cfg.compile_int8 and paper_int8 is not None:
        candidates.append(compiled_int8_candidate("student_int8_compiled", paper_int8, size))
    return candidates

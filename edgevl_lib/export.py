"""ONNX export of the students: fp32, int8 with QuantizeLinear / DequantizeLinear (Q/DQ), and TensorRT's flavour.

The int8 student is the torchao PT2E model (`quantize.convert`, or the stage-2 `Int8Student` around it):
per-channel symmetric int8 weights and per-tensor affine uint8 activations, every quantized tensor written
in the graph as `quantize_per_tensor -> dequantize_per_tensor`. `torch.onnx.export(dynamo=True)` translates
those decomposed ops one to one into ONNX `QuantizeLinear` / `DequantizeLinear` (onnxscript's torchlib), so
the file keeps the PTQ / QAT scales and zero points exactly; ONNX Runtime then fuses DQ -> MatMul / Conv
(-> Q) into integer kernels (`MatMulIntegerToFloat`, `QLinearConv`, ...; see `ort_fused_ops`).

    Q(x) = saturate(round(x / s) + z),        DQ(q) = (q - z) * s           (ONNX QuantizeLinear / DequantizeLinear)

Files, conventionally `<name>_fp32.onnx`, `<name>_int8.onnx` and `<name>_int8_trt.onnx`, have one input
`images` (N x 3 x H x W in [0, 1], N symbolic) and one output `embeddings` (N x D, not normalised), and carry
metadata (`arch`, `image_size`, `embed_dim`, `precision`, `params`) that `edgevl_lib.bench` reads.

TensorRT accepts only symmetric signed int8 Q/DQ (zero point 0). `to_tensorrt_qdq` rewrites each uint8
(s, z) activation pair to the narrowest symmetric int8 grid covering the same real range,

    s' = s * max(z, 255 - z) / 127,   z' = 0   (int8),

which is not the trained grid (coarser by up to 2x for one-sided tensors); `onnx_agreement` measures the cost.
Training with symmetric activations from the start would keep the QAT scales exact for TensorRT too.

>>> export_onnx(student, "student_fp32.onnx")                       # doctest: +SKIP
>>> export_onnx(int8, "student_int8.onnx", image_size=64)          # doctest: +SKIP
>>> qdq_summary("student_int8.onnx")["quantize_linear"]            # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from . import bench
from .utils import atomic_path

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class ExportError(RuntimeError):
    """An export that cannot be done as asked; the message names the model or file and the fix."""


def _config_of(model: torch.nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return dict(config) if isinstance(config, Mapping) else {}


@contextlib.contextmanager
def _quiet_exporter_logs() -> Any:
    """The exporter's optimiser logs every pass at INFO; keep notebooks that log at INFO readable."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def model_metadata(model: torch.nn.Module, image_size: int, precision: str, params: int | None = None,
                   extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The metadata an exported file carries: arch, image_size, embed_dim, precision, params (+ `extra`)."""
    config = _config_of(model)
    meta = {"producer": "edgevl_lib.export", "arch": str(config.get("arch", type(model).__name__)),
            "image_size": str(int(image_size)), "precision": precision, "input_range": "[0, 1]",
            "input": INPUT_NAME, "output": OUTPUT_NAME}
    if "embed_dim" in config:
        meta["embed_dim"] = str(config["embed_dim"])
    if params is not None:
        meta["params"] = str(int(params))
    meta.update({str(k): str(v) for k, v in (extra or {}).items()})
    return meta


def is_quantized(model: torch.nn.Module) -> bool:
    """True when the module's graph holds PT2E quantize / dequantize ops (a `quantize.convert` output)."""
    for module in model.modules():
        graph = getattr(module, "graph", None)
        if isinstance(graph, torch.fx.Graph) and any(
                n.op == "call_function" and "quantized_decomposed" in str(n.target) for n in graph.nodes):
            return True
    return False


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, image_size: int | None = None,
                dynamic_batch: bool = True, opset: int | None = None, params: int | None = None,
                metadata: Mapping[str, Any] | None = None) -> Path:
    """Export a float student or a converted int8 (PT2E) student to ONNX with `torch.onnx.export(dynamo=True)`.

    The int8 model's `quantize_per_tensor` / `dequantize_per_tensor` / `dequantize_per_channel` ops become
    `QuantizeLinear` / `DequantizeLinear` with the model's own scales and zero points and int8 weight
    initializers (no re-calibration). The graph is optimised by the exporter (constant folding, dead code).

    Args:
        model: a `students.Student`, a `quantize.convert` GraphModule, or a module wrapping one
            (e.g. `stage2.Int8Student`); maps N x 3 x H x W [0, 1] images to N x D embeddings.
        path: destination `.onnx` file, written atomically (weights inside the file).
        image_size: H = W of the example input; default `model.image_size` / `model.config["image_size"]`.
        dynamic_batch: symbolic batch dimension (one file serves every batch size).
        opset: ONNX opset (default: the exporter's, 18+; Q/DQ per-channel needs >= 13).
        params: the float model's parameter count, recorded in the metadata (bytes per parameter).
        metadata: extra metadata entries.

    Returns:
        `path`.

    Raises:
        ExportError: the image size is unknown, or the exporter failed (message names the model).
    """
    config = _config_of(model)
    size = image_size or getattr(model, "image_size", None) or config.get("image_size")
    if not size:
        raise ExportError(f"{type(model).__name__}: unknown input size; pass image_size=")
    quantized = is_quantized(model)
    if params is None and not quantized:
        params = sum(p.numel() for p in model.parameters())
    # stage2.Int8Student wraps the converted GraphModule as `.graph` and only forwards to it; torch.export cannot
    # re-trace a converted GraphModule nested in another module (its lifted weights lose their owner), so export
    # the GraphModule itself (same function) and keep the wrapper's config for the metadata.
    inner = getattr(model, "graph", None)
    traced = inner if isinstance(inner, torch.fx.GraphModule) else model
    example = (torch.rand(2, 3, int(size), int(size), generator=torch.Generator().manual_seed(0)),)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    precision = "int8-qdq" if quantized else "fp32"
    log.info("exporting %s (%s, %d px) to %s", config.get("arch", type(model).__name__), precision, size, path)
    logs = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(logs), torch.no_grad(), _quiet_exporter_logs():
            # a converted PT2E GraphModule keeps training=True and cannot switch; its graph is fixed anyway
            warnings.filterwarnings("ignore", message=".*training mode.*")
            program = torch.onnx.export(traced, example, dynamo=True, dynamic_shapes=dynamic,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                                        optimize=True, verbose=False)
    except Exception as err:  # the exporter raises many types; one message with the log
        raise ExportError(f"torch.onnx.export failed for {config.get('arch', type(model).__name__)} "
                          f"({precision}): {err}\n{logs.getvalue()[-2000:]}") from err
    for key, value in model_metadata(model, int(size), precision, params, metadata).items():
        program.model.metadata_props[key] = value
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp:
        program.save(str(tmp), external_data=False)
    log.info("wrote %s (%.2f MB)", path, path.stat().st_size / 1e6)
    return path


# ----------------------------------------------------------------------------------------------
# Inspecting the files
# ----------------------------------------------------------------------------------------------


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def qdq_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What an exported file holds: Q/DQ node counts, weight bytes by dtype, activation quantization scheme.

    Returns:
        {"bytes": file size, "nodes": op counts, "quantize_linear", "dequantize_linear", "per_channel_dq"
        (DQ nodes with a vector scale: the weights), "initializer_bytes": {dtype: bytes}, "quantized_weight_bytes"
        (the stored tensors DQ nodes read: int8 weights),
        "activation_zero_point_dtypes": dtypes of Q nodes' zero points, "symmetric_int8": True when every
        Q/DQ is signed int8 with zero point 0 (what TensorRT accepts), "metadata", "opset"}.
    """
    model = onnx.load(str(path))
    inits = _initializers(model)
    nodes = Counter(n.op_type for n in model.graph.node)
    per_channel, zp_types, symmetric, weight_bytes = 0, Counter(), True, 0
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # a stored (weight) tensor
            weight_bytes += int(inits[node.input[0]].nbytes)
        scale = inits.get(node.input[1])
        zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if node.op_type == "DequantizeLinear" and scale is not None and scale.size > 1:
            per_channel += 1
        if node.op_type == "QuantizeLinear":
            zp_types[str(zero.dtype) if zero is not None else "uint8(default)"] += 1
        if zero is None or zero.dtype != np.int8 or np.any(zero != 0):
            symmetric = False
    by_dtype: Counter = Counter()
    for array in inits.values():
        by_dtype[str(array.dtype)] += int(array.nbytes)
    return {"bytes": Path(path).stat().st_size, "nodes": dict(nodes), "quantize_linear": nodes["QuantizeLinear"],
            "dequantize_linear": nodes["DequantizeLinear"], "per_channel_dq": per_channel,
            "initializer_bytes": dict(by_dtype), "quantized_weight_bytes": weight_bytes,
            "activation_zero_point_dtypes": dict(zp_types),
            "symmetric_int8": symmetric and nodes["QuantizeLinear"] > 0,
            "metadata": {p.key: p.value for p in model.metadata_props},
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)}


def ort_fused_ops(path: str | os.PathLike, threads: int = 1) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs on this CPU (after its optimisations and Q/DQ fusions).

    Integer kernels show up as `QLinearConv`, `QLinearMatMul`, `MatMulIntegerToFloat`, `QGemm`, ...; a DQ -> op
    pair ORT could not fuse stays as `DequantizeLinear` + a float op (and runs in float).
    """
    ort = bench.ort  # onnxruntime is imported in one place, edgevl_lib.bench

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return dict(Counter(n.op_type for n in optimized.graph.node).most_common())


def onnx_encoder(path: str | os.PathLike, threads: int = 1, batch_size: int = 64
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """An encode function over an ONNX file (ONNX Runtime, CPU): N x 3 x H x W [0, 1] images -> N x D embeddings.

    The session is opened once; the function fits `evaluate.embed_dataset(encode_fn, ...)`.
    """
    session = bench.open_session(path, "cpu", threads)
    name = session.get_inputs()[0].name

    def encode(images: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = (images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor)
             else np.asarray(images, np.float32))
        out = [session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
        return torch.from_numpy(np.concatenate(out))

    return encode


def run_onnx(path: str | os.PathLike, images: torch.Tensor | np.ndarray, threads: int = 1,
             batch_size: int = 64) -> torch.Tensor:
    """Embeddings of `images` (N x 3 x H x W in [0, 1]) from an ONNX file with ONNX Runtime on CPU (N x D float32)."""
    return onnx_encoder(path, threads, batch_size)(images)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity cos(a_i, b_i) = a_i . b_i / (||a_i|| ||b_i||) of two N x D tensors (N values)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def onnx_agreement(reference: torch.nn.Module | str | os.PathLike, candidate: str | os.PathLike,
                   images: torch.Tensor, threads: int = 1) -> dict[str, float]:
    """How closely an ONNX file reproduces a reference (a torch module or another ONNX file) on `images`.

    Returns:
        {"cosine_mean", "cosine_min": row-wise cosine of the embeddings, "max_abs_diff"}.
    """
    if isinstance(reference, torch.nn.Module):
        with torch.no_grad():
            ref = reference(images).float()
    else:
        ref = run_onnx(reference, images, threads)
    out = run_onnx(candidate, images, threads)
    cos = cosine(ref, out)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "max_abs_diff": float((ref - out).abs().max())}


def pair_agreement(fp32: torch.nn.Module, int8: torch.nn.Module, files: Mapping[str, Path], images: torch.Tensor,
                   threads: int = 1) -> dict[str, dict[str, float]]:
    """`onnx_agreement` of an `export_pair`'s files: the int8 ONNX vs the fp32 model and vs the int8 torch graph,
    and the TensorRT flavour vs the fp32 model."""
    return {"int8_vs_fp32": onnx_agreement(fp32, files["int8"], images, threads),
            "int8_onnx_vs_torch_int8": onnx_agreement(int8, files["int8"], images, threads),
            "int8_trt_vs_fp32": onnx_agreement(fp32, files["int8_trt"], images, threads)}


# ----------------------------------------------------------------------------------------------
# TensorRT flavour: symmetric signed int8 activations
# ----------------------------------------------------------------------------------------------


def to_tensorrt_qdq(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rewrite an x86 Q/DQ file into the symmetric signed int8 Q/DQ TensorRT requires (zero point 0).

    Every Q/DQ node with a uint8 zero point z and scale s gets the int8 grid that covers the same real range
    [(0 - z) s, (255 - z) s] symmetrically:  s' = s * max(z, 255 - z) / 127, z' = 0. Int8 weight initializers
    (already symmetric, z = 0) are clamped to [-127, 127], TensorRT's weight range. Nothing else changes.

    Args:
        src: an int8 file written by `export_onnx` from an x86 PT2E model.
        dst: the TensorRT file (conventionally `*_int8_trt.onnx`), written atomically.

    Returns:
        `dst`.

    Raises:
        ExportError: `src` holds no QuantizeLinear (not an int8 Q/DQ file).
    """
    model = onnx.load(str(src))
    inits = {init.name: init for init in model.graph.initializer}
    if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        raise ExportError(f"{src}: no QuantizeLinear node; export the int8 (quantize.convert) model first")
    new_inits: dict[str, onnx.TensorProto] = {}
    clamped: set[str] = set()
    now_int8: set[str] = set()  # outputs of QuantizeLinear nodes that became int8
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS or len(node.input) < 3 or node.input[2] not in inits:
            continue
        zero = numpy_helper.to_array(inits[node.input[2]])
        scale = numpy_helper.to_array(inits[node.input[1]])
        if zero.dtype == np.uint8:
            z = zero.astype(np.float64)
            new_scale = (scale.astype(np.float64) * np.maximum(z, 255.0 - z) / 127.0).astype(scale.dtype)
            key = f"{node.input[1]}__{node.input[2]}__trt"
            if key + "_scale" not in new_inits:
                new_inits[key + "_scale"] = numpy_helper.from_array(new_scale, key + "_scale")
                new_inits[key + "_zp"] = numpy_helper.from_array(np.zeros_like(zero, dtype=np.int8), key + "_zp")
            node.input[1], node.input[2] = key + "_scale", key + "_zp"
            if node.op_type == "QuantizeLinear":
                now_int8.add(node.output[0])
        elif zero.dtype == np.int8 and node.op_type == "DequantizeLinear" and node.input[0] in inits:
            name = node.input[0]
            if name not in clamped:
                weight = numpy_helper.to_array(inits[name])
                inits[name].CopyFrom(numpy_helper.from_array(np.maximum(weight, -127).astype(np.int8), name))
                clamped.add(name)
    model.graph.initializer.extend(new_inits.values())
    for info in model.graph.value_info:  # the exporter recorded those tensors as uint8
        if info.name in now_int8:
            info.type.tensor_type.elem_type = onnx.TensorProto.INT8
    used = {i for n in model.graph.node for i in n.input}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    meta = {p.key: p for p in model.metadata_props}
    if "precision" in meta:
        meta["precision"].value = "int8-qdq-symmetric"
    else:
        model.metadata_props.add(key="precision", value="int8-qdq-symmetric")
    onnx.checker.check_model(model)
    dst = Path(dst)
    with atomic_path(dst, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
    log.info("wrote TensorRT Q/DQ file %s (%d activation Q/DQ pairs made symmetric)", dst, len(new_inits) // 2)
    return dst


def bytes_per_param(path: str | os.PathLike, params: int) -> float:
    """Size on disk of a model file divided by the float model's parameter count (int8 ideal: ~1, fp32: ~4)."""
    if params <= 0:
        raise ValueError(f"params must be positive, got {params}")
    return bench.file_info(path)["bytes"] / params


def export_pair(fp32: torch.nn.Module, int8: torch.nn.Module, out_dir: str | os.PathLike, name: str,
                image_size: int | None = None, params: int | None = None,
                tensorrt: bool = True) -> dict[str, Path]:
    """Export a student's fp32 and int8 versions (and the TensorRT int8 flavour) as `<out_dir>/<name>_*.onnx`.

    Returns:
        {"fp32": path, "int8": path[, "int8_trt": path]}.
    """
    out_dir = Path(out_dir)
    params = params if params is not None else sum(p.numel() for p in fp32.parameters())
    image_size = image_size or getattr(fp32, "image_size", None) or _config_of(fp32).get("image_size")
    config = _config_of(fp32)  # a converted GraphModule has no config: describe it by its float model
    described = {k: config[k] for k in ("arch", "embed_dim") if k in config}
    paths = {"fp32": export_onnx(fp32, out_dir / f"{name}_fp32.onnx", image_size, params=params),
             "int8": export_onnx(int8, out_dir / f"{name}_int8.onnx", image_size, params=params, metadata=described)}
    if tensorrt:
        paths["int8_trt"] = to_tensorrt_qdq(paths["int8"], out_dir / f"{name}_int8_trt.onnx")
    return paths


def export_summary(paths: Mapping[str, Path], params: int) -> dict[str, Any]:
    """Sizes (bytes, MB, bytes / parameter) and Q/DQ counts of the files `export_pair` wrote."""
    out = {}
    for key, path in paths.items():
        summary = qdq_summary(path)
        out[key] = {"file": str(path), "bytes": summary["bytes"], "mb": summary["bytes"] / 1e6,
                    "bytes_per_param": summary["bytes"] / params, "quantize_linear": summary["quantize_linear"],
                    "dequantize_linear": summary["dequantize_linear"], "per_channel_dq": summary["per_channel_dq"],
                    "symmetric_int8": summary["symmetric_int8"], "initializer_bytes": summary["initializer_bytes"]}
    return out


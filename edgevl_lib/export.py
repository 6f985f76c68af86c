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
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from . import bench
from .utils import atomic_path, drop_log_messages, quiet_logger

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
    with contextlib.ExitStack() as stack:
        for name in ("onnxscript", "onnx_ir", "torch.onnx"):
            stack.enter_context(quiet_logger(name, logging.WARNING))
        yield


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


def _symmetric_int8_scale(scale: np.ndarray | float, zero: np.ndarray | int) -> np.ndarray:
    """The symmetric int8 scale covering a uint8 grid's real range [(0 - z) s, (255 - z) s]:
    s' = s max(z, 255 - z) / 127 (zero point 0), TensorRT's only activation scheme."""
    z = np.asarray(zero).astype(np.float64)
    out = np.asarray(scale).astype(np.float64) * np.maximum(z, 255.0 - z) / 127.0
    return np.asarray(out, dtype=np.asarray(scale).dtype)


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
            new_scale = _symmetric_int8_scale(scale, zero)
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


# ----------------------------------------------------------------------------------------------
# ONNX Runtime's own int8 file: a graph its CPU kernels fuse completely
# ----------------------------------------------------------------------------------------------
# The PT2E export keeps what the x86 Inductor quantizer left float: timm's tf_* "same"-padded stride-2 convs (the
# stem and four depthwise convs) with their QAT batch-norm (conv -> Div -> BatchNormalization), residual Adds fed by
# float conv outputs, and timm's flatten as an as_strided Gather. ORT then runs 24 convs in float, shuttling NHWC
# int8 tensors through Transpose / Reorder nodes: slower than fp32. `ort_int8` rebuilds the float graph the int8
# file encodes (weights de-quantized onto their trained grid), folds those batch norms, and re-quantizes it with
# onnxruntime.quantization, handing it the trained scales / zero points of every tensor PT2E quantized
# (TensorQuantOverrides; exact grid, weights included) and MinMax ranges on calibration images for the rest.


def _array(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Copies of the model's nodes (the rewrites edit them; the input model stays as it was)."""
    copies = []
    for node in model.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copies.append(copy)
    return copies


def _consumers(nodes: list[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _rebuild(model: onnx.ModelProto, nodes: list[onnx.NodeProto], consts: Mapping[str, np.ndarray]
             ) -> onnx.ModelProto:
    """A copy of `model` with `nodes` (dead ones dropped) and the constants they read; metadata kept."""
    needed, live = {o.name for o in model.graph.output}, []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            live.append(node)
            needed |= set(node.input)
    graph = onnx.helper.make_graph(live[::-1], model.graph.name, model.graph.input, model.graph.output,
                                   [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items() if k in needed])
    out = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    out.metadata_props.extend(model.metadata_props)
    return out


def dequantized_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, list[dict[str, Any]]]]:
    """The float graph an int8 Q/DQ file encodes, and the quantization grid of each tensor it quantized.

    Weights: W = (q - z) s per channel (float values that lie exactly on the trained int8 grid); activations:
    each QuantizeLinear -> DequantizeLinear pair is removed and its (s, z) recorded on the tensor it quantized.
    Constant Mul nodes (QAT's weight x scale factor) are folded.

    Returns:
        (float model, {tensor: [{"scale", "zero_point"[, "axis"]}, ...]}) in onnxruntime.quantization's
        `TensorQuantOverrides` form (one dict per channel for per-channel weights).
    """
    consts = _array(model)
    nodes = _nodes(model)
    consumers = _consumers(nodes)
    grid: dict[str, list[dict[str, Any]]] = {}
    rename: dict[str, str] = {}
    removed: set[int] = set()
    for node in nodes:
        if node.op_type == "DequantizeLinear" and node.input[0] in consts:
            q, scale = consts[node.input[0]], consts[node.input[1]]
            zero = consts[node.input[2]] if len(node.input) > 2 else np.zeros(np.shape(scale), q.dtype)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if np.ndim(scale) == 1:
                shape[axis] = -1
            consts[node.output[0]] = ((q.astype(np.float32) - np.reshape(zero, shape).astype(np.float32))
                                      * np.reshape(scale, shape)).astype(np.float32)
            if np.ndim(scale) == 1:
                grid[node.output[0]] = [{"scale": np.asarray(sc, np.float32), "zero_point": np.asarray(zp, q.dtype)}
                                        for sc, zp in zip(scale, np.broadcast_to(zero, scale.shape))]
                grid[node.output[0]][0]["axis"] = axis
            removed.add(id(node))
        elif (node.op_type == "QuantizeLinear" and consumers.get(node.output[0])
              and all(c.op_type == "DequantizeLinear" for c in consumers[node.output[0]])):
            grid[node.input[0]] = [{"scale": np.asarray(consts[node.input[1]], np.float32).reshape(()),
                                    "zero_point": np.asarray(consts[node.input[2]]).reshape(())}]
            removed.add(id(node))
            for dq in consumers[node.output[0]]:
                removed.add(id(dq))
                rename[dq.output[0]] = node.input[0]
    kept = []
    for node in nodes:
        if id(node) in removed:
            continue
        node.input[:] = [rename.get(i, i) for i in node.input]
        if node.op_type == "Mul" and all(i in consts for i in node.input):
            consts[node.output[0]] = (consts[node.input[0]] * consts[node.input[1]]).astype(np.float32)
            continue
        kept.append(node)
    if any(o.name in rename for o in model.graph.output):
        raise ExportError("the graph output is a DequantizeLinear; export the model with a float output")
    return _rebuild(model, kept, consts), grid


def fold_batch_norm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fold every Conv -> [Div by a per-channel constant ->] BatchNormalization into the Conv (weights and bias).

    conv(x, W)/d then BN: y = gamma (conv(x, W)/d + b/d - mu) / sqrt(var + eps) + beta, so
    W' = W gamma / (d sqrt(var + eps)) and b' = (b/d - mu) gamma / sqrt(var + eps) + beta, per output channel.
    The Div is what PT2E's QAT conv-bn fusion leaves when the conv itself was not quantized.

    Returns:
        (model, number of batch norms folded).
    """
    consts, nodes = _array(model), _nodes(model)
    consumers = _consumers(nodes)
    dropped: set[int] = set()
    for conv in nodes:
        if conv.op_type != "Conv" or conv.input[1] not in consts:
            continue
        nxt = consumers.get(conv.output[0], [])
        div = nxt[0] if len(nxt) == 1 and nxt[0].op_type == "Div" and nxt[0].input[1] in consts else None
        after = consumers.get(div.output[0], []) if div is not None else nxt
        bn = after[0] if len(after) == 1 and after[0].op_type == "BatchNormalization" else None
        if bn is None or not all(i in consts for i in bn.input[1:5]):
            continue
        gamma, beta, mean, var = (consts[i].astype(np.float64) for i in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        weight = consts[conv.input[1]].astype(np.float64)
        bias = (consts[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2]
                else np.zeros(weight.shape[0]))
        d = consts[div.input[1]].reshape(-1).astype(np.float64) if div is not None else np.ones(weight.shape[0])
        k = gamma / np.sqrt(var + eps)
        name = bn.output[0]
        consts[f"{name}_folded_w"] = (weight * (k / d).reshape(-1, *[1] * (weight.ndim - 1))).astype(np.float32)
        consts[f"{name}_folded_b"] = ((bias / d - mean) * k + beta).astype(np.float32)
        conv.input[:] = [conv.input[0], f"{name}_folded_w", f"{name}_folded_b"]
        conv.output[0] = name
        dropped |= {id(bn)} | ({id(div)} if div is not None else set())
    folded = sum(1 for n in nodes if id(n) in dropped and n.op_type == "BatchNormalization")
    return _rebuild(model, [n for n in nodes if id(n) not in dropped], consts), folded


def simplify_global_pool(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Replace `ReduceMean(x, axes=[2, 3], keepdims=1) -> ... -> Gemm` (timm's pool, then a flatten that the exporter
    writes as an as_strided Range / Gather chain) by `GlobalAveragePool -> Flatten(axis=1) -> Gemm`.

    Only the one-ReduceMean-one-Gemm pattern is touched; `ort_int8` checks the rewrite against the original
    numerically. Returns (model, whether it was rewritten).
    """
    consts, nodes = _array(model), _nodes(model)
    means = [n for n in nodes if n.op_type == "ReduceMean"]
    gemms = [n for n in nodes if n.op_type == "Gemm"]
    if len(means) != 1 or len(gemms) != 1:
        return model, False
    mean, gemm = means[0], gemms[0]
    axes = consts.get(mean.input[1]) if len(mean.input) > 1 else None
    keepdims = next((a.i for a in mean.attribute if a.name == "keepdims"), 1)
    if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3] or keepdims != 1:
        return model, False
    at = nodes.index(mean)
    nodes[at] = onnx.helper.make_node("GlobalAveragePool", [mean.input[0]], [mean.output[0]], name=f"{mean.name}_gap")
    nodes.insert(at + 1, onnx.helper.make_node("Flatten", [mean.output[0]], [f"{mean.output[0]}_flat"], axis=1,
                                               name=f"{mean.name}_flatten"))
    gemm.input[0] = f"{mean.output[0]}_flat"
    return _rebuild(model, nodes, consts), True


class _ArrayReader:
    """onnxruntime.quantization's CalibrationDataReader over a list of N x 3 x H x W float32 batches."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._batches = iter([{INPUT_NAME: np.asarray(b, np.float32)} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


# onnxruntime.quantization's root-logger advice that says nothing about our files: run its own pre-processing (we fold
# and simplify ourselves), and "Axis 1 is out-of-range" for rank-1 norm weights it never quantizes
ORT_QUANT_NOISE: tuple[str, ...] = ("pre-processing", "is out-of-range for weight")


def ort_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: Sequence[np.ndarray | torch.Tensor],
             trained_grid: bool = True, threads: int = 1, tensorrt: bool = False) -> dict[str, Any]:
    """Re-quantize an int8 Q/DQ export with onnxruntime.quantization into a file ONNX Runtime runs all-integer.

    Steps: `dequantized_graph` (float weights on the trained grid), `fold_batch_norm`, `simplify_global_pool`
    (checked: max |difference| of the float graph before / after on a calibration batch < 1e-4 relative), then
    `quantize_static` in Q/DQ format with per-channel int8 weights and per-tensor uint8 activations (the PT2E
    layout), `TensorQuantOverrides` = the trained grid of every tensor PT2E quantized (`trained_grid=False`:
    MinMax everywhere, i.e. plain ORT PTQ of the trained weights), MinMax calibration on `calibration` for the rest.

    `tensorrt=True` writes the placement TensorRT's fused INT8 attention needs instead: symmetric int8 activations
    (zero point 0, the trained uint8 grid re-expressed as in `to_tensorrt_qdq`), Q/DQ on the inputs of every Conv,
    MatMul and Gemm only, so both attention matmuls get int8 inputs (softmax output included) while the residual
    Adds, softmax, GELU and layer norms stay float; weights re-quantized symmetric per channel ([-127, 127]), biases
    float (TensorRT dequantizes int8 only).
    Untested on TensorRT here (no GPU); ONNX Runtime runs it, and notebook 05 reports its agreement.

    Args:
        src: an int8 file from `export_onnx` (PT2E Q/DQ).
        dst: the file to write (conventionally `<name>_int8_ort.onnx`), atomically.
        calibration: batches of N x 3 x H x W [0, 1] encoder inputs from adapt data (never the eval split).

    Returns:
        {"file", "folded_batch_norms", "pool_rewritten", "trained_grid_tensors", "calibrated_tensors",
         "ort_ops": `ort_fused_ops` of the result, "float_ops_left": Conv / FusedConv / Gemm / MatMul ORT runs in float}.

    Raises:
        ExportError: `src` has no Q/DQ node, or the rewritten float graph disagrees with the original.
    """
    from onnxruntime import quantization as ortq  # ORT's quantization tool: used here only

    source = onnx.load(str(src))
    if not any(n.op_type == "QuantizeLinear" for n in source.graph.node):
        raise ExportError(f"{src}: no QuantizeLinear node; give the int8 file from export_onnx")
    batches = [b.detach().cpu().float().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, np.float32)
               for b in calibration]
    if not batches:
        raise ExportError(f"{src}: ort_int8 needs at least one calibration batch")
    dequantized, grid = dequantized_graph(source)
    folded, n_folded = fold_batch_norm(dequantized)
    simple, pooled = simplify_global_pool(folded)
    ref, new = _run_proto(dequantized, batches[0], threads), _run_proto(simple, batches[0], threads)
    error = float(np.abs(ref - new).max() / max(1e-12, float(np.abs(ref).max())))
    if error > 1e-4:
        raise ExportError(f"{src}: folding batch norm / the pool changed the float graph (relative error {error:.2g}); "
                          "report the model; the PT2E file itself is still usable")
    present = {i for n in simple.graph.node for i in n.input} | {o for n in simple.graph.node for o in n.output}
    overrides = {k: v for k, v in grid.items() if k in present} if trained_grid else {}
    if tensorrt:  # activations only, on the symmetric int8 grid that covers the trained range
        overrides = {k: [{"scale": _symmetric_int8_scale(np.float32(v[0]["scale"]), v[0]["zero_point"]).reshape(()),
                          "zero_point": np.asarray(0, np.int8).reshape(())}]
                     for k, v in overrides.items() if len(v) == 1 and np.asarray(v[0]["zero_point"]).dtype == np.uint8}
    with tempfile.TemporaryDirectory() as tmp:
        float_path, out_path = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(simple, str(float_path))
        with drop_log_messages(None, *ORT_QUANT_NOISE):
            ortq.quantize_static(str(float_path), str(out_path), _ArrayReader(batches),
                                 quant_format=ortq.QuantFormat.QDQ, per_channel=True,
                                 activation_type=ortq.QuantType.QInt8 if tensorrt else ortq.QuantType.QUInt8,
                                 weight_type=ortq.QuantType.QInt8, calibrate_method=ortq.CalibrationMethod.MinMax,
                                 op_types_to_quantize=["Conv", "MatMul", "Gemm"] if tensorrt else None,
                                 extra_options={"TensorQuantOverrides": overrides,
                                                **({"ActivationSymmetric": True, "WeightSymmetric": True,
                                                    "QuantizeBias": False}
                                                   if tensorrt else {})})
        quantized = onnx.load(str(out_path))
    meta = {p.key: p.value for p in quantized.metadata_props}
    meta.update({"precision": "int8-qdq-symmetric" if tensorrt else "int8-qdq-ort",
                 "quantizer": "onnxruntime.quantization (trained PT2E grid)" if trained_grid
                 else "onnxruntime.quantization (MinMax)", "source": Path(src).name,
                 **({"qdq_placement": "tensorrt-mha: Conv / MatMul / Gemm inputs, residual Adds float"}
                    if tensorrt else {})})
    del quantized.metadata_props[:]
    for key, value in meta.items():
        quantized.metadata_props.add(key=key, value=value)
    dst = Path(dst)
    with atomic_path(dst, suffix=".onnx") as tmp_dst:
        onnx.save(quantized, str(tmp_dst))
    ops = ort_fused_ops(dst, threads)
    float_left = {k: v for k, v in ops.items() if k in ("Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul",
                                                           "BatchNormalization")}
    log.info("wrote ONNX Runtime int8 file %s: %s", dst, ", ".join(f"{k} x{v}" for k, v in ops.items()))
    return {"file": str(dst), "folded_batch_norms": n_folded, "pool_rewritten": pooled,
            "trained_grid_tensors": len(overrides), "calibrated_batches": len(batches), "ort_ops": ops,
            "float_ops_left": float_left}


def int8_variants(fp32: torch.nn.Module, files: Mapping[str, Path], calibration: Sequence[np.ndarray | torch.Tensor],
                  out_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    """The other ways to an int8 transformer file on ONNX Runtime, for the table of what was tried (notebook 05).

    Beside `files` (`export_pair`: the dynamo fp32 file and the PT2E Q/DQ file, linears static int8):
    - `fp32_torchscript`: the legacy TorchScript exporter (`dynamo=False`), whose graph ORT's fusions know better;
    - `fp32_fused`: `onnxruntime.transformers.optimizer` (model_type "vit": Attention, SkipLayerNormalization,
      BiasGelu where its patterns match) on that file;
    - `int8_dynamic`, `int8_dynamic_fused`: `quantize_dynamic` (int8 weights, activations quantized per call:
      MatMulInteger / DynamicQuantizeMatMul) of the plain and of the fused fp32 graph;
    - `int8_static_all`: `ort_int8` of the Q/DQ file: every MatMul static int8, the two attention products and
      softmax included.

    Returns:
        {variant: path} of the files written as `<out_dir>/<name>_<variant>.onnx`.
    """
    from onnxruntime import quantization as ortq
    from onnxruntime.transformers import optimizer as ort_optimizer

    attention = next((m for m in fp32.modules() if hasattr(m, "num_heads") and hasattr(m, "qkv")), None)
    if attention is None:
        raise ExportError(f"{type(fp32).__name__}: int8_variants is for ViT students (timm Attention with qkv)")
    num_heads, hidden_size = int(attention.num_heads), int(attention.qkv.in_features)
    out_dir = Path(out_dir)
    size = int(getattr(fp32, "image_size", None) or _config_of(fp32)["image_size"])
    paths = {k: out_dir / f"{name}_{k}.onnx" for k in
             ("fp32_torchscript", "fp32_fused", "int8_dynamic", "int8_dynamic_fused", "int8_static_all")}
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with atomic_path(paths["fp32_torchscript"], suffix=".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(fp32.eval(), (example,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                          opset_version=17)
    with _quiet_exporter_logs(), contextlib.redirect_stdout(io.StringIO()):
        fused = ort_optimizer.optimize_model(str(paths["fp32_torchscript"]), model_type="vit", num_heads=num_heads,
                                             hidden_size=hidden_size)
    with atomic_path(paths["fp32_fused"], suffix=".onnx") as tmp:
        fused.save_model_to_file(str(tmp))
    with drop_log_messages(None, *ORT_QUANT_NOISE):
        for src, dst in ((files["fp32"], "int8_dynamic"), (paths["fp32_fused"], "int8_dynamic_fused")):
            with atomic_path(paths[dst], suffix=".onnx") as tmp:
                ortq.quantize_dynamic(str(src), str(tmp), weight_type=ortq.QuantType.QInt8,
                                      extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    ort_int8(files["int8"], paths["int8_static_all"], calibration)
    return paths


def ort_profile(path: str | os.PathLike, images: np.ndarray, runs: int = 10, threads: int = 1) -> dict[str, float]:
    """Where ONNX Runtime spends a call: mean milliseconds per call by op type (its profiler, `runs` calls after
    one warm-up), largest first. Op types are those ORT runs after fusion (`ort_fused_ops`)."""
    import json as _json

    ort = bench.ort
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.log_severity_level = threads, 3
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        session.run(None, {name: images})
        for _ in range(runs):
            session.run(None, {name: images})
        events = _json.loads(Path(session.end_profiling()).read_text())
    totals: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event.get("args", {}).get("op_name", "?")] += event.get("dur", 0) / 1e3
    return {op: ms / (runs + 1) for op, ms in totals.most_common()}


def _run_proto(model: onnx.ModelProto, x: np.ndarray, threads: int = 1) -> np.ndarray:
    options = bench.ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = threads, 3
    session = bench.ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def bytes_per_param(path: str | os.PathLike, params: int) -> float:
    """Size on disk of a model file divided by the float model's parameter count (int8 ideal: ~1, fp32: ~4)."""
    if params <= 0:
        raise ValueError(f"params must be positive, got {params}")
    return bench.file_info(path)["bytes"] / params


def export_pair(fp32: torch.nn.Module, int8: torch.nn.Module, out_dir: str | os.PathLike, name: str,
                image_size: int | None = None, params: int | None = None, tensorrt: bool = True,
                calibration: Sequence[np.ndarray | torch.Tensor] | None = None) -> dict[str, Path]:
    """Export a student's fp32 and int8 versions (and the TensorRT int8 flavour) as `<out_dir>/<name>_*.onnx`.

    The fp32 file gets `simplify_global_pool` (the same function, checked numerically; ORT runs it as fast or
    faster). With `calibration` (adapt batches) also `<name>_int8_ort.onnx` from `ort_int8`: the file to deploy
    on ONNX Runtime CPUs.

    Returns:
        {"fp32": path, "int8": path[, "int8_ort": path][, "int8_trt": path]}.
    """
    out_dir = Path(out_dir)
    params = params if params is not None else sum(p.numel() for p in fp32.parameters())
    image_size = image_size or getattr(fp32, "image_size", None) or _config_of(fp32).get("image_size")
    config = _config_of(fp32)  # a converted GraphModule has no config: describe it by its float model
    described = {k: config[k] for k in ("arch", "embed_dim") if k in config}
    paths = {"fp32": export_onnx(fp32, out_dir / f"{name}_fp32.onnx", image_size, params=params),
             "int8": export_onnx(int8, out_dir / f"{name}_int8.onnx", image_size, params=params, metadata=described)}
    _simplify_file(paths["fp32"], int(image_size))
    if calibration is not None:
        ort_int8(paths["int8"], out_dir / f"{name}_int8_ort.onnx", calibration)
        paths["int8_ort"] = out_dir / f"{name}_int8_ort.onnx"
    if tensorrt:
        paths["int8_trt"] = to_tensorrt_qdq(paths["int8"], out_dir / f"{name}_int8_trt.onnx")
    return paths


def _simplify_file(path: Path, image_size: int) -> None:
    """`simplify_global_pool` on an fp32 file in place, kept only when its outputs match the original's."""
    model = onnx.load(str(path))
    simple, changed = simplify_global_pool(model)
    if not changed:
        return
    x = np.random.default_rng(0).random((2, 3, image_size, image_size), dtype=np.float32)
    ref, new = _run_proto(model, x), _run_proto(simple, x)
    if np.abs(ref - new).max() <= 1e-4 * max(1e-12, float(np.abs(ref).max())):
        with atomic_path(path, suffix=".onnx") as tmp:
            onnx.save(simple, str(tmp))


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


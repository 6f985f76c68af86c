"""Int8 quantization of the student (EdgeVL stage 2): PTQ, QAT, conversion, fast CPU inference, int8 artifacts.

The only module of the project that imports torchao. It wraps torchao's PT2E flow with the x86 Inductor
quantizer, i.e. per-channel symmetric int8 weights and per-tensor affine uint8 activations:

    prepare_ptq (export_for_quant + observers) -> calibrate -> convert          post-training quantization
    prepare_qat (export_for_quant + fake quant) -> train -> convert              quantization-aware training
    convert -> compile_int8        torch.compile + Inductor freezing: real oneDNN int8 kernels on x86
    convert -> save_int8 (.pt2 via torch.export.save) -> load_int8

Fake quantization of a real value `x` with scale `s` and zero point `z` (what QAT trains through, with a
straight-through gradient, and what `convert` turns into real int8 tensors):

    q(x) = clamp(round(x / s) + z, q_min, q_max),    x_hat = (q(x) - z) * s

weights: int8 in [-128, 127], `z = 0`, one scale per output channel `s_c = max|W_c| / 127.5`;
activations: uint8, one `(s, z)` per tensor from a histogram observer (PTQ) or a moving-average
min/max observer (QAT).

>>> prepared = prepare_ptq(student, (images[:2],))
>>> calibrate(prepared, [images[i:i + 8] for i in range(0, 64, 8)])
>>> int8 = convert(prepared)
>>> fast = compile_int8(int8)      # first call per input shape compiles (seconds to a minute)
>>> save_int8(int8, "student_int8.pt2", (images[:2],))
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.export import Dim
from torch.fx import GraphModule

from .config import QuantConfig
from .utils import PYTREE_LOGGER, atomic_path, quiet_logger

with quiet_logger(PYTREE_LOGGER):  # torchao's enum registrations: one deprecation warning each on torch 2.14
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e import qat_utils as _qat_utils
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

log = logging.getLogger(__name__)

__all__ = ["QuantConfig", "build_quantizer", "export_for_quant", "prepare_ptq", "calibrate", "prepare_qat",
           "set_training", "convert", "compile_int8", "save_int8", "load_int8", "model_size_bytes"]

Inputs = tuple[torch.Tensor, ...]

def build_quantizer(cfg: QuantConfig) -> X86InductorQuantizer:
    """The torchao quantizer for `cfg`: int8 per-channel symmetric weights, uint8 per-tensor activations.

    With `cfg.weight_bits = b < 8` the weight spec keeps its int8 dtype and observer but clamps to
    [-2^(b-1), 2^(b-1) - 1], so `s_c = max|W_c| / ((2^b - 1) / 2)` (torchao's observers take the range from the spec).
    """
    config = get_default_x86_inductor_quantization_config(is_qat=cfg.is_qat, reduce_range=cfg.reduce_range)
    if cfg.weight_bits != 8:
        half = 2 ** (cfg.weight_bits - 1)
        config = dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=-half,
                                                                         quant_max=half - 1))
    return X86InductorQuantizer().set_global(config)


def _batch_dynamic_shapes(example_inputs: Inputs) -> tuple[dict[int, Dim], ...]:
    batch = Dim("batch", min=1, max=4096)
    return tuple({0: batch} for _ in example_inputs)


def export_for_quant(model: torch.nn.Module, example_inputs: Inputs, dynamic_batch: bool = True) -> GraphModule:
    """Capture `model` as an ATen graph for PT2E quantization: `torch.export.export(...).module()`.

    The model is traced in its current train/eval mode (batch norm and dropout are baked into the graph;
    switch them later with `set_training`).

    Args:
        model: the float student.
        example_inputs: a tuple of example tensors; with `dynamic_batch` their batch size must be >= 2
            (torch.export specialises sizes 0 and 1).
        dynamic_batch: mark dim 0 of every input symbolic, so the graph runs at any batch size.

    Returns:
        The exported graph module (not yet quantized).
    """
    dynamic_shapes = _batch_dynamic_shapes(example_inputs) if dynamic_batch else None
    return torch.export.export(model, tuple(example_inputs), dynamic_shapes=dynamic_shapes).module()


def _export_in_mode(model: torch.nn.Module, example_inputs: Inputs, training: bool, dynamic_batch: bool
                    ) -> GraphModule:
    was_training = model.training
    model.train(training)
    try:
        return export_for_quant(model, example_inputs, dynamic_batch)
    finally:
        model.train(was_training)


def prepare_ptq(model: torch.nn.Module, example_inputs: Inputs, cfg: QuantConfig | None = None) -> GraphModule:
    """Export `model` in eval mode and insert observers for post-training quantization.

    Args:
        model: the float student (its own train/eval mode is restored afterwards).
        example_inputs: example tensors, batch size >= 2 when `cfg.dynamic_batch`.
        cfg: quantization settings; `is_qat` is ignored (PTQ).

    Returns:
        The prepared graph; feed it data with `calibrate`, then `convert` it.
    """
    cfg = cfg or QuantConfig()
    exported = _export_in_mode(model, example_inputs, training=False, dynamic_batch=cfg.dynamic_batch)
    return prepare_pt2e(exported, build_quantizer(dataclasses.replace(cfg, is_qat=False)))


@torch.no_grad()
def calibrate(prepared: GraphModule, batches: Iterable[torch.Tensor | Sequence[torch.Tensor]],
              max_batches: int | None = None) -> GraphModule:
    """Run calibration data through a prepared model so its observers record activation ranges.

    Args:
        prepared: output of `prepare_ptq` (or a QAT model whose observers should see more data).
        batches: input tensors, or tuples of inputs, one per forward call.
        max_batches: stop after this many batches (e.g. `QuantConfig.calibration_batches`).

    Returns:
        `prepared`, in eval mode, observers updated in place.
    """
    set_training(prepared, False)
    n = 0
    for batch in batches:
        if max_batches is not None and n >= max_batches:
            break
        if isinstance(batch, torch.Tensor):
            prepared(batch)
        else:
            prepared(*batch)
        n += 1
    log.info("calibrated on %d batches", n)
    return prepared


def prepare_qat(model: torch.nn.Module, example_inputs: Inputs, cfg: QuantConfig | None = None) -> GraphModule:
    """Export `model` in train mode and insert trainable fake quantization (QAT).

    Weights stay float parameters; every forward fake-quantizes them per channel and fake-quantizes
    activations per tensor, gradients pass straight through `round`. Conv + batch norm pairs are fused
    in the QAT way (batch statistics during training, folded into the conv at `convert`).

    Args:
        model: the float student (its own train/eval mode is restored afterwards).
        example_inputs: example tensors, batch size >= 2 when `cfg.dynamic_batch`.
        cfg: quantization settings; `is_qat` is forced True.

    Returns:
        The prepared graph in train mode: optimise `prepared.parameters()`, then `convert`.
    """
    cfg = cfg or QuantConfig(is_qat=True)
    exported = _export_in_mode(model, example_inputs, training=True, dynamic_batch=cfg.dynamic_batch)
    literals = _mode_literals(exported)
    prepared = prepare_qat_pt2e(exported, build_quantizer(dataclasses.replace(cfg, is_qat=True)))
    _restore_mode_literals(prepared, literals)
    return set_training(prepared, True)


# aten op -> positions of the literal arguments that torchao's pattern rewrites replace with its pattern's own
# constants: dropout(input, p, train) keeps p; batch_norm(input, w, b, mean, var, training, momentum, eps, cudnn)
# keeps momentum and eps.
_KEPT_LITERALS = {torch.ops.aten.dropout.default: (1,), torch.ops.aten.batch_norm.default: (6, 7)}


def _mode_literals(graph: GraphModule) -> list[tuple[Any, tuple[Any, ...]]]:
    return [(n.target, tuple(n.args[i] for i in _KEPT_LITERALS[n.target])) for n in graph.graph.nodes
            if n.op == "call_function" and n.target in _KEPT_LITERALS]


def _restore_mode_literals(graph: GraphModule, literals: list[tuple[Any, tuple[Any, ...]]]) -> None:
    """Put back dropout p and batch-norm momentum / eps after a torchao pattern rewrite.

    torchao matches dropout / batch norm with `ignore_literals=True` and writes its pattern's constants in
    their place: `move_exported_model_to_train` turns every dropout (even p = 0, even one already in train
    mode) into p = 0.5, and the QAT conv + batch-norm fusion resets eps to 1e-5 (timm's TF-ported
    EfficientNet uses 1e-3). The rewrites keep the nodes' order, so the literals are restored in order.
    """
    nodes = [n for n in graph.graph.nodes if n.op == "call_function" and n.target in _KEPT_LITERALS]
    if [n.target for n in nodes] != [t for t, _ in literals]:
        log.warning("dropout / batch-norm nodes changed in a torchao rewrite (%d -> %d); their p / eps are "
                    "torchao's defaults now", len(literals), len(nodes))
        return
    for node, (target, values) in zip(nodes, literals):
        args = list(node.args)
        for i, value in zip(_KEPT_LITERALS[target], values):
            args[i] = value
        node.args = tuple(args)
    graph.recompile()


def set_training(prepared: GraphModule, training: bool) -> GraphModule:
    """Train/eval switch for an exported graph (`.train()`/`.eval()` do not rewrite its batch norm/dropout).

    Uses torchao's `move_exported_model_to_train` / `move_exported_model_to_eval` and keeps every dropout's p
    and batch norm's momentum / eps (torchao's rewrite would set them to 0.5 / 0.1 / 1e-5, see
    `_restore_mode_literals`). Fake-quant observers keep updating in both modes (`convert` switches them off).
    """
    literals = _mode_literals(prepared)
    moved = move_exported_model_to_train(prepared) if training else move_exported_model_to_eval(prepared)
    _restore_mode_literals(moved, literals)
    return moved


def convert(prepared: GraphModule) -> GraphModule:
    """Turn a calibrated (PTQ) or trained (QAT) model into the int8 model (`convert_pt2e`).

    Weights become int8 constants with per-channel scales, activations get quantize/dequantize pairs
    with the observed per-tensor `(s, z)`. Eager execution of the result is a float simulation of the
    int8 arithmetic; `compile_int8` lowers the pairs to real oneDNN int8 kernels.
    """
    set_training(prepared, False)
    with _fold_only_present_convs(prepared):
        return convert_pt2e(prepared)


_CONV_OPS = {
    F.conv1d: {torch.ops.aten.conv1d.default, torch.ops.aten.conv1d.padding},
    F.conv2d: {torch.ops.aten.conv2d.default, torch.ops.aten.conv2d.padding},
    F.conv_transpose1d: {torch.ops.aten.conv_transpose1d.default},
    F.conv_transpose2d: {torch.ops.aten.conv_transpose2d.input},
}


@contextlib.contextmanager
def _fold_only_present_convs(prepared: GraphModule) -> Iterator[None]:
    """During `convert_pt2e`, fold QAT conv + batch norm only for the conv kinds the graph has.

    torchao's `_fold_conv_bn_qat` traces its match / replacement patterns (12 variants x 2) for conv1d,
    conv2d, conv_transpose1d and conv_transpose2d, whatever the graph holds: ~20 s per convert on 2 CPU cores.
    Kinds absent from the graph cannot match, so skipping them changes nothing (tested: identical int8
    graphs) and a conv2d-only student converts about 4x faster.
    """
    present = {n.target for n in prepared.graph.nodes if n.op == "call_function"}
    original = _qat_utils._fold_conv_bn_qat_helper

    def helper(m: GraphModule, conv_fn: Callable, *args: Any, **kwargs: Any) -> GraphModule:
        if conv_fn in _CONV_OPS and not (_CONV_OPS[conv_fn] & present):
            return m
        return original(m, conv_fn, *args, **kwargs)

    _qat_utils._fold_conv_bn_qat_helper = helper
    try:
        yield
    finally:
        _qat_utils._fold_conv_bn_qat_helper = original


def compile_int8(model: torch.nn.Module, dynamic: bool | None = False) -> Callable[..., torch.Tensor]:
    """Compile a converted model with Inductor freezing so q/dq patterns become oneDNN int8 conv/linear.

    Freezing constant-folds and prepacks the int8 weights (torchao registers the x86 int8 fusion
    passes when its x86 quantizer is imported) and only applies to inference, so every call runs under
    `torch.no_grad()` and `torch._inductor.config.patch(freezing=True)`. The patch, rather than
    `torch.compile(..., options={"freezing": True})`, is deliberate: with torch 2.14 the per-compile option
    does not freeze the weights and compilation fails on `onednn.qconv_prepack` (no fake kernel); the
    scoped patch keeps the process-wide `torch._inductor.config.freezing` untouched.

    Args:
        model: output of `convert` (or `load_int8`); a float model works too (the fp32 baseline).
        dynamic: passed to `torch.compile`; False specialises (and recompiles) per input shape.

    Returns:
        A function with the model's signature; the first call per input shape compiles.
    """
    compiled = torch.compile(model, dynamic=dynamic)

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch._inductor.config.patch(freezing=True), _quiet_torch_noise():
            return compiled(*inputs)

    return run


def save_int8(model: GraphModule, path: str | os.PathLike, example_inputs: Inputs, dynamic_batch: bool = True
              ) -> Path:
    """Save a converted int8 model as a torch.export program (`.pt2`, int8 weights on disk).

    Args:
        model: output of `convert`.
        path: destination file, conventionally `*.pt2`; written atomically.
        example_inputs: example tensors for re-export (batch >= 2 with `dynamic_batch`).
        dynamic_batch: keep the batch dimension symbolic in the saved program.

    Returns:
        `path`.
    """
    dynamic_shapes = _batch_dynamic_shapes(example_inputs) if dynamic_batch else None
    # A GraphModule built from the graph copies only the attributes the graph reads: convert_pt2e leaves
    # the original float weights on the module next to their folded int8 copies, and export would save both.
    used_only = GraphModule(model, model.graph)
    program = torch.export.export(used_only, tuple(example_inputs), dynamic_shapes=dynamic_shapes)
    program.example_inputs = None  # not needed to run; would add one float input batch to the file
    buffer = io.BytesIO()
    with _quiet_torch_noise(on_cpu=all(t.device.type == "cpu" for t in program.state_dict.values())):
        torch.export.save(program, buffer)
    with atomic_path(path, suffix=".pt2") as tmp:
        tmp.write_bytes(buffer.getvalue())
    log.info("saved int8 program to %s (%d bytes)", path, model_size_bytes(path))
    return Path(path)


def load_int8(path: str | os.PathLike) -> GraphModule:
    """Load a `.pt2` saved by `save_int8` as a runnable module.

    torch.export.load unpickles (weights_only=False) every archive entry flagged `use_pickle` and the state dict
    of legacy archives, so a crafted file could run code. `save_int8` writes none; such archives are refused
    before torch.export.load opens them.

    Raises:
        ValueError: naming the file when it is not a .pt2 archive, uses the legacy layout, or holds pickles.
    """
    _refuse_pickled_pt2(Path(path))
    with _quiet_torch_noise():  # load_int8 maps every weight to the CPU
        return torch.export.load(path).module()


@contextlib.contextmanager
def _quiet_torch_noise(on_cpu: bool = True) -> Iterator[None]:
    """Silence three messages torch 2.14 prints on this flow that say nothing about the user's run:

    - Inductor's int8 lowering copy-constructs a zero-point tensor ("To copy construct from a tensor ...",
      a UserWarning from torch/_inductor/mkldnn_lowerings.py, torch's own code);
    - compiling on a machine without a CUDA runtime logs "No CUDA runtime is found" (kept when CUDA is present,
      where it would mean a broken install);
    - torch.export's weight packer warns "No complete tensor found in the group", which only matters for
      weights off the CPU (`on_cpu=False` keeps it).
    Every other warning passes through.
    """
    no_cuda = quiet_logger("torch.utils.cpp_extension") if not torch.cuda.is_available() else contextlib.nullcontext()
    with warnings.catch_warnings(), no_cuda:
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning,
                                module=r"torch\._inductor\.mkldnn_lowerings")
        if on_cpu:
            warnings.filterwarnings("ignore", message="No complete tensor found in the group", category=UserWarning)
        yield


def _refuse_pickled_pt2(path: Path) -> None:
    fix = "Re-create it with quantize.save_int8 from the student checkpoint; never load .pt2 files from elsewhere."
    try:
        with zipfile.ZipFile(path) as archive:
            configs = {n: json.loads(archive.read(n)) for n in archive.namelist()
                       if n.endswith(("_weights_config.json", "_constants_config.json"))}
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable .pt2 archive ({err}). {fix}") from err
    if not configs:
        raise ValueError(f"{path}: legacy or unknown .pt2 layout (its state dict would be unpickled); refused. {fix}")
    pickled = [f"{name}:{key}" for name, cfg in configs.items() for key, entry in cfg.get("config", {}).items()
               if entry.get("use_pickle")]
    if pickled:
        raise ValueError(f"{path}: refused: entries {pickled[:3]} are pickled Python objects, which could run code "
                         f"when loaded. {fix}")


def model_size_bytes(path: str | os.PathLike) -> int:
    """Size on disk of a model file, or the sum over files of a model folder."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size

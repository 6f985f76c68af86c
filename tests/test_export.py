"""Tests for edgevl_lib.export: fp32 / int8 Q/DQ ONNX export of tiny students, the TensorRT flavour, inspection."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgevl_lib import export, quantize
from edgevl_lib.students import count_params, create_student

SIZE = 32


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _ptq(arch: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    student = create_student(arch, embed_dim=16, image_size=SIZE).eval()
    prepared = quantize.prepare_ptq(student, (_images(2, 0),))
    quantize.calibrate(prepared, [_images(8, 1 + i) for i in range(3)])
    return student, quantize.convert(prepared)


@pytest.fixture(scope="module")
def conv_files(tmp_path_factory, one_thread):
    """(fp32 student, int8 model, {"fp32", "int8", "int8_trt": path}) of the tiny conv student."""
    fp32, int8 = _ptq("conv_tiny_test")
    paths = export.export_pair(fp32, int8, tmp_path_factory.mktemp("onnx"), "tiny")
    return fp32, int8, paths


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory, one_thread):
    fp32, int8 = _ptq("vit_tiny_test")
    out = tmp_path_factory.mktemp("vit")
    return fp32, int8, {"int8": export.export_onnx(int8, out / "vit_int8.onnx", SIZE)}


def test_int8_file_holds_qdq_nodes_and_int8_weights(conv_files):
    fp32, _, paths = conv_files
    s = export.qdq_summary(paths["int8"])
    layers = [m for m in fp32.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert s["quantize_linear"] > 0 and s["dequantize_linear"] >= s["quantize_linear"]
    assert s["per_channel_dq"] == len(layers)  # one per-channel weight DQ per conv / linear
    assert s["quantized_weight_bytes"] == sum(m.weight.numel() for m in layers)  # one byte per weight
    assert s["initializer_bytes"]["int8"] >= s["quantized_weight_bytes"]  # + per-channel int8 zero points
    assert s["activation_zero_point_dtypes"] == {"uint8": s["quantize_linear"]}  # x86 PT2E: uint8 activations
    assert not s["symmetric_int8"]
    assert export.qdq_summary(paths["fp32"])["quantize_linear"] == 0


def test_onnx_keeps_the_pt2e_scales_exactly(conv_files):
    _, int8, paths = conv_files
    torch_scales = {round(float(n.args[1]), 9) for n in int8.graph.nodes
                    if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default}
    model = onnx.load(str(paths["int8"]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    onnx_scales = {round(float(inits[n.input[1]]), 9) for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert onnx_scales == torch_scales and len(onnx_scales) > 3


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_reproduces_torch_at_any_batch(conv_files, batch):
    fp32, int8, paths = conv_files
    x = _images(batch, 10 + batch)
    assert export.onnx_agreement(fp32, paths["fp32"], x)["max_abs_diff"] < 1e-4
    agree = export.onnx_agreement(int8, paths["int8"], x)  # integer kernels vs the float simulation
    assert agree["cosine_min"] > 0.999
    assert export.onnx_agreement(fp32, paths["int8"], x)["cosine_min"] > 0.98


def test_vit_int8_runs_integer_matmuls_and_matches_torch(vit_files):
    fp32, int8, paths = vit_files
    ops = export.ort_fused_ops(paths["int8"])
    assert ops.get("MatMulIntegerToFloat", 0) >= 4  # qkv, proj, fc1, fc2 of the one block
    x = _images(4, 5)
    assert export.onnx_agreement(int8, paths["int8"], x)["cosine_min"] > 0.9999
    assert export.onnx_agreement(fp32, paths["int8"], x)["cosine_min"] > 0.98


def test_ort_fuses_conv_qdq_into_integer_kernels(conv_files):
    ops = export.ort_fused_ops(conv_files[2]["int8"])
    assert ops.get("QLinearConv", 0) >= 5
    assert "QLinearConv" not in export.ort_fused_ops(conv_files[2]["fp32"])


def test_metadata_and_sizes(conv_files):
    fp32, _, paths = conv_files
    params = count_params(fp32)
    meta = export.qdq_summary(paths["int8"])["metadata"]
    assert meta["image_size"] == str(SIZE) and meta["precision"] == "int8-qdq" and meta["arch"] == "conv_tiny_test"
    assert meta["params"] == str(params) and meta["embed_dim"] == "16"
    assert export.qdq_summary(paths["fp32"])["metadata"]["precision"] == "fp32"
    fp32_bpp, int8_bpp = export.bytes_per_param(paths["fp32"], params), export.bytes_per_param(paths["int8"], params)
    assert 4.0 < fp32_bpp < 4.5 and int8_bpp < fp32_bpp / 2.5
    summary = export.export_summary(paths, params)
    assert summary["int8"]["bytes"] == paths["int8"].stat().st_size
    assert summary["int8"]["bytes_per_param"] == pytest.approx(int8_bpp)


def test_tensorrt_flavour_is_symmetric_int8_with_the_same_range(conv_files):
    fp32, _, paths = conv_files
    src, dst = onnx.load(str(paths["int8"])), onnx.load(str(paths["int8_trt"]))
    assert export.qdq_summary(paths["int8_trt"])["symmetric_int8"]
    s_init = {i.name: numpy_helper.to_array(i) for i in src.graph.initializer}
    d_init = {i.name: numpy_helper.to_array(i) for i in dst.graph.initializer}
    checked = 0
    for a, b in zip(src.graph.node, dst.graph.node):
        if a.op_type == "QuantizeLinear":
            s, z = float(s_init[a.input[1]]), int(s_init[a.input[2]])
            assert float(d_init[b.input[1]]) == pytest.approx(s * max(z, 255 - z) / 127, rel=1e-6)
            assert d_init[b.input[2]].dtype == np.int8 and int(d_init[b.input[2]]) == 0
            checked += 1
    assert checked == export.qdq_summary(paths["int8"])["quantize_linear"]
    weights = [v for v in d_init.values() if v.dtype == np.int8 and v.size > 1]
    assert weights and min(int(w.min()) for w in weights) >= -127
    x = _images(6, 7)
    assert export.onnx_agreement(fp32, paths["int8_trt"], x)["cosine_min"] > 0.98  # runs in ORT too
    with pytest.raises(export.ExportError, match="no QuantizeLinear"):
        export.to_tensorrt_qdq(paths["fp32"], paths["fp32"].with_name("bad_trt.onnx"))


def test_export_needs_an_image_size(tmp_path):
    with pytest.raises(export.ExportError, match="image_size"):
        export.export_onnx(torch.nn.Linear(3, 4), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_cosine_matches_a_hand_computation():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    assert export.cosine(a, b).tolist() == pytest.approx([0.0, 1.0])
    with pytest.raises(ValueError):
        export.cosine(a, b[:1])


def test_is_quantized(conv_files):
    fp32, int8, _ = conv_files
    assert export.is_quantized(int8) and not export.is_quantized(fp32)


class Wrapped(torch.nn.Module):
    """Shaped like stage2.Int8Student: the converted GraphModule as `.graph`, the float student's config."""

    def __init__(self, graph: torch.nn.Module, config: dict) -> None:
        super().__init__()
        self.graph, self.config = graph, dict(config)

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


def test_exports_a_wrapped_or_reloaded_int8_model(conv_files, tmp_path):
    fp32, int8, paths = conv_files
    x = _images(3, 21)
    wrapped = export.export_onnx(Wrapped(int8, fp32.config), tmp_path / "wrapped.onnx")
    summary = export.qdq_summary(wrapped)
    assert summary["metadata"]["arch"] == "conv_tiny_test" and summary["metadata"]["image_size"] == str(SIZE)
    assert summary["quantize_linear"] == export.qdq_summary(paths["int8"])["quantize_linear"]
    assert export.onnx_agreement(int8, wrapped, x)["cosine_min"] > 0.999
    loaded = quantize.load_int8(quantize.save_int8(int8, tmp_path / "student.pt2", (_images(2, 0),)))
    reloaded = export.export_onnx(loaded, tmp_path / "reloaded.onnx", image_size=SIZE)
    assert export.onnx_agreement(wrapped, reloaded, x)["max_abs_diff"] < 1e-5


# ---- ONNX Runtime's own int8 file (export.ort_int8) ----

def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = _session(model)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _conv_div_bn_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """images -> Conv(W) -> Div(d per channel) -> BatchNormalization: what PT2E's QAT leaves on an unquantized conv."""
    c_in, c_out = 3, 4
    inits = {"W": rng.normal(size=(c_out, c_in, 3, 3)).astype(np.float32),
             "d": rng.uniform(0.5, 2.0, size=(1, c_out, 1, 1)).astype(np.float32),
             "gamma": rng.uniform(0.5, 1.5, c_out).astype(np.float32), "beta": rng.normal(size=c_out).astype(np.float32),
             "mean": rng.normal(size=c_out).astype(np.float32), "var": rng.uniform(0.2, 2.0, c_out).astype(np.float32)}
    h = onnx.helper
    nodes = [h.make_node("Conv", ["images", "W"], ["c"], pads=[0, 0, 1, 1], strides=[2, 2]),
             h.make_node("Div", ["c", "d"], ["q"]),
             h.make_node("BatchNormalization", ["q", "gamma", "beta", "mean", "var"], ["y"], epsilon=1e-3)]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", c_in, 8, 8])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                         [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_fold_batch_norm_matches_the_hand_formula_and_the_unfolded_graph():
    rng = np.random.default_rng(0)
    model = _conv_div_bn_graph(rng)
    folded, count = export.fold_batch_norm(model)
    assert count == 1 and [n.op_type for n in folded.graph.node] == ["Conv"]
    assert [n.op_type for n in model.graph.node] == ["Conv", "Div", "BatchNormalization"]  # input untouched
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-5, atol=1e-5)
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    k = init["gamma"] / np.sqrt(init["var"] + 1e-3)
    w = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    conv = folded.graph.node[0]
    np.testing.assert_allclose(w[conv.input[1]], init["W"] * (k / init["d"].ravel())[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(w[conv.input[2]], init["beta"] - init["mean"] * k, rtol=1e-6, atol=1e-7)


def test_simplify_global_pool_rewrites_reducemean_flatten_into_gap_and_keeps_the_function():
    rng = np.random.default_rng(1)
    h = onnx.helper
    inits = {"axes": np.array([2, 3], np.int64), "shape": np.array([0, -1], np.int64),
             "W": rng.normal(size=(5, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    nodes = [h.make_node("ReduceMean", ["images", "axes"], ["m"], keepdims=1),
             h.make_node("Reshape", ["m", "shape"], ["flat"]),
             h.make_node("Gemm", ["flat", "W", "b"], ["y"], transB=1)]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", 4, 6, 6])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                         [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    simple, changed = export.simplify_global_pool(model)
    assert changed and [n.op_type for n in simple.graph.node] == ["GlobalAveragePool", "Flatten", "Gemm"]
    x = rng.random((3, 4, 6, 6), dtype=np.float32)
    np.testing.assert_allclose(_run(simple, x), _run(model, x), rtol=1e-5, atol=1e-6)
    no_pool, unchanged = export.simplify_global_pool(_conv_div_bn_graph(rng))
    assert not unchanged and len(no_pool.graph.node) == 3


def test_dequantized_graph_puts_weights_on_their_trained_grid(conv_files):
    _, _, paths = conv_files
    source = onnx.load(str(paths["int8"]))
    float_model, grid = export.dequantized_graph(source)
    assert not [n for n in float_model.graph.node if n.op_type in export.QDQ_OPS]
    weights = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    per_channel = {k: v for k, v in grid.items() if len(v) > 1}
    assert len(per_channel) == export.qdq_summary(paths["int8"])["per_channel_dq"]
    for name, channels in per_channel.items():
        scales = np.array([float(c["scale"]) for c in channels])
        q = weights[name] / scales.reshape(-1, *[1] * (weights[name].ndim - 1))
        np.testing.assert_allclose(q, np.round(q), atol=1e-3)  # integers: the trained int8 values
        assert np.abs(np.round(q)).max() <= 128
    activations = {k: v[0] for k, v in grid.items() if len(v) == 1}
    assert len(activations) == export.qdq_summary(paths["int8"])["quantize_linear"]


def test_ort_int8_runs_every_conv_in_integer_on_the_trained_grid(conv_files, tmp_path):
    fp32, int8, paths = conv_files
    calibration = [_images(8, 20 + i).numpy() for i in range(2)]
    info = export.ort_int8(paths["int8"], tmp_path / "tiny_int8_ort.onnx", calibration)
    assert info["float_ops_left"] == {} and info["ort_ops"].get("QLinearConv", 0) == sum(
        isinstance(m, torch.nn.Conv2d) for m in fp32.modules())
    assert "BatchNormalization" not in info["ort_ops"]
    # every activation PT2E quantized keeps its trained (scale, zero point) in the new file
    source_grid = export.dequantized_graph(onnx.load(str(paths["int8"])))[1]
    out = onnx.load(str(tmp_path / "tiny_int8_ort.onnx"))
    consts = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    kept = 0
    for node in out.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in source_grid:
            want = source_grid[node.input[0]][0]
            assert float(consts[node.input[1]]) == pytest.approx(float(want["scale"]), rel=1e-6)
            assert int(consts[node.input[2]]) == int(want["zero_point"])
            kept += 1
    assert kept == info["trained_grid_tensors"] - len([v for v in source_grid.values() if len(v) > 1]) > 0
    x = _images(16, 99)
    assert export.onnx_agreement(int8, tmp_path / "tiny_int8_ort.onnx", x)["cosine_mean"] > 0.99
    assert {p.key: p.value for p in out.metadata_props}["precision"] == "int8-qdq-ort"


def test_ort_int8_refuses_a_float_file_and_no_calibration(conv_files, tmp_path):
    _, _, paths = conv_files
    with pytest.raises(export.ExportError, match="no QuantizeLinear"):
        export.ort_int8(paths["fp32"], tmp_path / "x.onnx", [_images(2, 0).numpy()])
    with pytest.raises(export.ExportError, match="calibration batch"):
        export.ort_int8(paths["int8"], tmp_path / "x.onnx", [])
    assert not (tmp_path / "x.onnx").exists()


def test_tensorrt_mha_placement_is_symmetric_and_quantizes_both_attention_matmuls(vit_files, tmp_path):
    fp32, int8, paths = vit_files
    calibration = [_images(8, 30).numpy()]
    export.ort_int8(paths["int8"], tmp_path / "vit_int8_trt_mha.onnx", calibration, tensorrt=True)
    model = onnx.load(str(tmp_path / "vit_int8_trt_mha.onnx"))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    zero_points = [consts[n.input[2]] for n in model.graph.node if n.op_type in export.QDQ_OPS and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # TensorRT: symmetric int8
    weights = [consts[n.input[0]] for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in consts and consts[n.input[0]].ndim > 1]
    assert weights and all(w.min() >= -127 for w in weights)
    def constant(name: str) -> bool:  # an initializer, or computed from initializers only (DQ -> Transpose of W)
        return name in consts or (name in producer and all(constant(i) for i in producer[name].input if i))

    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    attention = [n for n in matmuls if not any(constant(i) for i in n.input)]  # both operands are activations
    assert len(attention) == 2 * sum(1 for m in fp32.modules() if hasattr(m, "qkv"))  # q k^T and softmax v per block
    for n in attention:
        assert all(producer[i].op_type == "DequantizeLinear" for i in n.input)  # int8 inputs, softmax output included
    residual = [n for n in model.graph.node if n.op_type == "Add" and not any(constant(i) for i in n.input)]
    assert residual and not [n for n in residual if any(i in producer and producer[i].op_type == "DequantizeLinear"
                                                        for i in n.input)]  # residual Adds stay float
    assert {p.key: p.value for p in model.metadata_props}["precision"] == "int8-qdq-symmetric"
    assert export.onnx_agreement(fp32, tmp_path / "vit_int8_trt_mha.onnx", _images(8, 31))["cosine_mean"] > 0.9

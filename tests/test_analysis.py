"""Feature angles, M_rel / M_neigh, the caches, UMAP, the figures and the explorer, on constructed cases.

Angles and metrics are checked against hand computations, scipy and a brute-force set implementation; the
constructed spaces have known answers (identical -> 1, rotation -> 1, shuffled pairing -> chance). UMAP caching
runs on a fake `umap` module (no numba); one test fits the real umap-learn on 60 points (~15-20 s: numba compiles
umap's uncached kernels in every new process). The headless detection also runs in one real kernel (nbclient,
then the same kernel asked with allow_stdin=True as JupyterLab asks).
"""
from __future__ import annotations

import math
import sys
import types

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgevl_lib import analysis, stats
from edgevl_lib.analysis import (ANGLE_CLAIMS, MARGIN_CLAIMS, FeatureExplorer, RepresentationScores, analysis_metrics,
                                 angle_distribution_figure, angle_summary, cached_embeddings, claim_rows,
                                 feature_angles, feature_explorer, has_widget_frontend, load_embeddings, m_neigh,
                                 m_neigh_chance, m_rel, margin_angles, representation_figure, representation_scores,
                                 save_embeddings, umap_coordinates, umap_figure, umap_sets, variant_angles,
                                 variant_margin_angles)

matplotlib.use("Agg")


def _unit_at(degrees: list[float]) -> torch.Tensor:
    r = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    return torch.stack([r.cos(), r.sin()], dim=1)


def _gauss(seed: int, n: int, d: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rotation(seed: int, d: int) -> torch.Tensor:
    q, r = torch.linalg.qr(_gauss(seed, d, d))
    return q * torch.sign(torch.diagonal(r))  # Haar-random orthogonal matrix


# ----------------------------------------------------------------------------------------------
# Angles
# ----------------------------------------------------------------------------------------------


def test_feature_angles_by_hand() -> None:
    text = torch.tensor([[2.0, 0.0], [0.0, 5.0]])  # deliberately not unit length
    img = 3.0 * _unit_at([0.0, 30.0, 60.0, 90.0, 180.0, 45.0, 120.0])
    labels = torch.tensor([0, 0, 0, 0, 0, -1, 1])
    angles = feature_angles(img, labels, text)
    assert angles.dtype == torch.float32 and angles.shape == (7,)
    expected = [0.0, 30.0, 60.0, 90.0, 180.0, math.nan, 30.0]  # 120 deg vs the y axis: 30 deg
    np.testing.assert_allclose(angles.numpy(), expected, atol=1e-4)
    assert math.isnan(angles[5])
    # None works as unknown in a list; cos just above 1 from rounding is clamped instead of giving NaN
    assert feature_angles(torch.tensor([[1.0, 1e-9]]), [None], text).isnan().all()
    assert feature_angles(torch.tensor([[1.0, 0.0]]) * (1 + 1e-7), [0], text)[0] == 0.0


def test_feature_angles_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="class indices 0..1"):
        feature_angles(torch.eye(2), [0, 2], torch.eye(2))
    with pytest.raises(ValueError, match="3 labels for 2 embeddings"):
        feature_angles(torch.eye(2), [0, 1, 1], torch.eye(2))
    with pytest.raises(ValueError, match="2-d but text embeddings 3-d"):
        feature_angles(torch.eye(2), [0, 1], torch.eye(3))


def test_margin_angles_by_hand() -> None:
    text = _unit_at([0.0, 90.0, 200.0]) * torch.tensor([[2.0], [5.0], [0.5]])  # classes at 0, 90, 200 deg
    img = 3.0 * _unit_at([30.0, 30.0, 100.0, 45.0, 10.0, 300.0])
    labels = [0, 1, 2, None, 2, 0]
    margins = margin_angles(img, labels, text)
    assert margins.dtype == torch.float32 and margins.shape == (6,)
    # angles to (0, 90, 200): 30 -> (30, 60, 170); 100 -> (100, 10, 100); 10 -> (10, 80, 170); 300 -> (60, 150, 100)
    expected = [30 - 60, 60 - 30, 100 - 10, math.nan, 170 - 10, 60 - 100]
    np.testing.assert_allclose(margins.numpy(), expected, atol=1e-4)
    # a tie between the label and another class is 0; two classes: mu = theta_y - theta_other
    assert margin_angles(_unit_at([45.0]), [0], torch.eye(2))[0] == pytest.approx(0.0, abs=1e-5)
    assert margin_angles(_unit_at([80.0]), [0], torch.eye(2))[0] == pytest.approx(80.0 - 10.0, abs=1e-4)


def test_margin_sign_is_the_zero_shot_prediction_and_matches_feature_angles() -> None:
    img, text = _gauss(30, 200, 6), _gauss(31, 5, 6)
    y = torch.arange(200) % 5
    margins = margin_angles(img, y, text)
    predicted = (F.normalize(img, dim=-1) @ F.normalize(text, dim=-1).T).argmax(dim=1)
    assert torch.equal(margins < 0, predicted == y)  # negative margin <=> the label's text is the nearest
    assert 0 < int((margins < 0).sum()) < 200
    # second code path: feature_angles to the label minus the smallest feature_angles to any other class
    to_class = torch.stack([feature_angles(img, torch.full((200,), c), text) for c in range(5)], dim=1)
    others = to_class.masked_fill(F.one_hot(y, 5).bool(), math.inf).min(dim=1).values
    np.testing.assert_allclose(margins.numpy(), (feature_angles(img, y, text) - others).numpy(), atol=1e-4)
    assert bool(((margins >= -180) & (margins <= 180)).all())
    assert torch.equal(variant_margin_angles({"fp32": {"rgb": img}}, y, text)["fp32"]["rgb"], margins)


def test_margin_angles_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        margin_angles(torch.eye(2), [0, 0], torch.ones(1, 2))
    with pytest.raises(ValueError, match="class indices 0..1"):
        margin_angles(torch.eye(2), [0, 2], torch.eye(2))
    with pytest.raises(ValueError, match="2-d but text embeddings 3-d"):
        margin_angles(torch.eye(2), [0, 1], torch.eye(3))


def test_angle_and_margin_claims_are_one_holm_family_with_the_same_directions() -> None:
    assert MARGIN_CLAIMS == {"stage2_angle_below_fp32_margin": ("stage2_margin", "fp32_margin", -1),
                             "ptq_opens_the_angle_margin": ("ptq_margin", "fp32_margin", +1),
                             "stage2_closes_the_ptq_angle_margin": ("stage2_margin", "ptq_margin", -1)}
    rng = np.random.default_rng(0)
    centre = {"fp32": (60.0, -10.0), "ptq": (70.0, -5.0), "stage2": (55.0, -15.0)}
    angles = {v: {m: a + rng.normal(0, 2, 40) for m in ("rgb", "depth")} for v, (a, _) in centre.items()}
    margins = {v: {m: mu + rng.normal(0, 2, 40) for m in ("rgb", "depth")} for v, (_, mu) in centre.items()}
    rows = claim_rows(angles, margins)
    assert set(rows) == {"fp32", "ptq", "stage2", "fp32_margin", "ptq_margin", "stage2_margin"}
    assert rows["stage2_margin"] is margins["stage2"]
    block = stats.claims({**ANGLE_CLAIMS, **MARGIN_CLAIMS}, stats.paper_scores(rows, ["rgb", "depth"]), binary=False)
    assert list(block) == [*ANGLE_CLAIMS, *MARGIN_CLAIMS]
    assert all(c["verdict"] == "holds" for c in block.values())
    assert block["stage2_angle_below_fp32_margin"]["diff"] == pytest.approx(
        float(np.mean([margins["stage2"][m] - margins["fp32"][m] for m in ("rgb", "depth")])))
    assert {k: c["p_holm"] for k, c in block.items()} == stats.holm({k: c["p"] for k, c in block.items()})


def test_angle_summary_by_hand_flat_and_nested() -> None:
    a = torch.tensor([30.0, 60.0, 90.0, float("nan")])
    s = angle_summary({"rgb": a, "depth": torch.full((2,), float("nan"))})
    assert s["rgb"] == {"mean": 60.0, "median": 60.0, "std": pytest.approx(math.sqrt(600.0)), "n": 3}
    assert s["depth"]["n"] == 0 and math.isnan(s["depth"]["mean"])
    nested = angle_summary({"fp32": {"rgb": a}, "ptq": {"rgb": a + 10}}, stat="median")
    assert nested == {"fp32": {"rgb": 60.0}, "ptq": {"rgb": 70.0}}
    with pytest.raises(ValueError, match="stat must be"):
        angle_summary({"rgb": a}, stat="max")


# ----------------------------------------------------------------------------------------------
# M_rel / M_neigh
# ----------------------------------------------------------------------------------------------


def test_identical_spaces_score_one() -> None:
    x = _gauss(0, 80, 16)
    assert m_rel(x, x) == pytest.approx(1.0, abs=1e-12)
    assert m_rel(x, x, method="spearman") == pytest.approx(1.0, abs=1e-12)
    assert m_neigh(x, x, k=10) == 1.0
    assert m_neigh(x * 3.0, x, k=10) == 1.0  # scale does not matter (cosine)


def test_rotations_and_isometric_embeddings_score_one() -> None:
    t = _gauss(1, 120, 16)
    s = t @ _rotation(2, 16)
    assert m_rel(s, t) == pytest.approx(1.0, abs=1e-5)
    assert m_neigh(s, t, k=10) == pytest.approx(1.0, abs=1e-5)
    # a student of another dimension whose space is the teacher's, rotated into 24-d (orthonormal columns)
    lift = _rotation(3, 24)[:16]
    assert m_rel(t @ lift, t) == pytest.approx(1.0, abs=1e-5)
    assert m_neigh(t @ lift, t, k=5) == pytest.approx(1.0, abs=1e-5)
    # float32 inputs, as the notebook has them, still give 1 to 1e-5
    s32, t32 = (t @ _rotation(4, 16)).float(), t.float()
    assert m_rel(s32, t32) == pytest.approx(1.0, abs=1e-5)


def test_shuffled_pairing_is_at_chance() -> None:
    n, k = 400, 10
    t = _gauss(5, n, 32)
    s = t[torch.randperm(n, generator=torch.Generator().manual_seed(6))]  # same space, pairing broken
    chance = m_neigh_chance(n, k)
    assert chance == pytest.approx(10 / 399)
    assert abs(m_rel(s, t)) < 0.03
    assert abs(m_neigh(s, t, k) - chance) < 0.012  # ~4 standard errors of the mean overlap
    # an unrelated random space is at chance too; a noisy copy is in between
    assert abs(m_rel(_gauss(7, n, 32), t)) < 0.03
    noisy = t + 0.7 * _gauss(8, n, 32)
    assert 0.3 < m_rel(noisy, t) < 0.95 and chance + 0.1 < m_neigh(noisy, t, k) < 0.9


def test_m_rel_by_hand_and_against_scipy() -> None:
    from scipy.stats import pearsonr, spearmanr

    # student at 0, 90, 45 deg: pair cosines (0,1)=0, (0,2)=(1,2)=1/sqrt(2) -> centred proportional to [-2, 1, 1]
    # teacher at 0, 60, 120 deg: pair cosines 0.5, -0.5, 0.5                 -> centred proportional to [1, -2, 1]
    # corr = (-2 - 2 + 1) / (sqrt(6) sqrt(6)) = -1/2
    s, t = _unit_at([0.0, 90.0, 45.0]), _unit_at([0.0, 60.0, 120.0])
    assert m_rel(s, t) == pytest.approx(-0.5, abs=1e-12)
    # student at 0, 45, 90 deg (cosines c, 0, c) vs teacher at 0, 30, 60 deg (cos30, cos60, cos30): both centre
    # to multiples of [1, -2, 1], corr = 1 although no single cosine agrees
    assert m_rel(_unit_at([0.0, 45.0, 90.0]), _unit_at([0.0, 30.0, 60.0])) == pytest.approx(1.0, abs=1e-12)
    a, b = _gauss(9, 30, 8), _gauss(10, 30, 5) + _gauss(9, 30, 8)[:, :5]
    iu = np.triu_indices(30, 1)
    sim = lambda x: (F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T).numpy()[iu]  # noqa: E731
    assert m_rel(a, b) == pytest.approx(pearsonr(sim(a), sim(b))[0], abs=1e-12)
    assert m_rel(a, b, "spearman") == pytest.approx(spearmanr(sim(a), sim(b))[0], abs=1e-12)


def test_m_neigh_by_hand_and_against_brute_force_sets() -> None:
    # student at 0, 10, 90, 100 deg: kNN_S (k=1) = [1, 0, 3, 2]
    # teacher at 0, 10, 90, 45 deg:  kNN_T (k=1) = [1, 0, 3, 1]  -> overlaps 1, 1, 1, 0 -> 0.75
    s, t = _unit_at([0.0, 10.0, 90.0, 100.0]), _unit_at([0.0, 10.0, 90.0, 45.0])
    assert m_neigh(s, t, k=1) == 0.75
    assert m_neigh(s, s[[0, 2, 1, 3]], k=1) == 0.0
    # k = N - 1: every other sample is a neighbour in both spaces
    assert m_neigh(s, t, k=3) == 1.0
    a, b = _gauss(11, 50, 6), _gauss(11, 50, 6) + 0.8 * _gauss(12, 50, 6)

    def knn_sets(x: torch.Tensor, k: int) -> list[set[int]]:
        x = F.normalize(x, dim=-1)
        out = []
        for i in range(len(x)):
            others = sorted((j for j in range(len(x)) if j != i), key=lambda j: -float(x[i] @ x[j]))
            out.append(set(others[:k]))
        return out

    for k in (1, 4, 9):
        expected = np.mean([len(p & q) / k for p, q in zip(knn_sets(a, k), knn_sets(b, k))])
        assert m_neigh(a, b, k) == pytest.approx(expected, abs=1e-12)


def test_metric_input_errors() -> None:
    with pytest.raises(ValueError, match="same samples in the same order"):
        m_rel(torch.eye(4), torch.eye(3))
    with pytest.raises(ValueError, match=r"k must be in \[1, N - 1\]"):
        m_neigh(torch.eye(4), torch.eye(4), k=4)
    with pytest.raises(ValueError, match="identical similarities"):
        m_rel(torch.ones(4, 2), torch.eye(4))
    with pytest.raises(ValueError, match="pearson' or 'spearman"):
        m_rel(torch.eye(4), torch.eye(4), method="kendall")


def _variants(n: int = 60, d: int = 8) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """Teacher rgb/depth spaces and four student variants with known relations to them."""
    t_rgb, t_depth = _gauss(20, n, d), _gauss(21, n, d)
    rot = _rotation(22, d)
    shuffled = t_rgb[torch.randperm(n, generator=torch.Generator().manual_seed(23))]
    emb = {v: {"rgb": t_rgb @ rot, "depth": (t_rgb if v != "ptq" else shuffled) @ rot} for v in analysis.VARIANTS}
    labels = torch.arange(n) % 3
    labels[0] = -1
    return emb, {"rgb": t_rgb, "depth": t_depth}, labels, _gauss(24, 3, d)


def test_representation_scores_targets_and_metrics_json_block() -> None:
    emb, teacher, labels, text = _variants()
    rgb = representation_scores(emb, teacher, target="rgb", k=5)
    assert isinstance(rgb, RepresentationScores)
    assert rgb.m_rel["fp32"]["depth"] == pytest.approx(1.0, abs=1e-9)  # depth student = rotated teacher RGB
    assert rgb.m_neigh["ptq"]["depth"] < 0.3 and rgb.m_neigh["ptq"]["rgb"] == 1.0
    same = representation_scores(emb, teacher, target="same", k=5)
    assert abs(same.m_rel["fp32"]["depth"]) < 0.3  # vs the unrelated teacher depth space
    assert same.m_rel["fp32"]["rgb"] == pytest.approx(1.0, abs=1e-9)
    assert rgb.n == 60 and rgb.chance == pytest.approx(5 / 59)
    assert rgb.mean("m_neigh")["fp32"] == 1.0
    assert rgb.mean("m_rel")["ptq"] == pytest.approx((1.0 + rgb.m_rel["ptq"]["depth"]) / 2)
    with pytest.raises(ValueError, match="no 'thermal' embeddings"):
        representation_scores({"fp32": {"thermal": teacher["rgb"]}}, teacher, target="same")

    angles, margins = variant_angles(emb, labels, text), variant_margin_angles(emb, labels, text)
    assert "margin_angle_deg" not in analysis_metrics(angles, rgb)
    block = analysis_metrics(angles, rgb, margins)
    for v in ("fp32", "ptq", "qat", "stage2"):
        assert set(block["angle_deg"][v]) == {"rgb", "depth"}
        assert block["angle_deg"][v]["rgb"] == pytest.approx(float(np.nanmean(angles[v]["rgb"].numpy())))
        assert block["angle_stats"][v]["depth"]["n"] == 59  # one unknown label
        assert block["margin_angle_deg"][v]["rgb"] == pytest.approx(float(np.nanmean(margins[v]["rgb"].numpy())))
        assert block["margin_angle_stats"][v]["depth"]["n"] == 59
        assert isinstance(block["m_rel"][v], float) and isinstance(block["m_neigh"][v], float)
    assert block["representation"] == {"target": "rgb", "k": 5, "n": 60, "method": "pearson",
                                       "m_neigh_chance": pytest.approx(5 / 59)}
    import json

    json.dumps(block)  # JSON-serialisable as is


# ----------------------------------------------------------------------------------------------
# Caches
# ----------------------------------------------------------------------------------------------


def test_embedding_cache_roundtrip_and_compute_once(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEVL_CACHE", str(tmp_path))
    emb = {"fp32": {"rgb": _gauss(30, 5, 4).float(), "depth": _gauss(31, 5, 4).float()[::2]},  # a strided view
           "labels": torch.tensor([0, 1, -1])}
    key = "students=abc123 / eval split: n=5?"
    calls = []

    def compute() -> dict:
        calls.append(1)
        return emb

    first = cached_embeddings(key, compute)
    second = cached_embeddings(key, lambda: pytest.fail("recomputed although cached"))
    assert len(calls) == 1
    for got in (first, second):
        torch.testing.assert_close(got["fp32"]["rgb"], emb["fp32"]["rgb"], rtol=0, atol=0)
        torch.testing.assert_close(got["fp32"]["depth"], emb["fp32"]["depth"], rtol=0, atol=0)
        assert got["labels"].dtype == torch.int64 and got["labels"].tolist() == [0, 1, -1]
    files = list((tmp_path / "analysis").glob("emb-*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "analysis").glob(".*"))  # no temp file left
    assert load_embeddings("another key") is None
    files[0].write_bytes(b"not a safetensors file")  # damaged -> cache miss, recomputed and rewritten
    again = cached_embeddings(key, compute)
    assert len(calls) == 2 and load_embeddings(key) is not None
    torch.testing.assert_close(again["fp32"]["rgb"], emb["fp32"]["rgb"])
    with pytest.raises(ValueError, match="without '/'"):
        save_embeddings("k", {"a/b": torch.zeros(1)})


class _FakeUMAP:
    """Stands in for umap.UMAP: records its arguments; 'maps' rows to their first two coordinates."""

    fits: list[dict] = []

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        _FakeUMAP.fits.append({**self.kwargs, "rows": len(x)})
        return x[:, :2] * 10.0


class _NoFitUMAP:
    def __init__(self, **kwargs) -> None:
        raise AssertionError("UMAP was refitted although the coordinates are cached")


def test_umap_coordinates_cached_on_disk_and_not_refitted(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEVL_CACHE", str(tmp_path))
    fake = types.ModuleType("umap")
    fake.UMAP = _FakeUMAP
    monkeypatch.setitem(sys.modules, "umap", fake)
    _FakeUMAP.fits = []
    emb = {"fp32": {"rgb": _gauss(40, 6, 4), "depth": _gauss(41, 6, 4)}, "stage2": {"rgb": _gauss(42, 6, 4)}}
    text = _gauss(43, 3, 4)
    sets = umap_sets(emb, text, variants=["fp32"])
    assert list(sets) == ["fp32/rgb", "fp32/depth", "text"]
    first = umap_coordinates(sets, n_neighbors=5, min_dist=0.2, n_epochs=7, seed=3)
    assert len(_FakeUMAP.fits) == 1
    kw = _FakeUMAP.fits[0]
    assert kw["rows"] == 15 and kw["random_state"] == 3 and kw["metric"] == "cosine" and kw["n_components"] == 2
    assert (kw["n_neighbors"], kw["min_dist"], kw["n_epochs"]) == (5, 0.2, 7)
    knn_idx, knn_dist, index = kw["precomputed_knn"]  # exact cosine kNN handed to umap, self first
    assert knn_idx.shape == knn_dist.shape == (15, 5) and index is None
    assert (knn_idx[:, 0] == np.arange(15)).all() and np.allclose(knn_dist[:, 0], 0, atol=1e-6)
    for name, x in sets.items():  # split back per set, in order
        np.testing.assert_allclose(first[name], x.numpy()[:, :2] * 10.0, rtol=1e-6)
    assert len(list((tmp_path / "analysis").glob("umap-*.safetensors"))) == 1

    fake.UMAP = _NoFitUMAP  # the same inputs again: read from disk, never refitted
    second = umap_coordinates(sets, n_neighbors=5, min_dist=0.2, n_epochs=7, seed=3)
    assert list(second) == list(first)
    for name in first:
        np.testing.assert_array_equal(second[name], first[name])
    # other parameters, other data or cache=False: a new fit
    for call in (lambda: umap_coordinates(sets, n_neighbors=5, min_dist=0.3, n_epochs=7, seed=3),
                 lambda: umap_coordinates(sets, n_neighbors=5, min_dist=0.2, n_epochs=7, seed=4),
                 lambda: umap_coordinates({**sets, "text": text + 1e-3}, n_neighbors=5, min_dist=0.2, n_epochs=7,
                                          seed=3),
                 lambda: umap_coordinates(sets, n_neighbors=5, min_dist=0.2, n_epochs=7, seed=3, cache=False)):
        with pytest.raises(AssertionError, match="refitted"):
            call()


def test_umap_coordinates_input_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="same dimension"):
        umap_coordinates({"a": np.zeros((5, 3)), "b": np.zeros((5, 4))}, n_neighbors=3, cache_root=tmp_path)
    with pytest.raises(ValueError, match="NaN or inf"):
        umap_coordinates({"a": np.full((5, 3), np.nan)}, n_neighbors=3, cache_root=tmp_path)
    with pytest.raises(ValueError, match=r"n_neighbors must be in \[2, 4\]"):
        umap_coordinates({"a": np.zeros((5, 3))}, n_neighbors=5, cache_root=tmp_path)


@pytest.mark.slow
def test_real_umap_is_seeded_separates_clusters_and_is_cached(tmp_path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16)) * 3
    y = np.repeat([0, 1], 25)
    sets = {"fp32/rgb": centres[y] + rng.normal(size=(50, 16)) * 0.3, "text": centres + 0.01 * rng.normal(size=(2, 16))}
    sets = {**{k: v for k, v in sets.items() if k != "text"}, "fp32/depth": centres[y[:8]] + rng.normal(size=(8, 16)),
            "text": sets["text"]}
    kwargs = {"n_neighbors": 5, "n_epochs": 30, "seed": 0, "cache_root": tmp_path}
    xy = umap_coordinates(sets, **kwargs)
    assert {k: v.shape for k, v in xy.items()} == {"fp32/rgb": (50, 2), "fp32/depth": (8, 2), "text": (2, 2)}
    assert all(np.isfinite(v).all() for v in xy.values())
    a, b = xy["fp32/rgb"][y == 0], xy["fp32/rgb"][y == 1]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    assert gap > 3 * max(a.std(0).max(), b.std(0).max())  # the two clusters stay apart
    again = umap_coordinates(sets, **{**kwargs, "cache": False})  # a second real fit, same seed
    cached = umap_coordinates(sets, **kwargs)
    for k in xy:
        np.testing.assert_array_equal(again[k], xy[k])
        np.testing.assert_array_equal(cached[k], xy[k])


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def _coords(n: int = 12, classes: int = 3) -> tuple[dict, np.ndarray, list[str]]:
    rng = np.random.default_rng(1)
    coords = {f"{v}/{m}": rng.normal(size=(n, 2)).astype(np.float32) for v in ("fp32", "stage2")
              for m in ("rgb", "depth", "thermal")}
    coords["text"] = rng.normal(size=(classes, 2)).astype(np.float32)
    labels = np.arange(n) % classes
    labels[0] = -1
    return coords, labels, [f"class{c}" for c in range(classes)]


def test_figures_have_the_expected_axes() -> None:
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    emb, _, labels, text = _variants()
    angles = variant_angles(emb, labels, text)
    fig = angle_distribution_figure(angles)
    assert len(fig.axes) == 2  # rgb, depth
    violins = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert len(violins) == 4  # one per variant
    means = {t.get_text() for t in fig.axes[0].texts}
    assert f"{float(np.nanmean(angles['fp32']['rgb'].numpy())):.1f}°" in means
    assert fig.axes[0].get_ylabel().startswith("angle(image") and not fig.axes[0].lines
    fig_m = angle_distribution_figure(variant_margin_angles(emb, labels, text), ylabel="margin [deg]", reference=0.0)
    assert fig_m.axes[0].get_ylabel() == "margin [deg]"
    assert [list(line.get_ydata()) for line in fig_m.axes[1].lines] == [[0.0, 0.0]]  # the dashed zero line
    scores = representation_scores(emb, {"rgb": emb["fp32"]["rgb"]}, k=5)
    fig2 = representation_figure(scores)
    assert len(fig2.axes) == 2 and len(fig2.axes[0].patches) == 4 * 2  # variants x modalities
    coords, y, names = _coords()
    fig3 = umap_figure(coords, y, names, variants=["fp32", "stage2"])
    assert len(fig3.axes) == 4
    assert [a.get_title() for a in fig3.axes] == ["fp32: by class", "fp32: by modality", "stage2: by class",
                                                  "stage2: by modality"]
    assert {t.get_text() for t in fig3.axes[0].texts} == set(names)  # labelled text stars
    with pytest.raises(ValueError, match="one text embedding per class"):
        umap_figure({**coords, "text": coords["text"][:2]}, y, names)
    plt.close("all")


# ----------------------------------------------------------------------------------------------
# Explorer and its headless fallback
# ----------------------------------------------------------------------------------------------


class _FakeKernel:
    def __init__(self, allow_stdin: bool) -> None:
        self.allow_stdin = allow_stdin

    def get_parent(self) -> dict:
        return {"header": {"msg_type": "execute_request"}, "content": {"code": "", "allow_stdin": self.allow_stdin}}


@pytest.fixture()
def fake_ipython(monkeypatch):
    """Install a fake IPython shell; returns a setter for its kernel (None = not a kernel)."""
    import IPython

    for name in ("EDGEVL_HEADLESS", "PAPERMILL_EXECUTION", "CI"):
        monkeypatch.delenv(name, raising=False)
    shell = types.SimpleNamespace()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)

    def set_kernel(kernel) -> None:
        if kernel is None:
            shell.__dict__.pop("kernel", None)
        else:
            shell.kernel = kernel

    return set_kernel


def test_widget_frontend_detection_in_fake_environments(fake_ipython, monkeypatch) -> None:
    fake_ipython(None)
    assert has_widget_frontend() is False  # terminal IPython / plain Python: no kernel
    fake_ipython(_FakeKernel(allow_stdin=True))
    assert has_widget_frontend() is True  # JupyterLab / Notebook / VS Code
    assert has_widget_frontend(False) is False  # the notebook parameter wins
    monkeypatch.setenv("PAPERMILL_EXECUTION", "1")
    assert has_widget_frontend() is False  # our runner says so
    monkeypatch.delenv("PAPERMILL_EXECUTION")
    fake_ipython(_FakeKernel(allow_stdin=False))
    assert has_widget_frontend() is False  # nbclient (papermill, nbconvert --execute)
    assert has_widget_frontend(True) is True
    legacy = types.SimpleNamespace(_allow_stdin=True)  # a kernel without get_parent
    fake_ipython(legacy)
    assert has_widget_frontend() is True


def test_explorer_headless_branch_returns_the_static_figure_without_widgets(fake_ipython, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    fake_ipython(_FakeKernel(allow_stdin=False))
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # any `import ipywidgets` would now fail
    coords, y, names = _coords()
    fig = feature_explorer(coords, y, names, interactive=None)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 4
    assert fig.number not in plt.get_fignums()  # detached from pyplot: shown once, as the cell's value
    assert isinstance(feature_explorer(coords, y, names, variants=["stage2"], interactive=False),
                      matplotlib.figure.Figure)


def test_explorer_interactive_branch_redraws_on_each_dropdown(monkeypatch) -> None:
    coords, y, names = _coords()
    angles = {v: {m: torch.linspace(0, 90, 12) for m in ("rgb", "depth", "thermal")} for v in ("fp32", "stage2")}
    ex = feature_explorer(coords, y, names, angles=angles, interactive=True)
    assert isinstance(ex, FeatureExplorer)
    assert list(ex.controls["variant"].options) == ["fp32", "stage2"]
    assert list(ex.controls["modality"].options) == ["all", "rgb", "depth", "thermal"]
    assert list(ex.controls["colour_by"].options) == ["class", "modality", "angle"]
    first = ex.figure
    assert first.axes[0].get_title() == "fp32 · all · coloured by class"
    points = lambda fig: sum(len(c.get_offsets()) for c in fig.axes[0].collections)  # noqa: E731
    assert points(first) == 3 * 12 + 3  # three modalities + the text stars
    ex.controls["modality"].value = "depth"
    assert ex.figure is not first and points(ex.figure) == 12 + 3
    ex.controls["variant"].value = "stage2"
    ex.controls["colour_by"].value = "angle"
    assert ex.figure.axes[0].get_title() == "stage2 · depth · coloured by angle"
    assert len(ex.figure.axes) == 2  # the scatter and its angle colour bar
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    for w in (*ex.controls.values(), ex.output, *ex.widget.children, ex.widget):
        w.close()


_PROBE = """\
import numpy as np
from edgevl_lib.analysis import feature_explorer, has_widget_frontend
print("frontend:", has_widget_frontend())
coords = {"fp32/rgb": np.random.default_rng(0).normal(size=(6, 2)), "text": np.eye(2)}
feature_explorer(coords, [0, 1, 0, 1, -1, 0], ["a", "b"])
"""


def test_real_kernel_headless_under_nbclient_and_interactive_for_a_stdin_frontend(monkeypatch) -> None:
    """One real kernel driven by nbclient, papermill's executor (papermill's client subclasses NotebookClient):
    its execute requests carry allow_stdin=False, so the explorer shows the static figure once and no widget
    state is stored; the same kernel asked as JupyterLab asks (allow_stdin=True) reports a widget frontend."""
    import nbformat
    from nbclient import NotebookClient
    from papermill.clientwrap import PapermillNotebookClient

    from edgevl_lib.utils import PROJECT_ROOT

    assert issubclass(PapermillNotebookClient, NotebookClient)
    for name in ("EDGEVL_HEADLESS", "PAPERMILL_EXECUTION", "CI"):
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(_PROBE),
                nbformat.v4.new_code_cell("print('frontend:', has_widget_frontend())")]
    client = NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(PROJECT_ROOT)}})
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        client.kc.allow_stdin = True  # from here on the requests look like JupyterLab's
        client.execute_cell(nb.cells[1], 1)
        client.set_widgets_metadata()
    outputs = nb.cells[0].outputs
    assert "frontend: False" in "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    shown = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    assert len(shown) == 1 and "image/png" in shown[0].data  # the static figure, exactly once
    assert "application/vnd.jupyter.widget-view+json" not in shown[0].data
    assert "widgets" not in nb.metadata  # nbclient stored no widget state
    assert nb.cells[1].outputs[0].text.strip() == "frontend: True"


def test_label_offsets_separate_labels_at_one_point_and_leave_lone_labels_alone():
    import numpy as np

    from edgevl_lib.analysis.figures import label_offsets

    anchors = np.array([[100.0, 100.0]] * 4 + [[300.0, 50.0]])
    names = ["chair", "table", "desk", "bench", "traffic cone"]
    off = label_offsets(anchors, names, fontsize=6)
    h = 1.25 * 6
    ys = sorted(100 + dy for dx, dy in off[:4])
    assert all(b - a >= h - 1e-9 for a, b in zip(ys, ys[1:]))  # stacked, no two boxes overlap
    assert off[4] == (3.0, 3.0)  # alone: the default offset
    assert label_offsets(anchors, names) == off  # deterministic
    near_edge = label_offsets(np.array([[300.0, 50.0]]), ["traffic cone"], fontsize=6, right=320.0)
    assert near_edge == [(-3.0, 3.0)]  # would cross the right edge: drawn to the left of its anchor

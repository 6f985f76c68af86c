"""Tests of the embedded benchmark renderer: geometry, alignment, determinism, splits, caching."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edgevl_lib import render
from edgevl_lib.config import BenchmarkConfig
from edgevl_lib.data import PairedFolder
from edgevl_lib.render import Camera, Light, Material, Part, Scene, render_scene, rotation

SMOKE = BenchmarkConfig().smoke()


def _mat(color: tuple[float, float, float], temp_offset: float = 0.0) -> Material:
    return Material("plastic", np.asarray(color, float), specular=0.0, temp_offset=temp_offset)


def _wall(z: float) -> Part:
    """A plain plane at depth z facing a camera on the +z side."""
    return Part("plane", np.array([0.0, 0.0, z]), rotation(pitch=np.pi / 2), np.ones(3), _mat((0.5, 0.5, 0.5)), 0)


def _scene(*parts: Part, intensity: float = 1.0) -> Scene:
    return Scene(list(parts), Light(np.array([0.3, 0.8, 1.0]), intensity=intensity, ambient=0.5), ambient_c=21.0,
                 gradient_c_per_m=0.0, reflected_c=21.0)


FRONT = Camera((0.0, 0.0, 0.0), (0.0, 0.0, -1.0), fov_deg=50.0)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render.build_benchmark(SMOKE, tmp_path_factory.mktemp("bench"))


# ---------------------------------------------------------------------------------------------- geometry


def test_plane_depth_is_z_depth() -> None:
    out = render_scene(_scene(_wall(-2.0)), FRONT, 32)
    np.testing.assert_allclose(out.depth, 2.0, atol=1e-3)  # z-depth, not range: flat across the image


def test_box_face_and_sphere_nearest_point() -> None:
    box = Part("box", np.array([0.0, 0.0, -3.0]), rotation(yaw=0.0), np.array([0.4, 0.4, 0.5]), _mat((1, 0, 0)))
    out = render_scene(_scene(_wall(-6.0), box), FRONT, 33)
    assert abs(out.depth[16, 16] - 2.5) < 1e-3
    assert abs(out.depth[16, 16 + 3] - 2.5) < 1e-3  # a fronto-parallel face has constant z-depth
    sphere = Part("ellipsoid", np.array([0.0, 0.0, -2.0]), np.eye(3), np.full(3, 0.5), _mat((0, 1, 0)))
    out = render_scene(_scene(_wall(-6.0), sphere), FRONT, 33)  # odd size: the centre ray is the axis
    assert abs(out.depth[16, 16] - 1.5) < 1e-3
    o, d = FRONT.rays(33)
    on = (out.instance == 1).ravel()
    pts = o + d[on] * out.depth.ravel()[on, None]
    np.testing.assert_allclose(np.linalg.norm(pts - sphere.center, axis=1), 0.5, atol=1e-6)


def test_rotated_box_and_frustum_hits_lie_on_surfaces() -> None:
    cam = Camera((1.0, 1.5, 2.0), (0.0, 0.3, -2.0), fov_deg=60.0)
    box = Part("box", np.array([-0.5, 0.3, -2.0]), rotation(yaw=0.7, pitch=0.2), np.array([0.3, 0.2, 0.4]),
               _mat((1, 0, 0)), 1)
    cone = Part("frustum", np.array([0.6, 0.4, -2.0]), np.eye(3), np.array([0.3, 0.05, 0.4]), _mat((0, 1, 0)), 2)
    out = render_scene(_scene(_wall(-5.0), box, cone), cam, 48)
    o, d = cam.rays(48)
    for part in (box, cone):
        sel = (out.instance == part.instance).ravel()
        assert sel.sum() > 20
        q = (o + d[sel] * out.depth.ravel()[sel, None] - part.center) @ part.rot
        if part.kind == "box":
            np.testing.assert_allclose(np.abs(q / part.size).max(axis=1), 1.0, atol=1e-6)
        else:
            r0, r1, hh = part.size
            radius = (r0 + r1) / 2 + (r1 - r0) / (2 * hh) * q[:, 1]
            on_side = np.abs(np.hypot(q[:, 0], q[:, 2]) - radius) < 1e-6
            on_cap = np.abs(np.abs(q[:, 1]) - hh) < 1e-6
            assert np.all(on_side | on_cap)


def test_depth_noise_off_is_exact_and_on_follows_kinect_sigma() -> None:
    out = render_scene(_scene(_wall(-3.0)), FRONT, 64)
    rng = np.random.default_rng(0)
    exact = render.add_depth_noise(out.depth, out.cos_view, rng, 0.0, (0.4, 8.0))
    np.testing.assert_allclose(exact, 3.0, atol=1e-3)
    noisy = render.add_depth_noise(out.depth, out.cos_view, rng, 1.0, (0.4, 8.0))
    valid = noisy > 0
    assert 0.95 < valid.mean() < 1.0
    assert abs(float(np.std(noisy[valid] - 3.0)) / float(render.depth_sigma(np.float64(3.0))) - 1) < 0.1
    far = render.add_depth_noise(out.depth, out.cos_view, rng, 0.0, (0.4, 2.0))
    assert np.all(far == 0)  # beyond max range reads invalid


# ---------------------------------------------------------------------------------------------- alignment


def test_modalities_are_pixel_aligned() -> None:
    """Pixels nearer than the wall are exactly the non-background RGB pixels and the hot thermal pixels."""
    box = Part("box", np.array([-0.3, 0.1, -2.0]), rotation(yaw=0.5), np.array([0.2, 0.3, 0.2]),
               _mat((0.9, 0.1, 0.1), temp_offset=30.0))
    ball = Part("ellipsoid", np.array([0.35, -0.1, -2.2]), np.eye(3), np.full(3, 0.25),
                _mat((0.1, 0.9, 0.1), temp_offset=30.0))
    out = render_scene(_scene(_wall(-3.0), box, ball, intensity=0.0), FRONT, 48)
    near = out.depth < 3.0 - 1e-6
    background = out.rgb[~near][0]
    rgb_object = np.abs(out.rgb - background).sum(-1) > 1e-6
    assert 0.05 < near.mean() < 0.6
    np.testing.assert_array_equal(near, rgb_object)
    np.testing.assert_array_equal(near, out.thermal > 31.0)
    np.testing.assert_array_equal(near, out.instance == 1)


def test_render_sample_units_and_shapes() -> None:
    s = render.render_sample(SMOKE, "eval", 1)
    rgb, depth, thermal = s.images["rgb"], s.images["depth"], s.images["thermal"]
    assert rgb.shape == (3, 32, 32) and depth.shape == thermal.shape == (1, 32, 32)
    assert 0 <= float(rgb.min()) and float(rgb.max()) <= 1
    assert float((depth > 0).float().mean()) > 0.8 and float(depth.max()) < SMOKE.depth_range[1]
    assert 12 < float(thermal.median()) < 28
    assert s.label == 1 and s.id == "eval_00001"
    assert set(render.render_sample(SMOKE, "teacher_pretrain", 0).images) == {"rgb"}


# ---------------------------------------------------------------------------------------------- determinism / splits


def test_same_seed_identical_bytes_for_any_worker_count(built: Path, tmp_path: Path) -> None:
    again = render.build_benchmark(dataclasses.replace(SMOKE, workers=2), tmp_path)
    assert again.name == built.name  # workers is not part of the config hash
    files = sorted(p.relative_to(built) for p in built.rglob("*.png"))
    assert len(files) == sum(len(render.SPLIT_MODALITIES[s]) * render.split_size(SMOKE, s) for s in render.SPLITS)
    for rel in files:
        assert (built / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_seed_changes_output() -> None:
    a = render.render_sample(SMOKE, "adapt", 0).images["rgb"]
    b = render.render_sample(dataclasses.replace(SMOKE, seed=1), "adapt", 0).images["rgb"]
    assert not np.array_equal(a.numpy(), b.numpy())


def test_splits_are_disjoint() -> None:
    seen: dict[bytes, str] = {}
    for split in render.SPLITS:
        for i in range(len(SMOKE.classes) * 2):
            s = render.render_sample(SMOKE, split, i)
            key = s.images["rgb"].numpy().tobytes()
            assert key not in seen, (s.id, seen.get(key))
            seen[key] = s.id
    assert len(set(seen.values())) == len(seen)


# ---------------------------------------------------------------------------------------------- build / cache / figure


def test_build_benchmark_caches_and_loads(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object) -> None:
        raise AssertionError("re-rendered a cached benchmark")

    monkeypatch.setattr(render, "_render_arrays", fail)
    assert render.build_benchmark(SMOKE, built.parent) == built
    monkeypatch.undo()
    meta = json.loads((built / "benchmark.json").read_text())
    assert meta["class_names"] == list(SMOKE.classes) and meta["config_hash"] == render.config_hash(SMOKE)
    assert set(meta["suggested_ranges"]) == {"depth", "thermal"} and meta["generation_seconds"] > 0
    adapt = PairedFolder(built / "adapt")
    assert adapt.modalities == ("rgb", "depth", "thermal")
    assert len(adapt) == render.split_size(SMOKE, "adapt")
    assert adapt.labels[:5] == [0, 1, 2, 3, 4]
    assert PairedFolder(built / "teacher_pretrain").modalities == ("rgb",)
    ref = render.render_sample(SMOKE, "adapt", 3)
    got = adapt[3]
    assert float((got.images["rgb"] - ref.images["rgb"]).abs().max()) <= 0.5 / 255 + 1e-6
    assert float((got.images["depth"] - ref.images["depth"]).abs().max()) <= 0.5e-3 + 1e-6
    assert not list(built.parent.glob(".*tmp*"))


def test_benchmark_grid_has_a_row_per_class(built: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = render.benchmark_grid(built, n_per_class=1)
    axes = np.array(fig.axes).reshape(len(SMOKE.classes), 3)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == list(SMOKE.classes)
    plt.close(fig)


def test_unknown_class_is_refused_before_rendering(tmp_path):
    import dataclasses

    import pytest

    from edgevl_lib.config import BenchmarkConfig
    from edgevl_lib.render import build_benchmark

    cfg = dataclasses.replace(BenchmarkConfig().smoke(), classes=("chair", "unicorn"))
    with pytest.raises(ValueError, match="unicorn"):
        build_benchmark(cfg, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- uninformative frames


def test_uninformative_frames_are_a_share_of_adapt_only_and_unlabelled(built: Path) -> None:
    n_inf = render.informative_size(SMOKE, "adapt")
    n_u = render.uninformative_size(SMOKE, "adapt")
    assert n_u == round(SMOKE.uninformative * n_inf / (1 - SMOKE.uninformative)) > 0
    assert render.uninformative_size(SMOKE, "eval") == render.uninformative_size(SMOKE, "teacher_pretrain") == 0
    adapt = PairedFolder(built / "adapt")
    kinds = adapt.meta["uninformative"]
    assert len(adapt) == n_inf + n_u and len(kinds) == n_u
    assert set(kinds.values()) == set(render.UNINFORMATIVE_KINDS)  # smoke: 8 frames cycle through all 5 kinds
    for i, sid in enumerate(adapt.ids):
        assert (adapt.labels[i] is None) == (sid in kinds)
    assert all(lab is not None for lab in PairedFolder(built / "eval").labels)
    assert json.loads((built / "benchmark.json").read_text())["uninformative"]["adapt"] == n_u


def test_uninformative_frames_render_deterministically_and_look_uninformative() -> None:
    cfg = dataclasses.replace(BenchmarkConfig(), image_size=32)
    n = render.informative_size(cfg, "adapt")
    for j, kind in enumerate(render.UNINFORMATIVE_KINDS):
        a, k = render.render_uninformative(cfg, n + j)
        b, _ = render.render_uninformative(cfg, n + j)
        assert k == kind and all(np.array_equal(a[m], b[m]) for m in a)
        assert a["rgb"].shape == (3, 32, 32) and a["depth"].shape == a["thermal"].shape == (1, 32, 32)
        assert (a["depth"] > 0).any()  # the loader refuses an all-zero depth frame
        if kind == "covered":
            assert a["rgb"].mean() < 0.15 and (a["depth"] > 0).mean() < 0.1 and a["thermal"].std() < 1.0
        if kind == "overexposed":
            assert a["rgb"].mean() > 0.7
        if kind == "underexposed":
            assert a["rgb"].mean() < 0.1
    # the labelled adapt samples keep their own random streams: adding frames changes none of them
    none = dataclasses.replace(cfg, uninformative=0.0)
    assert render.split_size(none, "adapt") == n
    assert np.array_equal(render.render_sample(none, "adapt", 3).images["rgb"],
                          render.render_sample(cfg, "adapt", 3).images["rgb"])


def test_motion_blur_kernel_is_a_mean_of_shifted_copies() -> None:
    x = np.zeros((5, 7))
    x[2, 3] = 1.0
    out = render._motion_blur(x, 3, 0.0)  # horizontal, length 3: the impulse spreads over 3 columns
    np.testing.assert_allclose(out[2, 2:5], [1 / 3] * 3)
    assert out.sum() == pytest.approx(1.0)


def test_uninformative_share_is_validated() -> None:
    with pytest.raises(ValueError, match="uninformative"):
        BenchmarkConfig(uninformative=1.0)

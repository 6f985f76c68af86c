"""Tests for edgevl_lib.loaders: each loader on a tiny fixture written in the dataset's real on-disk format."""
from __future__ import annotations

import sys
import types
from importlib import resources
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from edgevl_lib.data import DataError, Sample, write_paired_folder
from edgevl_lib.loaders import (
    DATASET_NAMES,
    EUROSAT_BANDS,
    EUROSAT_CLASSES,
    SENTINEL2_BANDS,
    NYU_TEN_CLASSES,
    SCANNET_SCENE_TYPES,
    SUNRGBD,
    EuroSATMS,
    NYUDepthV2,
    ScanNetFrames,
    decode_sunrgbd_depth,
    load_dataset,
    scannet_scene_name,
    split_indices,
)

# ----------------------------------------------------------------------------------------------
# Fixture writers (the real formats)
# ----------------------------------------------------------------------------------------------


def _two_tone_rgb(h: int, w: int) -> np.ndarray:
    """Left half red, right half blue: survives JPEG and resizing, and shows a left/right flip."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2, 0] = 220
    img[:, w // 2:, 2] = 220
    return img


def _write_scannet(root: Path, scenes: dict[str, str], frames: int = 12) -> Path:
    """SensReader export: color/<i>.jpg (colour at 2x the depth resolution), depth/<i>.png (16-bit mm)."""
    for scene_id, scene_type in scenes.items():
        scene = root / scene_id
        (scene / "color").mkdir(parents=True)
        (scene / "depth").mkdir()
        (scene / f"{scene_id}.txt").write_text(
            f"axisAlignment = 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1\ncolorHeight = 96\ncolorWidth = 128\n"
            f"depthHeight = 48\ndepthWidth = 64\nnumColorFrames = {frames}\nsceneType = {scene_type}\n")
        for i in range(frames):
            Image.fromarray(_two_tone_rgb(96, 128)).save(scene / "color" / f"{i}.jpg", quality=95)
            mm = np.full((48, 64), 1500 + i, np.uint16)
            mm[10, 20] = 1234
            mm[0, 0] = 0
            Image.fromarray(mm).save(scene / "depth" / f"{i}.png")
    return root


def _matlab_strings(f: h5py.File, name: str, values: list[str]) -> None:
    """A MATLAB v7.3 cell array of char arrays: 1 x N references to uint16 (len x 1) datasets in #refs#."""
    refs = np.empty((1, len(values)), dtype=h5py.ref_dtype)
    for i, s in enumerate(values):
        ds = f.create_dataset(f"#refs#/{name}{i}", data=np.array([[ord(c)] for c in s], np.uint16))
        ds.attrs["MATLAB_class"] = np.bytes_("char")
        refs[0, i] = ds.ref
    f.create_dataset(name, data=refs)


def _nyu_upright(n: int, h: int = 6, w: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric upright frames: rgb[i, y, x] = (10 y + x + i, 100, 200); depth = 1 + 0.1 y + 0.01 x + i."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([np.stack([10 * y + x + i, np.full_like(y, 100), np.full_like(y, 200)], -1)
                    for i in range(n)]).astype(np.uint8)
    depth = np.stack([1 + 0.1 * y + 0.01 * x + i for i in range(n)]).astype(np.float32)
    return rgb, depth


def _write_nyu(path: Path, scene_types: list[str], depth: np.ndarray | None = None) -> Path:
    """nyu_depth_v2_labeled.mat layout: MATLAB H x W x 3 x N is HDF5 N x 3 x W x H (dimensions reversed)."""
    rgb, upright_depth = _nyu_upright(len(scene_types))
    depth = upright_depth if depth is None else depth
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=rgb.transpose(0, 3, 2, 1))
        f.create_dataset("depths", data=depth.transpose(0, 2, 1))
        _matlab_strings(f, "sceneTypes", scene_types)
        _matlab_strings(f, "scenes", [f"{s}_{i // 2:04d}a" for i, s in enumerate(scene_types)])
    return path


def _sun_encode(mm: np.ndarray) -> np.ndarray:
    """What SUN RGB-D stores: millimetres rotated left by 3 bits in 16 bits (inverse of the toolbox read)."""
    v = mm.astype(np.uint32)
    return (((v << 3) | (v >> 13)) & 0xFFFF).astype(np.uint16)


def _write_sun_sample(folder: Path, name: str, scene: str | None, bfx_mm: np.ndarray, raw_mm: np.ndarray) -> None:
    for sub in ("image", "depth", "depth_bfx", "fullres"):
        (folder / sub).mkdir(parents=True)
    Image.fromarray(_two_tone_rgb(*bfx_mm.shape)).save(folder / "image" / f"{name}.jpg", quality=95)
    Image.fromarray(_sun_encode(raw_mm)).save(folder / "depth" / f"{name}.png")
    Image.fromarray(_sun_encode(bfx_mm)).save(folder / "depth_bfx" / f"{name}.png")
    Image.fromarray(_two_tone_rgb(4, 4)).save(folder / "fullres" / f"{name}.jpg")  # ignored by the loader
    if scene is not None:
        (folder / "scene.txt").write_text(scene)


def _write_sunrgbd(root: Path) -> tuple[Path, np.ndarray]:
    bfx = np.full((30, 40), 2000, np.uint16)
    bfx[5, 7] = 1234
    bfx[6, 7] = 60000  # above 2^13: the circular part of the shift matters
    raw = bfx.copy()
    raw[5, 7] = 0  # a hole the in-painted depth_bfx fills
    _write_sun_sample(root / "kv1" / "NYUdata" / "NYU0001", "NYU0001", "bedroom", bfx, raw)
    _write_sun_sample(root / "kv2" / "kinect2data" / "000002_2014-05-26_rgbf000103-resize", "0000103", "office",
                      bfx, raw)
    _write_sun_sample(root / "xtion" / "sun3ddata" / "mit_32" / "0000001", "0000001", None, bfx, raw)
    return root, bfx


def _ben_bands() -> dict[str, np.ndarray]:
    """The real Sentinel-2 L2A bands of the BigEarthNet patch shipped with bigearthnet-patch-interface,
    each resampled (bilinear) to EuroSAT's 64x64. B10 (cirrus) is not in L2A products: zeros."""
    pytest.importorskip("bigearthnet_patch_interface")
    patch = next(p for p in (resources.files("bigearthnet_patch_interface") / "tiny_s2").iterdir() if p.is_dir())
    files = {p.name.rsplit("_", 1)[1][:-4]: p for p in patch.iterdir() if p.name.endswith(".tif")}
    out = {"B10": np.zeros((64, 64), np.uint16)}
    for band in set(EUROSAT_BANDS) - {"B10"}:
        arr = tifffile.imread(Path(str(files[band]))).astype(np.float32)
        out[band] = np.round(np.asarray(Image.fromarray(arr).resize((64, 64), Image.BILINEAR))).astype(np.uint16)
    return out


@pytest.fixture(scope="module")
def eurosat_root(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """EuroSAT_MS layout: <Class>/<Class>_<n>.tif, 13 bands (B8A last); pixel-interleaved and planar files."""
    bands = _ben_bands()
    cube = np.stack([bands[b] for b in EUROSAT_BANDS])  # 13 x 64 x 64
    root = tmp_path_factory.mktemp("EuroSAT_MS")
    for k, cls in enumerate(EUROSAT_CLASSES):
        (root / cls).mkdir()
        for n in (1, 2):
            data = np.roll(cube, k + n, axis=-1)
            if n == 1:
                tifffile.imwrite(root / cls / f"{cls}_{n}.tif", data.transpose(1, 2, 0), photometric="minisblack",
                                 planarconfig="contig")
            else:
                tifffile.imwrite(root / cls / f"{cls}_{n}.tif", data, photometric="minisblack",
                                 planarconfig="separate")
    return root, cube


# ----------------------------------------------------------------------------------------------
# ScanNet
# ----------------------------------------------------------------------------------------------


@pytest.fixture()
def scannet_root(tmp_path) -> Path:
    return _write_scannet(tmp_path / "scans", {"scene0000_00": "Living room / Lounge",
                                               "scene0001_00": "Bedroom / Hotel"})


def test_scannet_units_labels_stride_and_colour_resize(scannet_root):
    ds = ScanNetFrames(scannet_root, frame_stride=5)
    assert ds.ids == [f"scene000{s}_00/{f}" for s in (0, 1) for f in (0, 5, 10)]  # numeric, not lexicographic
    assert ds.labels == [SCANNET_SCENE_TYPES.index("living room/lounge")] * 3 + \
        [SCANNET_SCENE_TYPES.index("bedroom/hotel")] * 3
    assert ds.text_names[ds.labels[0]] == "living room or lounge"
    assert ds.split_groups == ["scene0000_00"] * 3 + ["scene0001_00"] * 3
    s = ds[1]
    assert s.images["rgb"].shape == (3, 48, 64) and s.images["depth"].shape == (1, 48, 64)  # colour -> depth res
    assert s.images["depth"][0, 10, 20].item() == pytest.approx(1.234, abs=1e-6)
    assert s.images["depth"][0, 30, 30].item() == pytest.approx(1.505, abs=1e-6)  # frame 5
    assert s.images["depth"][0, 0, 0] == 0.0
    assert s.images["rgb"][0, 20, 5] > 0.8 and s.images["rgb"][2, 20, 5] < 0.1  # left is red, upright
    small = ScanNetFrames(scannet_root, modalities=["depth"], size=(24, 32))[0]
    assert set(small.images) == {"depth"} and small.images["depth"].shape == (1, 24, 32)


def test_scannet_scene_names_and_class_override(scannet_root):
    assert scannet_scene_name("Misc.") == "misc"
    assert scannet_scene_name("ComputerCluster") == "computer cluster"
    ds = ScanNetFrames(scannet_root, frame_stride=12, class_names=["bedroom", "other"],
                       scene_map={"bedroom/hotel": "bedroom"}, others="other")
    assert ds.labels == [1, 0]


def test_scannet_missing_pair_and_truncated_jpg_name_the_file(scannet_root):
    (scannet_root / "scene0001_00" / "depth" / "3.png").unlink()
    with pytest.raises(DataError, match=r"scene0001_00/depth/3\.png"):
        ScanNetFrames(scannet_root)
    jpg = scannet_root / "scene0000_00" / "color" / "0.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    ds = ScanNetFrames(scannet_root, modalities=["rgb"])
    with pytest.raises(DataError, match=r"scene0000_00/color/0\.jpg: cannot decode"):
        ds[0]
    with pytest.raises(DataError, match="does not exist"):
        ScanNetFrames(scannet_root / "nope")


def test_scannet_rejects_all_zero_and_8bit_depth(scannet_root):
    depth = scannet_root / "scene0000_00" / "depth"
    Image.fromarray(np.zeros((48, 64), np.uint16)).save(depth / "0.png")
    Image.fromarray(np.full((48, 64), 9, np.uint8)).save(depth / "1.png")
    ds = ScanNetFrames(scannet_root)
    with pytest.raises(DataError, match=r"0\.png: depth is all zeros"):
        ds[0]
    with pytest.raises(DataError, match=r"1\.png: depth PNG is uint8"):
        ds[1]


# ScanNet variants: each written in its exact on-disk format


def test_scannet_variant_zero_padded_frame_names(tmp_path):
    root = _write_scannet(tmp_path / "scans", {"scene0002_00": "Office"}, frames=3)
    for sub, ext in (("color", "jpg"), ("depth", "png")):
        for i in range(3):
            (root / "scene0002_00" / sub / f"{i}.{ext}").rename(root / "scene0002_00" / sub / f"{i * 100:06d}.{ext}")
    ds = ScanNetFrames(root)
    assert ds.ids == ["scene0002_00/000000", "scene0002_00/000100", "scene0002_00/000200"]
    assert ds.variant == "sensreader" and ds[1].images["depth"][0, 30, 30].item() == pytest.approx(1.501)


def test_scannet_variant_frames_25k_read_unlabeled_with_the_fix(tmp_path, caplog):
    """scannet_frames_25k: color/000000.jpg (640x480 like depth), depth/000000.png, instance/, label/, pose/,
    intrinsics_color.txt / intrinsics_depth.txt, and no <scene_id>.txt."""
    scene = tmp_path / "scannet_frames_25k" / "scene0000_00"
    for sub in ("color", "depth", "instance", "label", "pose"):
        (scene / sub).mkdir(parents=True)
    for k in (0, 100):
        Image.fromarray(_two_tone_rgb(48, 64)).save(scene / "color" / f"{k:06d}.jpg", quality=95)
        Image.fromarray(np.full((48, 64), 2000 + k, np.uint16)).save(scene / "depth" / f"{k:06d}.png")
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(scene / "label" / f"{k:06d}.png")
        (scene / "pose" / f"{k:06d}.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    (scene / "intrinsics_color.txt").write_text("577.8 0 319.5 0\n0 577.8 239.5 0\n0 0 1 0\n0 0 0 1\n")
    (scene / "intrinsics_depth.txt").write_text("577.8 0 319.5 0\n0 577.8 239.5 0\n0 0 1 0\n0 0 0 1\n")
    ds = ScanNetFrames(scene.parent)
    assert ds.variant == "scannet_frames_25k" and ds.ids == ["scene0000_00/000000", "scene0000_00/000100"]
    assert ds.labels == [None, None] and "copy scans/<scene_id>/<scene_id>.txt" in caplog.text
    assert ds[1].images["depth"][0, 0, 0].item() == pytest.approx(2.1) and ds[1].images["rgb"].shape == (3, 48, 64)
    (scene / "scene0000_00.txt").write_text("sceneType = Office\n")
    assert ScanNetFrames(scene.parent).labels == [SCANNET_SCENE_TYPES.index("office")] * 2


def test_scannet_variant_png_colour_frames_read(tmp_path):
    root = _write_scannet(tmp_path / "scans", {"scene0003_00": "Kitchen"}, frames=2)
    for i in range(2):
        jpg = root / "scene0003_00" / "color" / f"{i}.jpg"
        Image.open(jpg).save(jpg.with_suffix(".png"))
        jpg.unlink()
    s = ScanNetFrames(root)[1]
    assert s.images["rgb"].shape == (3, 48, 64) and s.images["rgb"][0, 20, 5] > 0.8


def test_scannet_variant_raw_sens_refused(tmp_path):
    scene = tmp_path / "scans" / "scene0000_00"
    scene.mkdir(parents=True)
    (scene / "scene0000_00.sens").write_bytes(b"\x04\x00\x00\x00")
    (scene / "scene0000_00.txt").write_text("sceneType = Office\n")
    with pytest.raises(DataError, match=r"scene0000_00\.sens: a raw ScanNet sensor stream.*reader\.py.*"
                                        r"--export_color_images --export_depth_images"):
        ScanNetFrames(scene.parent)


def test_scannet_variant_cpp_sensreader_refused(tmp_path):
    scene = tmp_path / "scans" / "scene0000_00"
    scene.mkdir(parents=True)
    Image.fromarray(_two_tone_rgb(8, 8)).save(scene / "frame-000000.color.jpg")
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(scene / "frame-000000.depth.png")
    (scene / "frame-000000.pose.txt").write_text("1 0 0 0\n")
    with pytest.raises(DataError, match=r"frame-000000\.color\.jpg: exported by the C\+\+ SensReader.*"
                                        r"Python SensReader"):
        ScanNetFrames(scene.parent)


def test_scannet_variant_scannetpp_refused(tmp_path):
    scene = tmp_path / "data" / "0a5c013435"
    for sub in ("iphone/rgb", "iphone/depth", "dslr/resized_images", "scans"):
        (scene / sub).mkdir(parents=True)
    Image.fromarray(_two_tone_rgb(8, 8)).save(scene / "iphone" / "rgb" / "frame_000000.jpg")
    with pytest.raises(DataError, match=r"0a5c013435/iphone: a ScanNet\+\+ scene.*no scene-type labels"):
        ScanNetFrames(scene.parent)


def test_scannet_variant_8bit_depth_refused_when_opened(scannet_root):
    Image.fromarray(np.full((48, 64), 9, np.uint8)).save(scannet_root / "scene0001_00" / "depth" / "0.png")
    with pytest.raises(DataError, match=r"scene0001_00/depth/0\.png: depth PNG is L \(8-bit or colour\)"):
        ScanNetFrames(scannet_root)
    assert len(ScanNetFrames(scannet_root, modalities=["rgb"])) == 24


# ----------------------------------------------------------------------------------------------
# NYU Depth V2
# ----------------------------------------------------------------------------------------------


def test_nyu_reads_upright_frames_in_metres(tmp_path):
    mat = _write_nyu(tmp_path / "nyu_depth_v2_labeled.mat", ["kitchen", "living_room", "cafe", "kitchen"])
    ds = NYUDepthV2(mat)
    rgb, depth = _nyu_upright(4)
    assert ds.class_names == ["cafe", "kitchen", "living_room"] and ds.labels == [1, 2, 0, 1]
    assert ds.ids == ["0000", "0001", "0002", "0003"]
    assert ds.split_groups == ["kitchen_0000a", "living_room_0000a", "cafe_0001a", "kitchen_0001a"]
    s = ds[2]
    assert s.images["rgb"].shape == (3, 6, 8) and s.images["depth"].shape == (1, 6, 8)
    assert torch.equal(torch.round(s.images["rgb"] * 255).to(torch.uint8), torch.from_numpy(rgb[2]).permute(2, 0, 1))
    assert torch.allclose(s.images["depth"][0], torch.from_numpy(depth[2]))
    assert s.images["rgb"][0, 0, 7] * 255 == pytest.approx(9)  # top-right pixel: 10*0 + 7 + 2


def test_nyu_ten_class_mapping_and_bad_depth(tmp_path):
    mat = _write_nyu(tmp_path / "a.mat", ["kitchen", "living_room", "cafe"])
    ds = NYUDepthV2(mat, class_names=NYU_TEN_CLASSES, others="others", modalities=["depth"], size=(3, 4))
    assert ds.labels == [1, 2, 9]
    assert ds[0].images["depth"].shape == (1, 3, 4) and set(ds[0].images) == {"depth"}
    _, depth = _nyu_upright(3)
    depth[1, 2, 3] = np.nan
    bad = NYUDepthV2(_write_nyu(tmp_path / "b.mat", ["kitchen"] * 3, depth=depth))
    with pytest.raises(DataError, match=r"b\.mat\[1\]: depth holds NaN"):
        bad[1]
    (tmp_path / "c.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(DataError, match=r"c\.mat: cannot read as a MATLAB v5 / v7 file"):
        NYUDepthV2(tmp_path / "c.mat")
    (tmp_path / "d.mat").write_bytes(b"\x89HDF\r\n truncated")
    with pytest.raises(DataError, match=r"d\.mat: cannot open as HDF5"):
        NYUDepthV2(tmp_path / "d.mat")


# NYU Depth V2 variants


def _write_nyu_v5(path: Path, scene_types: list[str]) -> Path:
    """The labeled variables re-saved as MATLAB v5 (scipy.io.savemat): MATLAB's H x W x 3 x N, cells N x 1."""
    import scipy.io

    rgb, depth = _nyu_upright(len(scene_types))
    cells = np.empty((len(scene_types), 1), dtype=object)
    cells[:, 0] = scene_types
    scenes = np.empty((len(scene_types), 1), dtype=object)
    scenes[:, 0] = [f"{s}_{i // 2:04d}a" for i, s in enumerate(scene_types)]
    scipy.io.savemat(path, {"images": rgb.transpose(1, 2, 3, 0), "depths": depth.transpose(1, 2, 0),
                            "sceneTypes": cells, "scenes": scenes})
    return path


def test_nyu_variant_mat_v5_read_like_the_v73_release(tmp_path):
    types_ = ["kitchen", "living_room", "cafe", "kitchen"]
    v5 = NYUDepthV2(_write_nyu_v5(tmp_path / "v5.mat", types_))
    v73 = NYUDepthV2(_write_nyu(tmp_path / "v73.mat", types_))
    assert (tmp_path / "v5.mat").read_bytes().startswith(b"MATLAB 5.0 MAT-file")
    assert v5.variant == "mat_v5" and v73.variant == "mat_v7.3"
    assert v5.class_names == v73.class_names and v5.labels == v73.labels and v5.split_groups == v73.split_groups
    for i in range(4):
        a, b = v5[i].images, v73[i].images
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["depth"], b["depth"])


def test_nyu_variant_folder_holding_the_labeled_mat(tmp_path):
    _write_nyu(tmp_path / "nyu_depth_v2_labeled.mat", ["kitchen", "office"])
    assert NYUDepthV2(tmp_path).mat_path == tmp_path / "nyu_depth_v2_labeled.mat"


def test_nyu_variant_splits_mat_refused(tmp_path):
    import scipy.io

    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.arange(1, 796)[:, None],
                                                "testNdxs": np.arange(796, 1450)[:, None]})
    with pytest.raises(DataError, match=r"splits\.mat: this is splits\.mat .*nyu_depth_v2_labeled\.mat"):
        NYUDepthV2(tmp_path / "splits.mat")


def test_nyu_variant_densedepth_kaggle_refused(tmp_path):
    """DenseDepth's nyu_data.zip: data/nyu2_train/<scene>_out/<n>.jpg + <n>.png (8-bit), data/nyu2_train.csv."""
    scene = tmp_path / "data" / "nyu2_train" / "kitchen_0001_out"
    scene.mkdir(parents=True)
    Image.fromarray(_two_tone_rgb(6, 8)).save(scene / "1.jpg")
    Image.fromarray(np.full((6, 8), 60, np.uint8)).save(scene / "1.png")
    (tmp_path / "data" / "nyu2_train.csv").write_text("data/nyu2_train/kitchen_0001_out/1.jpg,"
                                                     "data/nyu2_train/kitchen_0001_out/1.png\n")
    with pytest.raises(DataError, match=r"nyu2_train\.csv: the DenseDepth / Kaggle repackaging.*8-bit.*"
                                        r"nyu_depth_v2_labeled\.mat"):
        NYUDepthV2(tmp_path)


def test_nyu_variant_sparse_to_dense_h5_refused(tmp_path):
    """sparse-to-dense / FastDepth nyudepthv2/train/<scene>/<n>.h5 with rgb (3 x H x W) and depth (H x W)."""
    scene = tmp_path / "nyudepthv2" / "train" / "kitchen_0001a"
    scene.mkdir(parents=True)
    rgb, depth = _nyu_upright(1)
    with h5py.File(scene / "00001.h5", "w") as f:
        f.create_dataset("rgb", data=rgb[0].transpose(2, 0, 1))
        f.create_dataset("depth", data=depth[0])
    with pytest.raises(DataError, match=r"00001\.h5: the sparse-to-dense / FastDepth \.h5 repackaging"):
        NYUDepthV2(tmp_path / "nyudepthv2")


def test_nyu_variant_raw_dump_refused(tmp_path):
    scene = tmp_path / "raw" / "bedroom_0001"
    scene.mkdir(parents=True)
    (scene / "INDEX.txt").write_text("a-1294886363.011060-3164794231.dump\n")
    Image.fromarray(np.full((6, 8), 700, np.uint16)).save(scene / "d-1294886362.665769-3143174130.pgm")
    with pytest.raises(DataError, match=r"INDEX\.txt: the raw NYUv2 dump"):
        NYUDepthV2(tmp_path / "raw")


# ----------------------------------------------------------------------------------------------
# SUN RGB-D
# ----------------------------------------------------------------------------------------------


def test_sunrgbd_bit_shift_matches_toolbox_formula():
    v = np.arange(65536, dtype=np.uint32)
    toolbox = ((v >> 3) | (v << 13)) & 0xFFFF  # bitor(bitshift(d, -3), bitshift(d, 16 - 3)) on uint16
    assert np.array_equal(decode_sunrgbd_depth(v.astype(np.uint16)), toolbox)
    mm = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(decode_sunrgbd_depth(_sun_encode(mm)), mm)


def test_sunrgbd_folders_labels_and_depth(tmp_path):
    root, bfx = _write_sunrgbd(tmp_path / "SUNRGBD")
    ds = SUNRGBD(root)
    assert ds.ids == ["kv1/NYUdata/NYU0001", "kv2/kinect2data/000002_2014-05-26_rgbf000103-resize",
                      "xtion/sun3ddata/mit_32/0000001"]
    assert ds.class_names == ["bedroom", "office"] and ds.labels == [0, 1, None]
    d = ds[0].images["depth"][0]
    assert d[5, 7].item() == pytest.approx(1.234, abs=1e-6)
    assert d[6, 7].item() == pytest.approx(60.0, abs=1e-4)
    assert d[0, 0].item() == pytest.approx(2.0, abs=1e-6)
    assert ds[0].images["rgb"].shape == (3, 30, 40) and ds[0].images["rgb"][0, 10, 3] > 0.8
    raw = SUNRGBD(root, use_bfx=False)[1].images["depth"]
    assert raw[0, 5, 7] == 0.0 and raw[0, 6, 7].item() == pytest.approx(60.0, abs=1e-4)  # depth/ keeps the hole
    assert SUNRGBD(root, size=(15, 20))[1].images["depth"].shape == (1, 15, 20)


def test_sunrgbd_errors_name_the_file(tmp_path):
    root, _ = _write_sunrgbd(tmp_path / "SUNRGBD")
    folder = root / "kv1" / "NYUdata" / "NYU0001"
    Image.fromarray(np.full((30, 40), 128, np.uint8)).save(folder / "image" / "NYU0001.jpg")  # greyscale
    with pytest.raises(DataError, match=r"NYU0001\.jpg: colour image has 1 channel"):
        SUNRGBD(root)[0]
    (folder / "depth_bfx" / "NYU0001.png").unlink()
    with pytest.raises(DataError, match=r"depth_bfx/NYU0001\.png: missing depth.*use_bfx=False"):
        SUNRGBD(root)


# SUN RGB-D variants


def test_sunrgbd_variant_toolbox_folder_refused(tmp_path):
    toolbox = tmp_path / "SUNRGBDtoolbox"
    (toolbox / "Metadata").mkdir(parents=True)
    (toolbox / "traintestSUNRGBD").mkdir()
    (toolbox / "Metadata" / "SUNRGBDMeta.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    (toolbox / "traintestSUNRGBD" / "allsplit.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(DataError, match=r"Metadata/SUNRGBDMeta\.mat: the SUNRGBDtoolbox.*SUNRGBD\.zip"):
        SUNRGBD(toolbox)


def test_sunrgbd_variant_votenet_export_refused(tmp_path):
    """VoteNet / mmdetection3d sunrgbd_trainval: image/000001.jpg, depth/000001.mat, calib/, label/."""
    import scipy.io

    root = tmp_path / "sunrgbd_trainval"
    for sub in ("image", "depth", "calib", "label"):
        (root / sub).mkdir(parents=True)
    for n in (1, 2):
        Image.fromarray(_two_tone_rgb(6, 8)).save(root / "image" / f"{n:06d}.jpg")
        scipy.io.savemat(root / "depth" / f"{n:06d}.mat", {"instance": np.zeros((10, 6), np.float32)})
    with pytest.raises(DataError, match=r"sunrgbd_trainval: the VoteNet / mmdetection3d export"):
        SUNRGBD(root)


def test_sunrgbd_variant_8bit_depth_refused_when_opened(tmp_path):
    root, _ = _write_sunrgbd(tmp_path / "SUNRGBD")
    viz = root / "kv2" / "kinect2data" / "000002_2014-05-26_rgbf000103-resize" / "depth_bfx" / "0000103.png"
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(viz)  # a colour-mapped visualisation
    with pytest.raises(DataError, match=r"depth_bfx/0000103\.png: depth PNG is RGB \(8-bit or colour\).*SUNRGBD\.zip"):
        SUNRGBD(root)
    assert len(SUNRGBD(root, modalities=["rgb"])) == 3 and len(SUNRGBD(root, use_bfx=False)) == 3


def test_sunrgbd_variant_without_depth_bfx_asks_for_use_bfx_false(tmp_path):
    import shutil

    root, _ = _write_sunrgbd(tmp_path / "SUNRGBD")
    for bfx in list(root.rglob("depth_bfx")):
        shutil.rmtree(bfx)
    with pytest.raises(DataError, match=r"depth_bfx: no sample folder has depth_bfx/.*use_bfx=False"):
        SUNRGBD(root)
    assert SUNRGBD(root, use_bfx=False)[1].images["depth"][0, 5, 7] == 0.0


# ----------------------------------------------------------------------------------------------
# EuroSAT-MS
# ----------------------------------------------------------------------------------------------


def test_eurosat_band_order_stretch_and_labels(eurosat_root):
    root, cube = eurosat_root
    ds = EuroSATMS(root)
    assert ds.class_names == list(EUROSAT_CLASSES) and len(ds) == 20
    assert ds.text_names[2] == "brushland or shrubland"
    i = ds.ids.index("Pasture/Pasture_1")
    assert ds.labels[i] == EUROSAT_CLASSES.index("Pasture")
    s = ds[i]
    data = np.roll(cube, EUROSAT_CLASSES.index("Pasture") + 1, axis=-1).astype(np.float32)
    red, green, blue, b12 = (data[EUROSAT_BANDS.index(b)] for b in ("B04", "B03", "B02", "B12"))
    assert torch.allclose(s.images["rgb"], torch.from_numpy(np.clip(np.stack([red, green, blue]) / 3000, 0, 1)))
    assert torch.allclose(s.images["swir"], torch.from_numpy(np.clip(np.stack([b12] * 3) / 4095, 0, 1)))
    assert not np.allclose(b12, data[EUROSAT_BANDS.index("B11")])  # the fixture tells B12 from B11
    planar = ds[ds.ids.index("Pasture/Pasture_2")]  # 13 x H x W planar file reads the same way
    assert planar.images["rgb"].shape == (3, 64, 64)
    composite = EuroSATMS(root, modalities=["swir"], size=(32, 32), swir_bands=("B12", "B8A", "B04"))[0]
    assert set(composite.images) == {"swir"} and composite.images["swir"].shape == (3, 32, 32)


def test_eurosat_errors(eurosat_root, tmp_path):
    root, _ = eurosat_root
    with pytest.raises(DataError, match="class folder missing"):
        EuroSATMS(tmp_path)
    (tmp_path / "Forest").mkdir()
    tifffile.imwrite(tmp_path / "Forest" / "Forest_1.tif", np.zeros((64, 64, 3), np.uint16))
    with pytest.raises(DataError, match=r"Forest_1\.tif: shape \(64, 64, 3\), expected 13 bands"):
        EuroSATMS(tmp_path, class_names=["Forest"])[0]


# EuroSAT variants


def _write_eurosat_files(root: Path, cube: np.ndarray, order: Sequence[str], classes: Sequence[str]) -> Path:
    """Class folders of one 13 x 64 x 64 `cube` (EUROSAT_BANDS order) stored with the bands `order`."""
    stored = np.stack([cube[EUROSAT_BANDS.index(b)] for b in order])
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        tifffile.imwrite(root / cls / f"{cls}_1.tif", np.roll(stored, k, axis=-1).transpose(1, 2, 0),
                         photometric="minisblack", planarconfig="contig")
    return root


def test_eurosat_variant_nested_zip_layout_read(eurosat_root, tmp_path):
    _, cube = eurosat_root
    nested = tmp_path / "ds" / "images" / "remote_sensing" / "otherDatasets" / "sentinel_2" / "tif"
    _write_eurosat_files(nested, cube, EUROSAT_BANDS, EUROSAT_CLASSES[:2])
    ds = EuroSATMS(tmp_path, class_names=EUROSAT_CLASSES[:2])
    assert ds.root == nested and ds.ids == ["AnnualCrop/AnnualCrop_1", "Forest/Forest_1"]


def test_eurosat_variant_rgb_jpeg_release_refused(tmp_path):
    for cls in EUROSAT_CLASSES:
        (tmp_path / "EuroSAT_RGB" / cls).mkdir(parents=True)
        Image.fromarray(_two_tone_rgb(64, 64)).save(tmp_path / "EuroSAT_RGB" / cls / f"{cls}_1.jpg")
    with pytest.raises(DataError, match=r"AnnualCrop_1\.jpg: the EuroSAT RGB release.*no SWIR.*EuroSAT_MS\.zip"):
        EuroSATMS(tmp_path / "EuroSAT_RGB")
    with pytest.raises(DataError, match=r"AnnualCrop_1\.jpg: the EuroSAT RGB release"):
        EuroSATMS(tmp_path)  # a folder above it


def test_eurosat_variant_12_bands_without_b10_refused_or_read_with_its_order(eurosat_root, tmp_path):
    _, cube = eurosat_root
    no_b10 = tuple(b for b in EUROSAT_BANDS if b != "B10")
    root = _write_eurosat_files(tmp_path / "L2A", cube, no_b10, EUROSAT_CLASSES[:2])
    with pytest.raises(DataError, match=r"AnnualCrop_1\.tif: shape \(64, 64, 12\), expected 13 bands.*12 bands: a "
                                        r"re-packaging without B10.*band_order='eurosat_no_b10'"):
        EuroSATMS(root, class_names=EUROSAT_CLASSES[:2])
    ds = EuroSATMS(root, class_names=EUROSAT_CLASSES[:2], band_order="eurosat_no_b10")
    official = EuroSATMS(_write_eurosat_files(tmp_path / "MS", cube, EUROSAT_BANDS, EUROSAT_CLASSES[:2]),
                         class_names=EUROSAT_CLASSES[:2])
    for i in range(2):
        assert torch.equal(ds[i].images["rgb"], official[i].images["rgb"])
        assert torch.equal(ds[i].images["swir"], official[i].images["swir"])


def test_eurosat_variant_sentinel2_band_order_detected_and_read(eurosat_root, tmp_path):
    _, cube = eurosat_root
    root = _write_eurosat_files(tmp_path / "s2", cube, SENTINEL2_BANDS, EUROSAT_CLASSES[:3])
    with pytest.raises(DataError, match=r"AnnualCrop_1\.tif: band 10 \(0-based\) is the lowest band in 3 of 3.*"
                                        r"B10 at 9.*band_order='sentinel2'"):
        EuroSATMS(root, class_names=EUROSAT_CLASSES[:3])
    ds = EuroSATMS(root, class_names=EUROSAT_CLASSES[:3], band_order="sentinel2")
    official = EuroSATMS(_write_eurosat_files(tmp_path / "MS", cube, EUROSAT_BANDS, EUROSAT_CLASSES[:3]),
                         class_names=EUROSAT_CLASSES[:3])
    assert all(torch.equal(ds[i].images["swir"], official[i].images["swir"]) for i in range(3))
    assert len(EuroSATMS(root, class_names=EUROSAT_CLASSES[:3], verify_band_order=False)) == 3


def test_eurosat_variant_parquet_export_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"train-00000-of-00001\.parquet: a Hugging Face parquet export"):
        EuroSATMS(tmp_path)


# ----------------------------------------------------------------------------------------------
# Splits and the factory
# ----------------------------------------------------------------------------------------------


def test_split_indices_deterministic_disjoint_and_grouped():
    a = split_indices(100, (0.8, 0.2), seed=3)
    assert a == split_indices(100, (0.8, 0.2), seed=3) and a != split_indices(100, (0.8, 0.2), seed=4)
    assert [len(p) for p in a] == [80, 20] and sorted(a[0] + a[1]) == list(range(100))
    groups = [f"scan{i // 10}" for i in range(100)]
    g = split_indices(100, (0.7, 0.3), seed=0, groups=groups)
    assert sorted(g[0] + g[1]) == list(range(100))
    assert not {groups[i] for i in g[0]} & {groups[i] for i in g[1]}
    assert len(split_indices(10, (0.5,), seed=0)[0]) == 5
    with pytest.raises(ValueError):
        split_indices(10, (0.8, 0.4))


def test_load_dataset_names_splits_and_embedded(tmp_path, scannet_root, monkeypatch):
    with pytest.raises(DataError, match="unknown dataset 'kitti'.*sunrgbd"):
        load_dataset("kitti", tmp_path)
    assert set(DATASET_NAMES) == {"embedded", "paired_folder", "scannet", "nyuv2", "sunrgbd", "eurosat"}
    adapt = load_dataset("scannet", scannet_root, split="adapt", split_fractions=(0.5, 0.5), frame_stride=4)
    evals = load_dataset("scannet", scannet_root, split="eval", split_fractions=(0.5, 0.5), frame_stride=4)
    assert len(adapt) == len(evals) == 3 and not set(adapt.ids) & set(evals.ids)
    assert {i.split("/")[0] for i in adapt.ids}.isdisjoint({i.split("/")[0] for i in evals.ids})
    assert adapt[0].id == adapt.ids[0] and adapt.class_names == list(SCANNET_SCENE_TYPES)
    with pytest.raises(DataError, match="split 'test'"):
        load_dataset("scannet", scannet_root, split="test")

    sample = Sample({"rgb": torch.rand(3, 8, 8), "depth": torch.full((1, 8, 8), 2.0)}, label=0, id="a")
    bench = tmp_path / "bench"
    write_paired_folder(bench / "eval", [sample], ["chair"])
    seen = {}

    def build_benchmark(cfg, root=None):
        seen["cfg"], seen["root"] = cfg, root
        return bench

    fake = types.ModuleType("edgevl_lib.render")  # stands in for render.py, so no rendering happens here
    fake.build_benchmark = build_benchmark
    monkeypatch.setitem(sys.modules, "edgevl_lib.render", fake)
    ds = load_dataset("embedded", tmp_path / "cache", split="eval", seed=7, image_size=8, modalities=["depth"])
    assert seen["cfg"].seed == 7 and seen["root"] == tmp_path / "cache"
    assert ds.ids == ["a"] and ds.modalities == ("depth",)
    assert ds[0].images["depth"][0, 0, 0].item() == pytest.approx(2.0)
    with pytest.raises(DataError, match="teacher_pretrain"):
        load_dataset("embedded")
    assert load_dataset("paired_folder", bench, split="eval").class_names == ["chair"]

"""Tests for edgevl_lib.data: the paired-folder format, file I/O units, encodings, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevl_lib.data import (
    DataError,
    ModalityEncoding,
    PairedFolder,
    Sample,
    collate_samples,
    encode_modality,
    read_class_names,
    read_image,
    write_image,
    write_paired_folder,
)


def _samples(n: int = 4, size: int = 8) -> list[Sample]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        rgb = torch.rand(3, size, size, generator=g)
        depth = 0.5 + 5 * torch.rand(1, size, size, generator=g)
        depth[0, 0, 0] = 0.0  # an invalid pixel
        thermal = 15 + 20 * torch.rand(1, size, size, generator=g)
        out.append(Sample({"rgb": rgb, "depth": depth, "thermal": thermal}, label=i % 2 if i < 3 else None, id=f"s{i:03d}"))
    return out


@pytest.fixture()
def folder(tmp_path):
    return write_paired_folder(tmp_path / "ds", _samples(), ["cat", "dog"])


def test_paired_folder_round_trip_keeps_units(folder):
    ds = PairedFolder(folder)
    src = _samples()
    assert ds.modalities == ("rgb", "depth", "thermal")
    assert ds.class_names == ["cat", "dog"]
    assert ds.labels == [0, 1, 0, None]
    s = ds[1]
    assert s.id == "s001" and s.label == 1
    assert torch.allclose(s.images["rgb"], src[1].images["rgb"], atol=1 / 255 / 2 + 1e-6)
    assert torch.allclose(s.images["depth"], src[1].images["depth"], atol=0.0005 + 1e-6)  # 1 mm steps
    assert torch.allclose(s.images["thermal"], src[1].images["thermal"], atol=0.005 + 1e-4)  # 0.01 K steps
    assert s.images["depth"][0, 0, 0] == 0.0  # invalid stays invalid


def test_paired_folder_resize_and_modality_selection(folder):
    ds = PairedFolder(folder, modalities=["rgb", "depth"], size=(4, 4))
    s = ds[0]
    assert set(s.images) == {"rgb", "depth"}
    assert s.images["rgb"].shape == (3, 4, 4) and s.images["depth"].shape == (1, 4, 4)


def test_depth_png_is_millimetres(tmp_path):
    write_image(tmp_path / "d.png", np.full((2, 3), 1.234, np.float32), "depth")
    from PIL import Image

    raw = np.array(Image.open(tmp_path / "d.png"))
    assert raw.dtype == np.uint16 and (raw == 1234).all()
    assert torch.allclose(read_image(tmp_path / "d.png", "depth"), torch.full((1, 2, 3), 1.234))


def test_missing_pair_names_the_file(folder):
    (folder / "depth" / "s002.png").unlink()
    with pytest.raises(DataError, match=r"depth/s002\.png"):
        PairedFolder(folder)


def test_rgb_missing_for_existing_depth_names_the_file(folder):
    (folder / "rgb" / "s000.png").unlink()
    with pytest.raises(DataError, match=r"rgb/s000\.png"):
        PairedFolder(folder)


def test_corrupt_image_names_the_file(folder):
    path = folder / "rgb" / "s001.png"
    whole = path.read_bytes()
    path.write_bytes(whole[:60])  # header intact, pixel data cut: refused when decoded
    ds = PairedFolder(folder)
    with pytest.raises(DataError, match=r"s001\.png: cannot decode"):
        ds[1]
    path.write_bytes(whole[:40])  # header cut: refused when the folder is opened (geometry check)
    with pytest.raises(DataError, match=r"s001\.png: cannot decode image header"):
        PairedFolder(folder)


def test_wrong_channel_count_names_the_file(folder):
    write_image(folder / "rgb" / "s000.png", np.zeros((8, 8), np.uint8), "rgb")
    with pytest.raises(DataError, match=r"s000\.png: rgb image has 1 channels, expected 3"):
        PairedFolder(folder)[0]


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        PairedFolder(tmp_path / "nope")


@pytest.mark.parametrize("text, msg", [("", "empty"), ("a\nb\na\n", "duplicate")])
def test_bad_class_list(tmp_path, text, msg):
    (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(DataError, match=msg):
        read_class_names(tmp_path / "classes.txt")


def test_write_is_atomic_on_failure(tmp_path):
    bad = _samples(2)
    bad[1].images["rgb"] = "not an image"
    with pytest.raises(Exception):
        write_paired_folder(tmp_path / "ds", bad, ["cat", "dog"])
    assert list(tmp_path.iterdir()) == []


def test_encode_replicate_fixed_range():
    depth = torch.tensor([[[0.5, 3.25], [6.0, 0.0]]])
    out = encode_modality(depth, "depth", ModalityEncoding("replicate", range=(0.5, 6.0)))
    expected = torch.tensor([[0.0, 0.5], [1.0, 0.0]])  # the invalid 0 maps to 0
    assert out.shape == (3, 2, 2)
    for c in range(3):
        assert torch.allclose(out[c], expected)


def test_encode_minmax_and_invert():
    x = torch.tensor([[[1.0, 2.0], [3.0, 5.0]]])
    out = encode_modality(x, "thermal", ModalityEncoding("minmax"))
    assert torch.allclose(out[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    inv = encode_modality(x, "thermal", ModalityEncoding("replicate", range=(1.0, 5.0), invert=True))
    assert torch.allclose(inv[0], torch.tensor([[1.0, 0.75], [0.5, 0.0]]))


def test_encode_colormap_matches_matplotlib():
    from matplotlib import colormaps

    x = torch.tensor([[[0.5, 6.0]]])
    out = encode_modality(x, "depth", ModalityEncoding("colormap", range=(0.5, 6.0), colormap="turbo"))
    ref = colormaps["turbo"](np.array([0.0, 1.0]))[:, :3]
    assert torch.allclose(out[:, 0, :].T, torch.from_numpy(ref).float(), atol=1e-6)


def test_encoding_description_records_range():
    assert ModalityEncoding("replicate").describe("depth") == "depth:replicate[0.5,6]"
    assert ModalityEncoding("colormap", range=(1, 4)).describe("depth") == "depth:colormap:turbo[1,4]"


def test_collate():
    batch = collate_samples(_samples(3))
    assert batch["rgb"].shape == (3, 3, 8, 8) and batch["depth"].shape == (3, 1, 8, 8)
    assert batch["label"].tolist() == [0, 1, 0] and batch["id"] == ["s000", "s001", "s002"]


def test_encoder_inputs_resizes_after_encoding():
    from edgevl_lib.data import encoder_inputs

    batch = collate_samples(_samples(2))
    x = encoder_inputs(batch, ["rgb", "depth"], size=4)
    assert x["rgb"].shape == (2, 3, 4, 4) and x["depth"].shape == (2, 3, 4, 4)
    assert float(x["depth"].min()) >= 0 and float(x["depth"].max()) <= 1


# ----------------------------------------------------------------------------------------------
# Geometry (each non-RGB frame against its RGB frame) and class subsets
# ----------------------------------------------------------------------------------------------


def _shrink_depth(folder, ids, size=4):
    """Overwrite the depth PNG of `ids` with a size x size frame (2 m, one hole at the top left)."""
    for sid in ids:
        depth = np.full((1, size, size), 2.0, np.float32)
        depth[0, 0, 0] = 0.0
        write_image(folder / "depth" / f"{sid}.png", depth, "depth")


def test_geometry_mismatch_names_the_first_file_the_count_and_the_fix(folder):
    _shrink_depth(folder, ["s001", "s003"])
    with pytest.raises(DataError, match=r"depth/s001\.png: depth frame is 4x4 \(W x H\) but its rgb frame "
                                         r".*rgb/s001\.png is 8x8; 2 of 4 ids .*Resize those files.*"
                                         r"align='resize_to_rgb'"):
        PairedFolder(folder)
    # without rgb there is no frame to register to, but depth frames of two sizes still cannot be batched
    with pytest.raises(DataError, match=r"depth/s001\.png: depth frame is 4x4 .* but .*depth/s000\.png is 8x8; "
                                         r"2 of 4 depth frames .*data\.options: \{size: \[8, 8\]\}"):
        PairedFolder(folder, modalities=["depth"])
    assert len(PairedFolder(folder, modalities=["depth"], size=(8, 8))) == 4
    with pytest.raises(DataError, match=r"align='stretch'; choose one of \['refuse', 'resize_to_rgb'\]"):
        PairedFolder(folder, align="stretch")


def test_rgb_frames_of_two_sizes_are_refused_naming_the_file_unless_size_is_set(folder):
    from PIL import Image

    for m in ("rgb", "depth", "thermal"):  # one id recorded at another resolution in every modality
        path = folder / m / "s002.png"
        with Image.open(path) as im:
            im.resize((6, 6)).save(path)
    with pytest.raises(DataError, match=r"rgb/s002\.png: rgb frame is 6x6 \(W x H\) but .*rgb/s000\.png is 8x8; "
                                         r"1 of 4 rgb frames differ .*cannot be batched"):
        PairedFolder(folder)
    ds = PairedFolder(folder, size=(8, 8))
    assert collate_samples([ds[i] for i in range(4)])["rgb"].shape == (4, 3, 8, 8)


def test_geometry_resize_to_rgb_option_resizes_nearest(folder):
    _shrink_depth(folder, ["s001", "s003"])
    ds = PairedFolder(folder, align="resize_to_rgb")
    d = ds[1].images["depth"]
    assert d.shape == (1, 8, 8) and set(torch.unique(d).tolist()) == {0.0, 2.0}  # nearest: no blended holes
    assert torch.all(d[0, :2, :2] == 0) and torch.all(d[0, 2:, 2:] == 2.0)
    batch = collate_samples([ds[i] for i in range(4)])  # used to fail: "stack expects each tensor to be equal size"
    assert batch["depth"].shape == (4, 1, 8, 8) and batch["thermal"].shape == (4, 1, 8, 8)
    assert torch.equal(ds[0].images["depth"], PairedFolder(folder, modalities=["rgb", "depth"],
                                                           align="resize_to_rgb")[0].images["depth"])


def test_geometry_check_reads_headers_only_and_is_fast(tmp_path, monkeypatch):
    """3000 ids x 3 modalities of 64 px PNGs (the embedded adapt split's shape) open in well under 2 s."""
    from PIL import ImageFile

    src = write_paired_folder(tmp_path / "one", _samples(1, size=64), ["cat", "dog"])
    root = tmp_path / "big"
    ids = [f"{i:05d}" for i in range(3000)]
    for m in ("rgb", "depth", "thermal"):
        (root / m).mkdir(parents=True)
        data = (src / m / "s000.png").read_bytes()
        for sid in ids:
            (root / m / f"{sid}.png").write_bytes(data)
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "labels.csv").write_text("id,label\n" + "".join(f"{sid},cat\n" for sid in ids))

    def no_decode(self, *args, **kwargs):
        raise AssertionError("the geometry check decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    import time

    start = time.perf_counter()
    ds = PairedFolder(root)
    seconds = time.perf_counter() - start
    assert len(ds) == 3000 and seconds < 2.0, seconds


def test_class_names_subset_remaps_labels_and_unlabels_the_rest(folder):
    ds = PairedFolder(folder, class_names=["dog"])
    assert ds.class_names == ["dog"] and ds.labels == [None, 0, None, None]
    swapped = PairedFolder(folder, class_names=["dog", "cat"])
    assert swapped.labels == [1, 0, 1, None] and swapped[1].label == 0
    with pytest.raises(DataError, match=r"classes\.txt: class names \['cow', 'pig'\] are not in classes\.txt"):
        PairedFolder(folder, class_names=["cat", "cow", "pig"])
    with pytest.raises(DataError, match=r"repeats \['cat'\]"):
        PairedFolder(folder, class_names=["cat", "cat"])

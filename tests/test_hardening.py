"""Hardening (issue 8): bad input, interrupted runs, safe loading, offline by default.

One test per case of the issue, named after it. Bad input: one DataError / CheckpointError / CacheMismatchError /
Teacher* error whose message names the offending file (full path) and the fix. Interrupted runs: a child process
is killed with SIGKILL mid-epoch (training) or mid-build (embedding cache), restarted, and must end where an
uninterrupted run ends. Safe loading: nothing unpickles a file (a static scan of edgevl_lib/ and pickle payloads
that would leave a marker file if they ran). Offline: without EDGEVL_ALLOW_DOWNLOAD no code path opens a socket
or even resolves a host name, even when the user has not set HF_HUB_OFFLINE.

Everything runs on the 16-image 16x16 fake paired folder of helpers_fake.py and the `conv_tiny_test` student.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgevl_lib import data, students
from edgevl_lib.cache import CacheMismatchError, EmbeddingCache, build_embedding_cache, cache_request
from edgevl_lib.config import Stage1Config
from edgevl_lib.curation import load_label_superset
from edgevl_lib.data import DataError, PairedFolder, read_class_names, read_image, write_paired_folder
from edgevl_lib.loaders import load_dataset
from edgevl_lib.students import CheckpointError, StudentWeightsMissing, create_student, load_student, save_student
from edgevl_lib.teachers import TeacherCheckpointError, TeacherWeightsMissing
from edgevl_lib.train import train_stage1

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import NetworkBlocked  # noqa: E402
from helpers_fake import FakeTeacher, fake_samples, make_fake_cache, make_paired_folder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
LIBRARY = REPO / "edgevl_lib"
SMOKE = Stage1Config(device="cpu").smoke()  # conv_tiny_test, 32 px, batch 8: 2 steps per epoch on 16 images

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def folder(tmp_path) -> Path:
    """A fresh 4-sample paired folder (rgb 8-bit, depth 16-bit mm) per test."""
    make_paired_folder(tmp_path / "ds", n=4, size=8)
    return tmp_path / "ds"


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    dataset = make_paired_folder(root / "data")
    return {"root": root, "dataset": dataset, "cache": make_fake_cache(root / "cache", dataset, FakeTeacher())}


def names(path: Path) -> str:
    """Regex matching the full path in a message."""
    return re.escape(str(path))


def raises_naming(exc: type[BaseException], path: Path, *more: str):
    """pytest.raises whose message must name `path` (full path) and then match each of `more` in order."""
    return pytest.raises(exc, match=names(path) + "".join(".*" + m for m in more))


class Evil:
    """A pickle payload: unpickling it runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------------------------
# 1. Bad input: one clear error naming the file and the fix
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["rgb", "depth"])
def test_corrupt_or_truncated_image(folder, modality):
    path = folder / modality / "s01.png"
    path.write_bytes(path.read_bytes()[:60])
    with raises_naming(DataError, path, "cannot decode image", "re-export the file"):
        PairedFolder(folder)[1]  # refused when opened (header) or when decoded (pixels)


def test_rgb_file_without_paired_nonrgb_file(folder):
    path = folder / "depth" / "s02.png"
    path.unlink()
    with raises_naming(DataError, path, "missing depth file for id 's02'", "although they have rgb",
                       "Add the file or drop the id"):
        PairedFolder(folder)


def test_nonrgb_file_without_paired_rgb_file(folder):
    path = folder / "rgb" / "s00.png"
    path.unlink()
    with raises_naming(DataError, path, "missing rgb file for id 's00'", "although they have depth"):
        PairedFolder(folder)


@pytest.mark.parametrize("modality, pixels, expected", [
    ("rgb", np.zeros((8, 8), np.uint8), "rgb image has 1 channels, expected 3"),
    ("depth", np.zeros((8, 8, 3), np.uint8), "depth image is 3-channel uint8, expected single-channel 16-bit"),
])
def test_wrong_channel_count(folder, modality, pixels, expected):
    path = folder / modality / "s00.png"
    Image.fromarray(pixels).save(path)
    with raises_naming(DataError, path, expected):
        PairedFolder(folder)[0]


@pytest.mark.parametrize("modality", ["depth", "thermal"])
def test_wrong_bit_depth(tmp_path, modality):
    samples = [data.Sample({"rgb": s.images["rgb"], modality: s.images["depth"] + 20.0}, s.label, s.id)
               for s in fake_samples(2, 8)]
    root = write_paired_folder(tmp_path / "ds", samples, ["a", "b", "c", "d"])
    path = root / modality / "s00.png"
    Image.fromarray(np.full((8, 8), 120, np.uint8)).save(path)  # an 8-bit visualisation, not a measurement
    with raises_naming(DataError, path, f"{modality} image is 1-channel uint8, expected single-channel 16-bit",
                       "export the raw"):
        PairedFolder(root)[0]


def test_depth_all_zeros(folder):
    holes = np.full((8, 8), 1500, np.uint16)
    holes[:, :7] = 0  # 7/8 of the frame without a reading: sensor holes, still a valid frame
    Image.fromarray(holes).save(folder / "depth" / "s01.png")
    depth = PairedFolder(folder)[1].images["depth"]
    assert float((depth == 0).float().mean()) == 0.875 and float(depth.max()) == pytest.approx(1.5)
    path = folder / "depth" / "s02.png"
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(path)
    with raises_naming(DataError, path, "depth is all zeros", "sample 's02'", "drop the sample"):
        PairedFolder(folder)[2]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_depth_nan_or_inf(tmp_path, bad):
    # float formats can hold NaN / inf: a float TIFF read by read_image, and NYUv2's float .mat
    metres = np.full((6, 8), 2.0, np.float32)
    metres[2, 3] = bad
    tif = tmp_path / "f0042.tiff"
    Image.fromarray(metres, mode="F").save(tif)
    with raises_naming(DataError, tif, "depth holds NaN or inf", "sample 'f0042'", "Store invalid pixels as 0"):
        read_image(tif, "depth")

    from test_loaders import _nyu_upright, _write_nyu
    from edgevl_lib.loaders import NYUDepthV2

    _, depth = _nyu_upright(3)
    depth[1, 0, 0] = bad
    mat = _write_nyu(tmp_path / "nyu.mat", ["kitchen"] * 3, depth=depth)
    with raises_naming(DataError, Path(f"{mat}[1]"), "depth holds NaN or inf", "sample '0001'"):
        NYUDepthV2(mat)[1]


def test_empty_label_file(folder, tmp_path):
    (folder / "labels.csv").write_text("id,label\n")
    with raises_naming(DataError, folder / "labels.csv", "no samples", "Add one `id,label` row"):
        PairedFolder(folder)
    (folder / "labels.csv").write_text("")
    with raises_naming(DataError, folder / "labels.csv", "needs a header row"):
        PairedFolder(folder)
    (folder / "classes.txt").write_text("# only a comment\n\n")
    with raises_naming(DataError, folder / "classes.txt", "class list is empty", "one class name per line"):
        PairedFolder(folder)
    superset = tmp_path / "superset.txt"
    superset.write_text("\n")
    with raises_naming(DataError, superset, "class list is empty"):
        load_label_superset(superset)


def test_duplicate_laden_label_file(folder, tmp_path):
    (folder / "labels.csv").write_text("id,label\ns00,chair\ns01,lamp\ns00,chair\ns02,\ns01,mug\ns03,sofa\n")
    with raises_naming(DataError, folder / "labels.csv", r"2 id\(s\) appear more than once",
                       r"'s00' on lines \[2, 4\]", r"'s01' on lines \[3, 6\]", "keep one row per id"):
        PairedFolder(folder)
    (folder / "classes.txt").write_text("chair\nlamp\nchair\nmug\nsofa\nlamp\n")
    with raises_naming(DataError, folder / "classes.txt", r"duplicate class names \['chair', 'lamp'\]",
                       "delete the repeated lines"):
        PairedFolder(folder)
    superset = tmp_path / "superset.txt"
    superset.write_text("bedroom\nkitchen\nbedroom\n")
    with raises_naming(DataError, superset, r"duplicate class names \['bedroom'\]"):
        load_label_superset(superset)


def test_label_file_that_is_not_utf8(folder):
    (folder / "classes.txt").write_bytes("chaise\nlampe\n".encode("utf-16"))
    with raises_naming(DataError, folder / "classes.txt", "not UTF-8 text", "Save it as UTF-8"):
        read_class_names(folder / "classes.txt")


def test_malformed_meta_json(folder):
    (folder / "meta.json").write_text('{"modalities": {"depth": {"scale": 0.001,}}}')
    with raises_naming(DataError, folder / "meta.json", "not valid JSON", "or delete it"):
        PairedFolder(folder)
    (folder / "meta.json").write_text('{"modalities": {"depth": {"scale": "mm"}}}')
    with raises_naming(DataError, folder / "meta.json", "must map each modality"):
        PairedFolder(folder)


def test_checkpoint_from_another_architecture(tmp_path):
    conv = save_student(create_student("conv_tiny_test", embed_dim=16, image_size=32), tmp_path / "conv.safetensors")
    with raises_naming(CheckpointError, conv, "arch='conv_tiny_test', expected 'vit_tiny_test'",
                       "load_student\\(path\\) without arguments"):
        load_student(conv, arch="vit_tiny_test")
    with raises_naming(CheckpointError, conv, "arch='conv_tiny_test' but the model has arch='vit_tiny_test'",
                       "build the model with load_student"):
        students.load_student_weights(create_student("vit_tiny_test", embed_dim=16, image_size=32), conv)
    # a sidecar copied from another checkpoint: the safetensors header still knows what the weights are
    vit = save_student(create_student("vit_tiny_test", embed_dim=16, image_size=32), tmp_path / "vit.safetensors")
    vit.with_suffix(".json").write_bytes(conv.with_suffix(".json").read_bytes())
    with raises_naming(CheckpointError, vit.with_suffix(".json"), "sidecar does not describe the weights",
                       "arch: weights 'vit_tiny_test', sidecar 'conv_tiny_test'", "Copy the .safetensors and its"):
        load_student(vit)


def _tiny_open_clip(folder: Path, name: str, width: int) -> Path:
    """Register a tiny open_clip config `name` (text/vision width `width`) and save random weights for it."""
    import open_clip
    from safetensors.torch import save_file

    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 16, "layers": 1, "width": width, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": width, "heads": 2, "layers": 1}}
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_teacher_checkpoint_from_another_architecture(tmp_path):
    from edgevl_lib.teachers import OpenClipTeacher

    _tiny_open_clip(tmp_path, "edgevl-hardening-w32", 32)
    other = _tiny_open_clip(tmp_path, "edgevl-hardening-w48", 48)
    with raises_naming(TeacherCheckpointError, other, "cannot load it into open_clip 'edgevl-hardening-w32'",
                       "another architecture", "TeacherConfig\\(model=...\\)"):
        OpenClipTeacher("edgevl-hardening-w32", checkpoint=other, device="cpu")


def test_teacher_embedding_size_does_not_match_the_cache(fake, tmp_path):
    cache_path = fake["cache"].path
    wide = FakeTeacher(embed_dim=32)
    request = cache_request(wide, fake["dataset"], range(len(fake["dataset"])), views=2, seed=0)
    with raises_naming(CacheMismatchError, cache_path, "embed_dim: cache has 16, requested 32",
                       "Call build_embedding_cache"):
        EmbeddingCache.open(cache_path, request)

    class Liar(FakeTeacher):  # declares 24 but embeds to 16
        pass
    liar = Liar(id="liar", embed_dim=16)
    liar.embed_dim = 24
    with pytest.raises(CacheMismatchError, match=r"teacher liar returned embeddings of shape \(8, 16\).*"
                                                 r"embed_dim=24.*not marked done"):
        build_embedding_cache(liar, fake["dataset"], list(range(16)), views=2, seed=0, out_root=tmp_path, batch_size=8)
    (built,) = [p for p in tmp_path.iterdir() if p.name.startswith("liar")]
    with raises_naming(CacheMismatchError, built, "only 0 / 16 rows are built"):
        EmbeddingCache.open(built)  # the failed build is never taken for a complete cache


def test_teacher_embedding_size_does_not_match_the_cache_in_online_training(fake, tmp_path):
    cfg = dataclasses.replace(SMOKE, teacher_mode="online", epochs=1)
    with raises_naming(ValueError, fake["cache"].path, "embed_dim 32", "embed_dim 16", "build_embedding_cache"):
        train_stage1(cfg, fake["dataset"], fake["cache"], FakeTeacher(embed_dim=32), out_dir=tmp_path)


def test_teacher_embedding_size_does_not_match_the_student_head(fake, tmp_path):
    student = train_stage1(dataclasses.replace(SMOKE, epochs=1), fake["dataset"], fake["cache"], out_dir=tmp_path)
    teacher = FakeTeacher(id="wide-teacher", embed_dim=32)
    with raises_naming(CheckpointError, student.last_checkpoint, "embed_dim=16, expected 32",
                       "the width of the teacher it was distilled from"):
        load_student(student.last_checkpoint, embed_dim=teacher.embed_dim)
    # resuming that run against a cache of another teacher width: refused, naming the checkpoint state
    wide_cache = make_fake_cache(tmp_path / "wide_cache", fake["dataset"], teacher)
    with raises_naming(ValueError, tmp_path / "checkpoints" / "state.json", "belongs to another run", "targets"):
        train_stage1(dataclasses.replace(SMOKE, epochs=1), fake["dataset"], wide_cache, out_dir=tmp_path)


def test_teacher_embedding_size_does_not_match_the_student_head_in_zero_shot(fake):
    from edgevl_lib.evaluate import evaluate_zero_shot

    student = create_student("conv_tiny_test", embed_dim=16, image_size=32)
    text = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    with pytest.raises(ValueError, match=r"conv_tiny_test.*embed_dim 16.*32"):
        evaluate_zero_shot(student, fake["dataset"], text, ["rgb"])


@pytest.mark.parametrize("name", ["paired_folder", "scannet", "sunrgbd", "eurosat", "nyuv2"])
def test_dataset_folder_that_does_not_exist(tmp_path, name):
    missing = tmp_path / "no" / "such" / "folder"
    with raises_naming(DataError, missing, "(does not exist|not found)"):
        load_dataset(name, missing)


def test_embedding_cache_folder_that_does_not_exist_or_is_damaged(fake, tmp_path):
    with raises_naming(CacheMismatchError, tmp_path / "nope" / "meta.json", "not an embedding cache",
                       "build_embedding_cache"):
        EmbeddingCache.open(tmp_path / "nope")
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in fake["cache"].path.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "embeddings.npy").write_bytes((copy / "embeddings.npy").read_bytes()[:200])  # truncated
    with raises_naming(CacheMismatchError, copy / "embeddings.npy", "cannot be read", "delete"):
        EmbeddingCache.open(copy)
    (copy / "meta.json").write_text("{")
    with raises_naming(CacheMismatchError, copy / "meta.json", "not an embedding-cache meta file", "delete"):
        EmbeddingCache.open(copy)


def test_teacher_returning_nan_embeddings_marks_nothing_done(fake, tmp_path):
    class NaNTeacher(FakeTeacher):
        def encode_image(self, images):
            out = super().encode_image(images)
            out[1] = float("nan")
            return out
    with pytest.raises(CacheMismatchError, match=r"NaN / inf embeddings for samples \['s01'\].*not marked done"):
        build_embedding_cache(NaNTeacher(id="nan"), fake["dataset"], list(range(16)), views=2, seed=0,
                              out_root=tmp_path, batch_size=8)
    (built,) = list(tmp_path.glob("nan-*"))
    assert int(EmbeddingCache.open(built, require_complete=False).done.sum()) == 0


# ----------------------------------------------------------------------------------------------
# 2. Interrupted runs: atomic writes, SIGKILL + resume
# ----------------------------------------------------------------------------------------------


def test_failed_paired_folder_write_keeps_the_previous_folder(folder):
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    bad = fake_samples(3, 8)
    bad[2].images["rgb"] = "not an image"
    with pytest.raises(Exception):
        write_paired_folder(folder, bad, ["a", "b", "c", "d"])
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left behind
    assert len(PairedFolder(folder)) == 4


TRAIN_CHILD = """
import dataclasses, json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from edgevl_lib.cache import EmbeddingCache
from edgevl_lib.config import Stage1Config
from edgevl_lib.train import train_stage1
from helpers_fake import SlowPairedFolder

data_root, cache_path, out, delay = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
dataset = SlowPairedFolder(data_root, delay=delay, tick_file=out / "ticks")
cfg = dataclasses.replace(Stage1Config(device="cpu").smoke(), epochs={epochs})
seen = []

def record(entry, student):
    seen.append(entry["epoch"])
    (out / "epochs_run.json").write_text(json.dumps(seen))

train_stage1(cfg, dataset, EmbeddingCache.open(cache_path), out_dir=out, callbacks=[record])
"""

CACHE_CHILD = """
import sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from edgevl_lib.cache import build_embedding_cache
from edgevl_lib.data import PairedFolder
from helpers_fake import SlowFakeTeacher

data_root, out_root, tick_file = sys.argv[1], sys.argv[2], sys.argv[3]
dataset = PairedFolder(data_root)
build_embedding_cache(SlowFakeTeacher(delay=float(sys.argv[4]), tick_file=tick_file), dataset, list(range(16)),
                      views=2, seed=0, out_root=out_root, batch_size=2)
"""


def _child(script: Path, *args: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("EDGEVL_ALLOW_DOWNLOAD", None)
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL `proc` as soon as `ready()` holds; fail if it exits or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"child exited ({proc.returncode}) before it could be killed: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("child never reached the kill point")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def test_training_killed_with_sigkill_mid_epoch_resumes_to_the_uninterrupted_run(fake, tmp_path):
    epochs = 4
    script = tmp_path / "train_child.py"
    script.write_text(TRAIN_CHILD.format(tests=str(TESTS), epochs=epochs))
    out = tmp_path / "run"
    out.mkdir()
    ticks, state_file = out / "ticks", out / "checkpoints" / "state.json"
    # 16 samples per epoch at 40 ms each; kill once epoch 2 has read 4 of its 16 samples (mid-epoch)
    proc = _child(script, fake["root"] / "data", fake["cache"].path, out, 0.04)
    _kill_when(proc, lambda: _size(ticks) >= 16 + 4)
    state = json.loads(state_file.read_text())
    assert state["epochs_done"] == 1 and 16 < _size(ticks) < 32  # killed inside epoch 2: at most one epoch lost
    assert sorted(p.name for p in state_file.parent.glob("epoch_*")) == [
        "epoch_0001.json", "epoch_0001.safetensors", "epoch_0001_optim.safetensors"]

    resumed = _child(script, fake["root"] / "data", fake["cache"].path, out, 0.0)
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()[-3000:]
    assert json.loads((out / "epochs_run.json").read_text()) == [2, 3, 4]  # epoch 1 was not redone

    clean = train_stage1(dataclasses.replace(SMOKE, epochs=epochs), fake["dataset"], fake["cache"],
                         out_dir=tmp_path / "clean")
    final = json.loads(state_file.read_text())
    assert final["epochs_done"] == epochs
    assert [h["loss"] for h in final["history"]] == [h["loss"] for h in clean.history]  # bitwise, not 0.5 points
    weights = students.load_student(out / "checkpoints" / final["student"]).state_dict()
    for name, value in clean.student.state_dict().items():
        assert torch.equal(weights[name], value.cpu()), name


def test_cache_build_killed_with_sigkill_resumes_to_the_clean_build(fake, tmp_path):
    script = tmp_path / "cache_child.py"
    script.write_text(CACHE_CHILD.format(tests=str(TESTS)))
    out_root, ticks = tmp_path / "killed", tmp_path / "ticks"
    # 8 chunks of 2 images x 2 views = 16 teacher calls at 60 ms; kill after 5 calls (chunk 2 half done)
    proc = _child(script, fake["root"] / "data", out_root, ticks, 0.06)
    _kill_when(proc, lambda: _size(ticks) >= 5)
    (folder,) = [p for p in out_root.iterdir() if not p.name.startswith(".")]
    done = int(np.load(folder / "done.npy").sum())
    assert 4 <= done < 16
    with raises_naming(CacheMismatchError, folder, f"only {done} / 16 rows are built", "again to resume"):
        EmbeddingCache.open(folder)

    teacher = FakeTeacher()
    resumed = build_embedding_cache(teacher, fake["dataset"], list(range(16)), views=2, seed=0, out_root=out_root,
                                    batch_size=2)
    assert resumed.path == folder and teacher.calls == 2 * (16 - done) // 2  # only the unfinished chunks
    clean = build_embedding_cache(FakeTeacher(), fake["dataset"], list(range(16)), views=2, seed=0,
                                  out_root=tmp_path / "clean", batch_size=2)
    assert resumed.meta["key"] == clean.meta["key"]
    assert np.array_equal(resumed.embeddings, clean.embeddings) and np.array_equal(resumed.views, clean.views)


# ----------------------------------------------------------------------------------------------
# 4. Safe loading: no unpickling anywhere
# ----------------------------------------------------------------------------------------------


def _calls(source: str, name: str) -> list[str]:
    """The argument text of every `name(...)` call in `source` (balanced parentheses)."""
    out = []
    for match in re.finditer(re.escape(name) + r"\(", source):
        depth, i = 1, match.end()
        while depth and i < len(source):
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        out.append(source[match.end():i - 1])
    return out


def test_library_source_never_unpickles():
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):  # subpackages too (teachers/, analysis/)
        source, name = path.read_text(encoding="utf-8"), path.relative_to(LIBRARY).as_posix()
        offenders += [f"{name}: torch.load({args})" for args in _calls(source, "torch.load")
                      if not re.search(r"weights_only\s*=\s*True", args)]
        offenders += [f"{name}: np.load({args})" for args in _calls(source, "np.load")
                      if re.search(r"allow_pickle\s*=\s*True", args)]
        offenders += [f"{name}: {m.group(0).strip()}" for m in re.finditer(
            r"^\s*(import|from)\s+(pickle|cPickle|_pickle|dill|cloudpickle|joblib|shelve|marshal)\b.*$", source, re.M)]
    assert not offenders, offenders


def test_pickled_int8_program_is_refused_not_run(tmp_path):
    import io
    import zipfile

    from edgevl_lib.quantize import load_int8

    # a genuine torch.export archive whose weight entry is swapped for a pickle flagged `use_pickle`: plain
    # torch.export.load runs it (weights_only=False), so load_int8 must refuse the archive before opening it
    marker, good, evil = tmp_path / "PWNED", tmp_path / "good.pt2", tmp_path / "student.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.rand(1, 2),)), good)
    payload = io.BytesIO()
    torch.save(Evil(marker), payload)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            content = src.read(name)
            if name.endswith("data/weights/weight_0"):
                content = payload.getvalue()
            elif name.endswith("model_weights_config.json"):
                content = content.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            dst.writestr(name, content)
    with raises_naming(ValueError, evil, "refused", "pickled"):
        load_int8(evil)
    assert not marker.exists()


def test_pickled_student_checkpoint_is_refused_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    path = save_student(create_student("conv_tiny_test", embed_dim=16, image_size=32), tmp_path / "s.safetensors")
    torch.save({"head.weight": torch.zeros(16, 8), "payload": Evil(marker)}, path)  # keeps the valid sidecar
    with raises_naming(CheckpointError, path, "a torch.save zip archive", "never unpickles",
                       "torch.load\\(path, weights_only=True\\)"):
        load_student(path)
    assert not marker.exists()


def test_pickled_teacher_checkpoint_is_refused_not_run(tmp_path):
    from edgevl_lib.teachers import OpenClipTeacher

    _tiny_open_clip(tmp_path, "edgevl-hardening-pickle", 32)
    marker, path = tmp_path / "PWNED", tmp_path / "open_clip_pytorch_model.bin"
    torch.save({"state_dict": {"logit_scale": torch.zeros(())}, "payload": Evil(marker)}, path)
    with raises_naming(TeacherCheckpointError, path, "refused", "pickled Python objects", "safetensors"):
        OpenClipTeacher("edgevl-hardening-pickle", checkpoint=path, device="cpu")
    assert not marker.exists()


def test_pickled_cache_array_is_refused_not_run(fake, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in fake["cache"].path.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "PWNED"
    np.save(copy / "views.npy", np.array([Evil(marker)], dtype=object), allow_pickle=True)
    with raises_naming(CacheMismatchError, copy / "views.npy", "cannot be read", "delete"):
        EmbeddingCache.open(copy)
    assert not marker.exists()


def test_pickled_optimizer_state_is_refused_on_resume(fake, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_epoch_1(record, student):
        raise Stop
    with pytest.raises(Stop):  # an interrupted 2-epoch run: epoch 1's checkpoint is on disk
        train_stage1(SMOKE, fake["dataset"], fake["cache"], out_dir=tmp_path, callbacks=[stop_after_epoch_1])
    marker, optim = tmp_path / "PWNED", tmp_path / "checkpoints" / "epoch_0001_optim.safetensors"
    torch.save({"payload": Evil(marker)}, optim)
    with raises_naming(CheckpointError, optim, "never unpickles"):
        train_stage1(SMOKE, fake["dataset"], fake["cache"], out_dir=tmp_path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# 5. Offline by default
# ----------------------------------------------------------------------------------------------


@pytest.fixture()
def no_sockets(monkeypatch):
    """A user machine WITHOUT HF_HUB_OFFLINE: the hub library would go online; every inet connection and every
    host-name lookup (even loopback ones, so no local proxy helps) is recorded and refused."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    attempts: list[str] = []

    def refuse(what):
        def blocked(*args, **kwargs):
            target = args[1] if what == "connect" else args[0]
            attempts.append(f"{what} {target!r}")
            raise NetworkBlocked(f"test: {what} {target!r} blocked")  # not an OSError: no HTTP retries
        return blocked

    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            return refuse("connect")(self, address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    return attempts


def test_offline_by_default_timm_pretrained_student(no_sockets, monkeypatch):
    monkeypatch.delenv("EDGEVL_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(StudentWeightsMissing, match="regnetx_002.*not on this machine.*EDGEVL_ALLOW_DOWNLOAD=1.*"
                                                    "pretrained=False.*tf_efficientnet_lite0"):
        create_student("regnetx_002", embed_dim=16, image_size=32, pretrained=True)
    assert no_sockets == []  # refused from the local cache alone: not even a DNS lookup


def test_download_opt_in_reaches_for_the_network(no_sockets, monkeypatch):
    monkeypatch.setenv("EDGEVL_ALLOW_DOWNLOAD", "1")
    with pytest.raises(Exception) as err:
        create_student("regnetx_002", embed_dim=16, image_size=32, pretrained=True)
    assert not isinstance(err.value, StudentWeightsMissing)
    assert any("huggingface.co" in a for a in no_sockets), no_sockets  # the opt-in is what lets it try


def test_offline_by_default_open_clip_hub_files(no_sockets, tmp_path, monkeypatch):
    import open_clip
    from safetensors.torch import save_file

    from edgevl_lib.teachers import OpenClipTeacher

    monkeypatch.delenv("EDGEVL_ALLOW_DOWNLOAD", raising=False)
    name = "edgevl-hardening-hf-tokenizer"  # a local checkpoint whose tokenizer lives on the hub
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                        "hf_tokenizer_name": "edgevl-test/not-cached-tokenizer"}}
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    ckpt = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model(name).state_dict().items()}, str(ckpt))
    with pytest.raises(TeacherWeightsMissing, match=f"open_clip {name} needs files from the Hugging Face hub.*"
                                                    "EDGEVL_ALLOW_DOWNLOAD=1"):
        OpenClipTeacher(name, checkpoint=ckpt, device="cpu")
    assert no_sockets == []


# ----------------------------------------------------------------------------------------------
# 7. Issue 17: paired folders from a recipe (both layouts, class subsets, geometry), before any model is built
# ----------------------------------------------------------------------------------------------


def _split_folders(root: Path, n_adapt: int = 8, n_eval: int = 4) -> Path:
    """The split-folder layout: root/adapt and root/eval, each a paired folder (FAKE_CLASSES, 8 px)."""
    write_paired_folder(root / "adapt", fake_samples(n_adapt, 8, seed=1), ["chair", "lamp", "mug", "sofa"])
    write_paired_folder(root / "eval", fake_samples(n_eval, 8, seed=2), ["chair", "lamp", "mug", "sofa"])
    return root


def test_load_splits_split_folders_layout(tmp_path):
    from edgevl_lib.config import DataConfig
    from edgevl_lib.pipeline import load_splits

    adapt, evalset = load_splits(DataConfig(dataset="paired_folder", root=str(_split_folders(tmp_path / "d"))))
    assert len(adapt) == 8 and len(evalset) == 4 and adapt.root == tmp_path / "d" / "adapt"
    assert adapt.class_names == evalset.class_names == ["chair", "lamp", "mug", "sofa"]
    with raises_naming(DataError, tmp_path / "d", "split folders", "point root"):
        load_dataset("paired_folder", tmp_path / "d")  # split=None on split folders: which one?


def test_load_splits_one_folder_layout_is_split_deterministically(tmp_path):
    from edgevl_lib.config import DataConfig
    from edgevl_lib.loaders import split_indices
    from edgevl_lib.pipeline import load_splits

    root = tmp_path / "one"
    write_paired_folder(root, fake_samples(20, 8), ["chair", "lamp", "mug", "sofa"])
    cfg = DataConfig(dataset="paired_folder", root=str(root))
    adapt, evalset = load_splits(cfg)
    whole = PairedFolder(root).ids
    parts = split_indices(20, (0.8, 0.2), 0)
    assert adapt.ids == [whole[i] for i in parts[0]] and evalset.ids == [whole[i] for i in parts[1]]
    assert adapt.ids == load_splits(cfg)[0].ids  # deterministic
    assert adapt[0].id == adapt.ids[0] and evalset.class_names == ["chair", "lamp", "mug", "sofa"]
    other, held = load_splits(DataConfig(dataset="paired_folder", root=str(root),
                                         options={"split_fractions": [0.5, 0.5], "split_seed": 3}))
    parts = split_indices(20, (0.5, 0.5), 3)
    assert other.ids == [whole[i] for i in parts[0]] and held.ids == [whole[i] for i in parts[1]]


def test_paired_folder_with_both_layouts_or_neither(tmp_path):
    root = _split_folders(tmp_path / "both")
    (root / "classes.txt").write_text("chair\n")
    with raises_naming(DataError, root, "both layouts", "Which one is meant"):
        load_dataset("paired_folder", root, split="adapt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with raises_naming(DataError, empty, "not a paired folder", r"<root>/adapt/classes\.txt",
                       r"<root>/classes\.txt") as err:
        load_dataset("paired_folder", empty, split="adapt")
    assert "embedded" not in str(err.value)


def test_classes_with_paired_folder_from_the_recipe(tmp_path):
    from edgevl_lib.config import DataConfig
    from edgevl_lib.pipeline import load_splits

    root = _split_folders(tmp_path / "d")
    adapt, evalset = load_splits(DataConfig(dataset="paired_folder", root=str(root), classes=("mug", "chair")))
    assert adapt.class_names == evalset.class_names == ["mug", "chair"]
    source = PairedFolder(root / "adapt")  # labels i % 4 over chair, lamp, mug, sofa
    expected = {0: 1, 2: 0}
    assert adapt.labels == [expected.get(y) for y in source.labels] and None in adapt.labels
    with raises_naming(DataError, root / "adapt" / "classes.txt", r"\['stool'\] are not in classes\.txt"):
        load_splits(DataConfig(dataset="paired_folder", root=str(root), classes=("chair", "stool")))


def test_split_folders_with_different_class_lists(tmp_path):
    from edgevl_lib.config import DataConfig
    from edgevl_lib.pipeline import load_splits

    root = _split_folders(tmp_path / "d")
    (root / "eval" / "classes.txt").write_text("chair\nmug\nlamp\nsofa\n")
    with raises_naming(DataError, root / "adapt" / "classes.txt", "list different classes", "line 2: 'lamp' vs 'mug'"):
        load_splits(DataConfig(dataset="paired_folder", root=str(root)))


def test_mixed_frame_sizes_refused_before_any_model_or_resized_when_the_recipe_says_so(tmp_path):
    from edgevl_lib.config import DataConfig
    from edgevl_lib.pipeline import load_splits
    from edgevl_lib.recipe import Recipe

    root = _split_folders(tmp_path / "d")
    small = root / "adapt" / "depth" / "s03.png"
    data.write_image(small, np.full((4, 6), 2.0, np.float32), "depth")
    with raises_naming(DataError, small, r"depth frame is 6x4 \(W x H\)", "rgb frame", "is 8x8", "1 of 8 ids",
                       "align='resize_to_rgb'"):
        load_splits(DataConfig(dataset="paired_folder", root=str(root)))
    cfg = DataConfig(dataset="paired_folder", root=str(root), options={"align": "resize_to_rgb"})
    adapt, _ = load_splits(cfg)
    assert adapt[3].images["depth"].shape == (1, 8, 8)
    assert Recipe(data=cfg).record()["resolved"]["data"]["options"] == {"align": "resize_to_rgb"}  # metrics.json
    assert Recipe(data=cfg).hash != Recipe(data=DataConfig(dataset="paired_folder", root=str(root))).hash

"""Stage-1 training: schedule, modality routing, cached vs online targets, determinism, crash + resume, torchrun.

Everything runs on a 16-image 16x16 paired folder with a random-weight fake teacher (tests/helpers_fake.py)
and the `conv_tiny_test` student at 32 px, so each training run takes well under a second.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from edgevl_lib import students
from edgevl_lib.config import Stage1Config
from edgevl_lib.evaluate import agreement, embed_model
from edgevl_lib.losses import DistillLossConfig
from edgevl_lib.train import cosine_lr_factor, train_stage1, trained_modalities

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers_fake import FakeTeacher, make_fake_cache, make_paired_folder  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
# conv_tiny_test, 32 px, 2 epochs, batch 8 -> 2 steps per epoch on 16 images; CPU so weights are bitwise reproducible
SMOKE = Stage1Config(device="cpu").smoke()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread (conftest)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    dataset = make_paired_folder(root / "data")
    teacher = FakeTeacher()
    return {"root": root, "dataset": dataset, "cache": make_fake_cache(root / "cache", dataset, teacher)}


def state_dict_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ----------------------------------------------------------------------------------------------
# Config, schedule, routing
# ----------------------------------------------------------------------------------------------


def test_config_defaults_follow_the_paper_and_validate():
    cfg = Stage1Config()
    assert cfg.arch == students.DEFAULT_STUDENT_ARCH
    assert (cfg.lr, cfg.min_lr, cfg.losses.weights, cfg.teacher_mode) == (1e-4, 5e-6, {"dual": 1.0}, "cached")
    assert SMOKE.arch == "conv_tiny_test" and SMOKE.num_workers == 0
    with pytest.raises(ValueError, match="train_modalities"):
        Stage1Config(train_modalities="depth")
    with pytest.raises(ValueError, match="non-RGB"):
        Stage1Config(modalities=("rgb",))
    assert trained_modalities(Stage1Config(modalities=("rgb",), train_modalities="rgb_only")) == ["rgb"]
    assert trained_modalities(Stage1Config(modalities=("rgb", "depth", "thermal"))) == ["rgb", "depth", "thermal"]


def test_cosine_lr_factor_hand_values():
    # no warm-up, S = 5: p = s / 4, f = r + (1 - r)(1 + cos(pi p)) / 2 with r = 0.05
    assert cosine_lr_factor(0, 5, min_ratio=0.05) == 1.0
    assert cosine_lr_factor(2, 5, min_ratio=0.05) == pytest.approx(0.525)
    assert cosine_lr_factor(4, 5, min_ratio=0.05) == pytest.approx(0.05)
    assert cosine_lr_factor(9, 5, min_ratio=0.05) == pytest.approx(0.05)  # clamped after the end
    # warm-up W = 4 of S = 10: 0.01 + 0.99 s / 4, then the cosine starts at 1
    assert [cosine_lr_factor(s, 10, 4) for s in (0, 2, 4)] == pytest.approx([0.01, 0.505, 1.0])


@pytest.mark.parametrize("mode, expected", [("dual", ["rgb"] * 8 + ["depth"] * 8), ("rgb_only", ["rgb"] * 8),
                                            ("nonrgb_only", ["depth"] * 8)])
def test_train_modalities_route_rgb_and_depth_through_one_student(fake, tmp_path, monkeypatch, mode, expected):
    seen: list[list[str]] = []

    def recording_student(*args, **kwargs):
        student = students.create_student(*args, **kwargs)

        def hook(module, inputs):  # encoded depth is replicated: its three channels are equal
            x = inputs[0]
            seen.append(["depth" if torch.equal(img[0], img[1]) and torch.equal(img[1], img[2]) else "rgb"
                         for img in x])
        student.register_forward_pre_hook(hook)
        return student

    monkeypatch.setattr("edgevl_lib.train.create_student", recording_student)
    cfg = dataclasses.replace(SMOKE, train_modalities=mode, epochs=1)
    result = train_stage1(cfg, fake["dataset"], fake["cache"], out_dir=tmp_path)
    assert seen == [expected, expected]  # 2 steps of batch 8
    record = result.history[0]
    assert record["images"] == 16 and record["steps"] == 2 and set(record["parts"]) == {"dual"}
    assert record["loss"] == pytest.approx(record["parts"]["dual"])
    # the per-step curve: one loss per step; both batches hold 8 images, so their mean is the epoch's loss
    assert len(record["step_loss"]) == 2 and sum(record["step_loss"]) / 2 == pytest.approx(record["loss"], rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Targets, learning, checkpoints
# ----------------------------------------------------------------------------------------------


def test_online_teacher_sees_the_stored_views(fake, tmp_path):
    cached = train_stage1(SMOKE, fake["dataset"], fake["cache"], out_dir=tmp_path / "cached")
    teacher = FakeTeacher()
    online = train_stage1(dataclasses.replace(SMOKE, teacher_mode="online"), fake["dataset"], fake["cache"], teacher,
                          out_dir=tmp_path / "online")
    assert teacher.calls == 4  # one teacher call per step, 2 epochs x 2 steps
    # same views, so targets differ only by the cache's float16 rounding
    for a, b in zip(cached.history, online.history):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-3)
    for name, value in cached.student.state_dict().items():
        torch.testing.assert_close(online.student.state_dict()[name], value, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="needs the teacher"):
        train_stage1(dataclasses.replace(SMOKE, teacher_mode="online"), fake["dataset"], fake["cache"],
                     out_dir=tmp_path / "none")


def test_training_pulls_student_embeddings_to_the_teacher(fake, tmp_path):
    cfg = dataclasses.replace(SMOKE, epochs=6, lr=3e-3, min_lr=3e-4)
    teacher_full = torch.from_numpy(fake["cache"].embeddings[:, 0].astype("float32"))  # view 0 = full image
    torch.manual_seed(cfg.seed)
    untrained = students.create_student(cfg.arch, 16, cfg.image_size)
    result = train_stage1(cfg, fake["dataset"], fake["cache"], out_dir=tmp_path)
    before, _ = embed_model(untrained, fake["dataset"], ["rgb", "depth"])
    after, _ = embed_model(result.student, fake["dataset"], ["rgb", "depth"])
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0]
    for m in ("rgb", "depth"):
        assert agreement(after[m], teacher_full) > agreement(before[m], teacher_full) + 0.2
    assert [h["lr"] for h in result.history][-1] == pytest.approx(3e-4)  # last step uses min_lr


def test_checkpoints_are_safetensors_and_json_and_load(fake, tmp_path):
    result = train_stage1(SMOKE, fake["dataset"], fake["cache"], out_dir=tmp_path)
    ckpt = result.checkpoint_dir
    assert ckpt == tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "best.json", "best.safetensors", "epoch_0002.json", "epoch_0002.safetensors", "epoch_0002_optim.safetensors",
        "state.json"]
    state = json.loads((ckpt / "state.json").read_text())
    assert (state["epochs_done"], state["step"], state["world_size"]) == (2, 4, 1)
    assert state["targets"]["cache_key"] == fake["cache"].meta["key"]
    optim = safetensors.torch.load_file(str(ckpt / "epoch_0002_optim.safetensors"))
    n_params = len(list(result.student.parameters()))
    assert len(optim) == 3 * n_params and float(optim["0.step"]) == 4.0
    assert_same_weights(state_dict_of(students.load_student(result.last_checkpoint)), state_dict_of(result.student))
    best = students.load_student(result.best_checkpoint)
    assert best.arch == "conv_tiny_test" and best.embed_dim == 16


# ----------------------------------------------------------------------------------------------
# Determinism and resume
# ----------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_weights_other_seed_differs(fake, tmp_path):
    a = train_stage1(SMOKE, fake["dataset"], fake["cache"], out_dir=tmp_path / "a")
    b = train_stage1(SMOKE, fake["dataset"], fake["cache"], out_dir=tmp_path / "b")
    c = train_stage1(dataclasses.replace(SMOKE, seed=1), fake["dataset"], fake["cache"], out_dir=tmp_path / "c")
    assert_same_weights(state_dict_of(a.student), state_dict_of(b.student))
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert not torch.equal(a.student.head.weight, c.student.head.weight)


class Crash(RuntimeError):
    pass


def crash_after(epoch: int):
    def callback(record, student):
        if record["epoch"] == epoch:
            raise Crash(f"simulated crash after epoch {epoch}")
    return callback


def test_crash_and_resume_ends_with_the_uninterrupted_weights(fake, tmp_path):
    cfg = dataclasses.replace(SMOKE, epochs=3, warmup_epochs=1.0, losses=DistillLossConfig(weights={"dual": 1.0}))
    clean = train_stage1(cfg, fake["dataset"], fake["cache"], out_dir=tmp_path / "clean")
    with pytest.raises(Crash):
        train_stage1(cfg, fake["dataset"], fake["cache"], out_dir=tmp_path / "run", callbacks=[crash_after(1)])
    state = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 1 and len(state["history"]) == 1
    epochs_seen = []
    resumed = train_stage1(dataclasses.replace(cfg, num_workers=1), fake["dataset"], fake["cache"],
                           out_dir=tmp_path / "run", callbacks=[lambda r, s: epochs_seen.append(r["epoch"])])
    assert epochs_seen == [2, 3]
    assert_same_weights(state_dict_of(resumed.student), state_dict_of(clean.student))
    for a, b in zip(resumed.history, clean.history):
        assert (a["epoch"], a["loss"], a["lr"]) == (b["epoch"], b["loss"], b["lr"])
    # a finished run resumes to the same weights without another epoch
    again = train_stage1(cfg, fake["dataset"], fake["cache"], out_dir=tmp_path / "run", callbacks=[crash_after(3)])
    assert_same_weights(state_dict_of(again.student), state_dict_of(clean.student))
    assert len(again.history) == 3


def test_resume_refuses_a_checkpoint_of_another_run(fake, tmp_path):
    train_stage1(dataclasses.replace(SMOKE, epochs=1), fake["dataset"], fake["cache"], out_dir=tmp_path)
    other = dataclasses.replace(SMOKE, epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="another run.*lr"):
        train_stage1(other, fake["dataset"], fake["cache"], out_dir=tmp_path)
    restarted = train_stage1(other, fake["dataset"], fake["cache"], out_dir=tmp_path, resume=False)
    state = json.loads((restarted.checkpoint_dir / "state.json").read_text())
    assert state["config"]["lr"] == 1e-3 and state["epochs_done"] == 1


# ----------------------------------------------------------------------------------------------
# torchrun
# ----------------------------------------------------------------------------------------------

DDP_SCRIPT = """
import dataclasses, json, sys
from pathlib import Path
import torch
import torch.distributed as dist
torch.set_num_threads(1)
from edgevl_lib import data
from edgevl_lib.cache import EmbeddingCache
from edgevl_lib.config import Stage1Config
from edgevl_lib.students import save_student
from edgevl_lib.train import train_stage1

dataset, cache, out = data.PairedFolder(sys.argv[1]), EmbeddingCache.open(sys.argv[2]), Path(sys.argv[3])
cfg = dataclasses.replace(Stage1Config().smoke(), batch_size=4, device="cpu")  # gloo
result = train_stage1(cfg, dataset, cache, out_dir=out)
rank = dist.get_rank()
save_student(result.student, out / f"rank{rank}.safetensors")
(out / f"history{rank}.json").write_text(json.dumps(result.history))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_two_processes_train_one_model(fake, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(fake["root"] / "data"), str(fake["cache"].path), str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert (state["epochs_done"], state["world_size"], state["step"]) == (2, 2, 4)  # 8 images per rank, batch 4
    history = [json.loads((out / f"history{r}.json").read_text()) for r in (0, 1)]
    assert [h["images"] for h in history[0]] == [16, 16] and history[0] == [
        {**h, "seconds": history[0][i]["seconds"], "step_loss": history[0][i]["step_loss"]}
        for i, h in enumerate(history[1])]  # all-reduced means agree; per-step losses are each rank's own
    checkpoint = state_dict_of(students.load_student(out / "checkpoints" / state["student"]))
    for r in (0, 1):
        assert_same_weights(state_dict_of(students.load_student(out / f"rank{r}.safetensors")), checkpoint)

"""Tests for edgevl_lib.stage1 (ablation, OOD split, epoch timing, cache row selection) and the stage-1 student init.

Tiny: 16 fake 16 px images, the conv_tiny_test student at 32 px, 2 epochs of 2 steps; CPU, fixed seeds.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edgevl_lib.config import Stage1Config
from edgevl_lib.curation import CurationResult
from edgevl_lib.data import InMemoryPairedDataset, preload
from edgevl_lib.stage1 import modality_ablation, ood_experiment, select_cache_rows, time_cached_vs_online
from edgevl_lib.students import create_student
from edgevl_lib.train import create_stage1_student, train_stage1
from helpers_fake import FAKE_CLASSES, FakeTeacher, make_fake_cache, make_paired_folder

SMOKE = Stage1Config(device="cpu").smoke()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread (conftest)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1_experiments")
    dataset = make_paired_folder(root / "data")
    teacher = FakeTeacher()
    cache = make_fake_cache(root / "cache", dataset, teacher)
    text = teacher.encode_text(list(FAKE_CLASSES))
    return {"root": root, "dataset": dataset, "teacher": teacher, "cache": cache, "text": text}


def test_preload_holds_the_same_samples_and_metadata(fake):
    ds = fake["dataset"]
    mem = preload(ds, ("rgb",))
    assert isinstance(mem, InMemoryPairedDataset)
    assert (mem.ids, mem.labels, mem.class_names, mem.text_names) == (ds.ids, ds.labels, ds.class_names, ds.text_names)
    assert mem.modalities == ("rgb",) and list(mem[3].images) == ["rgb"]
    assert torch.equal(mem[3].images["rgb"], ds[3].images["rgb"]) and mem[3].label == ds[3].label
    with pytest.raises(ValueError, match="lacks modalities"):
        InMemoryPairedDataset(ds, ("rgb", "thermal"))


def test_select_cache_rows_copies_those_rows_under_a_new_key(fake):
    cache = fake["cache"]
    sub = select_cache_rows(cache, [5, 0, 7])
    assert len(sub) == 3 and sub.ids == [cache.ids[5], cache.ids[0], cache.ids[7]]
    assert np.array_equal(sub.embeddings, cache.embeddings[[5, 0, 7]])
    assert sub.view_params(0, 1) == cache.view_params(5, 1)
    assert sub.meta["num_images"] == 3 and sub.meta["key"] != cache.meta["key"]
    assert sub.meta["teacher_id"] == cache.meta["teacher_id"] and len(cache) == 16  # the source is untouched
    assert select_cache_rows(cache, [5, 0, 7]).meta["key"] == sub.meta["key"]
    with pytest.raises(ValueError, match="at least one"):
        select_cache_rows(cache, [])
    with pytest.raises(IndexError, match="outside"):
        select_cache_rows(cache, [16])


def test_ablation_trains_each_variant_under_the_same_budget(fake, tmp_path):
    runs = modality_ablation(SMOKE, fake["dataset"], fake["cache"], fake["dataset"], fake["text"],
                             out_dir=tmp_path)
    assert list(runs) == ["dual", "rgb_only", "nonrgb_only"]
    for variant, run in runs.items():
        assert run.train.config["train_modalities"] == variant
        assert [h["steps"] for h in run.train.history] == [2, 2] and run.train_images == 16
        assert set(run.zero_shot) == {"rgb", "depth"} and all(0 <= a <= 1 for a in run.zero_shot.values())
        assert run.mean_accuracy() == pytest.approx(np.mean(list(run.zero_shot.values())))
        assert (tmp_path / variant / "checkpoints" / "state.json").is_file()
    # dual's loss sums the RGB and depth terms the single-modality variants each minimise
    assert runs["dual"].losses[0] > max(runs["rgb_only"].losses[0], runs["nonrgb_only"].losses[0])
    # same seed -> same numbers
    again = modality_ablation(SMOKE, fake["dataset"], fake["cache"], fake["dataset"], fake["text"],
                              out_dir=tmp_path / "again", variants=["dual"])
    assert again["dual"].losses == runs["dual"].losses and again["dual"].zero_shot == runs["dual"].zero_shot
    with pytest.raises(ValueError, match="unknown variants"):
        modality_ablation(SMOKE, fake["dataset"], fake["cache"], fake["dataset"], fake["text"], out_dir=tmp_path,
                          variants=["depth"])


def _curation(dataset, pseudo_names: list[str], superset: list[str]) -> CurationResult:
    """A curation that kept every image of `dataset` with the given pseudo-label names."""
    n = len(dataset)
    pseudo = [superset.index(p) for p in pseudo_names]
    return CurationResult(mode="threshold", threshold=0.0, superset=superset, kept=list(range(n)),
                          ids=list(dataset.ids), pseudo_labels=pseudo, pseudo_names=list(pseudo_names),
                          confidences=[1.0] * n, all_pseudo_labels=pseudo)


def test_ood_trains_only_on_seen_pseudo_labels_and_scores_unseen_classes(fake, tmp_path):
    ds = fake["dataset"]  # labels i % 4 over (chair, lamp, mug, sofa)
    superset = [*FAKE_CLASSES, "vase"]
    # pseudo-labels: the true class, except image 1 (a lamp) called "chair" and image 4 (a chair) called "vase"
    names = [FAKE_CLASSES[y] for y in ds.labels]
    names[1], names[4] = "chair", "vase"
    result = _curation(ds, names, superset)
    ood = ood_experiment(SMOKE, ds, fake["cache"], result, ds, fake["text"], out_dir=tmp_path / "strict",
                         unseen=["lamp", "sofa"])
    assert (ood.seen, ood.unseen) == (["chair", "mug"], ["lamp", "sofa"])
    expected = [sid for sid, n in zip(ds.ids, names) if n in ("chair", "mug")]
    assert ood.run.train.history[0]["images"] == len(expected) == ood.run.train_images == 8
    assert ood.train_true_unseen == 1  # image 1, a lamp the teacher called a chair, leaks in
    assert set(ood.ood) == {"seen", "unseen", "unseen_vs_all"} and set(ood.ood["unseen"]) == {"rgb", "depth"}

    loose = ood_experiment(SMOKE, ds, fake["cache"], result, ds, fake["text"], out_dir=tmp_path / "loose",
                           unseen=["lamp", "sofa"], keep_other_pseudo_labels=True)
    assert loose.run.train_images == 9  # + image 4, pseudo-labelled "vase" (not an evaluated class)

    none_seen = _curation(ds, ["lamp"] * len(ds), superset)
    with pytest.raises(ValueError, match="none of the 16 curated images"):
        ood_experiment(SMOKE, ds, fake["cache"], none_seen, ds, fake["text"], out_dir=tmp_path / "none",
                       unseen=["lamp", "sofa"])


def test_timing_runs_one_epoch_each_way_on_the_same_subset(fake, tmp_path):
    teacher = FakeTeacher()
    timing = time_cached_vs_online(SMOKE, fake["dataset"], fake["cache"], teacher, images=12, out_dir=tmp_path)
    assert (timing["images"], timing["steps"], timing["batch_size"]) == (12, 1, 8)  # train_stage1 drops the last 4
    assert teacher.calls == 1  # one teacher forward per online step, none in the cached epoch
    assert timing["cached"] > 0 and timing["online"] > 0
    assert timing["ratio"] == pytest.approx(timing["online"] / timing["cached"])
    assert timing["online_teacher"] == teacher.id
    assert (tmp_path / "cached" / "checkpoints" / "state.json").is_file()
    time_cached_vs_online(SMOKE, fake["dataset"], fake["cache"], teacher, images=8)  # scratch folder, removed


def test_stage1_student_init_default_and_packaged_imagenet_weights():
    torch.manual_seed(0)
    plain = create_student("conv_tiny_test", 16, 32)
    torch.manual_seed(0)
    ours = create_stage1_student(SMOKE, 16)
    for k, v in plain.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k  # the same random init, only laid out channels_last
    conv = next(p for p in ours.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)

    from edgevl_lib.teachers import load_efficientnet_lite0

    cfg = dataclasses.replace(SMOKE, arch="tf_efficientnet_lite0", pretrained=True)
    student = create_stage1_student(cfg, 16)
    reference = load_efficientnet_lite0().state_dict()
    backbone = student.backbone.state_dict()
    assert len(backbone) == len(reference) - 2  # all but the ImageNet classifier
    for k, v in backbone.items():
        assert torch.equal(v, reference[k]), k


def test_channels_last_student_trains_and_checkpoints_like_before(fake, tmp_path):
    result = train_stage1(SMOKE, fake["dataset"], fake["cache"], out_dir=tmp_path)
    from edgevl_lib.students import load_student

    loaded = load_student(result.last_checkpoint).eval()  # contiguous layout, as every later stage loads it
    for k, v in result.student.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.student.eval()(x), atol=1e-5)


def test_step_curves_plot_each_step_and_fall_back_to_epoch_means():
    from edgevl_lib import plots

    fig = plots.step_curves({"a": [{"loss": 0.5, "steps": 3, "step_loss": [0.7, 0.5, 0.3]},
                                   {"loss": 0.2, "steps": 3, "step_loss": [0.25, 0.2, 0.15]}],
                             "old": [{"loss": 0.6, "steps": 3}, {"loss": 0.4, "steps": 3}]})
    lines = {line.get_label(): line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
    assert list(lines["a"].get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert list(lines["a"].get_ydata()) == [0.7, 0.5, 0.3, 0.25, 0.2, 0.15]
    assert list(lines["old"].get_xdata()) == [3, 6] and list(lines["old"].get_ydata()) == [0.6, 0.4]

"""Label-free curation: prompt files, the confidence equation on a hand-worked example, both selection
modes and the tie rule, the pseudo-label report, scoring with a fake teacher, and saving results."""
from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from edgevl_lib import data
from edgevl_lib.config import BENCHMARK_CLASSES, CurationConfig
from edgevl_lib.curation import (CurationResult, build_prompts, check_requirements, confidence, curate_by_confidence,
                                 curate_dataset, curation_report, curation_warnings, load_descriptions,
                                 load_label_superset, load_templates, meets_requirements, requirement_values,
                                 score_dataset, superset_gaps)
from edgevl_lib.teachers import prompt_ensemble

SUPERSET = ["chair", "table", "lamp", "vase"]
# 3 images x 4 classes, worked by hand with scale s = ln 3 and text embeddings t_k = e_k:
#   image 0 = (0, .6, .8, 0): exp(s cos) = (1, 3^.6, 3^.8, 1) = (1, 1.93318, 2.40822, 1), sum 6.34141
#            -> c_0 = 2.40822 / 6.34141 = 0.379762, pseudo 2 (lamp)
#   image 1 = e_3: (1, 1, 1, 3) / 6 -> c_1 = 0.5, pseudo 3 (vase)
#   image 2 = e_0: (3, 1, 1, 1) / 6 -> c_2 = 0.5, pseudo 0 (chair)
IMAGES = torch.tensor([[0.0, 0.6, 0.8, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
HAND_CONF = [0.379762, 0.5, 0.5]
HAND_PSEUDO = [2, 3, 0]
IDS = ["a", "b", "c"]


class FakeTeacher:
    """Fixed random linear map of a 4x4-pooled image; text -> a random unit vector seeded by its sha256."""

    id, embed_dim, image_size = "fake-clip", 8, 16

    def __init__(self) -> None:
        self.proj = torch.randn(3 * 16, self.embed_dim, generator=torch.Generator().manual_seed(0))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.adaptive_avg_pool2d(images.float(), 4).flatten(1) @ self.proj, dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        rows = [torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(
            int.from_bytes(hashlib.sha256(t.encode()).digest()[:7], "little"))) for t in texts]
        return F.normalize(torch.stack(rows), dim=-1)


class RandomImages(data.PairedDataset):
    modalities = ("rgb",)
    class_names = ["lamp", "chair"]

    def __init__(self, n: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.images = [torch.rand(3, 12, 12, generator=g) for _ in range(n)]
        self.ids = [f"img{i}" for i in range(n)]
        self.labels = [i % 2 for i in range(n)]

    def load(self, index: int) -> data.Sample:
        return data.Sample(images={"rgb": self.images[index]}, label=self.labels[index], id=self.ids[index])


# ----------------------------------------------------------------------------------------------
# Confidence and selection
# ----------------------------------------------------------------------------------------------


def test_confidence_matches_the_hand_computation():
    conf, pseudo = confidence(IMAGES, torch.eye(4), scale=math.log(3))
    torch.testing.assert_close(conf, torch.tensor(HAND_CONF), atol=1e-6, rtol=0)
    assert pseudo.tolist() == HAND_PSEUDO
    conf_unnormalised, _ = confidence(3 * IMAGES, 2 * torch.eye(4), scale=math.log(3))  # cosine, not dot product
    torch.testing.assert_close(conf_unnormalised, conf)
    assert confidence(IMAGES, torch.eye(4))[0].min() > 0.99  # s = 100: nearly one-hot


def test_threshold_mode_keeps_confidence_at_least_tau():
    result = curate_by_confidence(HAND_CONF, HAND_PSEUDO, IDS, SUPERSET, mode="threshold", tau=0.4)
    assert result.kept == [1, 2] and result.ids == ["b", "c"]
    assert result.pseudo_labels == [3, 0] and result.pseudo_names == ["vase", "chair"]
    assert result.all_pseudo_labels == HAND_PSEUDO and result.confidences == HAND_CONF
    assert (result.num_kept, result.total, result.threshold, result.top_fraction) == (2, 3, 0.4, None)
    assert curate_by_confidence(HAND_CONF, HAND_PSEUDO, IDS, SUPERSET, tau=0.5).kept == [1, 2]  # inclusive
    assert curate_by_confidence(HAND_CONF, HAND_PSEUDO, IDS, SUPERSET).kept == [0, 1, 2]  # default tau 0.25
    assert curate_by_confidence(HAND_CONF, HAND_PSEUDO, IDS, SUPERSET, tau=0.6).kept == []


def test_top_fraction_mode_keeps_ceil_fn_and_breaks_ties_by_index():
    def top(conf, f):
        return curate_by_confidence(conf, [0] * len(conf), [str(i) for i in range(len(conf))], SUPERSET,
                                    mode="top_fraction", top_fraction=f)

    assert top(HAND_CONF, 1 / 3).kept == [1]  # c_1 = c_2 = 0.5: the lower index wins
    assert top(HAND_CONF, 0.5).kept == [1, 2]  # ceil(1.5) = 2
    assert top(HAND_CONF, 1.0).kept == [0, 1, 2]
    tied = top([0.5, 0.9, 0.5, 0.5, 0.1], 0.6)  # ceil(3): 0.9, then the tie 0.5 at indices 0, 2 (not 3)
    assert tied.kept == [0, 1, 2] and tied.threshold == 0.5 and tied.top_fraction == 0.6
    assert top([0.1 * i for i in range(10)], 0.3).kept == [7, 8, 9]  # 0.3 * 10 = 3.0000000000000004 keeps 3, not 4


def test_curation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown curation mode"):
        curate_by_confidence(HAND_CONF, HAND_PSEUDO, IDS, SUPERSET, mode="topk")
    with pytest.raises(ValueError, match="top_fraction"):
        curate_by_confidence(HAND_CONF, HAND_PSEUDO, IDS, SUPERSET, mode="top_fraction", top_fraction=0.0)
    with pytest.raises(ValueError, match="index the superset"):
        curate_by_confidence(HAND_CONF, [0, 1, 9], IDS, SUPERSET)


def test_report_compares_pseudo_names_with_true_names():
    result = curate_by_confidence(HAND_CONF, HAND_PSEUDO, IDS, SUPERSET, tau=0.4)
    class_names = ["Lamp", "chair", "table"]  # another order and case than the superset
    # pseudo names (lamp, vase, chair) vs true names (lamp, table, chair): correct = (yes, no, yes)
    report = curation_report(result, [0, 2, 1], class_names, SUPERSET)
    assert report["kept_pseudo_acc"] == 0.5 and report["discarded_pseudo_acc"] == 1.0
    assert report["all_pseudo_acc"] == pytest.approx(2 / 3)
    assert report["kept"] == 2 and report["total"] == 3 and report["kept_fraction"] == pytest.approx(2 / 3)
    assert report["mean_conf_kept"] == 0.5 and report["mean_conf_discarded"] == pytest.approx(0.379762)
    assert report["kept_per_pseudo_class"] == {"chair": 1, "vase": 1}
    unknown = curation_report(result, [0, None, -1], class_names, SUPERSET)  # unknown labels are left out
    assert unknown["kept_pseudo_acc"] is None and unknown["discarded_pseudo_acc"] == 1.0
    everything = curate_by_confidence(HAND_CONF, HAND_PSEUDO, IDS, SUPERSET, tau=0.0)
    assert curation_report(everything, [0, 2, 1], class_names, SUPERSET)["discarded_pseudo_acc"] is None


# ----------------------------------------------------------------------------------------------
# Files and prompts
# ----------------------------------------------------------------------------------------------


def test_shipped_prompt_files_load_and_cover_the_benchmark():
    superset = load_label_superset("embedded_superset.txt")
    assert set(BENCHMARK_CLASSES) < set(superset) and len(superset) >= 24
    descriptions = load_descriptions("embedded_descriptions.json")
    templates = load_templates("templates.txt")
    prompts = build_prompts(superset, templates, descriptions)
    assert len(prompts) == len(superset) and all(len(p) == len(templates) + 1 for p in prompts)
    assert prompts[0][-1] == f"a photo of a chair. {descriptions['chair']}"
    scenes = load_label_superset("scenes_superset.txt")
    assert {"bedroom", "kitchen", "living room", "office", "bathroom"} <= set(scenes) and len(scenes) >= 40


def test_build_prompts_fills_templates_and_requires_full_descriptions():
    assert build_prompts(["trash can"], ["a {}.", "the {} here"]) == [["a trash can.", "the trash can here"]]
    with pytest.raises(ValueError, match=r"\['lamp'\]"):
        build_prompts(["mug", "lamp"], ["a {}."], {"mug": "a cup."})


def test_bad_label_and_template_files_raise_data_errors_naming_the_file(tmp_path):
    dup = tmp_path / "dup.txt"
    dup.write_text("chair\ntable\nchair\n")
    with pytest.raises(data.DataError, match=r"dup\.txt.*duplicate.*chair"):
        load_label_superset(dup)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(data.DataError, match=r"empty\.txt.*empty"):
        load_label_superset(empty)
    with pytest.raises(data.DataError, match=r"nope\.txt.*not found.*templates\.txt"):
        load_label_superset(tmp_path / "nope.txt")
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\na photo of something\n")
    with pytest.raises(data.DataError, match=r"templates\.txt: line\(s\) \[2\]"):
        load_templates(templates)
    bad_json = tmp_path / "desc.json"
    bad_json.write_text('{"chair": 3}')
    with pytest.raises(data.DataError, match=r"desc\.json"):
        load_descriptions(bad_json)


# ----------------------------------------------------------------------------------------------
# Scoring with a teacher, end to end, saving
# ----------------------------------------------------------------------------------------------


def test_score_dataset_equals_the_equation_on_teacher_embeddings():
    teacher, ds = FakeTeacher(), RandomImages()
    templates = ["a photo of a {}.", "a {}."]
    conf, pseudo, emb = score_dataset(teacher, ds, SUPERSET, templates, batch_size=4, scale=10.0)
    text = prompt_ensemble(teacher, build_prompts(SUPERSET, templates))
    images = teacher.encode_image(torch.stack([s.images["rgb"] for s in ds]))
    torch.testing.assert_close(emb, images)
    expected_conf, expected_pseudo = confidence(images, text, 10.0)
    torch.testing.assert_close(conf, expected_conf)
    assert torch.equal(pseudo, expected_pseudo) and emb.shape == (6, 8)
    assert torch.allclose(text.norm(dim=-1), torch.ones(4))


def test_curate_dataset_end_to_end_and_result_round_trip(tmp_path):
    cfg = CurationConfig(mode="top_fraction", top_fraction=0.5, scale=10.0,
                         descriptions="embedded_descriptions.json").smoke()
    result = curate_dataset(FakeTeacher(), RandomImages(), cfg)
    assert result.num_kept == 3 and result.total == 6 and result.mode == "top_fraction"
    assert result.ids == [f"img{i}" for i in result.kept]
    assert min(result.confidences[i] for i in result.kept) == result.threshold
    assert all(result.confidences[i] <= result.threshold for i in range(6) if i not in result.kept)
    path = result.save(tmp_path / "curation.json")
    assert CurationResult.load(path) == result
    (tmp_path / "broken.json").write_text('{"kept": []}')
    with pytest.raises(data.DataError, match=r"broken\.json.*rerun curation"):
        CurationResult.load(tmp_path / "broken.json")


def test_class_top_fraction_keeps_the_top_share_of_every_pseudo_class():
    # class 0: confidences .9 .8 .3 .2 (4 images); class 1: .5 .4 (2); class 2: .1 (1)
    conf = [0.9, 0.5, 0.8, 0.3, 0.4, 0.2, 0.1]
    pseudo = [0, 1, 0, 0, 1, 0, 2]
    ids = [f"s{i}" for i in range(7)]
    r = curate_by_confidence(conf, pseudo, ids, ["a", "b", "c"], "class_top_fraction", top_fraction=0.5)
    # ceil(.5 * 4) = 2 of class 0 (.9, .8), ceil(.5 * 2) = 1 of class 1 (.5), ceil(.5 * 1) = 1 of class 2 (.1)
    assert r.kept == [0, 1, 2, 6] and r.mode == "class_top_fraction" and r.threshold == pytest.approx(0.1)
    plain = curate_by_confidence(conf, pseudo, ids, ["a", "b", "c"], "top_fraction", top_fraction=4 / 7)
    assert plain.kept == [0, 1, 2, 4]  # the plain top fraction loses class 2 entirely
    tie = curate_by_confidence([0.5, 0.5, 0.5], [0, 0, 0], ["x", "y", "z"], ["a"], "class_top_fraction",
                               top_fraction=0.5)
    assert tie.kept == [0, 1]  # ceil(1.5) = 2, ties by the lower index


def test_report_counts_classes_kept_and_uninformative_discarded():
    conf = [0.9, 0.8, 0.7, 0.2, 0.6]
    pseudo = [0, 1, 1, 0, 0]
    ids = ["a0", "a1", "a2", "u0", "u1"]
    r = curate_by_confidence(conf, pseudo, ids, ["chair", "table"], tau=0.5)  # keeps a0 a1 a2 u1
    rep = curation_report(r, [0, 1, 0, None, None], ["chair", "table", "bed"], ["chair", "table"],
                          uninformative=["u0", "u1"])
    assert rep["classes_kept"] == 2 and rep["classes_total"] == 3 and rep["pseudo_classes_kept"] == 2
    assert rep["uninformative"] == {"total": 2, "discarded": 1}
    assert rep["kept_pseudo_acc"] == pytest.approx(2 / 3)  # a2 (true chair) got "table"


def test_requirements_against_a_hand_computed_report():
    conf = [0.9, 0.8, 0.7, 0.2, 0.6]
    r = curate_by_confidence(conf, [0, 1, 1, 0, 0], ["a0", "a1", "a2", "u0", "u1"], ["chair", "table"], tau=0.5)
    rep = curation_report(r, [0, 1, 0, None, None], ["chair", "table", "bed"], ["chair", "table"],
                          uninformative=["u0", "u1"])
    # kept 4 / 5 -> removed 0.2; pseudo acc 2/3; classes 3 - 2 = 1 missing; uninformative 1 / 2 discarded
    assert requirement_values(rep) == pytest.approx({"removed_fraction": 0.2, "kept_pseudo_acc": 2 / 3,
                                                     "classes_missing": 1.0, "uninformative_discarded": 0.5})
    checks = check_requirements(rep)
    assert [c["met"] for c in checks.values()] == [True, False, False, False]
    assert not meets_requirements(checks)
    loose = {"removed_fraction": (">=", 0.2), "kept_pseudo_acc": (">=", 0.6), "classes_missing": ("<=", 1)}
    assert meets_requirements(check_requirements(rep, loose))  # bounds are inclusive
    no_labels = curation_report(r, [None] * 5, ["chair", "table"], ["chair", "table"])
    unmeasured = check_requirements(no_labels)
    assert [c["met"] for c in unmeasured.values()] == [True, None, None, None]  # only the share removed is measured
    assert meets_requirements(unmeasured)  # an unmeasurable requirement does not fail
    few = curation_report(r, [0, None, None, None, None], ["chair", "table"], ["chair", "table"])
    assert check_requirements(few)["classes_missing"]["value"] == 1.0  # one labelled image: table is missing
    with pytest.raises(ValueError, match="unknown requirement"):
        check_requirements(rep, {"kept": (">=", 1)})


def test_curation_warnings_flag_keeping_almost_all_or_little_and_lost_classes():
    ids = [f"s{i}" for i in range(10)]
    conf = [0.9] * 9 + [0.1]
    everything = curate_by_confidence(conf, [0] * 10, ids, ["chair", "table"], tau=0.05)
    lines = curation_warnings(everything, ["chair", "table"])
    assert any("removes almost nothing" in x for x in lines) and any("'table'" in x for x in lines)
    little = curate_by_confidence(conf, [0] * 5 + [1] * 5, ids, ["chair", "table"], "top_fraction", top_fraction=0.1)
    assert any("keeps only 1 / 10" in x for x in curation_warnings(little, ["chair", "table"]))
    fine = curate_by_confidence(conf, [0] * 5 + [1] * 5, ids, ["chair", "table"], "class_top_fraction",
                                top_fraction=0.6)
    assert curation_warnings(fine, ["chair", "table"]) == []


def test_superset_gaps_name_the_missing_classes():
    assert superset_gaps(["Traffic_Cone", "chair", "stool"], ["traffic cone", "chair"]) == ["stool"]
    assert superset_gaps(["chair"], ["chair", "table"]) == []

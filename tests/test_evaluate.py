"""Zero-shot accuracy, agreement and the OOD split against hand computations and an oracle encoder.

The oracle: each image is a constant whose encoded value is label / 10 in every modality (RGB directly, depth
through the fixed [0.5, 6] m replicate encoding), so an encoder can read the label back from one pixel.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgevl_lib import data, students
from edgevl_lib.curation import CurationResult
from edgevl_lib.evaluate import (agreement, class_indices, embed_dataset, evaluate_ood, evaluate_zero_shot,
                                 restrict_curation, restrict_dataset, split_classes, zero_shot_accuracy)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers_fake import FAKE_CLASSES, make_paired_folder  # noqa: E402

CLASSES = list(FAKE_CLASSES)  # chair, lamp, mug, sofa
TEXT = torch.eye(4) * 3.0     # orthogonal class embeddings (deliberately not unit length)


class OracleDataset(data.PairedDataset):
    """Constant images: rgb = label / 10, depth = 0.5 + 5.5 * label / 10 m (encodes to label / 10)."""

    modalities = ("rgb", "depth")
    class_names = CLASSES
    name = "oracle"

    def __init__(self, labels: list[int | None], size: int = 8) -> None:
        super().__init__()
        self.size = size
        self.labels = list(labels)
        self.ids = [f"o{i}" for i in range(len(labels))]

    def load(self, index: int) -> data.Sample:
        value = (self.labels[index] if self.labels[index] is not None else 9) / 10
        images = {"rgb": torch.full((3, self.size, self.size), value),
                  "depth": torch.full((1, self.size, self.size), 0.5 + 5.5 * value)}
        return data.Sample(images=images, label=self.labels[index], id=self.ids[index])


def read_label(images: torch.Tensor) -> torch.Tensor:
    return (images[:, 0, 0, 0] * 10).round().long()


class OracleTeacher:
    """A Teacher whose image embedding is its class's text embedding; `confuse_unseen` mixes in a seen class."""

    id, embed_dim, image_size = "oracle", 4, 8

    def __init__(self, confuse_unseen: list[int] | None = None) -> None:
        self.confuse_unseen = confuse_unseen or []

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        rows = []
        for y in read_label(images).tolist():
            emb = TEXT[min(y, 3)].clone()  # unlabelled images (9) get any class: they are ignored
            if y in self.confuse_unseen:  # cos 0.8 with "chair", 0.6 with the true unseen class
                emb = 0.6 * F.normalize(emb, dim=0) + 0.8 * F.normalize(TEXT[0], dim=0)
            rows.append(emb)
        return F.normalize(torch.stack(rows), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(TEXT[[CLASSES.index(t) for t in texts]], dim=-1)


# ----------------------------------------------------------------------------------------------
# Pure metrics
# ----------------------------------------------------------------------------------------------


def test_zero_shot_accuracy_hand_computed():
    img = torch.tensor([[1.0, 0.1], [0.2, 1.0], [1.0, 0.0], [0.6, 0.8], [1.0, -0.2]])
    text = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    # predictions 0, 1, (unlabelled), 1, 0 vs labels 0, 0, -, 1, 1: 2 of 4 correct
    assert zero_shot_accuracy(img, torch.tensor([0, 0, -1, 1, 1]), text) == 0.5
    assert zero_shot_accuracy(img, [0, 0, None, 1, 1], text) == 0.5
    # among class 1 only: samples 3 and 4 count, and class 1 is the only candidate
    assert zero_shot_accuracy(img, [0, 0, None, 1, 1], text, classes=[1]) == 1.0
    with pytest.raises(ValueError, match="no sample"):
        zero_shot_accuracy(img, [-1] * 5, text)


def test_agreement_is_the_mean_cosine():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    teacher = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert agreement(student, teacher) == pytest.approx((1.0 + 0.0 + 1 / math.sqrt(2)) / 3)
    assert agreement(teacher, teacher) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        agreement(student, teacher[:2])


# ----------------------------------------------------------------------------------------------
# Embedding and zero-shot evaluation
# ----------------------------------------------------------------------------------------------


def test_embed_dataset_encodes_each_modality_and_keeps_unknown_labels():
    dataset = OracleDataset([0, 1, None, 3, 2], size=8)
    sizes = []

    def encode(x: torch.Tensor) -> torch.Tensor:
        sizes.append(tuple(x.shape))
        return TEXT[read_label(x).clamp(max=3)]

    emb, labels = embed_dataset(encode, dataset, ["rgb", "depth"], image_size=16, batch_size=2)
    assert labels.tolist() == [0, 1, -1, 3, 2]
    assert set(sizes) == {(2, 3, 16, 16), (1, 3, 16, 16)}  # resized after encoding, last batch of 1
    for m in ("rgb", "depth"):
        assert emb[m].shape == (5, 4) and torch.allclose(emb[m].norm(dim=-1), torch.ones(5))
        assert emb[m].argmax(dim=-1).tolist() == [0, 1, 3, 3, 2]  # depth decoded through the replicate encoding


def test_a_perfect_encoder_scores_one_in_every_modality():
    dataset = OracleDataset([0, 1, 2, 3, 0, 1, None, 3])
    accuracy = evaluate_zero_shot(OracleTeacher(), dataset, TEXT, ["rgb", "depth"], batch_size=3)
    assert accuracy == {"rgb": 1.0, "depth": 1.0}


def test_student_is_evaluated_in_eval_mode_at_its_size_and_left_in_train_mode():
    torch.manual_seed(0)
    student = students.create_student("conv_tiny_test", embed_dim=4, image_size=32)
    seen = []
    student.backbone.register_forward_pre_hook(lambda mod, inputs: seen.append((mod.training, inputs[0].shape[-1])))
    accuracy = evaluate_zero_shot(student, OracleDataset([0, 1, 2, 3]), TEXT, ["rgb"])
    assert set(seen) == {(False, 32)} and student.training
    assert 0.0 <= accuracy["rgb"] <= 1.0 and accuracy["rgb"] * 4 == int(accuracy["rgb"] * 4)


# ----------------------------------------------------------------------------------------------
# OOD split
# ----------------------------------------------------------------------------------------------


def test_split_classes_is_deterministic_disjoint_and_ordered():
    names = [f"c{i}" for i in range(8)]
    seen, unseen = split_classes(names, 0.25, seed=3)
    assert (seen, unseen) == split_classes(names, 0.25, seed=3)
    assert len(unseen) == 2 and set(seen) | set(unseen) == set(names) and not set(seen) & set(unseen)
    assert seen == [n for n in names if n in seen] and unseen == [n for n in names if n in unseen]
    assert split_classes(CLASSES, ["sofa", "lamp"]) == (["chair", "mug"], ["lamp", "sofa"])
    assert len(split_classes(names, 0.01)[1]) == 1 and len(split_classes(names, 0.99)[1]) == 7
    with pytest.raises(ValueError, match="not in the class list"):
        split_classes(CLASSES, ["table"])
    with pytest.raises(ValueError, match="non-empty"):
        split_classes(CLASSES, CLASSES)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        split_classes(CLASSES, 1.0)
    assert class_indices(CLASSES, ["sofa", "lamp"]) == [3, 1]


def test_restrict_dataset_keeps_the_labelled_samples_of_the_classes(tmp_path):
    folder = make_paired_folder(tmp_path / "data")  # label i % 4
    seen = restrict_dataset(folder, ["chair", "mug"])
    assert seen.indices == [0, 2, 4, 6, 8, 10, 12, 14]
    nested = restrict_dataset(seen, ["mug"])  # a Subset of a Subset reads labels without loading images
    assert [nested[i].label for i in range(len(nested))] == [2, 2, 2, 2]


def test_restrict_curation_filters_by_pseudo_label():
    result = CurationResult(kept=[1, 4, 7], ids=["a", "b", "c"], pseudo_labels=[0, 2, 0],
                            pseudo_names=["chair", "mug", "chair"], confidences=[0.1] * 9, all_pseudo_labels=[0] * 9,
                            superset=CLASSES, mode="threshold", threshold=0.25)
    seen = restrict_curation(result, ["chair", "lamp"])
    assert (seen.kept, seen.ids, seen.pseudo_names, seen.num_kept, seen.total) == ([1, 7], ["a", "c"],
                                                                                   ["chair", "chair"], 2, 9)
    with pytest.raises(ValueError, match="superset"):
        restrict_curation(result, ["table"])


def test_evaluate_ood_unseen_only_versus_all_classes():
    dataset = OracleDataset([0, 1, 2, 3, 2, 3, None])
    unseen = ["mug", "sofa"]
    perfect = evaluate_ood(OracleTeacher(), dataset, TEXT, CLASSES, unseen, ["rgb", "depth"])
    assert perfect == {part: {"rgb": 1.0, "depth": 1.0} for part in ("unseen", "seen", "unseen_vs_all")}
    # unseen images lean towards the seen class "chair": right among the unseen classes, wrong among all
    confused = evaluate_ood(OracleTeacher(confuse_unseen=[2, 3]), dataset, TEXT, CLASSES, unseen, ["rgb"])
    assert confused == {"unseen": {"rgb": 1.0}, "seen": {"rgb": 1.0}, "unseen_vs_all": {"rgb": 0.0}}
    assert "unseen_vs_all" not in evaluate_ood(OracleTeacher(), dataset, TEXT, CLASSES, unseen, ["rgb"],
                                               include_all=False)

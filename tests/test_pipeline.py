"""Tests for edgevl_lib.pipeline helpers that notebooks share (the full chain runs in test_notebooks)."""
from __future__ import annotations

import torch

from edgevl_lib.evaluate import embed_model
from edgevl_lib.pipeline import teacher_embeddings
from helpers_fake import FakeTeacher, make_paired_folder


def test_teacher_embeddings_are_stored_per_modality_and_keyed_by_pixels(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVL_CACHE", str(tmp_path / "cache"))
    dataset = make_paired_folder(tmp_path / "data")
    teacher = FakeTeacher()
    expect, labels = embed_model(teacher, dataset, ["rgb", "depth"])

    emb, got_labels = teacher_embeddings(teacher, dataset, ["rgb"])
    assert torch.equal(emb["rgb"], expect["rgb"]) and torch.equal(got_labels, labels)
    calls = teacher.calls
    emb, _ = teacher_embeddings(teacher, dataset, ["rgb", "depth"])  # rgb stored, depth computed
    assert teacher.calls > calls and torch.equal(emb["depth"], expect["depth"])
    calls = teacher.calls
    emb, got_labels = teacher_embeddings(teacher, dataset, ["depth", "rgb"])  # both stored: no teacher call
    assert teacher.calls == calls and list(emb) == ["depth", "rgb"]
    assert torch.equal(emb["rgb"], expect["rgb"]) and torch.equal(got_labels, labels)

    # another teacher, or other pixels, is a miss
    other = FakeTeacher(id="fake-teacher-2", seed=1)
    assert not torch.equal(teacher_embeddings(other, dataset, ["rgb"])[0]["rgb"], expect["rgb"])
    shifted = make_paired_folder(tmp_path / "data2", seed=5)
    calls = teacher.calls
    teacher_embeddings(teacher, shifted, ["rgb"])
    assert teacher.calls > calls

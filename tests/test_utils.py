"""Tests for edgevl_lib.utils: atomic writes keep the umask's mode (reports readable by others), nothing partial."""
from __future__ import annotations

import os
import stat

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from edgevl_lib import bench, utils  # noqa: E402


@pytest.fixture()
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    previous = os.umask(0o022)
    yield set_mask
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expect", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_mode_the_umask_allows(tmp_path, umask, mask, expect):
    umask(mask)
    metrics = utils.save_metrics(tmp_path, {"a": 1})
    fig, _ = plt.subplots()
    figure = utils.save_figure(fig, tmp_path, "f")
    plt.close(fig)
    result = bench.write_result({"median_ms": 1.0}, tmp_path / "edge.json")
    with utils.atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"x")
    for path in (metrics, figure, result, tmp_path / "x.bin"):
        assert _mode(path) == expect, path
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_a_failed_write_leaves_nothing(tmp_path, umask):
    with pytest.raises(RuntimeError):
        with utils.atomic_path(tmp_path / "m.json") as tmp:
            tmp.write_text("{half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []

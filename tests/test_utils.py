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


def test_rounded_rounds_every_float_inside_and_keeps_small_values_significant():
    import numpy as np

    from edgevl_lib.utils import rounded

    value = {"acc": 0.19466666666666665, "ci": [0.8104166, np.float32(0.8420938)], "n": 750, "ok": True,
             "p": 1.1057e-05, "name": "rgb", "pair": (2.0 / 3.0, -0.00045678), "none": None}
    assert rounded(value) == {"acc": 0.195, "ci": [0.81, 0.842], "n": 750, "ok": True, "p": 1.1e-05,
                              "name": "rgb", "pair": (0.667, -0.00046), "none": None}
    assert rounded(10567.65) == 10568 and rounded(12.34567, 2) == 12.35 and rounded(0.0) == 0.0 and np.isnan(rounded(float("nan")))
    assert isinstance(rounded(np.float64(0.5)), float)


def test_notebook_logging_shows_the_workbench_info_and_hides_other_libraries_info():
    import logging

    from edgevl_lib.utils import notebook_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    notebook_logging()
    try:
        assert logging.getLogger("edgevl_lib.train").isEnabledFor(logging.INFO)
        assert not logging.getLogger("open_clip").isEnabledFor(logging.INFO)
        assert not logging.getLogger().isEnabledFor(logging.INFO)  # open_clip logs on the root logger
        assert logging.getLogger("root").isEnabledFor(logging.WARNING)
    finally:
        logging.getLogger("edgevl_lib").setLevel(logging.NOTSET)
        root.handlers[:] = handlers
        root.setLevel(level)


def test_resolve_out_dir_creates_nothing_until_the_first_file(tmp_path):
    import matplotlib.pyplot as plt

    out = utils.resolve_out_dir(tmp_path / "reports" / "01_curation", "01_curation")
    assert out == tmp_path / "reports" / "01_curation" and not out.exists()  # a refused run leaves no empty folder
    fig = plt.figure()
    utils.save_figure(fig, out, "x")
    plt.close(fig)
    assert (out / "figures" / "x.png").is_file()

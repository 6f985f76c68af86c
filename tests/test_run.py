"""Tests for the papermill runner: statuses, exit code, outputs."""
from __future__ import annotations

import json

import nbformat as nbf
import pytest

from edgevl_lib import run


def _notebook(path, body: str) -> None:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_code_cell("smoke = False\nout_dir = None", metadata={"tags": ["parameters"]}),
                nbf.v4.new_code_cell(body)]
    nbf.write(nb, path)


@pytest.fixture()
def books(tmp_path, monkeypatch):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    _notebook(nb_dir / "01_ok.ipynb", "import json, pathlib\n"
              "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'smoke': smoke}))")
    _notebook(nb_dir / "02_todo.ipynb", "raise NotImplementedError('02_todo is not built yet')")
    _notebook(nb_dir / "03_broken.ipynb", "1 / 0")
    monkeypatch.setattr(run, "NOTEBOOK_DIR", nb_dir)
    return tmp_path


def test_statuses_outputs_and_exit_code(books, capsys):
    out = books / "reports"
    code = run.main(["--smoke", "--out", str(out)])
    assert code == 1  # a built notebook failed
    printed = capsys.readouterr().out
    assert "01_ok: ok" in printed and "02_todo: not built" in printed and "03_broken: failed" in printed
    assert "not built yet (NotImplementedError): 02_todo" in printed
    assert json.loads((out / "01_ok" / "metrics.json").read_text()) == {"smoke": True}  # parameters injected
    for stem in ("01_ok", "02_todo", "03_broken"):
        assert (out / stem / f"{stem}.ipynb").is_file() and (out / stem / f"{stem}.html").is_file()


def test_not_built_alone_exits_zero(books):
    assert run.main(["--only", "1", "2", "--out", str(books / "r")]) == 0


def test_only_filters_in_order(books):
    assert [p.stem for p in run.list_notebooks(["03", "01"])] == ["01_ok", "03_broken"]
    with pytest.raises(SystemExit, match="matches no notebook"):
        run.list_notebooks(["09"])

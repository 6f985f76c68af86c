"""Execute the notebooks headless with papermill into reports/<stem>/.

    python -m edgevl_lib.run                                  # the default recipe (what `make report` runs)
    python -m edgevl_lib.run --recipe my.yaml --set stage1.epochs=10   # any recipe, with dotted overrides
    python -m edgevl_lib.run --smoke                          # the recipe's tiny configuration, a minute or two
    python -m edgevl_lib.run --only 01 03                     # a subset, still in order
    python -m edgevl_lib.run --list                           # the shipped recipes

Every notebook gets the same `recipe`, `overrides` and `smoke` parameters, so all five run one recipe (their
metrics.json record the same `recipe.hash`). The recipe is checked before the first notebook starts.

For each notebooks/NN_*.ipynb it writes reports/<stem>/<stem>.ipynb (executed) and <stem>.html
(nbconvert); the notebook itself writes figures/*.png and metrics.json there. A notebook that is not
built yet stops with NotImplementedError: the runner reports it as "not built" and goes on. The exit
status is non-zero only if a built notebook fails.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgevl_lib.utils import PROJECT_ROOT, atomic_path, drop_log_messages, reports_dir

log = logging.getLogger(__name__)

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


@dataclass
class NotebookResult:
    """Outcome of one notebook: `ok`, `not built` (NotImplementedError) or `failed`."""

    stem: str
    status: str
    seconds: float
    message: str = ""
    reuse: list[str] = field(default_factory=list)


def list_notebooks(only: list[str] | None = None) -> list[Path]:
    """notebooks/NN_*.ipynb in order; `only` keeps those whose number or stem is listed (e.g. ["01", "03"])."""
    books = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {o.zfill(2) if o.isdigit() else o for o in only}
        books = [b for b in books if b.stem[:2] in wanted or b.stem in wanted]
        if not books:
            raise SystemExit(f"--only {' '.join(only)} matches no notebook in {NOTEBOOK_DIR}")
    return books


def execute_notebook(path: Path, out_root: Path, smoke: bool, parameters: dict | None = None,
                     html: bool = True) -> NotebookResult:
    """Run one notebook with papermill (cwd = project root) and export HTML; never raises for notebook errors."""
    import papermill as pm

    out_dir = out_root / path.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    out_nb = out_dir / f"{path.stem}.ipynb"
    params = {"smoke": smoke, "out_dir": str(out_dir), **(parameters or {})}
    start = time.perf_counter()
    status, message = "ok", ""
    with atomic_path(out_nb) as tmp:
        try:
            pm.execute_notebook(str(path), str(tmp), parameters=params, cwd=str(PROJECT_ROOT),
                                progress_bar=False, log_output=False, kernel_name="python3",
                                kernel_manager_class=ipc_kernel_manager())
        except pm.PapermillExecutionError as exc:
            status = "not built" if exc.ename == "NotImplementedError" else "failed"
            message = f"{exc.ename}: {exc.evalue}"
    seconds = time.perf_counter() - start
    if html:
        export_html(out_nb, out_dir / f"{path.stem}.html")
    return NotebookResult(path.stem, status, seconds, message, reuse_log(out_nb))


def ipc_kernel_manager() -> type:
    """jupyter_client's AsyncKernelManager on IPC transport (unix sockets in the Jupyter runtime folder).

    Over the default TCP transport, ipykernel >= 7 warns on every start that the kernel "is running over TCP without
    encryption"; a local unix socket (readable by this user only) is the safe way to silence it for the runner. Each
    kernel gets its own socket prefix under the temp folder, removed with the kernel.
    """
    import tempfile
    import uuid

    from jupyter_client.manager import AsyncKernelManager

    class IpcKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.transport = "ipc"
            # the socket files are <ip>-<n>; jupyter_client's default ip ("kernel-ipc" in the cwd) is shared by every
            # kernel started there at once (two pytest workers, two runners) and their messages would cross
            self.ip = os.path.join(tempfile.gettempdir(), f"edgevl-kernel-{uuid.uuid4().hex[:12]}")

    return IpcKernelManager


REUSE_WORDS = ("reused", "not found", "retrained", "rebuilt", "resum")


def reuse_log(notebook: Path) -> list[str]:
    """The log lines of an executed notebook that say what was reused from the cache and what was (re)built."""
    import nbformat

    lines = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            lines += [ln.strip() for ln in text.splitlines()
                      if ln.startswith(("INFO edgevl_lib", "WARNING edgevl_lib")) and any(w in ln for w in REUSE_WORDS)]
    return lines


def export_html(notebook: Path, html_path: Path) -> Path:
    """nbconvert the executed notebook to a standalone HTML report (inputs shown), written atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    # nbconvert gives every figure a default alt text, then warns that it did
    with drop_log_messages(exporter.log, "Alternative text is missing"):
        body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    with atomic_path(html_path) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return html_path


def run_all(smoke: bool = False, only: list[str] | None = None, out_root: Path | None = None,
            html: bool = True, recipe: str | None = None, overrides: list[str] | None = None) -> list[NotebookResult]:
    """Execute the notebooks in order on one recipe, printing each one's status, wall time and what it reused
    as it finishes (`html`: also export each executed notebook to HTML).

    Raises:
        RecipeError: the recipe or an override is invalid (checked before any notebook runs).
    """
    from edgevl_lib.recipe import DEFAULT_RECIPE, load_recipe

    recipe = str(recipe or DEFAULT_RECIPE)
    overrides = list(overrides or [])
    resolved = load_recipe(recipe, overrides, smoke=smoke)
    print(f"[run] recipe {resolved.name} (hash {resolved.hash}{', smoke' if smoke else ''})", flush=True)
    out_root = Path(out_root) if out_root else reports_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PAPERMILL_EXECUTION"] = "1"  # throttles progress bars inside the kernels
    results = []
    for book in list_notebooks(only):
        print(f"[run] {book.stem} ...", flush=True)
        res = execute_notebook(book, out_root, smoke, {"recipe": recipe, "overrides": overrides}, html=html)
        results.append(res)
        extra = f"  ({res.message})" if res.message else ""
        for line in res.reuse:
            print(f"[run]   {line}", flush=True)
        print(f"[run] {res.stem}: {res.status} in {res.seconds:.1f} s{extra}", flush=True)
    index = write_index(out_root, results, resolved)
    print(f"[run] report index: {index}")
    print("\n[run] summary" + (" (smoke)" if smoke else ""))
    for r in results:
        print(f"  {r.stem:<22} {r.status:<10} {r.seconds:8.1f} s")
    print(f"  {'total':<22} {'':<10} {sum(r.seconds for r in results):8.1f} s")
    return results


HEADLINES: dict[str, tuple[str, ...]] = {
    "01_curation": ("zero_shot", "curation.kept", "curation.total", "curation.kept_pseudo_acc",
                    "curation.classes_kept", "curation.uninformative"),
    "02_stage1": ("zero_shot", "ablation.dual.mean_trained", "ablation.rgb_only.mean_trained",
                  "ablation.nonrgb_only.mean_trained"),
    "03_stage2": ("table.stage1_fp32.avg", "table.ptq_int8.avg", "table.qat_int8.avg", "table.stage2_int8.avg"),
    "04_feature_angles": ("angle_deg.fp32", "angle_deg.stage2", "m_rel", "m_neigh"),
    "05_jetson_benchmark": ("speedup.int8_vs_clip_b16", "speedup.int8_vs_fp32", "size_mb.student_int8"),
}
"""metrics.json entries the report index shows for each notebook (dotted paths; missing ones are skipped)."""


def _lookup(metrics: dict, dotted: str):
    node = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _fmt(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_index(out_root: Path, results: list[NotebookResult], recipe) -> Path:
    """`<out_root>/index.html`: every notebook's HTML report, status, wall time, headline metrics and figure
    thumbnails, and the recipe the run used (links are relative, so the folder can be copied or served)."""
    import html
    import json

    rows = []
    for r in results:
        folder = out_root / r.stem
        metrics_path = folder / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        lines = [f"<li><code>{html.escape(k)}</code>: {html.escape(_fmt(v))}</li>"
                 for k in HEADLINES.get(r.stem, ()) if (v := _lookup(metrics, k)) is not None]
        thumbs = "".join(f'<a href="{r.stem}/figures/{p.name}"><img src="{r.stem}/figures/{p.name}" '
                         f'alt="{html.escape(p.stem)}" title="{html.escape(p.stem)}"></a>'
                         for p in sorted((folder / "figures").glob("*.png")))
        report = f'<a href="{r.stem}/{r.stem}.html">{r.stem}</a>' if (folder / f"{r.stem}.html").is_file() else r.stem
        metrics_link = f'<br><a href="{r.stem}/metrics.json">metrics.json</a>' if metrics else ""
        rows.append(f"<tr><td>{report}{metrics_link}</td>"
                    f"<td class=\"{r.status.replace(' ', '-')}\">{html.escape(r.status)}</td><td>{r.seconds:.0f} s</td>"
                    f"<td><ul>{''.join(lines)}</ul>{html.escape(r.message)}</td><td>{thumbs}</td></tr>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>EdgeVL workbench report: {html.escape(recipe.name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}td{{vertical-align:top;padding:.4em;border-top:1px solid #ccc}}
img{{height:90px;margin:2px;border:1px solid #ddd}}.ok{{color:green}}.failed{{color:#b00}}pre{{background:#f6f6f6}}</style>
</head><body><h1>EdgeVL workbench report</h1>
<p>recipe <b>{html.escape(recipe.name)}</b>, hash <code>{recipe.hash}</code>{' (smoke)' if recipe.smoke else ''}</p>
<table><tr><th>notebook</th><th>status</th><th>time</th><th>headline</th><th>figures</th></tr>
{''.join(rows)}</table>
<h2>Recipe</h2><pre>{html.escape(recipe.to_yaml())}</pre></body></html>
"""
    path = out_root / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny configuration for a quick end-to-end check")
    parser.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (numbers or stems)")
    parser.add_argument("--out", type=Path, default=None, help="reports folder (default: <project>/reports)")
    parser.add_argument("--recipe", default=None, help="a shipped recipe's name or a YAML path (default: embedded_cpu)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override on top of the recipe, e.g. --set stage1.epochs=10 (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the shipped recipes and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from edgevl_lib.recipe import RecipeError, describe

    if args.list:
        for row in describe():
            print(f"{row['name']:<22} {row['title']}")
        return 0
    try:
        results = run_all(args.smoke, args.only, args.out, recipe=args.recipe, overrides=args.overrides)
    except RecipeError as exc:
        print(f"[run] {exc}", file=sys.stderr)
        return 2
    failed = [r.stem for r in results if r.status == "failed"]
    not_built = [r.stem for r in results if r.status == "not built"]
    if not_built:
        print(f"[run] not built yet (NotImplementedError): {', '.join(not_built)}")
    if failed:
        print(f"[run] FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

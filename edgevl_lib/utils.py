"""Small shared helpers: project paths, seeding, devices, atomic writes, metrics files, progress bars.

Everything that writes a file the user keeps (checkpoints, caches, metrics, figures) goes through
`atomic_path` so an interrupted run never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import numpy as np
import torch

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the folder holding edgevl_lib/, notebooks/, reports/)."""

T = TypeVar("T")


def cache_dir() -> Path:
    """Folder for generated data, teacher weights and embedding caches.

    `$EDGEVL_CACHE` when set, else `<project root>/.cache` (ignored by git), so notebooks find the
    same cache whether they run from the repo root, from notebooks/ in JupyterLab, or under papermill.
    """
    path = Path(os.environ.get("EDGEVL_CACHE", PROJECT_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def reports_dir() -> Path:
    """`<project root>/reports`, where the runner and the notebooks put their outputs."""
    return PROJECT_ROOT / "reports"


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; make CPU kernels deterministic; return a seeded torch.Generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """The device the library runs on: `prefer` if given, else CUDA when present, else CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success rename it over `path` (atomic on POSIX).

    On an exception the temporary file is removed and `path` is left untouched. The file gets the mode a plain
    `open()` would give it (0666 minus the umask: 0644 under umask 022), not mkstemp's private 0600, so colleagues
    and web servers can read reports.

    >>> with atomic_path("out.json") as tmp:
    ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp",
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON atomically; numpy/torch scalars are converted to Python numbers."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.generic, torch.Tensor)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_metrics(out_dir: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write `<out_dir>/metrics.json` atomically (the file the runner and the issues' checks read)."""
    return write_json(Path(out_dir) / "metrics.json", metrics)


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise logger `name` to `level` for the block, then restore it (for third-party noise at import time)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


class _DropMessages(logging.Filter):
    def __init__(self, substrings: Iterable[str]) -> None:
        super().__init__()
        self.substrings = tuple(substrings)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(s in record.getMessage() for s in self.substrings)


@contextlib.contextmanager
def drop_log_messages(logger: logging.Logger | str | None, *substrings: str) -> Iterator[None]:
    """Drop the records of `logger` (a Logger, its name, or None for the root logger) whose message contains one of
    `substrings`, for the block; every other record passes (known third-party notices, not a level change)."""
    target = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
    dropped = _DropMessages(substrings)
    target.addFilter(dropped)
    try:
        yield
    finally:
        target.removeFilter(dropped)


# torchao registers enums with torch's pytree when it is first imported (by quantize, or by transformers through
# sentence_transformers), which torch 2.14 answers with one deprecation warning per enum: say nothing to users
PYTREE_LOGGER = "torch.utils._pytree"


def notebook_logging(level: int = logging.INFO) -> None:
    """A notebook's log: the workbench's own messages at `level`, other libraries' at WARNING and above only
    (open_clip and sentence_transformers log their configuration at INFO on every model they build)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("edgevl_lib").setLevel(level)


def rounded(value: Any, digits: int = 3) -> Any:
    """`value` with every float inside (dicts, lists, tuples, numpy scalars) rounded to `digits` decimals, for
    printouts people read; a nonzero float below 10^-digits keeps two significant figures instead (a p-value of
    1.1e-05 stays 1.1e-05, not 0.0), and one of 1000 or more becomes a whole number (10568 img/s). Ints, bools,
    strings and None pass unchanged; metrics.json keeps full precision.

    >>> rounded({"rgb": 0.19466666666666665, "ci": [0.8104166, 0.8420938], "n": 750, "p": 1.1057e-05})
    {'rgb': 0.195, 'ci': [0.81, 0.842], 'n': 750, 'p': 1.1e-05}
    """
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(rounded(v, digits) for v in value)
    if isinstance(value, (float, np.floating)):
        x = float(value)
        if np.isfinite(x) and abs(x) >= 1000:
            return int(round(x))
        if x == 0 or not np.isfinite(x) or abs(x) >= 10.0 ** -digits:
            return round(x, digits)
        return round(x, 1 - int(np.floor(np.log10(abs(x)))))
    return value


def save_figure(fig: Any, out_dir: str | os.PathLike, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure to `<out_dir>/figures/<name>.png` atomically and return the path."""
    path = Path(out_dir) / "figures" / f"{name}.png"
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, **kwargs: Any) -> Iterable[T]:
    """tqdm progress bar throttled (mininterval 10 s when not a terminal) so executed notebooks stay small."""
    from tqdm.auto import tqdm

    interactive = os.environ.get("EDGEVL_PROGRESS_INTERVAL") is None and _is_interactive()
    mininterval = 0.5 if interactive else float(os.environ.get("EDGEVL_PROGRESS_INTERVAL", 10))
    return tqdm(iterable, desc=desc, total=total, mininterval=mininterval, maxinterval=max(mininterval, 10),
                dynamic_ncols=True, **kwargs)


def _is_interactive() -> bool:
    """True in a terminal or a live JupyterLab kernel; False under papermill or CI."""
    if os.environ.get("CI") or os.environ.get("PAPERMILL_EXECUTION"):
        return False
    import sys

    return sys.stderr.isatty() or "ipykernel" in sys.modules and not os.environ.get("EDGEVL_HEADLESS")


def resolve_out_dir(out_dir: str | os.PathLike | None, stem: str) -> Path:
    """The notebook's output folder: `out_dir` if given, else `<project>/reports/<stem>`. Nothing is created here:
    the first file written there creates it (`atomic_path`), so a run refused on bad input leaves no empty folder."""
    return Path(out_dir) if out_dir else reports_dir() / stem

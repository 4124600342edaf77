"""A run folder's layout: every path in it is joined here (docs/run-folder.md), and new run ids."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ofgr_core.common.errors import ConfigError

CONFIG_FILE = "config.yaml"
ENV_FILE = "env.json"
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.json"
SPLIT_FILE = "split.json"
DATA_REPORT_FILE = "data_report.json"
STOP_FILE = "stop"
SPLIT_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class RunFolder:
    """Every path inside one run folder (docs/run-folder.md): the only place that joins them.

    Writers (the pipeline, ``ofgr run``) and readers (CLI, TUI, compare, query, t-SNE, tests) all go through
    this class, so the layout can change in one place. Split names are checked before they become part of a
    path: a ``--split ../x`` never reaches outside the folder.

    Args:
        path: the run folder (``RUNS_DIR/<run_id>``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def run_id(self) -> str:
        return self.path.name

    # files at the top level
    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def env(self) -> Path:
        return self.path / ENV_FILE

    @property
    def events(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def split(self) -> Path:
        return self.path / SPLIT_FILE

    @property
    def data_report(self) -> Path:
        return self.path / DATA_REPORT_FILE

    @property
    def stop_file(self) -> Path:
        return self.path / STOP_FILE

    # folders
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def embeddings_dir(self) -> Path:
        return self.path / "embeddings"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def cache_dir(self) -> Path:
        """Per-run derived data that can be recomputed (t-SNE projections)."""
        return self.path / "cache"

    def checkpoint(self, which: str) -> Path:
        """``best`` (selected on seen validation classes) or ``last`` (everything needed to resume)."""
        if which not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {which!r}")
        return self.checkpoints / f"{which}.pt"

    def embeddings_npy(self, split: str) -> Path:
        return self.embeddings_dir / f"{check_split_name(split)}.npy"

    def embeddings_csv(self, split: str) -> Path:
        return self.embeddings_dir / f"{check_split_name(split)}.csv"

    def embedded_splits(self) -> list[str]:
        """Splits with stored embeddings, sorted."""
        return sorted(p.stem for p in self.embeddings_dir.glob("*.npy"))

    def per_query(self, split: str) -> Path:
        return self.eval_dir / f"per_query_{check_split_name(split)}.npz"

    def per_query_text(self, split: str) -> Path:
        """Per-query text -> image values (one class-name query per fine class) for paired tests."""
        return self.eval_dir / f"per_query_{check_split_name(split)}_text_to_image.npz"

    def index_dir(self, split: str) -> Path:
        return self.path / "index" / check_split_name(split)

    def is_run(self) -> bool:
        return self.events.exists() or self.config.exists()


def check_split_name(split: str) -> str:
    """A split name as used in file names: letters, digits, ``_`` and ``-`` only."""
    if not split or not set(split) <= SPLIT_NAME_CHARS:
        raise ConfigError(f"split name {split!r}: use letters, digits, '_' or '-' (e.g. unseen, seen)")
    return split


NAME_PART_BYTES = 100  # of a run id's name part, in UTF-8 bytes: file systems count bytes (255 per name)


def new_run_id(runs_dir: Path, name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-") or "run"
    # cut at a character boundary: 100 four-byte characters would make a 400-byte folder name
    safe = safe.encode("utf-8")[:NAME_PART_BYTES].decode("utf-8", "ignore").strip("-") or "run"
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
    run_id, n = base, 1
    while (runs_dir / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def create_run_dir(runs_dir: str | os.PathLike[str], name: str) -> Path:
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        run_dir = runs_dir / new_run_id(runs_dir, name)
        try:
            run_dir.mkdir()
        except FileExistsError:  # another process took the id in the same second
            continue
        folder = RunFolder(run_dir)
        folder.checkpoints.mkdir()
        folder.embeddings_dir.mkdir()
        return run_dir
    raise RuntimeError(f"could not create a run folder in {runs_dir}")

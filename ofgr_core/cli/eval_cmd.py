"""``ofgr eval-embeddings`` and ``ofgr index build``: the evaluation engine from the command line.

Heavy libraries (faiss, numpy's big paths) load inside the commands; this module imports no torch.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from ofgr_core.cli.app import app, err, handle_errors, index_app, out, print_json
from ofgr_core.common.errors import DataError, NotFoundError, UsageError
from ofgr_core.common.textio import read_text
from ofgr_core.config import MAX_SEED

LABEL_COLUMNS = ("id", "fine", "coarse", "split", "domain", "group")
INDEX_TYPES = ("flat", "ivf_flat", "ivf_pq", "hnsw")
T = TypeVar("T")


def load_embeddings(path: Path) -> np.ndarray:
    """An N x D ``.npy`` opened as a read-only memmap (nothing is read until searched)."""
    from ofgr_core.embedding.stored import load_embeddings as load

    return load(path)


def load_label_csv(path: Path, n_rows: int, *, required: tuple[str, ...] = ("id", "fine")) -> dict[str, np.ndarray]:
    """Read a label CSV (one row per embedding row) into columns, with one-line errors naming file/row/column.

    Returns:
        ``{column: np.ndarray of str}`` for the known columns present (``LABEL_COLUMNS``).
    """
    if not path.is_file():
        raise NotFoundError(f"{path}: label file not found")
    text = read_text(path, what="label file")  # UTF-8 with or without BOM, UTF-16/32 with BOM
    try:
        return _parse_label_csv(path, text, n_rows, required)
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None


def _parse_label_csv(path: Path, text: str, n_rows: int, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file, expected a header with columns {', '.join(required)}")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}: missing column {missing[0]!r} (found: {', '.join(header)})")
        cols = [c for c in LABEL_COLUMNS if c in header]
        pos = [header.index(c) for c in cols]
        data: dict[str, list[str]] = {c: [] for c in cols}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
            for c, p in zip(cols, pos, strict=True):
                value = row[p].strip()
                if not value and c in ("id", "fine"):
                    raise DataError(f"{path}: line {line}: empty {c!r}")
                data[c].append(value)
    n = len(data[cols[0]]) if cols else 0
    if n != n_rows:
        raise DataError(f"{path}: {n} data rows but the embeddings have {n_rows} rows (need one per row)")
    table = {c: np.asarray(v) for c, v in data.items()}
    if "id" in table:
        uniq, first, counts = np.unique(table["id"], return_index=True, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1][0]
            lines = np.flatnonzero(table["id"] == dup)[:2] + 2
            raise DataError(f"{path}: duplicate id {dup!r} on lines {lines[0]} and {lines[1]}")
    return table


def _options(build: Callable[[], T], names: dict[str, str]) -> T:
    """Build a config from command-line values; a value out of range is a usage error naming the option."""
    from pydantic import ValidationError

    try:
        return build()
    except ValidationError as e:
        first = e.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        option = names.get(field, f"--{field.replace('_', '-')}")
        raise UsageError(f"{option}: {first['msg'].lower()}, got {first.get('input')!r}") from None


def _faiss_errors(call: Callable[[], T], index: str, n: int) -> T:
    """FAISS reports impossible index parameters as a RuntimeError with a C++ location; keep its reason."""
    from ofgr_core.retrieval.index import IndexBuildError

    try:
        return call()
    except IndexBuildError as e:
        raise IndexBuildError(e.index_type, e.n, e.reason, option="--index {}") from None
    except RuntimeError as e:
        text = str(e)
        if "faiss" not in text.lower():
            raise
        reason = text.split("failed:", 1)[-1].strip().splitlines()[0] if "failed:" in text else text.splitlines()[0]
        raise DataError(f"--index {index} cannot be built on {n} vectors ({reason[:200]}); use --index flat "
                        "or more data") from None


def _note(message: str) -> None:
    err.print(f"[dim]{escape(message)}[/]", highlight=False)


def _parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated positive integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise typer.BadParameter(f"expected comma-separated positive integers, got {text!r}")
    return ks


def _fmt(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "-"
    s = f"{value:.4f}"
    return f"{s} [dim][{ci[0]:.4f}, {ci[1]:.4f}][/]" if ci else s


def _print_tables(result: dict[str, dict[str, Any]]) -> None:
    for split, block in result.items():
        levels = [lv for lv in ("fine", "coarse") if lv in block]
        idx = block.get("index", {})
        title = (
            f"{split}: {block['n_queries']} queries, gallery {block['n_gallery']}, "
            f"{block['n_skipped_queries']} skipped; {idx.get('type')} index on {idx.get('device')}"
        )
        table = Table(title=escape(title), title_justify="left")
        table.add_column("metric")
        for lv in levels:
            table.add_column(f"{lv} (95% CI)", justify="right")
        for key in block[levels[0]]:
            cells = [_fmt(block[lv][key], block.get("ci95", {}).get(lv, {}).get(key)) for lv in levels]
            table.add_row(escape(str(key)), *cells)
        out.print(table)
        rcwf = block.get("right_coarse_wrong_fine@1")
        if rcwf is not None:
            ci = block.get("right_coarse_wrong_fine@1_ci95")
            out.print(f"right coarse, wrong fine @1: {_fmt(rcwf, ci)}", highlight=False)
        for key, value in idx.items():
            if key.startswith("recall_vs_exact"):
                out.print(f"{escape(key)} (approximate vs exact index): {value:.4f}", highlight=False)
        approx = block.get("approximation")
        if approx:
            conf = round(100 * approx["confidence"])
            for lv in levels:
                for key in ("recall@1", "map@r"):
                    d = approx["difference"].get(lv, {}).get(key)
                    if d is None:
                        continue
                    ci = "" if d["ci"] is None else f" [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]"
                    out.print(f"approximate index: {lv} {key} differs from exact by {d['mean']:+.4f}{ci} "
                              f"({conf}% CI, {approx['sample_queries']} queries searched exactly too)",
                              highlight=False)


@app.command("eval-embeddings")
@handle_errors
def eval_embeddings(
    embeddings: Path = typer.Argument(..., metavar="EMB.npy", help="N x D float embeddings."),
    labels: Path = typer.Argument(
        ..., metavar="LABELS.csv", help="One row per embedding: id, fine, \\[coarse, split, domain, group]."
    ),
    k: str = typer.Option("1,2,4,5,8,10", "--k", help="Recall@K cut-offs, comma separated."),
    index: str = typer.Option("flat", "--index", help="flat | ivf_flat | ivf_pq | hnsw."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when faiss sees one) | cpu | gpu."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for CIs (0 = off)."),
    exclude_same_group: bool = typer.Option(
        False, "--exclude-same-group", help="Do not let a query retrieve items of its own group."
    ),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Bootstrap and index-training seed."),
    drop_invalid: bool = typer.Option(
        False, "--drop-invalid", help="Leave out NaN/Inf/all-zero embeddings (counted) instead of refusing them."
    ),
    multi_gpu: str = typer.Option(None, "--multi-gpu",
                                  help="shard | replicate the index over several GPUs (default shard)."),
    exact_check: int = typer.Option(10000, "--exact-check", min=0,
                                    help="Approximate indexes: queries also searched exactly to measure the error."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout (metrics.json blocks)."),
) -> None:
    """Retrieval metrics of stored embeddings, per split (leave-one-out within each split).

    Under ``torchrun --nproc_per_node N`` the queries are shared out between the N processes and rank 0
    prints exactly what one process prints.
    """
    from ofgr_core.config import EvalConfig, IndexConfig
    from ofgr_core.retrieval.evaluate import evaluate_embeddings
    from ofgr_core.retrieval.shard import close_shard, init_shard_from_env

    if index not in INDEX_TYPES:
        raise typer.BadParameter(f"--index must be one of {', '.join(INDEX_TYPES)}, got {index!r}")
    if device not in ("auto", "cpu", "gpu"):
        raise typer.BadParameter(f"--device must be auto, cpu or gpu, got {device!r}")
    if multi_gpu not in (None, "shard", "replicate"):
        raise typer.BadParameter(f"--multi-gpu must be shard or replicate, got {multi_gpu!r}")
    ks = _parse_ks(k)
    cfg = _options(lambda: EvalConfig(ks=ks, bootstrap=bootstrap, exclude_same_group=exclude_same_group,
                                      index=IndexConfig(type=index, device=device, multi_gpu=multi_gpu,
                                                        exact_check=exact_check)),
                   {"ks": "--k", "bootstrap": "--bootstrap"})
    emb, table, keep, notes = _eval_inputs(embeddings, labels, exclude_same_group, drop_invalid)
    # under torchrun each rank searches its share of the queries; rank 0 alone prints the (identical) result
    shard = init_shard_from_env()
    chunks = [0]

    def count(split: str, done: int, total: int) -> None:
        chunks[0] += 1

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _faiss_errors(
                lambda: evaluate_embeddings(emb, table, cfg, seed=seed, shard=shard, progress=count,
                                            note=_note if shard is None or shard.is_main else None),
                index, len(emb))
    finally:
        close_shard(shard)
    if shard is not None:
        err.print(f"rank {shard.rank} of {shard.world}: searched {chunks[0]} query chunks", highlight=False)
        if not shard.is_main:
            return
    for msg in notes + [str(w.message) for w in caught]:
        err.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    if keep is not None:
        for block in result.values():
            block["n_dropped_invalid"] = int((~keep).sum())
    if all(block.get("n_queries", 0) == 0 for block in result.values()):
        raise DataError(f"{labels}: no query has another item of its fine class in its split; nothing to score")
    if as_json:
        print_json(result)
    else:
        _print_tables(result)


def _eval_inputs(embeddings: Path, labels: Path, exclude_same_group: bool, drop_invalid: bool
                 ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None, list[str]]:
    """``(embeddings, label columns, rows kept or None for all, warnings)`` after the input checks."""
    from ofgr_core.retrieval.embcheck import check_embeddings, degenerate_labels

    emb = load_embeddings(embeddings)
    table = load_label_csv(labels, len(emb))
    if exclude_same_group and "group" not in table:
        raise DataError(f"{labels}: --exclude-same-group needs a 'group' column")
    keep, note = check_embeddings(emb, str(embeddings), drop_invalid=drop_invalid)
    notes = [note] if note else []
    if keep is not None:
        emb = np.asarray(emb[keep])
        table = {c: v[keep] for c, v in table.items()}
    split_col = table.get("split")
    for s in (sorted(set(split_col.tolist())) if split_col is not None else [None]):
        fine = table["fine"] if s is None else table["fine"][split_col == s]
        notes += degenerate_labels(fine, f"split {s!r}" if s is not None else str(labels))
    return emb, table, keep, notes


@index_app.command("build")
@handle_errors
def index_build(
    run_ref: str = typer.Argument(..., metavar="RUN", help="Run folder, id, unique prefix, or 'latest'."),
    index_type: str = typer.Option(
        None, "--type", help="flat | ivf_flat | ivf_pq | hnsw (default: the run's config)."
    ),
    split: str = typer.Option("unseen", "--split", help="Which stored embeddings to index."),
    device: str = typer.Option(None, "--device", help="auto | cpu | gpu (default: run config)."),
    multi_gpu: str = typer.Option(None, "--multi-gpu", help="shard | replicate over several GPUs."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    as_json: bool = typer.Option(False, "--json", help="Print the index description as JSON."),
) -> None:
    """Build and save a FAISS index over a run's stored embeddings into RUN/index/<split>/.

    The index's ids are the row numbers of RUN/embeddings/<split>.csv, whose ``id`` column names the item.
    """
    from ofgr_core.config import IndexConfig, load_config
    from ofgr_core.retrieval.embcheck import check_embeddings
    from ofgr_core.retrieval.index import build_index
    from ofgr_core.runs.folder import RunFolder, check_split_name
    from ofgr_core.runs.state import resolve_run

    check_split_name(split)
    run_dir = resolve_run(run_ref, runs_dir)
    folder = RunFolder(run_dir)
    npy, csv_path = folder.embeddings_npy(split), folder.embeddings_csv(split)
    if not npy.is_file():
        have = folder.embedded_splits()
        raise NotFoundError(
            f"{npy}: no stored {split!r} embeddings" + (f" (available: {', '.join(have)})" if have else "")
        )
    emb = load_embeddings(npy)
    load_label_csv(csv_path, len(emb), required=("id",))  # the row <-> item contract must hold
    cfg_file = folder.config
    icfg = load_config(cfg_file).eval.index if cfg_file.is_file() else IndexConfig()
    updates = {k: v for k, v in (("type", index_type), ("device", device), ("multi_gpu", multi_gpu))
               if v is not None}
    if multi_gpu not in (None, "shard", "replicate"):
        raise typer.BadParameter(f"--multi-gpu must be shard or replicate, got {multi_gpu!r}")
    if index_type is not None and index_type not in INDEX_TYPES:
        raise typer.BadParameter(f"--type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
    if device is not None and device not in ("auto", "cpu", "gpu"):
        raise typer.BadParameter(f"--device must be auto, cpu or gpu, got {device!r}")
    icfg = icfg.model_copy(update=updates)
    check_embeddings(emb, str(npy))
    idx = _faiss_errors(lambda: build_index(emb, icfg, ids=np.arange(len(emb), dtype=np.int64), note=_note),
                        icfg.type, len(emb))
    saved = idx.save(folder.index_dir(split))
    info = {**idx.info(), "path": str(saved)}
    if as_json:
        print_json(info)
    else:
        out.print(f"built {idx.type} index of {idx.ntotal} x {idx.dim} on {idx.device} -> {saved}", markup=False,
                  highlight=False)

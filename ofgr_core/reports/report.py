"""A self-contained report folder for one or more runs: ``report.md``, CSVs and PNG figures.

The folder reads on GitHub with ofgr not installed: plain markdown, relative links, PNGs made with matplotlib
(Agg backend, imported only here). Numbers come from the run folders and ``ofgr_core.reports.compare`` (the same
``Comparison`` that ``ofgr compare`` and the TUI show).

```
DIR/
  report.md
  metrics.csv  per_class.csv  compute.csv  training.csv  coarse_first.csv  [comparison.csv]
  figures/recall_at_k.png  [comparison.png]  <L>_tsne.png  <L>_per_class.png  <L>_training.png
```
``<L>`` is the run's letter (A, B, ...) in the order given.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from ofgr_core.common.atomic import atomic_write_text
from ofgr_core.common.errors import DataError, NotFoundError, OfgrError
from ofgr_core.reports.compare import LEVELS, SPLITS, Comparison, compare_runs, text_block
from ofgr_core.reports.tables import LETTERS, count, markdown_comparison, pct, seconds
from ofgr_core.runs.eventlog import read_events
from ofgr_core.runs.folder import METRICS_FILE, RunFolder
from ofgr_core.runs.metrics import describe_training
from ofgr_core.runs.validate import METRICS, OPT_STR, read_run_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Progress = Callable[[str], None]
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
MAX_REPORT_RUNS = len(LETTERS)


def _plt() -> Any:  # matplotlib.pyplot, imported on first use (a module has no annotation of its own)
    try:
        import matplotlib
    except ImportError:
        from ofgr_core.common.errors import DependencyError

        raise DependencyError("ofgr report needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: Sequence[str] | None = None) -> None:
    fields = list(fields or (rows[0].keys() if rows else ["empty"]))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _training_history(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for ev in read_events(run_dir):
        if ev.get("type") == "train_epoch":
            val = ev.get("val") or {}
            rows.append({"epoch": ev.get("epoch"), "loss": ev.get("loss"), "lr": ev.get("lr"),
                         **{f"loss_{k}": v for k, v in (ev.get("losses") or {}).items()},
                         **{f"val_{k}": v for k, v in val.items()}, "seconds": ev.get("seconds"),
                         "best": ev.get("best")})
    return rows


def _train_steps(run_dir: Path) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for ev in read_events(run_dir):
        if ev.get("type") == "train_step" and ev.get("steps_per_epoch"):
            xs.append(ev["epoch"] - 1 + ev["step"] / ev["steps_per_epoch"])
            ys.append(float(ev["loss"]))
    return xs, ys


# ------------------------------------------------------------------------------------------------ figures
def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
    _plt().close(fig)
    return path.name


def fig_recall_curves(metrics: list[dict[str, Any]], labels: list[str], path: Path) -> str | None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    drawn = False
    for ax, level in zip(axes, LEVELS, strict=True):
        for i, (m, label) in enumerate(zip(metrics, labels, strict=True)):
            for split, style in (("unseen", "-"), ("seen", "--")):
                block = (m.get(split) or {}).get(level) or {}
                pts = sorted((int(k.split("@")[1]), v) for k, v in block.items()
                             if k.startswith("recall@") and isinstance(v, (int, float)))
                if pts:
                    ax.plot([k for k, _ in pts], [100 * v for _, v in pts], style, marker="o", ms=3,
                            color=COLORS[i % len(COLORS)], label=f"{label} {split}")
                    drawn = True
        ax.set_title(f"{level} level")
        ax.set_xlabel("K")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Recall@K (%)")
    if not drawn:
        plt.close(fig)
        return None
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Recall@K (solid: unseen classes, dashed: seen classes)")
    return _save(fig, path)


def fig_tsne(run_dir: Path, path: Path, *, max_points: int, title: str) -> tuple[str | None, str | None]:
    from ofgr_core.reports.tsne import compute_tsne

    try:
        res = compute_tsne(run_dir, "all", max_points=max_points)
    except OfgrError as e:
        return None, str(e)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    coarse = sorted(set(res.coarse))
    cmap = plt.get_cmap("tab10" if len(coarse) <= 10 else "tab20")
    split = np.asarray(res.split)
    cls = np.asarray(res.coarse)
    for j, c in enumerate(coarse):
        col = cmap(j % cmap.N)
        for s, marker, size, alpha in (("seen", "x", 10, 0.35), ("unseen", "o", 12, 0.85)):
            sel = (cls == c) & (split == s)
            if sel.any():
                ax.scatter(res.xy[sel, 0], res.xy[sel, 1], s=size, marker=marker, color=col, alpha=alpha,
                           label=c if s == "unseen" or not ((cls == c) & (split == "unseen")).any() else None,
                           linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title}: t-SNE (o unseen classes, x seen classes; colour = coarse class)")
    if len(coarse) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best", title="coarse")
    return _save(fig, path), res.note


def fig_per_class(metrics: dict[str, Any], path: Path, *, n: int, title: str) -> str | None:
    per_class = (metrics.get("unseen") or {}).get("per_class") or {}
    items = [(str(name), float(v["recall@1"])) for name, v in per_class.items() if isinstance(v, dict)
             and isinstance(v.get("recall@1"), (int, float))]
    if not items:
        return None
    items.sort(key=lambda t: (t[1], t[0]))
    worst = items[:n]
    best = items[-n:] if len(items) > n else []
    best = [b for b in best if b not in worst]
    plt = _plt()
    shown = worst + best
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(shown) + 1.2))
    ys = np.arange(len(shown))
    colors = ["#d62728"] * len(worst) + ["#2ca02c"] * len(best)
    ax.barh(ys, [100 * v for _, v in shown], color=colors)
    ax.set_yticks(ys, [name for name, _ in shown], fontsize=7)
    ax.set_xlabel("unseen fine Recall@1 (%)")
    ax.set_xlim(0, 100)
    ax.set_title(f"{title}: worst (red) and best (green) unseen classes")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def fig_training(run_dir: Path, path: Path, *, title: str) -> str | None:
    hist = _training_history(run_dir)
    xs, ys = _train_steps(run_dir)
    if not hist and not xs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if xs:
        ax.plot(xs, ys, color="#999999", lw=0.8, label="loss (step)")
    if hist:
        ax.plot([h["epoch"] for h in hist], [h["loss"] for h in hist], "o-", color="#1f77b4", label="loss (epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    val = [(h["epoch"], float(h["val_recall@1"])) for h in hist if isinstance(h.get("val_recall@1"), (int, float))]
    if val:
        ax2 = ax.twinx()
        ax2.plot([e for e, _ in val], [100 * v for _, v in val], "s-", color="#d62728", label="seen-val R@1")
        ax2.set_ylabel("seen-val Recall@1 (%)", color="#d62728")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="best")
    else:
        ax.legend(fontsize=7)
    ax.set_title(f"{title}: training")
    return _save(fig, path)


def fig_comparison(c: Comparison, labels: list[str], path: Path) -> str | None:
    bars = [(s, lv, m) for s in SPLITS for lv in LEVELS for m in ("recall@1", "map@r")
            if c.row(s, lv, m) is not None]
    if not bars:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(bars)), 4))
    n = len(c.run_ids)
    width = 0.8 / n
    x = np.arange(len(bars))
    for i in range(n):
        vals: list[float] = []
        err: list[list[float]] = [[], []]
        for s, lv, m in bars:
            r = c.row(s, lv, m)
            v = r.values[i] if r else None
            ci = r.ci[i] if r else None
            vals.append(100 * v if v is not None else 0.0)
            err[0].append(100 * (v - ci[0]) if v is not None and ci else 0.0)
            err[1].append(100 * (ci[1] - v) if v is not None and ci else 0.0)
        ax.bar(x + (i - (n - 1) / 2) * width, vals, width, yerr=err, capsize=2, color=COLORS[i % len(COLORS)],
               label=labels[i])
    ax.set_xticks(x, [f"{s}\n{lv} {'R@1' if m == 'recall@1' else 'MAP@R'}" for s, lv, m in bars], fontsize=8)
    ax.set_ylabel("%")
    ax.set_title("Headline metrics with 95% bootstrap CIs (image→image)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ tables
def _results_md(m: dict[str, Any]) -> list[str]:
    ks = sorted({int(k.split("@")[1]) for s in SPLITS for lv in LEVELS
                 for k in ((m.get(s) or {}).get(lv) or {}) if k.startswith("recall@")})
    lines = ["| split | level | " + " | ".join(f"R@{k}" for k in ks) + " | MAP@R | queries |",
             "|---|---|" + "---:|" * (len(ks) + 2)]
    for s in SPLITS:
        block = m.get(s)
        if not isinstance(block, dict):
            continue
        for lv in LEVELS:
            if lv not in block:
                continue
            ci = (block.get("ci95") or {}).get(lv) or {}

            def cell(key: str, block: dict[str, Any] = block, lv: str = lv, ci: dict[str, Any] = ci) -> str:
                v = block[lv].get(key)
                if v is None:
                    return "-"
                c = ci.get(key)
                return f"{100 * v:.1f} ({100 * c[0]:.1f}–{100 * c[1]:.1f})" if c else f"{100 * v:.1f}"

            lines.append(f"| {s} | {lv} | " + " | ".join(cell(f"recall@{k}") for k in ks)
                         + f" | {cell('map@r')} | {block.get('n_queries', '')} |")
    rcwf = [(s, (m.get(s) or {}).get("right_coarse_wrong_fine@1")) for s in SPLITS]
    rcwf = [(s, v) for s, v in rcwf if isinstance(v, (int, float))]
    if rcwf:
        lines += ["", "Right coarse, wrong fine @1: " + ", ".join(f"{s} {pct(v)}%" for s, v in rcwf)]
    t2i = [(s, *text_block(m.get(s))) for s in SPLITS]
    t2i = [(s, b, space) for s, b, space in t2i if b is not None]
    if t2i:
        spaces = sorted({space for _, _, space in t2i if space})
        lines += ["", "Text→image (class-name prompts as queries" + (f", {'/'.join(spaces)} image space"
                                                                     if spaces else "") + "):", "",
                  "| split | level | R@1 | R@5 | MAP@R |", "|---|---|---:|---:|---:|"]
        for s, b, _ in t2i:
            for lv in LEVELS:
                blk = (b or {}).get(lv) or {}
                if blk:
                    lines.append(f"| {s} | {lv} | {pct(blk.get('recall@1'))} | {pct(blk.get('recall@5'))} | "
                                 f"{pct(blk.get('map@r'))} |")
    return lines


def _coarse_first_md(run_dir: Path, rows_out: list[dict[str, Any]], run_id: str) -> list[str]:
    from ofgr_core.retrieval.coarse_first import coarse_first_for_run

    lines: list[str] = []
    for split in SPLITS:
        try:
            res = coarse_first_for_run(run_dir, split)
        except OfgrError as e:
            lines.append(f"- {split}: coarse-first not evaluated ({e})")
            continue
        if res is None or not len(res.query_ids):
            continue
        if not lines:
            lines = ["| split | metric | flat | coarse-first | Δ (95% CI) | p |", "|---|---|---:|---:|---:|---:|"]
        for key, label in (("fine_recall@1", "fine R@1"), ("fine_map@r", "fine MAP@R"),
                           ("coarse_recall@1", "coarse R@1"), ("coarse_map@r", "coarse MAP@R"),
                           ("right_coarse_wrong_fine@1", "right coarse, wrong fine @1")):
            flat_v, cf_v = res.flat.mean(key), res.coarse_first.mean(key)
            t = res.vs_flat.get(key) or {}
            ci = t.get("ci") or [float("nan")] * 2
            lines.append(f"| {split} | {label} | {pct(flat_v)} | {pct(cf_v)} | {100 * (cf_v - flat_v):+.1f} "
                         f"({100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}) | {t.get('p_value', float('nan')):.3g} |")
            rows_out.append({"run_id": run_id, "split": split, "metric": key, "flat": flat_v, "coarse_first": cf_v,
                             "delta": cf_v - flat_v, "delta_ci_low": ci[0], "delta_ci_high": ci[1],
                             "p_value": t.get("p_value"), "coarse_accuracy": res.coarse_accuracy,
                             "method": res.method, "k_vote": res.k_vote})
        lines.append(f"| {split} | coarse decided correctly | | {pct(res.coarse_accuracy)} | | |")
    if lines and lines[0].startswith("|"):
        lines = ["Coarse-first retrieval decides each query's coarse class from the similarity-weighted coarse "
                 "votes of its 10 nearest gallery neighbours, ranks that coarse class's gallery first, then the "
                 "rest; flat is the same exact search without the re-ranking (paired bootstrap, same queries).",
                 "", *lines]
    return lines


def _compute_md(m: dict[str, Any], rows_out: list[dict[str, Any]], run_id: str) -> list[str]:
    comp = m.get("compute") if isinstance(m.get("compute"), dict) else None
    if comp is None:
        t = m.get("timings") or {}
        return ["| stage | seconds |", "|---|---:|"] + [f"| {k} | {v:.1f} |" for k, v in t.items()]
    lines = [f"Device: {comp.get('gpu_name') or comp.get('device')} ({comp.get('n_gpus', 0)} GPU), wall time "
             f"{seconds(comp.get('wall_seconds'))}, GPU-hours {comp.get('gpu_hours', 0):.3f}, peak RSS "
             f"{(comp.get('peak_rss_mb') or 0) / 1024:.2f} GiB"
             + (f", peak GPU memory {comp['peak_gpu_mb'] / 1024:.2f} GiB" if comp.get("peak_gpu_mb") else "")
             + f"; parameters {count(comp.get('trainable_params'))} trained of {count(comp.get('params'))}"
             + (f"; training compute ≈ {comp['train_flops'] / 1e15:.3g} PFLOPs ({comp.get('train_flops_method')})"
                if comp.get("train_flops") else "") + ".",
             "", "| stage | seconds | images | images/s | peak RSS (MiB) | peak GPU (MiB) | GPU-hours |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for stage, st in (comp.get("stages") or {}).items():
        def f(v: object, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        lines.append(f"| {stage} | {f(st.get('seconds'), '.1f')} | {f(st.get('images'), 'd')} | "
                     f"{f(st.get('images_per_s'), '.1f')} | {f(st.get('peak_rss_mb'), '.0f')} | "
                     f"{f(st.get('peak_gpu_mb'), '.0f')} | {f(st.get('gpu_hours'), '.4f')} |")
        rows_out.append({"run_id": run_id, "stage": stage, **st})
    return lines


def _what_was_run_md(run_dir: Path, m: dict[str, Any]) -> list[str]:
    from ofgr_core.runs.validate import DATA_REPORT, ENV

    folder = RunFolder(run_dir)
    # damaged side files leave their lines out of the report (the headline numbers come from metrics.json)
    env = read_run_json(folder.env, ENV)[0] or {}
    split = read_run_json(folder.split, {"counts": dict, "protocol": OPT_STR, "query": OPT_STR})[0] or {}
    data_rep = read_run_json(folder.data_report, DATA_REPORT)[0] or {}
    d = m.get("data") or {}
    model = m.get("model") or {}
    tr = m.get("train") or {}
    lines = [
        f"- **Model**: `{model.get('kind', '')}:{model.get('name', '')}`, embedding {model.get('embed_dim')}-d, "
        f"{count(model.get('params'))} parameters ({count(model.get('trainable_params'))} trained), "
        f"image size {model.get('image_size')}",
        f"- **Data**: {d.get('dataset', '?')}, {d.get('n_images', '?')} images"
        + (f" ({d['n_unreadable']} unreadable skipped)" if d.get("n_unreadable") else "")
        + f"; fine classes: {d.get('n_fine_train', '?')} train / {d.get('n_fine_val', '?')} val / "
        f"{d.get('n_fine_unseen', '?')} unseen",
        f"- **Split**: protocol `{split.get('protocol', d.get('split_protocol', '?'))}`, seed {split.get('seed')}, "
        f"queries `{split.get('query', '?')}`; images per part {split.get('counts', {})}",
        f"- **Training**: {tr.get('epochs')} epochs ({describe_training(tr)}), {count(tr.get('images_seen'))} "
        f"images seen, {seconds(tr.get('seconds'))}"
        f" on {tr.get('device')} x {tr.get('world_size', 1)}",
    ]
    if env:
        pk = env.get("packages") or {}
        lines.append(f"- **Environment**: Python {env.get('python')}, {env.get('platform')}, host "
                     f"{env.get('host')}, git {str(env.get('git_commit') or '?')[:12]}; "
                     + ", ".join(f"{k} {v}" for k, v in pk.items() if k in ("torch", "timm", "open_clip_torch",
                                                                             "faiss-cpu", "faiss-gpu", "numpy")))
        cmd = env.get("command")
        if cmd:
            lines.append(f"- **Command**: `{' '.join(cmd) if isinstance(cmd, list) else cmd}`")
    warns = data_rep.get("warnings") or []
    if warns:
        lines.append("- **Data warnings**: " + "; ".join(str(w) for w in warns[:5]))
    return lines


# ------------------------------------------------------------------------------------------------ report
class ReportOptions(TypedDict, total=False):
    """The keyword options of :func:`write_report` a caller may pass through (``run_suite``'s ``report_kwargs``)."""

    tsne: bool
    tsne_points: int
    n_classes: int
    n_resamples: int


def write_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    tsne: bool = True,
    tsne_points: int = 1500,
    n_classes: int = 10,
    n_resamples: int = 10000,
    progress: Progress | None = None,
) -> Path:
    """Write the report folder for ``run_dirs`` (the first is the baseline); returns ``report.md``'s path.

    Raises:
        NotFoundError: a run has not finished (no metrics.json).
        OfgrError: more runs than letters, or ``out_dir`` is a run folder or a file.
    """
    say = progress or (lambda _s: None)
    dirs = [Path(d) for d in run_dirs]
    out = Path(out_dir)
    all_m = _read_runs(dirs, out)
    figs = out / "figures"
    if figs.is_dir():
        shutil.rmtree(figs)  # stale figures of an earlier report would be linked from nowhere
    figs.mkdir(parents=True, exist_ok=True)
    labels = [f"{LETTERS[i]} {m.get('name') or d.name}" for i, (d, m) in enumerate(zip(dirs, all_m, strict=True))]

    comparison = None
    if len(dirs) > 1:
        say("comparing runs (paired bootstrap tests)")
        comparison = compare_runs(dirs, n_resamples=n_resamples)

    md = _summary_md(dirs, all_m)
    say("Recall@K curves")
    rk = fig_recall_curves(all_m, labels, figs / "recall_at_k.png")
    md += ["## Results", ""]
    if rk:
        md += [f"![Recall@K per run and level](figures/{rk})", ""]
    if comparison is not None:
        md += ["## Comparison", ""]
        cmp_fig = fig_comparison(comparison, labels, figs / "comparison.png")
        if cmp_fig:
            md += [f"![Comparison of headline metrics](figures/{cmp_fig})", ""]
        md += [markdown_comparison(comparison, names={d.name: m.get("name") or d.name
                                                      for d, m in zip(dirs, all_m, strict=True)}), ""]
        _write_csv(out / "comparison.csv", comparison.records())

    rows = _Tables()
    for i, (d, m) in enumerate(zip(dirs, all_m, strict=True)):
        md += _run_md(d, m, LETTERS[i], figs, rows, say, tsne=tsne, tsne_points=tsne_points, n_classes=n_classes)
        rows.add_metrics(d.name, m)
        rows.train += [{"run_id": d.name, **h} for h in _training_history(d)]

    csvs = rows.write(out) + (["comparison.csv"] if comparison is not None else [])
    md += ["## Files", "", *[f"- [{c}]({c})" for c in csvs], "",
           f"Generated by `ofgr report` from the run folders "
           f"({', '.join(f'`{d.name}`' for d in dirs)}); every number above is in their metrics.json.", ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    (out / "runs.json").write_text(json.dumps([str(d) for d in dirs], indent=1) + "\n")
    return out / "report.md"


def _read_runs(dirs: list[Path], out: Path) -> list[dict[str, Any]]:
    """Every run's metrics.json, after checking the run count and that ``out`` can hold a report."""
    if not dirs:
        raise OfgrError("report needs at least one run")
    if len(dirs) > MAX_REPORT_RUNS:
        raise OfgrError(f"report takes at most {MAX_REPORT_RUNS} runs, got {len(dirs)}")
    if out.exists() and not out.is_dir():
        raise OfgrError(f"{out}: exists and is not a folder; choose another -o")
    if RunFolder(out).is_run() or RunFolder(out).metrics.exists():
        raise OfgrError(f"{out}: is a run folder; write the report somewhere else (-o)")
    all_m = []
    for d in dirs:
        m, why = read_run_json(RunFolder(d).metrics, METRICS)  # strict, bounded, typed (runs/validate.py)
        if why is not None:
            raise DataError(f"{RunFolder(d).metrics}: cannot report on it ({why.split(': ', 1)[-1]})")
        if not isinstance(m, dict):
            raise NotFoundError(f"{d.name}: no {METRICS_FILE} (the run has not finished)")
        all_m.append(m)
    return all_m


def _summary_md(dirs: list[Path], all_m: list[dict[str, Any]]) -> list[str]:
    """The title, the protocol in two sentences, and one headline row per run."""
    title = dirs[0].name if len(dirs) == 1 else f"{len(dirs)} runs compared"
    md = [f"# ofgr report: {title}", "",
          "Open-set fine-grained retrieval: models are trained on *seen* fine classes and evaluated on "
          "*unseen* ones (class-disjoint), leave-one-out within each split unless the split says otherwise. "
          "Metric definitions: Recall@K (a relevant item among the top K), MAP@R (Musgrave et al. 2020). "
          "Intervals are 95% bootstrap CIs over queries.", ""]
    md += ["| | run | model | unseen fine R@1 | unseen fine MAP@R |", "|---|---|---|---:|---:|"]
    for i, (d, m) in enumerate(zip(dirs, all_m, strict=True)):
        u = (m.get("unseen") or {}).get("fine") or {}
        mod = m.get("model") or {}
        md.append(f"| {LETTERS[i]} | `{d.name}` | {mod.get('kind', '')}:{mod.get('name', '')} | "
                  f"{pct(u.get('recall@1'))} | {pct(u.get('map@r'))} |")
    md.append("")
    return md


def _run_md(d: Path, m: dict[str, Any], letter: str, figs: Path, rows: _Tables, say: Progress, *, tsne: bool,
            tsne_points: int, n_classes: int) -> list[str]:
    """One run's section (what was run, results, coarse-first, compute, figures); adds its CSV rows."""
    name = m.get("name") or d.name
    md = [f"## {letter}: `{d.name}`", "", "### What was run", "", *_what_was_run_md(d, m), ""]
    cfg_path = RunFolder(d).config
    cfg_text = cfg_path.read_text() if cfg_path.is_file() else ""
    if cfg_text:
        md += ["<details><summary>Resolved config (config.yaml)</summary>", "", "```yaml", cfg_text.rstrip(),
               "```", "", "</details>", ""]
    md += ["### Results (%)", "", *_results_md(m), ""]
    say(f"{letter}: coarse-first retrieval")
    cf = _coarse_first_md(d, rows.coarse_first, d.name)
    if cf:
        md += ["### Coarse-first vs flat retrieval (%)", "", *cf, ""]
    md += ["### Compute", "", *_compute_md(m, rows.compute, d.name), ""]
    say(f"{letter}: figures")
    pc = fig_per_class(m, figs / f"{letter}_per_class.png", n=n_classes, title=f"{letter} {name}")
    tr = fig_training(d, figs / f"{letter}_training.png", title=f"{letter} {name}")
    if tr:
        md += ["### Training", "", f"![Training curves of {letter}](figures/{tr})", ""]
    if pc:
        md += ["### Per-class Recall@1 (unseen)", "", f"![Per-class R@1 of {letter}](figures/{pc})", ""]
    if tsne:
        say(f"{letter}: t-SNE")
        ts, note = fig_tsne(d, figs / f"{letter}_tsne.png", max_points=tsne_points, title=f"{letter} {name}")
        if ts:
            md += ["### Embedding map", "", f"![t-SNE of {letter}](figures/{ts})", ""]
            if note:
                md += [f"_{note}_", ""]
        elif note:
            md += [f"_t-SNE not drawn: {note}_", ""]
    return md


@dataclass
class _Tables:
    """The rows of the report's CSV files, filled run by run."""

    metrics: list[dict[str, Any]] = field(default_factory=list)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    compute: list[dict[str, Any]] = field(default_factory=list)
    train: list[dict[str, Any]] = field(default_factory=list)
    coarse_first: list[dict[str, Any]] = field(default_factory=list)

    def add_metrics(self, run_id: str, m: dict[str, Any]) -> None:
        """Image and text metrics (with intervals) and per-class rows of every split of one run."""
        for s in SPLITS:
            block = m.get(s)
            if not isinstance(block, dict):
                continue
            for lv in LEVELS:
                ci = (block.get("ci95") or {}).get(lv) or {}
                for key, v in (block.get(lv) or {}).items():
                    c = ci.get(key)
                    self.metrics.append({"run_id": run_id, "mode": "image", "split": s, "level": lv, "metric": key,
                                         "value": v, "ci95_low": c[0] if c else None,
                                         "ci95_high": c[1] if c else None})
            t2i, _ = text_block(block)
            if t2i is not None:
                for lv in LEVELS:
                    for key, v in (t2i.get(lv) or {}).items():
                        self.metrics.append({"run_id": run_id, "mode": "text", "split": s, "level": lv,
                                             "metric": key, "value": v})
            for cname, v in (block.get("per_class") or {}).items():
                self.per_class.append({"run_id": run_id, "split": s, "class": cname, **v})

    def write(self, out: Path) -> list[str]:
        """Writes the five CSV files into ``out``; returns their names."""
        _write_csv(out / "metrics.csv", self.metrics,
                   ["run_id", "mode", "split", "level", "metric", "value", "ci95_low", "ci95_high"])
        _write_csv(out / "per_class.csv", self.per_class, ["run_id", "split", "class", "n", "recall@1", "map@r"])
        _write_csv(out / "compute.csv", self.compute, ["run_id", "stage", "seconds", "images", "images_per_s",
                                                       "peak_rss_mb", "peak_gpu_mb", "gpu_hours"])
        train_fields = sorted({k for r in self.train for k in r}, key=lambda k: (k not in ("run_id", "epoch"), k))
        _write_csv(out / "training.csv", self.train, train_fields or ["run_id", "epoch"])
        _write_csv(out / "coarse_first.csv", self.coarse_first,
                   ["run_id", "split", "metric", "flat", "coarse_first", "delta", "delta_ci_low", "delta_ci_high",
                    "p_value", "coarse_accuracy", "method", "k_vote"])
        return ["metrics.csv", "per_class.csv", "compute.csv", "training.csv", "coarse_first.csv"]

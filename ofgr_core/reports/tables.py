"""Plain-text formatting of a ``Comparison`` shared by every front end (rich table, CSV, markdown, report).

No rich/typer here: cells are strings, so the CLI table, ``--markdown`` and ``report.md`` show the same
characters for the same numbers.
"""

from __future__ import annotations

from ofgr_core.reports.compare import HEADLINE, MODE_LABELS, Comparison, MetricRow, RunCost, Significance

LETTERS = "ABCDEFGH"


def stars(test: Significance | None) -> str:
    """``*`` p<0.05, ``**`` p<0.01, ``***`` p<0.001 (unadjusted, as the TUI shows them)."""
    if test is None:
        return ""
    p = test.p_value
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def mark(test: Significance | None) -> str:
    """Stars, then ``†`` when the difference survives the Holm correction; ``?`` when there is no test."""
    if test is None:
        return "?"
    return stars(test) + ("†" if test.survives else "")


def pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def value_cell(row: MetricRow, i: int) -> str:
    """``45.3±1.2``: percent with the 95% bootstrap CI half-width."""
    v, ci = row.values[i], row.ci[i]
    if v is None:
        return "-"
    return f"{100 * v:.1f}±{100 * (ci[1] - ci[0]) / 2:.1f}" if ci else f"{100 * v:.1f}"


def delta_cell(row: MetricRow, i: int) -> str:
    """``+1.8**†`` against the baseline (percentage points); empty for the baseline."""
    d = row.deltas[i]
    if i == 0 or d is None:
        return ""
    return f"{100 * d:+.1f}{mark(row.tests[i])}"


def seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    s_int = int(s)
    return f"{s_int // 3600}h{s_int % 3600 // 60:02d}m" if s >= 3600 else f"{s_int // 60}m{s_int % 60:02d}s"


def count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.1f}"


def num(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def params_cell(c: RunCost) -> str:
    if c.trainable_params is not None and c.params is not None and c.trainable_params != c.params:
        return f"{count(c.trainable_params)}/{count(c.params)}"
    return count(c.trainable_params if c.trainable_params is not None else c.params)


COST_FIELDS: tuple[tuple[str, str], ...] = (
    ("trained/total params", "params"),
    ("epochs", "epochs"),
    ("fit time", "fit"),
    ("total time", "total"),
    ("train img/s", "ips"),
    ("GPU-h", "gpuh"),
    ("train PFLOPs", "pflops"),
    ("peak RSS", "rss"),
    ("peak GPU mem", "gpumem"),
    ("device", "device"),
)


def cost_cells(c: RunCost) -> dict[str, str]:
    return {
        "params": params_cell(c),
        "epochs": "-" if c.epochs is None else str(c.epochs),
        "fit": seconds(c.train_seconds),
        "total": seconds(c.total_seconds),
        "ips": count(c.images_per_s),
        "gpuh": num(c.gpu_hours, ".3f"),
        "pflops": num(c.train_pflops, ".3g"),
        "rss": "-" if c.peak_rss_mb is None else f"{c.peak_rss_mb / 1024:.1f}G",
        "gpumem": "-" if c.peak_gpu_mb is None else f"{c.peak_gpu_mb / 1024:.1f}G",
        "device": c.device or "-",
    }


def legend_lines(c: Comparison) -> list[str]:
    return [
        f"Δ: percentage points against A (the baseline). Paired bootstrap over the same queries "
        f"({c.n_resamples} resamples): * p<0.05 ** p<0.01 *** p<0.001 (unadjusted); "
        f"† survives Holm-Bonferroni (family-wise α={c.alpha:g}) over the {c.family_size} headline tests "
        f"({' and '.join(h.replace('recall@1', 'R@1').replace('map@r', 'MAP@R') for h in HEADLINE)} × split × "
        f"level × mode × run); ? no paired test. ±: 95% bootstrap CI half-width.",
    ]


def section_title(mode: str, split: str) -> str:
    return f"{MODE_LABELS.get(mode, mode)} · {split}"


def markdown_comparison(c: Comparison, *, names: dict[str, str] | None = None) -> str:
    """The comparison as GitHub markdown: runs, metric table, costs, ratios, warnings."""
    names = names or {}
    lines: list[str] = []
    if c.split_mismatch:
        lines += [
            f"> **⚠ WARNING: {', '.join(c.split_mismatch)} {'was' if len(c.split_mismatch) == 1 else 'were'} "
            f"evaluated on a different split than {c.run_ids[0]}.** Their numbers are not comparable query by "
            "query and no paired test was run.",
            "",
        ]
    lines += ["| | run | model | dataset |", "|---|---|---|---|"]
    for i, (rid, cost) in enumerate(zip(c.run_ids, c.costs, strict=True)):
        base = " (baseline)" if i == 0 else ""
        lines.append(f"| {LETTERS[i]} | `{rid}`{base} | {cost.model} | {cost.dataset or '-'} |")
    lines.append("")
    header = "| metric (%) | " + " | ".join(
        f"{LETTERS[i]}" if i == 0 else f"{LETTERS[i]} | Δ{LETTERS[i]}" for i in range(len(c.run_ids))) + " |"
    sep = "|---|" + "|".join("---:" if i == 0 else "---:|---:" for i in range(len(c.run_ids))) + "|"
    current = None
    for r in c.rows:
        sec = (r.mode, r.split)
        if sec != current:
            if current is not None:
                lines.append("")
            lines += [f"**{section_title(*sec)}**", "", header, sep]
            current = sec
        cells = []
        for i in range(len(c.run_ids)):
            cells.append(value_cell(r, i))
            if i:
                cells.append(delta_cell(r, i) or "-")
        lines.append(f"| {r.label.split(' ', 1)[1]} | " + " | ".join(cells) + " |")
    lines += ["", *legend_lines(c), ""]
    lines += ["**Cost per run**", "", "| | " + " | ".join(h for h, _ in COST_FIELDS) + " |",
              "|---|" + "|".join("---:" for _ in COST_FIELDS) + "|"]
    for i, cost in enumerate(c.costs):
        by_key = cost_cells(cost)
        lines.append(f"| {LETTERS[i]} | " + " | ".join(by_key[k] for _, k in COST_FIELDS) + " |")
    if c.ratios:
        lines += ["", "**Measured ratios** (against the baseline, same metrics.json fields)", ""]
        letter = {rid: f"{LETTERS[i]} ({names.get(rid, c.costs[i].name)})" for i, rid in enumerate(c.run_ids)}
        lines += [f"- {x.sentence(letter)}" for x in c.ratios]
    if c.notes:
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in c.notes]
    return "\n".join(lines) + "\n"


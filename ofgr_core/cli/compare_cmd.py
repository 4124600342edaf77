"""``ofgr compare``: runs side by side, with paired significance, costs and measured ratios."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ofgr_core.cli.app import app, err, handle_errors, out, print_json
from ofgr_core.cli.tables import Column, fitted_table, rendered_width
from ofgr_core.common.errors import OfgrError
from ofgr_core.reports.compare import Comparison
from ofgr_core.reports.tables import (
    COST_FIELDS,
    LETTERS,
    cost_cells,
    delta_cell,
    legend_lines,
    markdown_comparison,
    section_title,
    value_cell,
)
from ofgr_core.runs.state import resolve_run

LABEL_WIDTH = 19  # "unseen coarse MAP@R"


def _parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise typer.BadParameter(f"--k: expected comma-separated positive integers or 'all', got {text!r}") from None
    if not ks or ks[0] < 1:
        raise typer.BadParameter(f"--k: expected comma-separated positive integers or 'all', got {text!r}")
    return ks


def resolve_runs(refs: list[str], runs_dir: Path) -> list[Path]:
    dirs = [resolve_run(r, runs_dir) for r in refs]
    seen: set[Path] = set()
    for d in dirs:
        if d.resolve() in seen:
            raise OfgrError(f"run {d.name} is given twice; compare distinct runs")
        seen.add(d.resolve())
    return dirs


def _delta_style(text: str) -> str:
    if "†" in text:
        return "bold green" if text.startswith("+") else "bold red"
    return "dim" if "?" in text or not text.rstrip("?").rstrip("*") or "*" not in text else ""


def metric_tables(c: Comparison, width: int) -> list[Table]:
    """One table per group of runs that fits ``width`` (the baseline is repeated in each group)."""
    n = len(c.run_ids)
    one_line = 9 + 1 + 8  # "100.0±9.9 +12.3**†"
    two_line = 10
    per_run = one_line if LABEL_WIDTH + n * (one_line + 2) <= width else two_line
    fit = max(1, (width - LABEL_WIDTH) // (per_run + 2) - 1)  # others per table beside the baseline
    groups = [list(range(1, n))[a : a + fit] for a in range(0, n - 1, fit)] or [[]]
    tables = []
    for g in groups:
        idx = [0, *g]
        t = Table(box=None, pad_edge=False, show_header=True, header_style="bold", padding=(0, 1))
        t.add_column("metric %", no_wrap=True, min_width=LABEL_WIDTH)
        for i in idx:
            t.add_column(LETTERS[i], justify="right", no_wrap=True)
        current = None
        for r in c.rows:
            if (r.mode, r.split) != current:
                current = (r.mode, r.split)
                t.add_row(Text(section_title(*current), style="bold underline"), *[""] * len(idx))
            cells = []
            for i in idx:
                v = Text(value_cell(r, i))
                d = delta_cell(r, i)
                if d:
                    sep = " " if per_run == one_line else "\n"
                    v.append(sep + d, style=_delta_style(d))
                cells.append(v)
            t.add_row(r.label.split(" ", 1)[1], *cells)
        tables.append(t)
    return tables


def cost_table(c: Comparison, width: int) -> Table:
    cols = [Column("run", [Text(LETTERS[i], style="bold") for i in range(len(c.costs))])]
    priority = {"params": 1, "fit": 1, "total": 2, "gpuh": 2, "pflops": 3, "ips": 4, "rss": 5, "gpumem": 4,
                "epochs": 6, "device": 5}
    cells = [cost_cells(x) for x in c.costs]
    for header, key in COST_FIELDS:
        cols.append(Column(header, [x[key] for x in cells], priority=priority[key],
                           justify="left" if key == "device" else "right",
                           max_width=24 if key == "device" else None))
    return fitted_table(cols, width, title="cost per run")


def print_comparison(c: Comparison, width: int) -> None:
    if c.split_mismatch:
        err.print(Panel(
            Text(f"{', '.join(c.split_mismatch)} {'was' if len(c.split_mismatch) == 1 else 'were'} evaluated "
                 f"on a different split than {c.run_ids[0]}: numbers are not comparable query by query and no "
                 "paired test was run.", style="bold"),
            title="WARNING: different splits", border_style="bold red", width=min(width, 100)))
    for i, (rid, cost) in enumerate(zip(c.run_ids, c.costs, strict=True)):
        line = Text(f"{LETTERS[i]} ", style="bold")
        line.append(rid)  # never cut: the id is what a user copies
        tail = f"  {cost.model}" + ("  (baseline)" if i == 0 else "")
        line.append(tail[: max(0, width - len(rid) - 2)], style="dim")
        out.print(line, no_wrap=True, overflow="ignore", crop=False)
    out.print()
    for t in metric_tables(c, width):
        out.print(t)
        out.print()
    for legend in legend_lines(c):
        out.print(Text(legend, style="dim"), width=width)
    costs = cost_table(c, width)
    out.print(costs, width=max(width, rendered_width(costs)), crop=False)
    if c.ratios:
        names = {rid: LETTERS[i] for i, rid in enumerate(c.run_ids)}
        out.print(Text("measured ratios (against A):", style="bold"))
        for x in c.ratios:
            out.print(f"  {x.sentence(names)}", highlight=False, width=width)
    for n in c.notes:
        err.print(Text(f"note: {n}", style="yellow"), width=width)


def comparison_csv(c: Comparison) -> str:
    buf = io.StringIO()
    recs = c.records()
    w = csv.DictWriter(buf, fieldnames=list(recs[0]) if recs else ["mode"], lineterminator="\n")
    w.writeheader()
    w.writerows(recs)
    return buf.getvalue()


@app.command()
@handle_errors
def compare(
    run_refs: list[str] = typer.Argument(..., metavar="RUN RUN [RUN...]",
                                         help="Run ids, unique prefixes, 'latest', or run folders (2-8)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    baseline: int = typer.Option(0, "--baseline", min=0, help="Index of the baseline run (default: the first)."),
    resamples: int = typer.Option(10000, "--resamples", min=100, help="Bootstrap resamples per paired test."),
    no_coarse_first: bool = typer.Option(False, "--no-coarse-first",
                                         help="Skip coarse-first retrieval (computed from stored embeddings)."),
    ks: str = typer.Option("1,2,4,8", "--k", help="Recall@K rows to show (comma separated) or 'all'."),
    as_json: bool = typer.Option(False, "--json", help="The comparison as one JSON document on stdout."),
    as_csv: bool = typer.Option(False, "--csv", help="One CSV row per metric and run on stdout."),
    as_markdown: bool = typer.Option(False, "--markdown", help="GitHub markdown on stdout."),
) -> None:
    """Compare runs: Recall@K and MAP@R with CIs, deltas and paired tests against the first run, costs."""
    from ofgr_core.reports.compare import compare_runs

    if sum([as_json, as_csv, as_markdown]) > 1:
        raise typer.BadParameter("choose one of --json, --csv, --markdown")
    dirs = resolve_runs(run_refs, runs_dir)
    if baseline >= len(dirs):
        raise typer.BadParameter(f"--baseline {baseline} is out of range for {len(dirs)} runs")
    k_list = None if ks.strip() == "all" else _parse_ks(ks)
    c = compare_runs(dirs, baseline=baseline, n_resamples=resamples, coarse_first=not no_coarse_first, ks=k_list)
    if c.split_mismatch and (as_json or as_csv or as_markdown):
        err.print(f"[bold red]WARNING:[/] {', '.join(c.split_mismatch)} evaluated on a different split than "
                  f"{c.run_ids[0]}: not comparable query by query, no paired test", highlight=False)
    if as_json:
        print_json(c.to_dict())
    elif as_csv:
        sys.stdout.write(comparison_csv(c))
    elif as_markdown:
        sys.stdout.write(markdown_comparison(c))
    else:
        print_comparison(c, out.width)

"""``ofgr report``: a self-contained folder (report.md, CSVs, PNG figures) for one or more runs."""

from __future__ import annotations

from pathlib import Path

import typer

from ofgr_core.cli.app import app, err, handle_errors, out
from ofgr_core.cli.compare_cmd import resolve_runs


@app.command()
@handle_errors
def report(
    run_refs: list[str] = typer.Argument(..., metavar="RUN [RUN...]",
                                         help="Run ids, unique prefixes, 'latest', or run folders; the first "
                                              "is the baseline."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write (created; files are replaced)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    no_tsne: bool = typer.Option(False, "--no-tsne", help="Skip the t-SNE maps (the slowest figure)."),
    tsne_points: int = typer.Option(1500, "--tsne-points", min=10, help="Subsample t-SNE to this many points."),
    resamples: int = typer.Option(10000, "--resamples", min=100, help="Bootstrap resamples per paired test."),
) -> None:
    """Write report.md with config, data, split, environment, results, comparison, CSVs and figures."""
    from ofgr_core.reports.report import write_report

    dirs = resolve_runs(run_refs, runs_dir)
    path = write_report(dirs, output, tsne=not no_tsne, tsne_points=tsne_points, n_resamples=resamples,
                        progress=lambda s: err.print(f"[dim]{s}[/]", highlight=False))
    out.print(f"report: {path}", highlight=False, soft_wrap=True)

"""``ofgr bench``: run a benchmark suite (configs/benchmarks/*.yaml) in order, resumably, then report."""

from __future__ import annotations

from pathlib import Path

import typer

from ofgr_core.cli.app import app, err, handle_errors, out


@app.command()
@handle_errors
def bench(
    suite_ref: str = typer.Argument(..., metavar="SUITE", help="Suite name in configs/benchmarks/ or a .yaml path."),
    data_root: Path = typer.Option(None, "--data-root", help="Folder holding the suite's datasets (suite 'data')."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key in every run: --set train.epochs=3"),
    runs_dir: Path = typer.Option(None, "--runs-dir", help="Where the suite's runs go (default runs/bench-SUITE)."),
    report_dir: Path = typer.Option(None, "--report", help="Report folder (default RUNS_DIR/report)."),
    no_report: bool = typer.Option(False, "--no-report", help="Run only; no comparison report."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the runs and their overrides; run nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Run a benchmark suite: finished runs are skipped, interrupted ones resumed; then the comparison report."""
    from ofgr_core.cli.run_cmd import EventPrinter
    from ofgr_core.workflows.bench import load_suite, run_overrides, run_suite

    suite = load_suite(suite_ref)
    runs_dir = runs_dir or Path("runs") / f"bench-{suite.name}"
    if dry_run:
        out.print(f"suite {suite.name}: {suite.description}".rstrip(": "), highlight=False, soft_wrap=True)
        for r in suite.runs:
            ok = "" if r.config.is_file() else "  [red](config not found)[/]"
            out.print(f"  {r.name}: {r.config}{ok}", highlight=False, soft_wrap=True)
            for o in run_overrides(suite, r, data_root, overrides):
                out.print(f"      --set {o}", highlight=False, soft_wrap=True)
        out.print(f"runs dir: {runs_dir}", highlight=False)
        return
    with EventPrinter(quiet=quiet) as printer:
        result = run_suite(suite, runs_dir, data_root=data_root, overrides=overrides, emit=printer,
                           report_dir=report_dir, write_report=not no_report)
    err.print(f"suite {suite.name}: ran {len(result.ran)}, resumed {len(result.resumed)}, "
              f"skipped {len(result.skipped)} (finished)", highlight=False)
    if result.report is not None:
        out.print(f"report: {result.report}", highlight=False, soft_wrap=True)

"""``ofgr demo``: the whole comparison on the built-in synthetic world (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.console import JustifyMethod
from rich.markup import escape
from rich.table import Table

from ofgr_core.cli.app import app, err, handle_errors, out


def _pct(x: float | None, ci: float | None = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" + (f"±{100 * ci:.1f}" if ci is not None else "")


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.0f}k" if n else "0"


@app.command()
@handle_errors
def demo(
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the demo's run folders go."),
    data_root: Path = typer.Option(Path("data"), "--data-root", help="Synthetic worlds and the tiny CLIP."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key in every run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    pretrain_images: int = typer.Option(None, "--pretrain-images-per-class",
                                        help="Images per class of the CLIP pretraining world (default 30)."),
    pretrain_epochs: int = typer.Option(None, "--pretrain-epochs", help="CLIP pretraining epochs (default 8)."),
) -> None:
    """CNN fine-tuned vs frozen CLIP vs frozen CLIP + head on the synthetic world: one side-by-side table.

    Pretrains the tiny CLIP stand-in first (cached in DATA_ROOT/clip-tiny), then runs the `demo` benchmark
    suite (finished runs are reused; delete RUNS_DIR/bench.json to start over).
    """
    from ofgr_core.cli.run_cmd import EventPrinter
    from ofgr_core.workflows.bench import load_suite, run_suite
    from ofgr_core.workflows.demo import prepare_clip, summary_rows, verdict

    suite = load_suite("demo")
    with EventPrinter(quiet=quiet) as printer:
        world = {"images_per_class": pretrain_images} if pretrain_images else None
        pretrain = {"epochs": pretrain_epochs} if pretrain_epochs else None
        for event in prepare_clip(data_root, world=world, pretrain=pretrain):
            printer(event)
        result = run_suite(suite, runs_dir, data_root=data_root, overrides=overrides, emit=printer,
                           write_report=False)
    rows = summary_rows(result.run_dirs, [r.name for r in suite.runs])
    table = Table(title="unseen classes (%; ± = 95% bootstrap CI half-width)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("run", "left"), ("fine R@1", "right"), ("coarse R@1", "right"), ("text→img", "right"),
        ("trained", "right"), ("fit s", "right"), ("run s", "right"))
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=True)
    for r in rows:
        text = _pct(r["text_coarse_r1"]) + (f" {r['text_space']}" if r["text_space"] else "")
        table.add_row(r["name"], _pct(r["fine_r1"], r["fine_ci"]), _pct(r["coarse_r1"], r["coarse_ci"]),
                      text if r["text_coarse_r1"] is not None else "-", _params(r["trained_params"]),
                      f"{r['fit_seconds']:.0f}", f"{r['run_seconds']:.0f}")
    out.print(table)
    out.print("text→img: coarse-level Recall@1 of class-name prompts against the images (the space text "
              "queries use);\nfit s: feature extraction + training wall time. "
              + verdict(rows), highlight=False, soft_wrap=True)
    out.print(f"runs: {', '.join(r['run_id'] for r in rows)} in {runs_dir}  (`ofgr compare` for paired tests)",
              highlight=False, soft_wrap=True)
    err.print("the tiny CLIP is a stand-in for ViT-B/32 (README: 'The real CLIP')", highlight=False)
    for r in rows:  # as loud as `ofgr run`: a run that finished with degenerate embeddings says so here too
        for w in r["warnings"]:
            err.print(f"[bold yellow]warning:[/] {escape(r['name'])}: {escape(w)}", highlight=False, soft_wrap=True)

"""``ofgr demo``: the whole comparison on the built-in synthetic world (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ofgr_core.cli.app import app, err, handle_errors, out

if TYPE_CHECKING:
    from ofgr_core.workflows.demo import DemoResult


def _pct(x: float | None, ci: float | None = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" + (f"±{100 * ci:.1f}" if ci is not None else "")


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.0f}k" if n else "0"


def _half(ci: list[float] | None) -> float | None:
    return (ci[1] - ci[0]) / 2 if ci else None


def _cpu(x: Any) -> str:
    return "-" if x is None else f"{float(x):.0f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def demo_table(res: DemoResult) -> Table:
    """The side-by-side table, 73 columns wide: unseen fine/coarse R@1 with CIs, coarse text -> image, trained
    parameters, fit CPU seconds and the fit's share of the CNN's."""
    table = Table(title="unseen classes (%; ± = 95% bootstrap CI half-width)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for col in ("run", "fine R@1", "coarse R@1", "text→img", "trained", "fit CPU s", "÷ CNN"):
        table.add_column(col, justify="left" if col == "run" else "right", no_wrap=True)
    px = res.pixels
    table.add_row(f"pixels {px['size']}x{px['size']}", _pct(px.get("fine"), _half(px.get("fine_ci"))),
                  _pct(px.get("coarse"), _half(px.get("coarse_ci"))), "-", "0", "-", "-")
    for r in res.rows:
        text = _pct(r["text_coarse_r1"]) + (f" {r['text_space']}" if r["text_space"] else "")
        table.add_row(r["name"], _pct(r["fine_r1"], r["fine_ci"]), _pct(r["coarse_r1"], r["coarse_ci"]),
                      text if r["text_coarse_r1"] is not None else "-", _params(r["trained_params"]),
                      _cpu(r.get("fit_cpu_seconds")), _ratio(r.get("fit_vs_cnn")))
    return table


def demo_notes(res: DemoResult) -> list[str]:
    """What the table's columns mean, and which run is ahead on unseen fine R@1."""
    from ofgr_core.workflows.demo import verdict

    lines = ["text→img: coarse R@1 of class-name prompts against the images, in the space free-text queries use.",
             "fit CPU s: feature extraction + training, user + sys CPU seconds (wall time depends on what else "
             "runs on the machine); clip_head: the features (extracted once, by clip_frozen) + the head. "
             "÷ CNN: that fit over the fine-tuned CNN's."]
    if res.fit_ratio:
        lines.append(f"CLIP fit (features + head) / CNN fit: {res.fit_ratio:.3f} of the CPU time "
                     f"(1/{1 / res.fit_ratio:.0f}).")
    v = verdict(res.rows)
    if v:
        lines.append(v + ".")
    return lines


@app.command()
@handle_errors
def demo(
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where the demo's run folders go."),
    data_root: Path = typer.Option(Path("data"), "--data-root", help="The synthetic world and the CLIP stand-in."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key in every run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    as_json: bool = typer.Option(False, "--json", help="Print runs/demo.json (table, gates, CPU) on stdout."),
    standin: Path = typer.Option(None, "--standin", help="The CLIP stand-in's artifact folder (default: the one "
                                 "ofgr ships; `ofgr clip standin --rebuild --artifact DIR` makes one)."),
) -> None:
    """CNN fine-tuned vs frozen CLIP vs frozen CLIP + head on the synthetic world: one side-by-side table.

    The CLIP model is a stand-in (LiT: ImageNet EfficientNet-Lite0 image tower + a text tower trained on a
    synthetic web-alt-text corpus), rebuilt from the shipped artifact into DATA_ROOT/clip-lit. Runs the `demo`
    benchmark suite (finished runs are reused; delete RUNS_DIR/bench.json to start over), then the raw-pixel
    baseline, the head's collapse check and attribute text queries, and prints the gates the stand-in must meet.
    """
    from ofgr_core.cli.app import print_json
    from ofgr_core.cli.run_cmd import EventPrinter
    from ofgr_core.workflows.demo import DEMO_FILE, run_demo

    with EventPrinter(quiet=quiet) as printer:
        res = run_demo(runs_dir, data_root, overrides=overrides, emit=printer, artifact_dir=standin)
    if as_json:
        print_json(res.to_dict())
        return
    out.print(demo_table(res))
    for line in demo_notes(res):
        out.print(line, highlight=False)
    out.print("\nstand-in gates (unseen classes):", highlight=False)
    for g in res.gates:
        out.print(f"  {'PASS' if g.passed else 'FAIL'}  {g.name}: {g.detail}", highlight=False)
    cpu = res.cpu
    stages = ", ".join(f"{k} {v:.0f}" for k, v in cpu.items() if isinstance(v, (int, float)))
    runs = ", ".join(f"{k} {v.get('total', 0):.0f}" for k, v in (cpu.get("runs") or {}).items())
    out.print(f"CPU seconds: {stages}" + (f" (runs: {runs})" if runs else ""), highlight=False)
    ids = ", ".join(r["run_id"] for r in res.rows)
    out.print(f"runs: {ids} in {runs_dir}; figures in {runs_dir / DEMO_FILE} (`ofgr compare` for paired tests)",
              highlight=False)
    err.print("the CLIP model is a stand-in for real CLIP weights (README: 'CLIP', 'The real CLIP')", highlight=False)
    for r in res.rows:  # as loud as `ofgr run`: a run that finished with degenerate embeddings says so here too
        for w in r.get("warnings") or []:
            err.print(f"[bold yellow]warning:[/] {escape(r['name'])}: {escape(w)}", highlight=False, soft_wrap=True)

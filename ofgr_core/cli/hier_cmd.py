"""``ofgr data suspects`` and ``ofgr data hierarchy``: imperfect labels and missing hierarchy levels."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ofgr_core import runs
from ofgr_core.cli.app import data_app, handle_errors, out, print_json


# --------------------------------------------------------------------------------------- data suspects
@data_app.command("suspects")
@handle_errors
def suspects(
    run_ref: str = typer.Argument(..., metavar="RUN", help="Run folder, id, unique prefix, or 'latest'."),
    top: int = typer.Option(20, "--top", help="How many suspects to list (highest scores first)."),
    k: int = typer.Option(10, "--k", help="Neighbours that vote on each image's label."),
    split: list[str] = typer.Option(None, "--split", help="Run parts to search (default: every stored one)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Images whose fine label disagrees with their neighbourhood in the run's stored embeddings, ranked."""
    from ofgr_core.suspects import find_suspects, load_run_embeddings

    if top < 1:
        raise typer.BadParameter(f"--top must be >= 1, got {top}")
    run_dir = runs.resolve_run(run_ref, runs_dir)
    emb, rows = load_run_embeddings(run_dir, split or None)
    found = find_suspects(emb, [r.get("fine", "") for r in rows], [r["id"] for r in rows],
                          paths=[r.get("path", "") for r in rows], splits=[r["split"] for r in rows],
                          k=k, top=top)
    n_labelled = sum(bool(r.get("fine")) for r in rows)
    if as_json:
        print_json({"run": str(run_dir), "k": k, "n_images": len(rows), "n_labelled": n_labelled,
                    "suspects": [s.to_dict() for s in found]})
        return
    t = Table(title=f"{len(found)} most suspect of {n_labelled} labelled images — {run_dir.name} (k={k})",
              title_justify="left")
    for col in ("#", "score", "agree", "label", "neighbours say", "split", "id"):
        t.add_column(col, justify="right" if col in ("#", "score", "agree") else "left")
    for i, s in enumerate(found, 1):
        t.add_row(str(i), f"{s.score:+.2f}", f"{s.agreement:.2f}", escape(s.label), escape(s.suggested),
                  s.split, escape(s.id))
    out.print(t)

"""``ofgr query RUN``: ranked results for one query against a run's stored embeddings."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.text import Text

from ofgr_core.cli.app import app, handle_errors, out, print_json
from ofgr_core.runs.folder import check_split_name
from ofgr_core.runs.state import resolve_run


@app.command()
@handle_errors
def query(
    run_ref: str = typer.Argument(..., metavar="RUN", help="Run folder, id, unique prefix, or 'latest'."),
    item: str = typer.Option(None, "--id", help="A dataset item id from the run's embeddings CSV."),
    image: str = typer.Option(None, "--image", help="An image file to embed with the run's model."),
    text: str = typer.Option(None, "--text", help="A text query (runs of a text-capable model)."),
    k: int = typer.Option(10, "--k", help="Number of results."),
    split: str = typer.Option("unseen", "--split", help="Gallery: unseen or seen."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Rank a run's gallery for an item id, an image file, or a text query."""
    from ofgr_core.retrieval.query import query_run

    check_split_name(split)
    run_dir = resolve_run(run_ref, runs_dir)
    res = query_run(run_dir, item_id=item, image_path=image, text=text, k=k, split=split)
    if as_json:
        print_json(res.to_dict())
        return
    label = f" ({res.query_coarse} / {res.query_fine})" if res.query_fine else ""
    space = {"raw": ", raw tower image space", "head": ", head embedding space"}.get(res.space or "", "")
    from ofgr_core.cli.tables import Column, print_fitted

    marks: list[str | Text] = ["-" if h.hit_fine is None else ("[green]✓[/]" if h.hit_fine else
                                             ("[yellow]~[/]" if h.hit_coarse else "[red]✗[/]")) for h in res.results]
    cols = [  # narrow terminals drop the path first, then the coarse class; the ranking itself always shows
        Column("#", [str(h.rank) for h in res.results], justify="right"),
        Column("score", [f"{h.score:.3f}" for h in res.results], justify="right"),
        Column("hit", marks),
        Column("fine", [escape(str(h.fine)) for h in res.results], max_width=40),
        Column("coarse", [escape(str(h.coarse)) for h in res.results], priority=2, max_width=24),
        Column("path", [escape(str(h.path)) for h in res.results], priority=3),
    ]
    print_fitted(out, cols, title=escape(f"{res.query}{label} — {split} gallery{space}, {res.index.get('type')} index"))

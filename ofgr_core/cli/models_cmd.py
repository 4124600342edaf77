"""``ofgr models``: open_clip architectures and pretrained tags, which weights are on this machine, sizes."""

from __future__ import annotations

import typer
from rich.markup import escape

from ofgr_core.cli.app import app, handle_errors, out, print_json


def _mb(n: int | None) -> str:
    return f"{n / 2**20:.0f} MB" if n else ""


@app.command("models")
@handle_errors
def models(
    arch: str = typer.Argument(None, metavar="[ARCH]", help="Only this architecture (substring, case-insensitive)."),
    cached: bool = typer.Option(False, "--cached", help="Only architectures with weights on this machine."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """CLIP models for model.kind=clip: architectures, pretrained tags, local weights.

    Default: ViT-B-32 with tag openai (QuickGELU picked automatically). Weights are looked up in the local
    caches only; nothing is downloaded. ofgr's own configs (ofgr-tiny-clip, for the demo and tests) come first.
    """
    from ofgr_core.models.clip.encoder import list_clip_models

    rows = list_clip_models()
    if arch:
        rows = [r for r in rows if arch.lower() in r["arch"].lower()]
    if cached:
        rows = [r for r in rows if any(t["cached"] for t in r.get("tags", []))]
    if as_json:
        print_json({"models": rows})
        return
    from ofgr_core.cli.tables import Column, print_fitted

    # arch and tag are what a user copies into a config: never cut; the rest goes first on narrow terminals
    cols = {"arch": Column("arch"), "px": Column("px", priority=3, justify="right"),
            "dim": Column("dim", priority=2, justify="right"), "tag": Column("pretrained tag"),
            "weights": Column("local weights", priority=1)}

    def add(arch_cell: str, px: str, dim: str, tag: str, weights: str) -> None:
        for key, value in zip(cols, (arch_cell, px, dim, tag, weights), strict=True):
            cols[key].cells.append(value)

    for r in rows:
        name = r["arch"] + (" (default)" if r["default"] else "")
        first = (escape(name), str(r["image_size"]), str(r["embed_dim"]))
        if r["ofgr"]:
            add(*first, "(ofgr config)", f"{r['params'] / 1e6:.1f}M params; `ofgr clip pretrain`")
            continue
        tags = r.get("tags", [])
        if not tags:
            add(*first, "-", "")
        for i, t in enumerate(tags):
            label = t["tag"] + (" (default)" if t["default"] else "") + (" (quickgelu)" if t["quick_gelu"] else "")
            a, px, dim = first if i == 0 else ("", "", "")
            add(a, px, dim, escape(label), f"cached, {_mb(t['bytes'])}" if t["cached"] else "")
    print_fitted(out, list(cols.values()), title="open_clip models for model.kind=clip")
    out.print("Weights are looked up in the local caches only (--json adds towers and paths). quickgelu: "
              "trained with QuickGELU, which ofgr picks automatically.", markup=False, highlight=False)

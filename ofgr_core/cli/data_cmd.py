"""``ofgr data ...``: create and inspect datasets.

Each subcommand lives in its own function below; the library does the work, this module only parses, reports
progress on stderr and prints a summary on stdout. No torch import here: ``ofgr --help`` must stay fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ofgr_core.cli.app import data_app, err, handle_errors, out, print_json
from ofgr_core.config import MAX_SEED


# ------------------------------------------------------------------------------------------ data synth
@data_app.command("synth")
@handle_errors
def synth(
    out_dir: Path = typer.Argument(..., metavar="OUT", help="Folder to write the synthetic world to."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="World seed: same seed, byte-identical images."),
    num_coarse: int = typer.Option(6, "--num-coarse", help="Body types (1-8)."),
    fine_per_coarse: int = typer.Option(8, "--fine-per-coarse", help="Make/model classes per body type."),
    images_per_class: int = typer.Option(100, "--images-per-class", help="Images per fine class."),
    size: int = typer.Option(64, "--size", help="Image side length in pixels."),
    label_noise: float = typer.Option(
        0.0, "--label-noise", metavar="P",
        help="Share of images whose fine label is flipped to a sibling of the same coarse class "
             "(truth in label_noise.csv beside the manifest)."),
    workers: int = typer.Option(None, "--workers", help="Processes to draw with (default: up to 2)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON document."),
) -> None:
    """Generate the built-in synthetic vehicle world (reuses OUT if it already holds the same one)."""
    from ofgr_core.data import synthetic

    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]synth[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("images", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        synthetic.generate(
            out_dir,
            seed=seed,
            num_coarse=num_coarse,
            fine_per_coarse=fine_per_coarse,
            images_per_class=images_per_class,
            image_size=size,
            label_noise=label_noise,
            workers=workers,
            progress=progress,
        )
    _print_synth_summary(out_dir, time.perf_counter() - start, as_json)


def _print_synth_summary(root: Path, seconds: float, as_json: bool) -> None:
    from ofgr_core.data import synthetic

    table = synthetic.load_table(root)
    fine, coarse = table.labels["fine"], table.labels["coarse"]
    summary = {
        "root": str(root),
        "manifest": str(root / synthetic.MANIFEST),
        "images": len(table),
        "coarse_classes": len(set(coarse)),
        "fine_classes": len(set(fine)),
        "domains": sorted(set(table.domains)),
        "seconds": round(seconds, 2),
        "options": table.meta.get("options", {}),
    }
    noise = root / synthetic.NOISE_FILE
    if table.meta.get("options", {}).get("label_noise") and noise.is_file():
        truth = synthetic.load_noise_truth(root)
        given = dict(zip(table.ids, fine, strict=True))
        summary["flipped"] = sum(given[i] != t for i, t in truth.items())
        summary["noise_truth"] = str(noise)
    if as_json:
        print_json(summary)
        return
    out.print(
        f"{summary['images']} images, {summary['coarse_classes']} coarse / {summary['fine_classes']} fine "
        f"classes, domains {', '.join(summary['domains'])} -> {summary['manifest']} ({seconds:.1f} s)"
        + (f"; {summary['flipped']} fine labels flipped (truth: {summary['noise_truth']})"
           if "flipped" in summary else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


# ---------------------------------------------------------------------------------------- data inspect
@data_app.command("inspect")
@handle_errors
def inspect(
    target: Path = typer.Argument(
        ..., metavar="PATH|CONFIG",
        help="A dataset folder or manifest CSV, or a config YAML (inspects its merged data and split)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON document on stdout."),
    check: bool = typer.Option(True, "--check/--no-check", help="Decode every image (finds corrupt files)."),
) -> None:
    """Detect a dataset's format and report images, classes, splits, duplicates and unreadable files."""
    report = _inspect_report(target, check)
    if as_json:
        print_json(report)
    else:
        _print_inspect(report)


def _inspect_report(target: Path, check: bool) -> dict[str, Any]:
    from ofgr_core.common.errors import OfgrError
    from ofgr_core.config import DataConfig, SourceConfig, load_config
    from ofgr_core.data.dataset import detect_source, load_dataset

    split_cfg, seed = None, 0
    if target.suffix.lower() in (".yaml", ".yml") and target.is_file():
        cfg = load_config(target)
        data_cfg = cfg.data.model_copy(update={"cache": False})  # inspecting must not write pixel caches
        split_cfg, seed = cfg.split, cfg.seed
        found = {"kind": "config", "sources": [s.model_dump() for s in cfg.data.sources]}
    else:
        src = detect_source(target)
        data_cfg = DataConfig(cache=False, sources=[SourceConfig(type=src["type"], root=src["root"])])
        found = {"kind": "dataset", "type": src["type"], "layout": src["layout"], "root": src["root"]}

    with Progress(TextColumn("[bold]checking images[/]"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("images", total=None)
        prepared = load_dataset(data_cfg, check=check,
                                progress=lambda done, total: bar.update(task, completed=done, total=total))
    rep = prepared.report
    summary = rep["summary"]
    report = {
        "target": str(target),
        "detected": found,
        "images": summary["images"],
        "images_found": rep["n_images_found"],
        "classes_per_level": summary["levels"],
        "coarse_only_images": summary.get("coarse_only_images", 0),
        "images_per_fine_class": summary.get("images_per_fine_class"),
        "class_size_histogram": summary["class_size_histogram"],
        "per_split": summary.get("per_split", {}),
        "per_source": summary["per_source"],
        "per_domain": summary.get("per_domain", {}),
        "taxonomy": rep.get("taxonomy"),
        "unmapped": rep.get("unmapped"),
        "duplicates": rep.get("duplicates"),
        "unreadable": rep["unreadable"],
        "warnings": list(rep["warnings"]),
    }
    if split_cfg is not None:
        from ofgr_core.data.splits import make_split

        try:
            split = make_split(prepared.table, prepared.hierarchy, prepared.labels, split_cfg, seed)
            report["open_set_split"] = {
                "protocol": split.protocol,
                "query": split.query,
                "classes": {k: len(v) for k, v in split.classes.items()},
                "images": {k: len(v) for k, v in split.indices.items()},
                "leakage_removed": {k: len(v) for k, v in split.report.get("leakage_removed", {}).items()},
                "excluded_queries": split.report.get("excluded_queries", {}),
            }
            report["warnings"] += split.report.get("warnings", [])
        except OfgrError as e:
            report["warnings"].append(f"split: {e}")
    return report


def _print_inspect(r: dict[str, Any]) -> None:
    from rich.table import Table

    d = r["detected"]
    found = (f"{d['layout']} ({d['type']}) at {d['root']}" if d["kind"] == "dataset"
             else "config with sources " + ", ".join(f"{s['type']}:{s['root']}" for s in d["sources"]))
    out.print(f"[bold]found[/] {escape(found)}", highlight=False, soft_wrap=True)
    levels = ", ".join(f"{n} {lv}" for lv, n in r["classes_per_level"].items())
    out.print(f"{r['images']} usable images of {r['images_found']}; classes: {levels}", highlight=False,
              markup=False)
    if r.get("coarse_only_images"):
        out.print(f"coarse-only images (no fine label): {r['coarse_only_images']}", highlight=False, markup=False)
    if r["images_per_fine_class"]:
        s = r["images_per_fine_class"]
        out.print(f"images per fine class: min {s['min']}, median {s['median']:g}, max {s['max']}",
                  highlight=False)

    for title, key in (("split", "per_split"), ("source", "per_source"), ("domain", "per_domain")):
        if r[key]:
            t = Table(title=f"per {title}", title_justify="left")
            for col in (title, "images", "fine classes"):
                t.add_column(col, justify="left" if col == title else "right")
            for name, v in r[key].items():
                t.add_row(escape(str(name)), str(v["images"]), str(v["fine_classes"]))
            out.print(t)
    hist = r["class_size_histogram"]
    top = max(hist.values()) or 1
    t = Table(title="fine class sizes (images per class)", title_justify="left")
    t.add_column("size")
    t.add_column("classes", justify="right")
    t.add_column("")
    for k, v in hist.items():
        t.add_row(escape(str(k)), str(v), "█" * round(20 * v / top))
    out.print(t)
    if "open_set_split" in r:
        s = r["open_set_split"]
        out.print(f"open-set split ({s['protocol']}, queries {s['query']}): classes {s['classes']}, "
                  f"images {s['images']}", highlight=False, soft_wrap=True, markup=False)
    dup = r.get("duplicates") or {}
    if dup:
        out.print(f"duplicates: {dup['groups']} groups, {dup['removed']} images removed "
                  f"({dup['cross_source']} across sources, {len(dup['conflicting_labels'])} with conflicting "
                  "labels)", highlight=False, markup=False)
    if r["unmapped"]:
        out.print(f"unmapped labels: {len(r['unmapped']['labels'])} ({r['unmapped']['images']} images)",
                  markup=False)
    if r["unreadable"]:
        out.print(f"[bold red]unreadable:[/] {len(r['unreadable'])} files", highlight=False)
        for u in r["unreadable"][:10]:
            out.print(f"  {u['path']}: {u['reason']}", highlight=False, soft_wrap=True, markup=False)
    for w in r["warnings"]:
        err.print(f"[yellow]warning:[/] {escape(str(w))}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------- data prepare
@data_app.command("prepare")
@handle_errors
def prepare(
    config: Path = typer.Argument(..., metavar="CONFIG", help="A config YAML whose data section to prepare."),
    workers: int = typer.Option(None, "--workers", help="Processes for checking and caching (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON document on stdout."),
) -> None:
    """Check every image (hash + decode) and fill the pixel cache ahead of a run, on every core.

    Safe to interrupt: checked files are kept in the memo file and cached pixels in the cache, so running it
    again (or `ofgr run`) continues where it stopped.
    """
    from ofgr_core.common.errors import ConfigError
    from ofgr_core.config import load_config
    from ofgr_core.data.cache import find_cache
    from ofgr_core.data.dataset import load_dataset
    from ofgr_core.runs.events import RateMeter

    cfg = load_config(config)
    if not (cfg.data.cache and cfg.data.image_size):
        raise ConfigError(f"{config}: data.cache is off or data.image_size is null; nothing to prepare beyond "
                          "the check (use `ofgr data inspect`)")
    start = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err, transient=True) as bar:

        def reporter(name: str) -> Callable[[int, int], None]:
            task, meter = bar.add_task(name, total=None, info=""), RateMeter()

            def progress(done: int, total: int) -> None:
                rate, eta = meter(done, total)
                info = "" if rate is None else f"{rate:,.0f}/s" + ("" if eta is None else f", {eta:,.0f} s left")
                bar.update(task, completed=done, total=total, info=info)
            return progress

        prepared = load_dataset(cfg.data, progress=reporter("checking images"), workers=workers)
        checked_s = time.perf_counter() - start
        cache = find_cache(prepared.table.paths)
        if cache is not None:
            cache.warm(progress=reporter("caching pixels"), workers=workers)
    summary = {
        "images": len(prepared.table),
        "unreadable": len(prepared.report.get("unreadable", [])),
        "duplicates_removed": prepared.report.get("duplicates", {}).get("removed", 0),
        "cache": str(cache.data_path) if cache is not None else None,
        "cached": cache.filled if cache is not None else 0,
        "check_seconds": round(checked_s, 2),
        "seconds": round(time.perf_counter() - start, 2),
        "warnings": prepared.report.get("warnings", []),
    }
    if as_json:
        print_json(summary)
        return
    out.print(f"{summary['images']:,} images ready ({summary['unreadable']} unreadable, "
              f"{summary['duplicates_removed']} duplicates removed); {summary['cached']:,} cached in "
              f"{escape(str(summary['cache']))} — {summary['seconds']:.1f} s", highlight=False)
    for w in summary["warnings"]:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)

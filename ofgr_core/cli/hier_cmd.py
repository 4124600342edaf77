"""``ofgr data suspects`` and ``ofgr data hierarchy``: imperfect labels and missing hierarchy levels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer
from rich.markup import escape
from rich.table import Table

from ofgr_core.cli.app import data_app, handle_errors, out, print_json
from ofgr_core.config import MAX_SEED
from ofgr_core.runs.state import resolve_run

if TYPE_CHECKING:
    from ofgr_core.config import DataConfig, ModelSection
    from ofgr_core.hierarchy.induce import Induction


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
    from ofgr_core.hierarchy.suspects import find_suspects, load_run_embeddings

    if top < 1:
        raise typer.BadParameter(f"--top must be >= 1, got {top}")
    run_dir = resolve_run(run_ref, runs_dir)
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
        # ids are what a reviewer copies: fold them over lines rather than cut them
        t.add_column(col, justify="right" if col in ("#", "score", "agree") else "left",
                     overflow="fold" if col == "id" else "ellipsis")
    for i, s in enumerate(found, 1):
        t.add_row(str(i), f"{s.score:+.2f}", f"{s.agreement:.2f}", escape(s.label), escape(s.suggested),
                  s.split, escape(s.id))
    out.print(t)


# -------------------------------------------------------------------------------------- data hierarchy
@data_app.command("hierarchy")
@handle_errors
def hierarchy(
    target: Path = typer.Argument(..., metavar="DATASET|CONFIG",
                                  help="A dataset folder or manifest CSV, or a config YAML (its data and model)."),
    out_path: Path = typer.Option(..., "--out", help="Taxonomy YAML to write (use it as data.taxonomy)."),
    levels: int = typer.Option(1, "--levels", help="Levels to induce above fine (1: a coarse level)."),
    groups: int = typer.Option(None, "--groups", help="Number of coarse groups (default: by silhouette)."),
    max_groups: int = typer.Option(None, "--max-groups", help="Largest group count the silhouette search tries."),
    linkage: str = typer.Option("average", "--linkage", help="average | complete | single | ward."),
    model: str = typer.Option(None, "--model", help="Encoder name (model.name), overriding the config's model."),
    run_ref: str = typer.Option(None, "--run", help="Use a finished run's trained encoder (best checkpoint)."),
    per_class: int = typer.Option(20, "--per-class", min=0, help="Images embedded per class (0: all)."),
    text: bool = typer.Option(False, "--text", help="Cluster text embeddings of class names (text-capable models)."),
    image_size: int = typer.Option(None, "--image-size", help="Input resolution (default: config or 64)."),
    name: str = typer.Option(None, "--name", help="Taxonomy name (default: induced-<dataset folder>)."),
    report_path: Path = typer.Option(None, "--report", help="Report JSON (default: <out>.report.json)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED,
                             help="Which images are drawn when a class has more than --per-class."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON document on stdout."),
) -> None:
    """Induce a coarse level by clustering fine-class centroids of a frozen encoder's features."""
    from ofgr_core.common.atomic import atomic_write_json
    from ofgr_core.common.errors import ConfigError
    from ofgr_core.data.dataset import load_dataset
    from ofgr_core.hierarchy.induce import LINKAGES, Linkage, dataset_class_features, induce_groups, write_taxonomy

    if levels != 1:
        raise ConfigError(f"--levels {levels}: only one induced level (coarse) is supported; use --levels 1")
    if linkage not in LINKAGES:
        raise ConfigError(f"--linkage {linkage!r} is unknown (valid: {', '.join(LINKAGES)})")
    data_cfg, model_cfg, run_dir = _hierarchy_inputs(target, model, run_ref, runs_dir)
    size = image_size or data_cfg.image_size
    prepared = load_dataset(data_cfg.model_copy(update={"cache": False}))
    feats = dataset_class_features(prepared, model_cfg, image_size=size, run_dir=run_dir,
                                   per_class=per_class or None, seed=seed, text=text)
    ind = induce_groups(feats.centroids, feats.classes, n_groups=groups, max_groups=max_groups,
                        linkage=cast(Linkage, linkage))  # checked against LINKAGES above
    tax_name = name or f"induced-{Path(target).resolve().parent.name if target.is_file() else target.name}"
    written = write_taxonomy(out_path, ind, name=tax_name,
                             description=f"induced by `ofgr data hierarchy` from {model_cfg.name} "
                                         f"{feats.encoder.get('features', '')} features")
    report = {"taxonomy": str(written), "target": str(target), "encoder": feats.encoder,
              "images_per_class": {"min": min(feats.n_images), "max": max(feats.n_images)}, **ind.report()}
    if any(feats.coarse) and all(feats.coarse):
        from sklearn.metrics import adjusted_rand_score

        report["agreement_with_dataset_coarse"] = {
            "adjusted_rand_index": float(adjusted_rand_score(feats.coarse, ind.assignment)),
            "dataset_coarse_classes": len(set(feats.coarse)),
        }
    rep_path = report_path or written.with_name(written.stem + ".report.json")
    atomic_write_json(rep_path, report)
    report["report"] = str(rep_path)
    if as_json:
        print_json(report)
        return
    _print_hierarchy(report, ind, linkage, written, rep_path)


def _hierarchy_inputs(target: Path, model: str | None, run_ref: str | None, runs_dir: Path
                      ) -> tuple[DataConfig, ModelSection, Path | None]:
    """``(data config, model config, run folder)`` for ``ofgr data hierarchy``: the data of a config YAML or a
    detected dataset folder, and its model, a run's trained encoder (``--run``) or another name (``--model``)."""
    from ofgr_core.common.errors import ConfigError
    from ofgr_core.config import Config, DataConfig, SourceConfig, load_config
    from ofgr_core.data.dataset import detect_source
    from ofgr_core.runs.folder import RunFolder

    if target.suffix.lower() in (".yaml", ".yml") and target.is_file():
        cfg = load_config(target)
        data_cfg = cfg.data
    else:
        src = detect_source(target)
        cfg = Config()
        data_cfg = DataConfig(sources=[SourceConfig(type=src["type"], root=src["root"])])
    model_cfg = cfg.model
    run_dir = None
    if run_ref is not None:
        run = RunFolder(resolve_run(run_ref, runs_dir))
        model_cfg, run_dir = load_config(run.config).model, run.path
        if model is not None:
            raise ConfigError("--model with --run: a run's encoder is its own model; give one of them")
    if model is not None:
        model_cfg = model_cfg.model_copy(update={"name": model})
    return data_cfg, model_cfg, run_dir


def _print_hierarchy(report: dict[str, Any], ind: Induction, linkage: str, written: Path, rep_path: Path) -> None:
    out.print(f"{report['n_classes']} fine classes -> {ind.n_groups} groups ({ind.criterion}, {linkage} linkage) "
              f"-> {escape(str(written))}", highlight=False, soft_wrap=True)
    t = Table(title="induced groups", title_justify="left")
    for col in ("group", "size", "min margin", "nearest group", "members"):
        t.add_column(col, justify="right" if col in ("size", "min margin") else "left")
    for g in report["groups"]:
        members = ", ".join(g["members"][:4]) + (f" +{g['size'] - 4}" if g["size"] > 4 else "")
        t.add_row(g["name"], str(g["size"]), f"{g['margin_min']:+.3f}", g["nearest_group"] or "-", escape(members))
    out.print(t)
    if "agreement_with_dataset_coarse" in report:
        a = report["agreement_with_dataset_coarse"]
        out.print(f"agreement with the dataset's own coarse level: ARI {a['adjusted_rand_index']:.3f} "
                  f"({a['dataset_coarse_classes']} coarse classes)", highlight=False)
    out.print(f"report: {escape(str(rep_path))}; use it with --set data.taxonomy={escape(str(written))}",
              highlight=False, soft_wrap=True)

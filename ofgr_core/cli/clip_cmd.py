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
    force: bool = typer.Option(False, "--force", help="Retrain even if OUT holds the same pretraining."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON document."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress on stderr."),
) -> None:
    """Train an open_clip model contrastively (symmetric InfoNCE) on captions; writes a local-dir: checkpoint.

    Use the result with model.kind: clip and model.pretrained: local-dir:OUT.
    """
    from ofgr_core.models.clip.pretrain import PretrainFinished, pretrain_clip
    from ofgr_core.runs.events import Log, StageFinished, StageProgress, StageStarted, TrainEpoch

    events = pretrain_clip(manifest, out_dir, model=model, pretrained=pretrained, epochs=epochs,
                           batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                           image_size=image_size, device=device, force=force)
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

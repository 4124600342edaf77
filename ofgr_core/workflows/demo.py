"""The embedded demo: fine-tuned CNN vs frozen CLIP vs frozen CLIP + head, on the built-in synthetic world.

``ofgr demo`` (and ``make demo``) runs, with no dataset and no downloads:

1. ``prepare_clip``: a separate synthetic world (its own seed: other classes than the demo's) and the
   contrastive pretraining of ofgr's tiny open_clip model on its attribute captions (no class names), saved as
   ``local-dir:`` weights. Both are cached: a second demo reuses them.
2. the ``demo`` benchmark suite (``configs/benchmarks/demo.yaml``) through ``ofgr_core.workflows.bench``: the
   three runs on the same split, finished runs skipped.
3. ``summary_rows``: the side-by-side numbers the demo prints.

The tiny CLIP is a stand-in for ViT-B/32, which needs weights this demo cannot download; the README says how to
run the real one (``configs/clip_vitb32_head.yaml``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ofgr_core.runs.events import Event, StageFinished, StageProgress, StageStarted
from ofgr_core.runs.folder import RunFolder
from ofgr_core.runs.state import read_json

# the pretraining world: the demo's body types, other make/model classes (seed 1), fewer images per class
PRETRAIN_WORLD: dict[str, int] = {"seed": 1, "num_coarse": 6, "fine_per_coarse": 8, "images_per_class": 30,
                                  "image_size": 64}
PRETRAIN: dict[str, Any] = {"model": "ofgr-tiny-clip", "epochs": 8, "batch_size": 128, "seed": 0}
CLIP_DIR = "clip-tiny"  # under the data root; configs/demo_clip*.yaml point at local-dir:data/clip-tiny


def prepare_clip(
    data_root: str | os.PathLike[str] = "data", *, world: dict[str, int] | None = None,
    pretrain: dict[str, Any] | None = None,
) -> Iterator[Event]:
    """Synthesize the pretraining world and pretrain the tiny CLIP on its captions (both reused when present).

    Args:
        data_root: holds ``clip-pretrain/`` (the world) and ``clip-tiny/`` (the weights).
        world: overrides of ``PRETRAIN_WORLD`` (e.g. fewer images for a quick try).
        pretrain: overrides of ``PRETRAIN`` (``epochs``, ``batch_size``, ``lr``, ...).
    """
    import time

    from ofgr_core.data import synthetic
    from ofgr_core.models.clip.pretrain import pretrain_clip

    root = Path(data_root)
    world_opts = {**PRETRAIN_WORLD, **(world or {})}
    world_dir = root / "clip-pretrain"
    yield StageStarted(stage="synth")
    t0 = time.perf_counter()
    events: list[Event] = []

    def progress(done: int, total: int) -> None:
        events.append(StageProgress(stage="synth", done=done, total=total))

    synthetic.generate(world_dir, progress=progress, **world_opts)
    yield from events[-1:]
    yield StageFinished(stage="synth", seconds=time.perf_counter() - t0)
    yield from pretrain_clip(world_dir, root / CLIP_DIR, **{**PRETRAIN, **(pretrain or {})})


def _ci_half(block: dict[str, Any], level: str) -> float | None:
    ci = (block.get("ci95") or {}).get(level, {}).get("recall@1")
    return (ci[1] - ci[0]) / 2 if isinstance(ci, list | tuple) and len(ci) == 2 else None


def summary_rows(run_dirs: list[Path], names: list[str]) -> list[dict[str, Any]]:
    """One row per run: unseen fine/coarse R@1 (with CI half-widths), text -> image R@1, parameters, times."""
    rows = []
    for run_dir, name in zip(run_dirs, names, strict=True):
        m = read_json(RunFolder(run_dir).metrics) or {}
        unseen = m.get("unseen") or {}
        timings = m.get("timings") or {}
        model = m.get("model") or {}
        t2i = (unseen.get("text_to_image") or {})
        space = t2i.get("space_for_free_text")
        t2i_block = t2i.get(space) if space else None
        rows.append({
            "name": name,
            "run_id": run_dir.name,
            "model": f"{model.get('kind', '?')}:{model.get('name', '?')}",
            "fine_r1": (unseen.get("fine") or {}).get("recall@1"),
            "fine_ci": _ci_half(unseen, "fine"),
            "coarse_r1": (unseen.get("coarse") or {}).get("recall@1"),
            "coarse_ci": _ci_half(unseen, "coarse"),
            "text_coarse_r1": ((t2i_block or {}).get("coarse") or {}).get("recall@1"),
            "text_fine_r1": ((t2i_block or {}).get("fine") or {}).get("recall@1"),
            "text_space": space,
            "trained_params": model.get("trainable_params"),
            "fit_seconds": sum(float(timings.get(k, 0.0)) for k in ("features", "train")),
            "run_seconds": sum(float(v) for v in timings.values()),
            "warnings": [str(w) for w in m.get("warnings") or [] if isinstance(w, str)],  # degenerate results
        })
    return rows


def verdict(rows: list[dict[str, Any]]) -> str:
    """Which run has the best unseen fine R@1, and whether its interval separates it from the runner-up."""
    scored = [r for r in rows if r["fine_r1"] is not None]
    if len(scored) < 2:
        return ""
    best, second = sorted(scored, key=lambda r: -r["fine_r1"])[:2]
    gap = best["fine_r1"] - second["fine_r1"]
    ci = (best["fine_ci"] or 0) + (second["fine_ci"] or 0)
    sure = "clearly ahead of" if gap > ci else "but within the 95% intervals of"
    fit = ""
    if best["fit_seconds"] and second["fit_seconds"]:
        fit = f"; fit wall time {best['fit_seconds']:.0f} s vs {second['fit_seconds']:.0f} s"
    return (f"best unseen fine R@1: {best['name']} ({100 * best['fine_r1']:.1f}%), {sure} "
            f"{second['name']} ({100 * second['fine_r1']:.1f}%){fit}")


__all__ = ["CLIP_DIR", "PRETRAIN", "PRETRAIN_WORLD", "prepare_clip", "summary_rows", "verdict"]

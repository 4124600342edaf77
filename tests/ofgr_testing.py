"""Helpers shared by test modules (import as ``from ofgr_testing import ...``; ``tests/`` is on sys.path)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(data_root: Path) -> list[str]:
    """A whole run in seconds: 4x4 synthetic classes x 8 images at 32 px, timm's test_resnet, 1 epoch."""
    return [
        f"data.sources.0.root={data_root}",
        "data.sources.0.options={seed: 0, num_coarse: 4, fine_per_coarse: 4, images_per_class: 8, image_size: 32}",
        "data.image_size=32",
        "model.name=test_resnet",
        "model.embed_dim=32",
        "sampler.coarse_per_batch=2",
        "sampler.fine_per_coarse=2",
        "sampler.k=2",
        "train.epochs=1",
        "train.log_every=1",
        "eval.bootstrap=50",
    ]

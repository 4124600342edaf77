"""Compute accounting from stage events, and the FLOPs estimate for frozen vs fine-tuned models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ofgr_core.runs.compute import ComputeMeter
from ofgr_core.runs.events import StageFinished, StageStarted


def _metrics(trainable: int) -> dict:
    return {
        "model": {"params": 1000, "trainable_params": trainable},
        "train": {"device": "cuda:0", "world_size": 2, "images_seen": 500, "forward_gflops_per_image": 2.0},
        "data": {"n_images": 700},
    }


def test_stages_images_and_gpu_hours() -> None:
    m = ComputeMeter(interval=0.01)
    for stage, seconds, total in (("data", 1.0, 700), ("train", 10.0, 3), ("embed", 2.0, 100), ("embed", 3.0, 50)):
        m.observe(StageStarted(stage=stage, total=total))
        m.observe(StageFinished(stage=stage, seconds=seconds))
    m.close()
    s = m.summary(_metrics(1000))
    assert s["stages"]["embed"]["seconds"] == 5.0 and s["stages"]["embed"]["images"] == 150
    assert s["stages"]["embed"]["images_per_s"] == pytest.approx(30.0)
    assert s["stages"]["train"]["images"] == 500  # from metrics, not the epoch count
    assert s["stages"]["train"]["gpu_hours"] == pytest.approx(10.0 * 2 / 3600)
    assert s["fit_gpu_hours"] == pytest.approx(20.0 / 3600) and s["n_gpus"] == 2
    assert s["peak_rss_mb"] > 1 and s["stages"]["data"]["peak_rss_mb"] > 1
    # full fine-tuning: forward + 2x backward = 3x forward
    assert s["train_flops"] == pytest.approx(2e9 * 500 * 3)


def test_frozen_backbone_costs_about_one_forward() -> None:
    m = ComputeMeter()
    s = m.summary(_metrics(10))  # 1% of the parameters train
    assert s["train_flops"] == pytest.approx(2e9 * 500 * 1.02)
    cpu = m.summary({**_metrics(10), "train": {**_metrics(10)["train"], "device": "cpu"}})
    assert cpu["gpu_hours"] == 0.0 and cpu["n_gpus"] == 0


def test_finished_run_has_compute_block(finished_run: Path) -> None:
    m = json.loads((finished_run / "metrics.json").read_text())
    comp = m["compute"]
    assert {"data", "train", "embed", "evaluate"} <= set(comp["stages"])
    assert comp["device"] == m["train"]["device"] and comp["params"] == m["model"]["params"]
    assert comp["stages"]["embed"]["images"] == sum(m[s]["n_queries"] for s in ("seen", "unseen"))
    assert comp["wall_seconds"] >= sum(st["seconds"] for st in comp["stages"].values())
    assert comp["train_flops"] > 0 and comp["peak_rss_mb"] > 10

"""Quality gate that can fail: training must raise Recall@1 on *unseen* classes well above the same network
untrained, on the demo world, through the real pipeline (the check `0 <= R@1 <= 1` could never fail)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ofgr_core.config import dump_config, load_config
from ofgr_core.runs.eventlog import EventWriter
from ofgr_core.runs.folder import CONFIG_FILE, EVENTS_FILE, create_run_dir
from ofgr_core.workflows.pipeline import execute_run
from ofgr_testing import REPO

# The demo world and recipe of configs/demo.yaml (6 body types x 8 classes x 100 images at 64 px, 12 epochs),
# measured on the project's 2-core CPU at 46.8 % unseen fine R@1 trained against 5.8 % untrained (README).
# A smaller world is not a usable gate: 40 images per class, 8 epochs (144 steps) reached only 10.7 % against
# 6.8 % untrained (measured in this session), too close for a threshold that must not flake.
WORLD = ["eval.bootstrap=0", "eval.splits=[unseen]", "device=cpu", "data.num_workers=0"]
EPOCHS = 12


def _unseen_r1(tmp_path: Path, data_root: Path, epochs: int) -> dict:
    cfg = load_config(REPO / "configs" / "demo.yaml",
                      [f"data.sources.0.root={data_root}", *WORLD, f"train.epochs={epochs}"])
    run_dir = create_run_dir(tmp_path / "runs", f"e{epochs}")
    (run_dir / CONFIG_FILE).write_text(dump_config(cfg))
    with EventWriter(run_dir / EVENTS_FILE) as w:
        status, metrics = execute_run(cfg, run_dir, w)
    assert status == "finished" and metrics is not None
    return metrics["unseen"]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~3 CPU minutes on an idle 2-core machine
def test_training_beats_the_untrained_network_on_unseen_classes(tmp_path: Path) -> None:
    data_root = tmp_path / "world"
    untrained = _unseen_r1(tmp_path, data_root, 0)
    trained = _unseen_r1(tmp_path, data_root, EPOCHS)
    u, t = untrained["fine"]["recall@1"], trained["fine"]["recall@1"]
    print(f"\nunseen fine R@1: untrained {u:.3f}, trained {t:.3f} ({EPOCHS} epochs)")
    assert t >= u + 0.20 and t >= 3 * u, (u, t)
    assert trained["fine"]["map@r"] > untrained["fine"]["map@r"] + 0.02
    assert trained["coarse"]["recall@1"] > untrained["coarse"]["recall@1"]

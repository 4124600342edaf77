"""The memory plan before a run: a training step that cannot fit is refused with one line naming the settings and
the figures; an embedding batch that cannot fit is lowered and said; an epoch cannot be made endless, and the
first step gives an ETA line within seconds (issue 21, "Legal settings that crash in the allocator")."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz import FUZZ, TRIED, _one_line, _report
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ConfigError, ExitCode
from ofgr_core.config import load_config
from ofgr_testing import REPO, tiny_overrides

runner = CliRunner()


@contextlib.contextmanager
def _address_space(extra: int = 8 << 30):  # noqa: ANN202
    """Cap this process's address space while a test asks for absurd memory: should the plan ever let such a run
    through, the allocator fails in this test instead of the kernel's OOM killer ending processes on the box."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _run(tmp_path: Path, data_root: Path, *extra: str, env: dict[str, str] | None = None):  # noqa: ANN202
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(tmp_path / "runs"), "-q"]
    for o in [*tiny_overrides(data_root), "device=cpu", *extra]:
        args += ["--set", o]
    with _address_space():
        return runner.invoke(app, args, env=env or {})


def test_demo_at_2048_px_is_refused_before_training(tmp_path: Path, tiny_data_root: Path) -> None:
    """The demo CNN at 2048 px wants ~100 GiB per training batch: one line, exit CONFIG, no allocator crash."""
    r = _run(tmp_path, tiny_data_root, "model.name=ofgr_tinycnn", "data.image_size=2048",
             env={"OFGR_MEMORY_LIMIT": "8G"})
    assert r.exit_code == ExitCode.CONFIG, r.output
    line = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "data.image_size 2048" in line[0] and "GiB" in line[0] and "memory plan" in line[0]
    assert "Traceback" not in r.output


def test_huge_sampler_k_is_refused_naming_it(tmp_path: Path, tiny_data_root: Path) -> None:
    r = _run(tmp_path, tiny_data_root, "sampler.k=5000", env={"OFGR_MEMORY_LIMIT": "2G"})
    assert r.exit_code == ExitCode.CONFIG, r.output
    assert "sampler.k 5000" in r.output and "batch of 20000 images" in r.output


def test_warn_runs_anyway_and_records_the_plan(tmp_path: Path, tiny_data_root: Path) -> None:
    """``train.memory_check: warn``: the same refusal becomes a warning in metrics.json, and the run finishes."""
    import json

    r = _run(tmp_path, tiny_data_root, "train.memory_check=warn", env={"OFGR_MEMORY_LIMIT": "1M"})
    assert r.exit_code == 0, r.output
    (run_dir,) = list((tmp_path / "runs").iterdir())
    m = json.loads((run_dir / "metrics.json").read_text())
    assert any("memory plan: a training step needs" in w for w in m["warnings"])
    assert m["memory_plan"]["limited_by"] == "OFGR_MEMORY_LIMIT" and m["memory_plan"]["train_step_bytes"] > 0


def test_eval_batch_is_lowered_not_refused(tiny_data_root: Path) -> None:
    """Embeddings do not depend on the eval batch: a batch that does not fit is lowered (a power of two)."""
    from ofgr_core.common.memory import MemoryBudget
    from ofgr_core.models.factory import create_model_and_transforms
    from ofgr_core.train.memplan import plan_run

    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.image_size=512", "train.eval_batch_size=4096"])
    model, _, _ = create_model_and_transforms(cfg.model, image_size=512)
    plan = plan_run(cfg, model, "cpu", image_size=512, trains_images=False, max_rows=100_000,
                    budget=MemoryBudget(2 << 30, "test"))
    assert plan.eval_batch is not None and plan.eval_batch < 4096 and cfg.train.eval_batch_size == plan.eval_batch
    assert plan.eval_batch & (plan.eval_batch - 1) == 0 and plan.eval_bytes is not None
    assert plan.eval_bytes <= 2 << 30 and "lowered to" in plan.warnings[0]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_validation_batch_is_planned_beside_the_training_step(device: str) -> None:
    """Validation embeds every epoch while the allocator still holds the training step's memory (measured: the
    train stage of ResNet-50 at 224 px grew 1.47x the larger estimate), so the eval batch must fit beside it.
    A budget that holds either alone but not both lowers the eval batch until both fit, and says why."""
    from ofgr_core.common.memory import MemoryBudget
    from ofgr_core.models.factory import create_model_and_transforms
    from ofgr_core.train.memplan import plan_run

    def plan(budget: int, eval_bs: int = 256):  # noqa: ANN202
        cfg = load_config(REPO / "configs" / "demo.yaml", [f"train.eval_batch_size={eval_bs}"])
        return cfg, plan_run(cfg, model, device, image_size=64, trains_images=True, max_rows=4800,
                             budget=MemoryBudget(budget, "test"))

    model, _, _ = create_model_and_transforms(load_config(REPO / "configs" / "demo.yaml").model, image_size=64)
    _, full = plan(1 << 40)
    assert full.train_bytes and full.eval_bytes and full.peak_bytes and full.eval_batch == 256
    weights = full.train_bytes + full.eval_bytes - full.peak_bytes  # counted once: 0 on the CPU
    assert weights == (0 if device == "cpu" else sum(t.numel() * t.element_size()
                                                     for t in (*model.parameters(), *model.buffers())))
    budget = max(full.train_bytes, full.eval_bytes) + (full.peak_bytes - max(full.train_bytes, full.eval_bytes)) // 2
    assert max(full.train_bytes, full.eval_bytes) < budget < full.peak_bytes  # each alone fits, both do not
    cfg, lowered = plan(budget)
    assert lowered.eval_batch is not None and lowered.eval_batch < 256
    assert cfg.train.eval_batch_size == lowered.eval_batch
    assert lowered.peak_bytes is not None and lowered.eval_bytes is not None and lowered.peak_bytes <= budget
    assert lowered.train_bytes == full.train_bytes
    assert lowered.peak_bytes - lowered.train_bytes == lowered.eval_bytes - weights
    assert len(lowered.warnings) == 1 and "beside the training step's" in lowered.warnings[0]
    assert "lowered to" in lowered.warnings[0]
    # room for the step but not for one image beside it: refused, naming what to lower
    with pytest.raises(ConfigError, match=r"embedding one image .* beside the training step's .* sampler\.k"):
        plan(full.train_bytes + 1)


def test_batches_per_epoch_has_an_upper_bound() -> None:
    with pytest.raises(ConfigError, match="sampler.batches_per_epoch"):
        load_config(None, ["sampler.batches_per_epoch=1000000000000"])


def test_an_eta_line_arrives_within_seconds(tmp_path: Path, tiny_data_root: Path) -> None:
    """The largest allowed epoch still says, at its first step, how long it will take."""
    args = [sys.executable, "-m", "ofgr_core.cli", "run", str(REPO / "configs" / "demo.yaml"),
            "--runs-dir", str(tmp_path / "runs")]
    for o in [*tiny_overrides(tiny_data_root), "device=cpu", "sampler.batches_per_epoch=1000000"]:
        args += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    t0, lines = time.time(), []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "ETA" in line:
                break
        eta_after = time.time() - t0
    finally:
        proc.kill()
        proc.communicate()
    text = " ".join(" ".join(lines).split())
    assert "1,000,000 steps per epoch" in text and "ETA" in text, text[-2000:]
    assert eta_after < 120  # startup + data + one step on a loaded 2-core box; the loop itself logs at step 1


def test_budget_reads_limits() -> None:
    from ofgr_core.common.memory import host_budget, parse_size

    b = host_budget()
    assert b is not None and b.bytes > 0
    assert parse_size("6G") == 6 << 30 and parse_size("512m") == 512 << 20 and parse_size("1048576") == 1 << 20
    with pytest.raises(ConfigError, match="OFGR_MEMORY_LIMIT"):
        parse_size("lots")


# ------------------------------------------------------------------------------------------------ fuzz
@pytest.fixture(scope="module")
def tiny_model():  # noqa: ANN201
    from ofgr_core.models.factory import create_model_and_transforms

    cfg = load_config(REPO / "configs" / "demo.yaml", ["model.name=test_resnet", "model.embed_dim=32"])
    return create_model_and_transforms(cfg.model, image_size=32)[0]


@FUZZ
@given(st.integers(8, 4096), st.integers(1, 10_000), st.integers(1, 64), st.integers(1, 65536),
       st.integers(1 << 20, 1 << 40), st.sampled_from(["check", "warn"]))
def test_plan_refuses_in_one_line_or_fits(tiny_model, size: int, k: int, c: int, eval_bs: int, budget: int,  # noqa: ANN001
                                          mode: str) -> None:
    """Any legal batch, resolution and budget: refused with one line naming the settings, or a plan whose
    training step fits the budget and whose embedding batch fits it (lowered if needed)."""
    from ofgr_core.common.memory import MemoryBudget
    from ofgr_core.train.memplan import plan_run

    TRIED["memory plans"] += 1
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"sampler.k={k}", f"sampler.coarse_per_batch={c}",
                                                       f"train.eval_batch_size={eval_bs}",
                                                       f"train.memory_check={mode}"])
    try:
        plan = plan_run(cfg, tiny_model, "cpu", image_size=size, trains_images=True, max_rows=10_000,
                        budget=MemoryBudget(budget, "test"))
    except ConfigError as e:
        _one_line(e)
        assert "memory plan" in str(e) and ("sampler.k" in str(e) or "data.image_size" in str(e))
        return
    assert plan.train_bytes is not None and plan.eval_bytes is not None and plan.peak_bytes is not None
    assert plan.peak_bytes == plan.train_bytes + plan.eval_bytes  # the CPU: no weights in either
    if mode == "check":
        assert plan.peak_bytes <= budget
    bigger = plan_run(load_config(REPO / "configs" / "demo.yaml", [f"sampler.k={min(10_000, 2 * k)}",
                                                                   f"sampler.coarse_per_batch={c}",
                                                                   "train.memory_check=warn"]),
                      tiny_model, "cpu", image_size=size, trains_images=True, budget=MemoryBudget(budget, "t"))
    assert bigger.train_bytes is not None and bigger.train_bytes >= plan.train_bytes  # more images, more memory


def test_report_memory_plans() -> None:
    _report("memory plans")

"""Every config value the issue found giving tracebacks or nonsense runs is refused with one line naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ConfigError, ExitCode
from ofgr_core.config import load_config

BAD = [
    ("seed=-1", "seed"),
    ("seed=1180591620717411303424", "seed"),  # 2**70
    ("split.seed=-5", "split.seed"),
    ("data.image_size=0", "data.image_size"),
    ("data.image_size=-32", "data.image_size"),
    ("data.image_size=100000", "data.image_size"),
    ("data.crop_scale=[0.9, 0.1]", "data.crop_scale"),
    ("data.num_workers=-1", "data.num_workers"),
    ("device=quantum", "device"),
    ("data.sources=[]", "data.sources"),
    ("train.momentum=-0.5", "train.momentum"),
    ("train.momentum=1.5", "train.momentum"),
    ("eval.index.nprobe=-1", "eval.index.nprobe"),
    ("eval.index.nlist=0", "eval.index.nlist"),
    ("eval.index.hnsw_m=0", "eval.index.hnsw_m"),
    ("eval.index.pq_nbits=0", "eval.index.pq_nbits"),
    ("eval.bootstrap=1000000000", "eval.bootstrap"),
    ("eval.ks=[99999999999]", "eval.ks"),
    ("model.embed_dim=1000000000000", "model.embed_dim"),
    ("name=" + "x" * 300, "name"),
    ("name=''", "name"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.early_stopping=0", "train.early_stopping"),
    ("train.lr=.inf", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("train.lr=1e308", "train.lr"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("loss.arcface.scale=1.0e308", "loss.arcface.scale"),
    ("loss.arcface.lr=-.inf", "loss.arcface.lr"),
    ("loss.htriplet.margin_fine=.nan", "loss.htriplet.margin_fine"),
    ("sampler.batches_per_epoch=0", "sampler.batches_per_epoch"),
    ("train.nonfinite=ignore", "train.nonfinite"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[b[0][:40] for b in BAD])
def test_out_of_range_value_is_one_line_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert "\n" not in msg and f"{key}:" in msg and len(msg) < 400, msg


def test_same_bounds_apply_to_yaml_files(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: .inf\n  grad_clip: -1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "train.lr" in str(e.value) and "train.grad_clip" in str(e.value)


def test_cli_exit_code_is_config(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["run", "--runs-dir", str(tmp_path), "--set", "eval.index.hnsw_m=0"])
    assert r.exit_code == ExitCode.CONFIG and "eval.index.hnsw_m" in r.output


def test_defaults_and_shipped_configs_stay_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    for p in sorted(root.glob("*.yaml")):
        load_config(p)
    load_config(None, ["train.grad_clip=0", "train.early_stopping=1", "device=cuda:1", "seed=4294967295"])

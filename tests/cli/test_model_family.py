"""A model family is one folder plus one registry entry: a third family, defined only in this file, runs
through ``ofgr run``, ``ofgr query`` and ``ofgr compare`` like the built-in ones, and no file outside a
family's folder names a family.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from pydantic import Field
from torch import nn
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ConfigError
from ofgr_core.config import (
    ModelFamily,
    ModelSection,
    load_config,
    model_families,
    model_family,
    register_model_family,
    unregister_model_family,
)
from ofgr_core.models.base import Encoder
from ofgr_testing import REPO, tiny_overrides

KIND = "toy-pixels"
runner = CliRunner()


class ToyPixelsConfig(ModelSection):
    """The toy family's model section: a linear map of average-pooled pixels (tower) and a linear head."""

    kind: Literal["toy-pixels"] = "toy-pixels"
    name: str = "pixels"
    grid: int = Field(4, ge=1, le=64)
    width: int = Field(32, ge=1)
    embed_dim: int = Field(16, ge=1)


class PixelEncoder(Encoder):
    """Tower: average pool to ``grid x grid``, flatten, Linear; head: Linear. Everything trains."""

    family = KIND
    tower_module_name = "tower"

    def __init__(self, grid: int, width: int, embed_dim: int, image_size: int) -> None:
        super().__init__()
        self.tower = nn.Sequential(nn.AdaptiveAvgPool2d(grid), nn.Flatten(), nn.Linear(3 * grid * grid, width))
        self.head = nn.Linear(width, embed_dim)
        self.feature_dim, self.embed_dim, self.arch = width, embed_dim, f"pixels{grid}"
        self.data_config = {"input_size": (3, image_size, image_size), "mean": (0.5, 0.5, 0.5),
                            "std": (0.25, 0.25, 0.25), "interpolation": "bilinear", "crop_pct": 1.0,
                            "crop_mode": "center"}

    def tower_features(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.tower(images)
        return out

    def weights_source(self) -> tuple[str, str | None]:
        return "random init", None


def create_toy(cfg: ToyPixelsConfig, image_size: int | None = None) -> PixelEncoder:
    return PixelEncoder(cfg.grid, cfg.width, cfg.embed_dim, image_size or 32)


@pytest.fixture
def toy_family():
    family = register_model_family(ModelFamily(kind=KIND, config=ToyPixelsConfig, factory=f"{__name__}:create_toy",
                                               summary="a linear map of pooled pixels (test family)"))
    yield family
    unregister_model_family(KIND)


def _run(runs_dir: Path, data_root: Path, name: str, *extra: str) -> Path:
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(runs_dir), "--name", name, "-q"]
    overrides = [o for o in tiny_overrides(data_root) if not o.startswith("model.")]
    for o in [*overrides, *extra]:
        args += ["--set", o]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return max(runs_dir.iterdir(), key=lambda p: p.stat().st_mtime)


def test_the_registry_entry_answers_without_building_a_model(toy_family):
    assert model_family(KIND) is toy_family and not toy_family.supports_text
    assert [f.kind for f in model_families()][:1] == ["timm"]  # the default family first
    cfg = load_config(None, [f"model.kind={KIND}", "model.grid=2"])
    assert isinstance(cfg.model, ToyPixelsConfig) and cfg.model.grid == 2
    # the family's own keys are checked with key paths, like any section's
    with pytest.raises(ConfigError, match=r"model\.gird: unknown key, did you mean model\.grid\?"):
        load_config(None, [f"model.kind={KIND}", "model.gird=2"])
    with pytest.raises(ConfigError, match=r"model\.freeze: unknown key"):  # another family's key
        load_config(None, [f"model.kind={KIND}", "model.freeze=all"])


def test_an_unregistered_family_is_a_config_error_naming_the_registered_ones():
    with pytest.raises(ConfigError, match=rf"model\.kind: must be one of timm, clip, got '{KIND}'"):
        load_config(None, [f"model.kind={KIND}"])


def test_a_factory_that_contradicts_its_entry_is_refused(toy_family):
    from ofgr_core.models.factory import create_model

    unregister_model_family(KIND)
    register_model_family(ModelFamily(kind=KIND, config=ToyPixelsConfig, factory=f"{__name__}:create_toy",
                                      supports_text=True))
    with pytest.raises(ConfigError, match="contradicts its registry entry"):
        create_model(ToyPixelsConfig())


def test_a_third_family_runs_queries_and_compares(toy_family, tmp_path, tiny_data_root, finished_run):
    runs_dir = tmp_path / "runs"
    run = _run(runs_dir, tiny_data_root, "toy", f"model={{kind: {KIND}, grid: 4, embed_dim: 16}}",
               "train.epochs=2")
    m = json.loads((run / "metrics.json").read_text())
    assert m["model"]["kind"] == m["model"]["family"] == KIND
    assert m["fit"]["strategy"] == "end_to_end" and m["model"]["trainable_params"] == m["model"]["params"]
    prov = m["model"]["provenance"]
    assert prov["weights_source"] == "random init" and len(prov["weights_sha256"]) == 32
    assert prov["preprocess"]["std"] == [0.25, 0.25, 0.25]
    assert 0.0 <= m["unseen"]["fine"]["recall@1"] <= 1.0

    # a query by image rebuilds the toy encoder from the run folder: its embedding is the stored one
    rows = (run / "embeddings" / "unseen.csv").read_text().splitlines()
    first_path = rows[1].split(",")[1]
    from ofgr_core.retrieval.query import embed_image

    stored = np.load(run / "embeddings" / "unseen.npy")[0]
    assert np.allclose(embed_image(run, first_path)[0], stored, atol=1e-5)
    r = runner.invoke(app, ["query", str(run), "--image", first_path, "--k", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["results"]) == 3
    item = rows[1].split(",")[0]
    r = runner.invoke(app, ["query", str(run), "--id", item, "--json"])
    assert r.exit_code == 0, r.output
    # no text encoder: one line naming the families that have one
    r = runner.invoke(app, ["query", str(run), "--text", "a red car"])
    assert r.exit_code == 3 and "no text encoder" in r.output and "model.kind: clip" in r.output

    # compared with a run of the default family on the same split: paired tests are computed
    r = runner.invoke(app, ["compare", str(finished_run), str(run), "--json", "--resamples", "200",
                            "--no-coarse-first"])
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)
    assert [x["run_id"] for x in c["runs"]] == [finished_run.name, run.name] and not c["split_mismatch"]
    assert c["runs"][1]["model"] == f"{KIND}:pixels"
    fine_r1 = next(row for row in c["rows"] if (row["split"], row["level"], row["metric"]) ==
                   ("unseen", "fine", "recall@1"))
    toy = fine_r1["runs"][1]
    assert toy["value"] == pytest.approx(m["unseen"]["fine"]["recall@1"])
    assert toy["test"] is not None and 0.0 <= toy["test"]["p_value"] <= 1.0  # a paired test over the same queries
    r = runner.invoke(app, ["runs", "--runs-dir", str(runs_dir), "--json"])
    assert r.exit_code == 0 and f"{KIND}:pixels" in r.stdout


# ------------------------------------------------------------------------ nothing else names a family
CORE = REPO / "ofgr_core"
# string constants naming a built-in family that may stay outside its folder, and why
ALLOWED = {
    ("ofgr_core/cli/clip_cmd.py", "clip"): "the `ofgr clip` command group: the CLIP family's own front end",
    ("ofgr_core/common/envinfo.py", "timm"): "the timm *package*'s version in env.json",
    ("ofgr_core/reports/report.py", "timm"): "the timm *package*'s version in a report's environment line",
}


def test_no_file_outside_a_family_folder_names_a_family():
    kinds = {f.kind for f in model_families()}
    found = []
    for path in sorted([*CORE.rglob("*.py"), *(REPO / "ofgr_tui").rglob("*.py")]):
        rel = path.relative_to(REPO).as_posix()
        if any(rel.startswith(f"ofgr_core/models/{k}/") for k in kinds):
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            named = isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in kinds
            if named and (rel, node.value) not in ALLOWED:
                found.append(f"{rel}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.Compare) and any(
                isinstance(x, ast.Attribute) and x.attr in ("kind", "family") for x in [node.left, *node.comparators]
            ) and any(isinstance(x, ast.Constant) and x.value in kinds for x in [node.left, *node.comparators]):
                found.append(f"{rel}:{node.lineno} compares a family name")
    assert not found, "family names outside their folders:\n" + "\n".join(found)

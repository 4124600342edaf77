"""Hierarchy induction: planted groups recovered exactly, silhouette against a reference, taxonomy round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, silhouette_score

from ofgr_core.common.errors import ConfigError, DataError
from ofgr_core.data.taxonomy import load_taxonomy
from ofgr_core.hierarchy.induce import class_centroids, induce_groups, silhouette, taxonomy_dict, write_taxonomy


def _planted(n_groups: int, per_group: int, spread: float, seed: int = 0) -> tuple[list[str], np.ndarray,
                                                                                  np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, 32))
    truth = np.repeat(np.arange(n_groups), per_group)
    x = centres[truth] + rng.normal(scale=spread, size=(len(truth), 32))
    names = [f"Make{i} Body{g} M{i}" for i, g in enumerate(truth)]
    return names, x, truth


@pytest.mark.parametrize("n_groups,per_group", [(3, 4), (5, 6), (8, 3)])
@pytest.mark.parametrize("linkage", ["average", "ward"])
def test_recovers_a_planted_hierarchy_exactly(n_groups: int, per_group: int, linkage: str) -> None:
    names, x, truth = _planted(n_groups, per_group, spread=0.15)
    ind = induce_groups(x, names, linkage=linkage)  # number of groups chosen by the silhouette criterion
    assert ind.criterion == "silhouette" and ind.n_groups == n_groups
    assert adjusted_rand_score(truth, ind.assignment) == 1.0
    assert (ind.margins > 0).all()
    given = induce_groups(x, names, n_groups=n_groups, linkage=linkage)
    assert given.criterion == "given" and adjusted_rand_score(truth, given.assignment) == 1.0


def test_class_centroids_are_class_means_of_unit_features() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(9, 4))
    labels = ["b", "a", "b", "", "a", "c", "c", "b", "a"]
    names, cents = class_centroids(feats, labels)
    assert names == ["a", "b", "c"]
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    for name, c in zip(names, cents, strict=True):
        m = unit[[i for i, v in enumerate(labels) if v == name]].mean(axis=0)
        np.testing.assert_allclose(c, m / np.linalg.norm(m))


def test_silhouette_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 5))
    a = rng.integers(0, 4, 20)
    a[:4] = [0, 1, 2, 3]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dist = np.clip(1 - x @ x.T, 0, 2)
    np.fill_diagonal(dist, 0)
    assert silhouette(dist, a) == pytest.approx(silhouette_score(dist, a, metric="precomputed"), abs=1e-9)


def test_report_names_groups_and_margins() -> None:
    names, x, _ = _planted(3, 4, spread=0.15)
    rep = induce_groups(x, names).report()
    assert rep["n_groups"] == 3 and sum(g["size"] for g in rep["groups"]) == 12
    assert all(g["margin_min"] > 0 and g["nearest_group"] for g in rep["groups"])
    # every member of a planted group shares the word "Body<g>": it becomes the group's hint
    assert sorted(g["name"].split("_")[-1] for g in rep["groups"]) == ["body0", "body1", "body2"]
    assert set(rep["silhouette"]) >= {"2", "3"}


def test_written_taxonomy_loads_and_round_trips(tmp_path: Path) -> None:
    names, x, _ = _planted(4, 3, spread=0.15)
    names[0] = "Yes"  # a name YAML would read as a boolean must survive
    ind = induce_groups(x, names)
    path = write_taxonomy(tmp_path / "tax" / "induced.yaml", ind, name="synth-induced")
    tax = load_taxonomy(path)
    assert tax.levels == ("fine", "coarse") and tax.name == "synth-induced"
    for cls, group in taxonomy_dict(ind)["fine"].items():
        # placed by the explicit map whatever coarse label the source had
        assert tax.place("any", {"fine": cls, "coarse": "unrelated"}) == {"fine": cls, "coarse": group}
    again = induce_groups(x, names)
    assert taxonomy_dict(again) == taxonomy_dict(ind)  # deterministic
    import yaml

    data = yaml.safe_load(path.read_text())
    assert data["fine"] == taxonomy_dict(ind)["fine"] and data["tree"] == ind.group_names


def test_bad_inputs_are_named() -> None:
    names, x, _ = _planted(2, 2, spread=0.1)
    with pytest.raises(ConfigError, match="--groups: 9"):
        induce_groups(x, names, n_groups=9)
    with pytest.raises(ConfigError, match="linkage"):
        induce_groups(x, names, linkage="median")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="at least 2"):
        induce_groups(x[:1], names[:1])


def test_cli_induces_a_taxonomy_that_data_taxonomy_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from ofgr_core.cli import app
    from ofgr_core.config import DataConfig, SourceConfig
    from ofgr_core.data import synthetic
    from ofgr_core.data.dataset import load_dataset

    monkeypatch.setenv("OFGR_CACHE", str(tmp_path / "cache"))  # the feature cache lands here, not in ~
    world = synthetic.generate(tmp_path / "w", seed=0, num_coarse=3, fine_per_coarse=2, images_per_class=4,
                               image_size=16)
    out = tmp_path / "tax.yaml"
    res = CliRunner().invoke(app, ["data", "hierarchy", str(world), "--out", str(out), "--groups", "3",
                                   "--model", "test_resnet", "--image-size", "16", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["n_groups"] == 3 and rep["criterion"] == "given" and sum(g["size"] for g in rep["groups"]) == 6
    assert 0 <= rep["images_per_class"]["min"] <= 4
    assert "adjusted_rand_index" in rep["agreement_with_dataset_coarse"]
    assert Path(rep["report"]).is_file()
    assert rep["encoder"]["features"] == "tower" and any((tmp_path / "cache" / "features").iterdir())
    data = load_dataset(DataConfig(cache=False, taxonomy=str(out), sources=[
        SourceConfig(type="manifest", root=str(world / "manifest.csv"))]))
    placed = dict(zip(data.table.labels["fine"], data.table.labels["coarse"], strict=True))
    expected = {m: g["name"] for g in rep["groups"] for m in g["members"]}
    assert placed == expected  # every image's coarse label is its class's induced group
    bad = CliRunner().invoke(app, ["data", "hierarchy", str(world), "--out", str(out), "--levels", "2"])
    assert bad.exit_code != 0 and "--levels 1" in bad.output

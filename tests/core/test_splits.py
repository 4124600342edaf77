"""Open-set split protocols, query/gallery protocols and the protocol checks (on in-memory tables)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datafix import STANFORD_NAMES

from ofgr_core.common.errors import ConfigError, DataError
from ofgr_core.config import SplitConfig
from ofgr_core.data.base import DatasetTable
from ofgr_core.data.labels import Hierarchy
from ofgr_core.data.splits import Split, check_split, make_split, save_split


def table(fine_coarse: dict[str, str], per_class: int | dict[str, int] = 4, *,
          domains: list[str] | None = None, splits: dict[str, list[str]] | None = None,
          meta: dict | None = None):
    rows = []
    for f, c in fine_coarse.items():
        n = per_class if isinstance(per_class, int) else per_class[f]
        for i in range(n):
            rows.append((f, c, i))
    t = DatasetTable(
        paths=[f"/d/{f}/{i}.png" for f, _, i in rows],
        labels={"fine": [f for f, _, _ in rows], "coarse": [c for _, c, _ in rows]},
        ids=[f"s:{f}/{i}.png" for f, _, i in rows],
        sources=["s"] * len(rows),
        domains=[domains[i % len(domains)] for _, _, i in rows] if domains else [],
        splits=[splits[f][i] for f, _, i in rows] if splits else [],
        meta=meta or {},
    )
    h = Hierarchy.from_labels(t.labels)
    return t, h, h.encode(t.labels)


def many(n_coarse: int = 4, n_fine: int = 6) -> dict[str, str]:
    return {f"c{c}f{f}": f"c{c}" for c in range(n_coarse) for f in range(n_fine)}


def test_random_is_stratified_disjoint_and_seeded() -> None:
    t, h, y = table(many())
    cfg = SplitConfig(unseen_fraction=0.5, val_fraction=0.2)
    s = make_split(t, h, y, cfg, seed=3)
    assert set(s.classes["train"]).isdisjoint(s.classes["unseen"])
    assert set(s.classes["val"]).isdisjoint(s.classes["unseen"] + s.classes["train"])
    for c in range(4):  # every coarse class on both sides
        assert any(x.startswith(f"c{c}") for x in s.classes["unseen"])
        assert any(x.startswith(f"c{c}") for x in s.classes["train"])
        assert any(x.startswith(f"c{c}") for x in s.classes["val"])
    again = make_split(t, h, y, cfg, seed=3)
    assert again.classes == s.classes
    assert all(np.array_equal(again.indices[p], s.indices[p]) for p in s.indices)
    assert make_split(t, h, y, cfg, seed=4).classes != s.classes
    fine = y[:, 0]
    assert not np.isin(fine[s.indices["val"]], fine[s.indices["unseen"]]).any()


def test_cars196_protocol() -> None:
    ids = {n: i + 1 for i, n in enumerate(STANFORD_NAMES)}
    fc = {STANFORD_NAMES[i]: "sedan" for i in (0, 1, 2, 96, 97, 98, 99, 195)}
    t, h, y = table(fc, meta={"class_ids": ids})
    s = make_split(t, h, y, SplitConfig(protocol="cars196", val_fraction=0), seed=0)
    assert sorted(s.classes["unseen"]) == sorted(STANFORD_NAMES[i] for i in (98, 99, 195))
    assert sorted(s.classes["train"]) == sorted(STANFORD_NAMES[i] for i in (0, 1, 2, 96, 97))
    t2, h2, y2 = table({"x": "a", "y": "a"})
    with pytest.raises(DataError, match="stanford_cars source"):
        make_split(t2, h2, y2, SplitConfig(protocol="cars196"), seed=0)


def test_file_protocol(tmp_path: Path) -> None:
    t, h, y = table(many(2, 3))
    f = tmp_path / "classes.yaml"
    f.write_text(json.dumps({"seen": ["c0f0", "c0f1", "c1f0"], "val": ["c1f1"], "unseen": ["c0f2", "c1f2"]}))
    s = make_split(t, h, y, SplitConfig(protocol="file", file=str(f)), seed=0)
    assert s.classes == {"train": ["c0f0", "c0f1", "c1f0"], "val": ["c1f1"], "unseen": ["c0f2", "c1f2"]}
    f.write_text(json.dumps({"unseen": ["nope"]}))
    with pytest.raises(DataError, match="nope"):
        make_split(t, h, y, SplitConfig(protocol="file", file=str(f)), seed=0)
    with pytest.raises(ConfigError, match="split.file"):
        make_split(t, h, y, SplitConfig(protocol="file"), seed=0)


def test_manifest_protocol_must_be_class_disjoint() -> None:
    fc = {"a": "x", "b": "x", "c": "x", "d": "x"}
    sp = {"a": ["train"] * 3 + ["seen"], "b": ["val"] * 4, "c": ["unseen"] * 4, "d": ["test"] * 4}
    t, h, y = table(fc, splits=sp)
    s = make_split(t, h, y, SplitConfig(protocol="manifest"), seed=0)
    assert s.classes == {"train": ["a"], "val": ["b"], "unseen": ["c", "d"]}
    assert len(s.indices["seen"]) == 1 and len(s.indices["train"]) == 3
    sp["c"] = ["unseen", "unseen", "train", "unseen"]
    t, h, y = table(fc, splits=sp)
    with pytest.raises(DataError, match="class-disjoint"):
        make_split(t, h, y, SplitConfig(protocol="manifest"), seed=0)


def test_cross_domain_query_gallery() -> None:
    t, h, y = table(many(2, 4), per_class=4, domains=["photo", "sketch"])
    cfg = SplitConfig(query="cross_domain", query_domain="sketch", val_fraction=0)
    s = make_split(t, h, y, cfg, seed=0)
    q, g = s.query_gallery("unseen", t)
    idx = s.indices["unseen"]
    assert all(t.domains[i] == "sketch" for i in idx[q]) and all(t.domains[i] == "photo" for i in idx[g])
    assert q.sum() == g.sum() == len(idx) // 2
    with pytest.raises(ConfigError, match="photo, sketch"):
        make_split(t, h, y, cfg.model_copy(update={"query_domain": "paint"}), seed=0)
    t2, h2, y2 = table(many(2, 4))
    with pytest.raises(DataError, match="domain column"):
        make_split(t2, h2, y2, cfg, seed=0)


def test_query_files(tmp_path: Path) -> None:
    t, h, y = table({"a": "x", "b": "x", "c": "x", "d": "x"}, per_class=3)
    (tmp_path / "q.txt").write_text("s:c/0.png\n/d/d/0.png\n")
    (tmp_path / "g.csv").write_text("id\n" + "".join(f"s:{f}/{i}.png\n" for f in "cd" for i in (1, 2)))
    cfg = SplitConfig(protocol="file", unseen=["c", "d"], val_fraction=0, query="files",
                      query_file=str(tmp_path / "q.txt"), gallery_file=str(tmp_path / "g.csv"))
    s = make_split(t, h, y, cfg, seed=0)
    q, g = s.query_gallery("unseen", t)
    assert q.sum() == 2 and g.sum() == 4 and not (q & g).any()


def test_singletons_excluded_and_counted_k_warning() -> None:
    t, h, y = table({"a": "x", "b": "x", "c": "x", "d": "x"}, per_class={"a": 5, "b": 5, "c": 1, "d": 3})
    cfg = SplitConfig(protocol="file", unseen=["c", "d"], val_fraction=0)
    s = make_split(t, h, y, cfg, seed=0, ks=[1, 10])
    q, g = s.query_gallery("unseen", t)
    assert q.sum() == 3 and g.sum() == 4
    assert s.report["excluded_queries"]["unseen"] == 1
    assert any("K=10" in w for w in s.report["warnings"])


def test_zero_usable_unseen_queries_refused() -> None:
    t, h, y = table({"a": "x", "b": "x", "c": "x"}, per_class={"a": 4, "b": 4, "c": 1})
    with pytest.raises(DataError, match="zero usable unseen queries"):
        make_split(t, h, y, SplitConfig(protocol="file", unseen=["c"], val_fraction=0), seed=0)


def test_check_refuses_class_leak() -> None:
    t, h, y = table({"a": "x", "b": "x"})
    bad = Split({"train": np.array([0, 4]), "val": np.array([], int), "seen": np.array([], int),
                 "unseen": np.array([5, 6, 7])}, {"train": ["a"], "val": [], "unseen": ["b"]}, "random", 0)
    with pytest.raises(DataError, match="leaks 1 unseen fine classes into train"):
        check_split(bad, y)


def test_save_and_reuse(tmp_path: Path) -> None:
    t, h, y = table(many(), domains=["p", "s"])
    s = make_split(t, h, y, SplitConfig(query="cross_domain", query_domain="p"), seed=7)
    save_split(s, t, tmp_path / "split.json")
    r = make_split(t, h, y, SplitConfig(reuse=str(tmp_path)), seed=0)
    assert r.classes == s.classes and r.seed == 7 and r.query == "cross_domain"
    assert all(np.array_equal(r.indices[p], s.indices[p]) for p in s.indices)
    np.testing.assert_array_equal(r.query_gallery("unseen", t)[0], s.query_gallery("unseen", t)[0])
    t2, h2, y2 = table(many(3, 6))
    with pytest.raises(DataError, match="datasets differ"):
        make_split(t2, h2, y2, SplitConfig(reuse=str(tmp_path / "split.json")), seed=0)

"""Degenerate results are flagged, settings that cannot produce the headline metric are refused, and the
metrics do not depend on how rows are scaled or ordered (issue 21, "Degenerate results that still finish",
"Numerically robust normalisation", "permutation invariance to the last bit")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz import FUZZ, TRIED, _report
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ConfigError, ExitCode
from ofgr_core.config import load_config
from ofgr_testing import REPO, tiny_overrides

runner = CliRunner()


def _run(tmp_path: Path, data_root: Path, *extra: str):  # noqa: ANN202
    args = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(tmp_path / "runs"), "-q"]
    for o in [*tiny_overrides(data_root), "device=cpu", *extra]:
        args += ["--set", o]
    return runner.invoke(app, args)


# --------------------------------------------------------------------------------------- flagged results
def test_embed_dim_1_finishes_flagged_loudly(tmp_path: Path, tiny_data_root: Path) -> None:
    r = _run(tmp_path, tiny_data_root, "model.embed_dim=1")
    assert r.exit_code == 0, r.output
    (run_dir,) = list((tmp_path / "runs").iterdir())
    m = json.loads((run_dir / "metrics.json").read_text())
    assert any("degenerate embeddings" in w and w.startswith("unseen") for w in m["warnings"]), m["warnings"]
    health = m["unseen"]["embedding_health"]
    assert health["effective_rank"] < 2 and health["near_duplicate_share"] > 0.01
    assert "warning: unseen: degenerate embeddings" in r.output  # the loud line, even with -q
    shown = runner.invoke(app, ["show", str(run_dir)])
    assert shown.exit_code == 0 and "warning: unseen: degenerate embeddings" in shown.output


def test_a_healthy_run_has_no_warnings(finished_run: Path) -> None:
    m = json.loads((finished_run / "metrics.json").read_text())
    assert m["warnings"] == [] and m["unseen"]["embedding_health"]["effective_rank"] > 2


def test_random_clip_tower_under_a_head_is_flagged(tmp_path: Path, tiny_data_root: Path) -> None:
    """The demo's failure: a CLIP tower that separates nothing, under a head; tens of thousands of pairs at
    cosine > 0.999 went unmentioned."""
    r = _run(tmp_path, tiny_data_root, "model={kind: clip, name: ofgr-tiny-clip, pretrained: null, head: mlp, "
                                       "embed_dim: 16, head_width: 32}")
    assert r.exit_code == 0, r.output
    (run_dir,) = list((tmp_path / "runs").iterdir())
    m = json.loads((run_dir / "metrics.json").read_text())
    assert any("degenerate embeddings" in w for w in m["warnings"]), m["unseen"]["embedding_health"]


@pytest.mark.parametrize("override,key", [("eval.splits=[]", "eval.splits"), ("eval.splits=[seen]", "eval.splits"),
                                          ("eval.ks=[5, 10]", "eval.ks")])
def test_settings_without_the_headline_metric_are_refused(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as e:
        load_config(REPO / "configs" / "demo.yaml", [override])
    assert "headline" in str(e.value) and "\n" not in str(e.value)


def test_eval_splits_empty_is_refused_by_run(tmp_path: Path, tiny_data_root: Path) -> None:
    r = _run(tmp_path, tiny_data_root, "eval.splits=[]")
    assert r.exit_code == ExitCode.CONFIG and "eval.splits" in r.output and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ fuzz: health
@FUZZ
@given(st.integers(20, 300), st.integers(8, 64), st.integers(0, 2**32 - 1))
def test_spread_embeddings_are_not_flagged(n: int, d: int, seed: int) -> None:
    from ofgr_core.retrieval.embcheck import embedding_health

    TRIED["embedding health"] += 1
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    stats, warnings = embedding_health(x, "unseen")
    assert warnings == [] and stats["effective_rank"] > 2


@FUZZ
@given(st.integers(20, 300), st.integers(1, 64), st.floats(0, 1e-4), st.integers(0, 2**32 - 1))
def test_collapsed_embeddings_are_flagged(n: int, d: int, noise: float, seed: int) -> None:
    from ofgr_core.retrieval.embcheck import embedding_health

    TRIED["embedding health"] += 1
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal(d)
    x = (centre + noise * rng.standard_normal((n, d))).astype(np.float32)
    stats, warnings = embedding_health(x, "unseen")
    assert warnings and all("degenerate embeddings" in w and "\n" not in w for w in warnings)


# ---------------------------------------------------------------------------------- normalisation, order
def _files(tmp_path: Path, emb: np.ndarray, labels: list[str], name: str) -> tuple[str, str]:
    np.save(tmp_path / f"{name}.npy", emb)
    (tmp_path / f"{name}.csv").write_text("id,fine,coarse\n" + "".join(labels))
    return str(tmp_path / f"{name}.npy"), str(tmp_path / f"{name}.csv")


def _eval(files: tuple[str, str], *extra: str) -> dict:
    r = runner.invoke(app, ["eval-embeddings", *files, "--json", "--bootstrap", "0", *extra])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for block in out.values():
        block.pop("index", None)
    return out


@pytest.mark.parametrize("scale,dtype", [(2.0**100, "float32"), (2.0**-140, "float32"), (1e300, "float64"),
                                         (1e-300, "float64"), (1e38, "float32")])
def test_a_scaled_row_changes_no_metric(tmp_path: Path, scale: float, dtype: str) -> None:
    """Squaring 1e38 overflowed the norm (the row became zeros) and 1e-42 underflowed it: 13 metrics changed."""
    rng = np.random.default_rng(1)
    emb = (rng.integers(-64, 64, size=(60, 16)) / 64).astype(dtype)
    emb[emb == 0] = 1 / 64
    labels = [f"i{i},f{i % 6},c{i % 2}\n" for i in range(60)]
    base = _eval(_files(tmp_path, emb, labels, "a"))
    scaled = emb.copy()
    scaled[[3, 17]] *= np.asarray(scale, dtype)
    got = _eval(_files(tmp_path, scaled, labels, "b"))
    if scale in (2.0**100, 2.0**-140):  # powers of two are exact: the same bits
        assert got == base
    else:  # a decimal scale rounds each value once: the ranking, hence every metric, is unchanged here
        assert json.dumps(got, sort_keys=True) == json.dumps(base, sort_keys=True)


@FUZZ
@given(st.integers(-126, 126), st.integers(0, 2**32 - 1))
def test_unit_rows_is_scale_invariant_to_the_bit(exponent: int, seed: int) -> None:
    from ofgr_core.retrieval.index import unit_rows

    TRIED["normalisation"] += 1
    x = (np.random.default_rng(seed).integers(-64, 64, size=(5, 12)) / 64).astype(np.float32)
    x[~x.any(axis=1), 0] = 1
    assert np.array_equal(unit_rows(x * np.float32(2.0**exponent)), unit_rows(x))
    assert np.isfinite(unit_rows(x * np.float32(2.0**exponent))).all()


def test_permuting_rows_changes_no_bit(tmp_path: Path) -> None:
    """MAP@R and R-precision changed in the 17th digit when rows were permuted (summation order)."""
    rng = np.random.default_rng(2)
    n = 400
    emb = rng.standard_normal((n, 12)).astype(np.float32)
    labels = [f"i{i},f{i % 37},c{i % 3}\n" for i in range(n)]
    base = _eval(_files(tmp_path, emb, labels, "a"), "--bootstrap", "200")
    for k in range(3):
        perm = rng.permutation(n)
        got = _eval(_files(tmp_path, emb[perm], [labels[i] for i in perm], f"p{k}"), "--bootstrap", "200")
        assert got == base  # means, per-class means and bootstrap intervals: the same bits


@FUZZ
@given(st.integers(10, 80), st.integers(2, 12), st.integers(2, 8), st.integers(0, 2**32 - 1))
def test_metrics_are_permutation_invariant(n: int, d: int, classes: int, seed: int) -> None:
    from ofgr_core.config import EvalConfig
    from ofgr_core.retrieval.evaluate import run_split

    TRIED["permutations"] += 1
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, d)).astype(np.float32)
    labels = np.stack([rng.integers(0, classes, n), rng.integers(0, 2, n)], 1)
    ids = np.array([f"item{i}" for i in range(n)])
    cfg = EvalConfig(ks=[1, 2, 4], bootstrap=50)
    ref = run_split(emb, labels, ids=ids, cfg=cfg).block
    perm = rng.permutation(n)
    got = run_split(emb[perm], labels[perm], ids=ids[perm], cfg=cfg).block
    ref.pop("index"), got.pop("index")
    assert json.dumps(got, sort_keys=True, default=str) == json.dumps(ref, sort_keys=True, default=str)


def test_report_degenerate_and_numerics() -> None:
    for name in ("embedding health", "normalisation", "permutations"):
        _report(name)

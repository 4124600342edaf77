"""eval-embeddings and the evaluation engine on broken, degenerate and adversarially ordered input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ExitCode
from ofgr_core.config import EvalConfig
from ofgr_core.retrieval.evaluate import run_split

runner = CliRunner()


def _world(n_classes: int = 8, per_class: int = 6, distinct: int = 3, seed: int = 0):
    """Embeddings with many exact ties: each class has ``distinct`` vectors, shared with the next class."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((n_classes * distinct, 16)).astype(np.float32)
    fine = np.repeat(np.arange(n_classes), per_class)
    pick = (fine * distinct + rng.integers(0, distinct + 1, len(fine))) % len(protos)  # straddles classes
    return protos[pick], np.stack([fine, fine // 2], 1), np.array([f"item{i:04d}" for i in range(len(fine))])


def _by_id(result) -> dict:  # noqa: ANN001
    """Every per-query value keyed by (level, metric, query id): independent of row order."""
    return {(lv, k, qid): float(x) for lv, per in result.per_query.items() for k, v in per.items()
            for qid, x in zip(result.query_ids.tolist(), v, strict=True)}


@pytest.mark.parametrize("kind", ["duplicates", "constant"])
def test_shuffling_rows_leaves_metrics_unchanged(kind: str) -> None:
    emb, labels, ids = _world()
    if kind == "constant":  # every score ties: only the tie-break decides the ranking
        emb = np.ones_like(emb)
    cfg = EvalConfig(ks=[1, 2, 4], bootstrap=0)
    ref = _by_id(run_split(emb, labels, ids=ids, cfg=cfg))
    rng = np.random.default_rng(1)
    for _ in range(5):
        perm = rng.permutation(len(emb))
        got = _by_id(run_split(emb[perm], labels[perm], ids=ids[perm], cfg=cfg))
        assert got == ref
    if kind == "constant":
        # rows sorted by class used to put same-class items first; a hash order is near chance (1/8 fine)
        mean = lambda m: np.mean([v for (lv, k, _), v in ref.items() if (lv, k) == ("fine", m)])  # noqa: E731
        assert mean("recall@1") < 0.35 and mean("map@r") < 0.3


def test_ties_at_the_cut_are_resolved_over_the_whole_tie_group() -> None:
    """Twenty identical gallery vectors tie at rank 1: which one is first depends only on the id hash."""
    from ofgr_core.retrieval.index import exact_searcher
    from ofgr_core.retrieval.ties import id_hash_keys, search_tiebroken

    gallery = np.tile(np.eye(4, dtype=np.float32)[:1], (20, 1))
    ids = np.array([f"g{i}" for i in range(20)])
    keys = id_hash_keys(ids)
    for perm in (np.arange(20), np.arange(20)[::-1], np.random.default_rng(0).permutation(20)):
        s = exact_searcher(np.ascontiguousarray(gallery[perm]), ids=np.arange(20), device="cpu")
        top = search_tiebroken(s.search_chunk, gallery[:1], 3, keys[perm], 20)
        assert list(ids[perm][top[0]]) == list(ids[np.argsort(keys)[:3]])


def _files(tmp_path: Path, emb: np.ndarray, rows: list[str], enc: str = "utf-8") -> tuple[str, str]:
    np.save(tmp_path / "e.npy", emb)
    (tmp_path / "l.csv").write_bytes(("\n".join(rows) + "\n").encode(enc))
    return str(tmp_path / "e.npy"), str(tmp_path / "l.csv")


def _rows(n: int, fine=lambda i: f"f{i % 6}") -> list[str]:  # noqa: ANN001
    return ["id,fine,coarse"] + [f"i{i},{fine(i)},c{i % 2}" for i in range(n)]


def _invoke(args: list[str]) -> tuple[int, str]:
    r = runner.invoke(app, ["eval-embeddings", *args])
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, " ".join(r.output.split())


def _emb(n: int = 48) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)


@pytest.mark.parametrize("bad", ["nan", "inf", "zero"])
def test_invalid_vectors_refused_or_dropped_and_counted(tmp_path: Path, bad: str) -> None:
    emb = _emb()
    emb[7] = {"nan": np.nan, "inf": np.inf, "zero": 0.0}[bad]
    e, lab = _files(tmp_path, emb, _rows(48))
    code, out = _invoke([e, lab])
    assert code == ExitCode.DATA and "row 7" in out and "--drop-invalid" in out
    code, out = _invoke([e, lab, "--drop-invalid", "--json", "--bootstrap", "0"])
    assert code == 0
    doc = json.loads(out[out.index("{"):])
    assert doc["all"]["n_dropped_invalid"] == 1 and doc["all"]["n_queries"] == 47


def test_zero_width_embeddings_refused(tmp_path: Path) -> None:
    e, lab = _files(tmp_path, np.zeros((48, 0), np.float32), _rows(48))
    code, out = _invoke([e, lab])
    assert code == ExitCode.DATA and "(48, 0)" in out


def test_degenerate_label_sets(tmp_path: Path) -> None:
    e, lab = _files(tmp_path, _emb(), _rows(48, fine=lambda i: "same"))
    code, out = _invoke([e, lab, "--bootstrap", "0"])
    assert code == 0 and "single fine class" in out
    e, lab = _files(tmp_path, _emb(), _rows(48, fine=lambda i: f"u{i}"))
    code, out = _invoke([e, lab])
    assert code == ExitCode.DATA and "single item" in out and "nothing to score" in out


@pytest.mark.parametrize(
    "args,code,text",
    [
        (["--k", "99999999999"], ExitCode.USAGE, "--k"),
        (["--bootstrap", "100000000"], ExitCode.USAGE, "--bootstrap"),
        (["--index", "ivf_pq"], ExitCode.DATA, "--index ivf_pq"),
        (["--k", "500", "--bootstrap", "0"], 0, "exceeds"),
    ],
)
def test_out_of_range_options(tmp_path: Path, args: list[str], code: int, text: str) -> None:
    e, lab = _files(tmp_path, np.random.default_rng(0).standard_normal((48, 16)).astype(np.float32), _rows(48))
    got, out = _invoke([e, lab, *args])
    assert got == code and text in out, out


@pytest.mark.parametrize("enc,ok", [("utf-8-sig", True), ("utf-16", True), ("latin-1", False)])
def test_label_csv_encodings(tmp_path: Path, enc: str, ok: bool) -> None:
    e, lab = _files(tmp_path, _emb(), _rows(48, fine=lambda i: f"café{i % 6}"), enc=enc)
    code, out = _invoke([e, lab, "--bootstrap", "0"])
    if ok:
        assert code == 0, out
    else:
        assert code == ExitCode.DATA and "l.csv" in out and "UTF-8" in out


def test_huge_csv_field_is_one_line(tmp_path: Path) -> None:
    rows = _rows(48)
    rows[3] = "i2," + "x" * 200_000 + ",c0"
    e, lab = _files(tmp_path, _emb(), rows)
    code, out = _invoke([e, lab])
    assert code == ExitCode.DATA and "l.csv" in out

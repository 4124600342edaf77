"""``ofgr eval-embeddings`` and ``ofgr index build`` through the real Typer app."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ofgr_core.cli import app
from ofgr_core.common.errors import ExitCode

runner = CliRunner()


DEFAULT_HEADER = ("id", "fine", "coarse", "split", "domain")


def write_data(tmp: Path, n: int = 240, *, header=DEFAULT_HEADER) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16))
    fine = rng.integers(0, 12, size=n)
    x = (centres[fine] + 0.7 * rng.normal(size=(n, 16))).astype(np.float32)
    np.save(tmp / "emb.npy", x)
    with open(tmp / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(n):
            row = {
                "id": f"img{i:04d}", "fine": f"model_{fine[i]}", "coarse": f"make_{fine[i] // 3}",
                "split": "seen" if fine[i] < 6 else "unseen", "domain": "web" if i % 2 else "phone",
                "group": f"g{i // 2}",
            }
            w.writerow([row[h] for h in header])
    return tmp / "emb.npy", tmp / "labels.csv"


def test_json_output_is_one_document_with_the_metrics_schema(tmp_path: Path) -> None:
    emb, labels = write_data(tmp_path)
    res = runner.invoke(app, ["eval-embeddings", str(emb), str(labels), "--k", "1,5,10", "--json",
                              "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert list(doc) == ["unseen", "seen"]
    for block in doc.values():
        for key in ("n_queries", "n_gallery", "n_skipped_queries", "fine", "coarse", "ci95",
                    "right_coarse_wrong_fine@1", "per_class", "per_domain", "index"):
            assert key in block, key
        assert list(block["fine"]) == ["recall@1", "recall@5", "recall@10", "map@r", "r_precision", "map"]
        assert block["ci95"]["coarse"]["recall@1"][0] <= block["coarse"]["recall@1"]
        assert block["index"] == {**block["index"], "type": "flat", "device": "cpu"}
        assert set(block["per_domain"]) == {"web", "phone"}
        assert all(name.startswith("model_") for name in block["per_class"])


def test_tables_on_stdout(tmp_path: Path) -> None:
    emb, labels = write_data(tmp_path)
    res = runner.invoke(app, ["eval-embeddings", str(emb), str(labels), "--bootstrap", "20"])
    assert res.exit_code == 0, res.output
    for text in ("unseen", "seen", "recall@1", "map@r", "fine (95% CI)", "coarse (95% CI)"):
        assert text in res.stdout


def test_group_exclusion_and_approximate_index_flags(tmp_path: Path) -> None:
    emb, labels = write_data(tmp_path, header=("id", "fine", "group"))
    res = runner.invoke(app, ["eval-embeddings", str(emb), str(labels), "--json", "--bootstrap", "0",
                              "--exclude-same-group", "--index", "hnsw"])
    assert res.exit_code == 0, res.output
    block = json.loads(res.stdout)["all"]
    assert block["index"]["type"] == "hnsw" and "recall_vs_exact@10" in block["index"]
    assert "coarse" not in block


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda rows: [r[:1] + r[2:] for r in rows], "missing column 'fine'"),
        (lambda rows: rows[:-1], "rows but the embeddings have"),
        (lambda rows: rows[:5] + [rows[5][:1] + [""] + rows[5][2:]] + rows[6:], "line 6: empty 'fine'"),
        (lambda rows: rows[:3] + [[rows[2][0]] + rows[3][1:]] + rows[4:], "duplicate id"),
    ],
)
def test_bad_csv_is_a_one_line_data_error(tmp_path: Path, mutate, message: str) -> None:
    emb, labels = write_data(tmp_path)
    with open(labels, newline="") as f:
        rows = list(csv.reader(f))
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows(mutate(rows))
    res = runner.invoke(app, ["eval-embeddings", str(emb), str(labels), "--json"])
    assert res.exit_code == ExitCode.DATA
    assert res.stdout == ""
    assert message in res.stderr and "labels.csv" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_missing_files_and_group_column(tmp_path: Path) -> None:
    emb, labels = write_data(tmp_path)
    res = runner.invoke(app, ["eval-embeddings", str(tmp_path / "nope.npy"), str(labels)])
    assert res.exit_code == ExitCode.NOT_FOUND and "nope.npy" in res.stderr
    res = runner.invoke(app, ["eval-embeddings", str(emb), str(labels), "--exclude-same-group"])
    assert res.exit_code == ExitCode.DATA and "'group'" in res.stderr
    res = runner.invoke(app, ["eval-embeddings", str(emb), str(labels), "--k", "0,x"])
    assert res.exit_code == ExitCode.USAGE


def test_index_build_persists_into_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "20260101-000000-demo"
    (run / "embeddings").mkdir(parents=True)
    emb, labels = write_data(run / "embeddings")
    emb.rename(run / "embeddings" / "unseen.npy")
    labels.rename(run / "embeddings" / "unseen.csv")
    (run / "config.yaml").write_text("name: demo\neval:\n  index:\n    type: hnsw\n")
    res = runner.invoke(app, ["index", "build", str(run), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["type"] == "hnsw" and info["device"] == "cpu" and info["n"] == 240  # type from config.yaml
    res = runner.invoke(app, ["index", "build", "20260101", "--runs-dir", str(tmp_path / "runs"),
                              "--type", "ivf_flat"])
    assert res.exit_code == 0, res.output
    assert "on cpu" in res.stdout
    from ofgr_core.retrieval.index import load_index

    idx = load_index(run / "index" / "unseen")
    assert idx.type == "ivf_flat" and idx.ntotal == 240
    res = runner.invoke(app, ["index", "build", str(run), "--split", "seen"])
    assert res.exit_code == ExitCode.NOT_FOUND and "available: unseen" in res.stderr


def test_command_module_imports_neither_torch_nor_faiss() -> None:
    code = (
        "import sys, ofgr_core.cli.eval_cmd, ofgr_core.retrieval.evaluate, ofgr_core.retrieval.index;"
        "import ofgr_core.retrieval.metrics;"
        "bad = [m for m in ('torch', 'faiss', 'textual') if m in sys.modules];"
        "print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

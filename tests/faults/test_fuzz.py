"""Property-based fuzzing of every user-facing input: configs, ``--set``, manifests, taxonomy and split files,
label CSVs, embeddings and CLI arguments.

The property is always the same: the input is accepted, or refused with a known one-line error (an
``OfgrError`` / a usage error); never a traceback, never a hang (pytest-timeout bounds each test). Each test
prints how many inputs it tried (``pytest -s`` shows them; docs/reliability.md records a run).
Examples are derandomized so CI runs the same inputs every time.
"""

from __future__ import annotations

import io
import string
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ofgr_core.common.errors import OfgrError
from ofgr_core.config import Config, load_config

FUZZ = settings(
    max_examples=int(__import__("os").environ.get("OFGR_FUZZ_EXAMPLES", "100")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
TRIED: Counter[str] = Counter()

MARKUP = st.sampled_from(["[/red]", "[/x]", "[bold]", "[train]", "\x00", "\ufeff", "é", "\u202e", "../", "*a", "&a",
                          "{", "'", '"', "\\", "\n", "\t", ",", "=", "."])
TEXT = st.one_of(st.text(max_size=20), st.lists(MARKUP, max_size=4).map("".join))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), TEXT,
)
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3),
                      max_leaves=8)


def _paths(model: Any = Config, prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        out.append(prefix + name)
        ann = field.annotation
        for arg in (*getattr(ann, "__args__", ()), ann):
            if isinstance(arg, type) and hasattr(arg, "model_fields"):
                out += _paths(arg, f"{prefix}{name}.")
                break
    return out


KEYS = st.one_of(st.sampled_from(_paths() + ["data.sources.0.type", "data.sources.0.options", "data.sources.1.root"]),
                 TEXT)


def _one_line(e: BaseException) -> None:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg, repr(msg)


def _report(name: str) -> None:
    print(f"\nfuzz {name}: {TRIED[name]} inputs tried", file=sys.stderr)


# ------------------------------------------------------------------------------------------- configs
@FUZZ
@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_config_files(tree: dict[str, Any]) -> None:
    TRIED["config files"] += 1
    nested: dict[str, Any] = {}
    for dotted, value in tree.items():
        node = nested
        parts = str(dotted).split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            node[parts[-1]] = value
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.yaml"
        p.write_text(yaml.safe_dump(nested, allow_unicode=True))
        try:
            cfg = load_config(p)
        except OfgrError as e:
            _one_line(e)
        else:
            assert isinstance(cfg, Config)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_config_raw_bytes(data: bytes) -> None:
    TRIED["config raw bytes"] += 1
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.yaml"
        p.write_bytes(data)
        try:
            load_config(p)
        except OfgrError as e:
            _one_line(e)


@FUZZ
@given(st.lists(st.one_of(st.tuples(KEYS, TEXT).map("=".join), TEXT), min_size=1, max_size=3))
def test_set_overrides(overrides: list[str]) -> None:
    TRIED["--set"] += 1
    try:
        load_config(None, overrides)
    except OfgrError as e:
        _one_line(e)


# ----------------------------------------------------------------------------------- dataset files
CELL = st.one_of(st.sampled_from(["a.jpg", "img/x.png", "../x.jpg", "/etc/passwd", "", "c1", "f1", "seen",
                                  "unseen", "query"]), TEXT)
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"])


def _csv_bytes(header: list[str], rows: list[list[str]], enc: str, delim: str = ",") -> bytes:
    buf = io.StringIO()
    import csv

    w = csv.writer(buf, delimiter=delim)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode(enc, "replace")


HEADER = st.lists(st.sampled_from(["path", "fine", "coarse", "super", "domain", "split", "group", "id", "x"]) | TEXT,
                  max_size=6)


@FUZZ
@given(HEADER, st.lists(st.lists(CELL, max_size=7), max_size=6), ENCODINGS)
def test_manifests(header: list[str], rows: list[list[str]], enc: str) -> None:
    from ofgr_core.data.manifest import read_manifest

    TRIED["manifests"] += 1
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "manifest.csv"
        p.write_bytes(_csv_bytes(header, rows, enc))
        (Path(d) / "a.jpg").write_bytes(b"not really a jpeg")
        for missing in ("error", "skip"):
            try:
                read_manifest(p, missing=missing)
            except OfgrError as e:
                _one_line(e)


@FUZZ
@given(VALUES, st.booleans())
def test_taxonomy_and_split_files(tree: Any, as_text: bool) -> None:
    from ofgr_core.data.splits import _read_class_lists, _read_id_list
    from ofgr_core.data.taxonomy import load_taxonomy

    TRIED["taxonomy/split files"] += 1
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.yaml"
        p.write_text(str(tree) if as_text else yaml.safe_dump(tree, allow_unicode=True))
        for read in (load_taxonomy, _read_class_lists, lambda x: _read_id_list(x, "query_file")):
            try:
                read(str(p))
            except OfgrError as e:
                _one_line(e)


@FUZZ
@given(HEADER, st.lists(st.lists(CELL, max_size=7), max_size=8), ENCODINGS, st.integers(0, 8))
def test_label_csvs(header: list[str], rows: list[list[str]], enc: str, n_rows: int) -> None:
    from ofgr_core.cli.eval_cmd import load_label_csv

    TRIED["label CSVs"] += 1
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "l.csv"
        p.write_bytes(_csv_bytes(header, rows, enc))
        try:
            load_label_csv(p, n_rows)
        except OfgrError as e:
            _one_line(e)


# ------------------------------------------------------------------------------ embeddings + CLI
@pytest.fixture(scope="module")
def cli() -> Any:
    from typer.testing import CliRunner

    from ofgr_core.cli import app

    runner = CliRunner()

    def invoke(args: list[str]) -> Any:
        r = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert "Traceback" not in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, repr(r.exception))
        assert r.exit_code in (0, 2, 3, 4, 5, 6), (args, r.exit_code, r.output)
        return r

    return invoke


EMB_VALUES = st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf, 1e-30, 1e30, 3.0])


@FUZZ
@given(st.integers(0, 12), st.integers(0, 5), st.data(), st.sampled_from(["flat", "ivf_flat", "hnsw", "ivf_pq"]),
       st.sampled_from(["float32", "float64", "float16", "int32"]), st.booleans())
def test_embeddings(cli: Any, n: int, dim: int, data: st.DataObject, index: str, dtype: str, drop: bool) -> None:
    TRIED["embeddings"] += 1
    values = data.draw(st.lists(EMB_VALUES, min_size=n * dim, max_size=n * dim))
    emb = np.asarray(values, dtype=np.float64).reshape(n, dim)
    if dtype == "int32":
        emb = np.nan_to_num(emb, posinf=1, neginf=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        emb = emb.astype(dtype)
    fine = data.draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n))
    split = data.draw(st.lists(st.sampled_from(["unseen", "seen", "[/x]"]), min_size=n, max_size=n))
    with tempfile.TemporaryDirectory() as d:
        np.save(Path(d) / "e.npy", emb)
        rows = "".join(f"i{i},{f},{s}\n" for i, (f, s) in enumerate(zip(fine, split, strict=True)))
        (Path(d) / "l.csv").write_text("id,fine,split\n" + rows)
        args = ["eval-embeddings", f"{d}/e.npy", f"{d}/l.csv", "--index", index, "--bootstrap", "3",
                "--k", data.draw(st.sampled_from(["1", "1,5", "100", "0", "x"]))]
        cli(args + (["--drop-invalid"] if drop else []))


WORDS = st.sampled_from(["runs", "show", "query", "index", "build", "eval-embeddings", "data", "inspect", "latest",
                         "--json", "--id", "--split", "--k", "--runs-dir", "--image", "--type", "--help", "-q",
                         "x", "", "..", "/", "[/x]", "--set", "unseen", "-1", "99999999999"])


@FUZZ
@given(st.lists(st.one_of(WORDS, TEXT.filter(lambda s: "\x00" not in s)), min_size=1, max_size=6))
def test_cli_arguments(cli: Any, finished_run: Path, argv: list[str]) -> None:
    TRIED["CLI arguments"] += 1
    if argv[0] in ("run", "resume", "tui"):  # these start work or exec another program; fuzzed via configs
        argv = ["runs", *argv[1:]]
    argv = [a.replace("RUN", str(finished_run)) for a in argv]
    if "--runs-dir" not in argv:
        argv += ["--runs-dir", str(finished_run.parent)] if argv[0] in ("runs", "show", "query") else []
    cli(argv)


def test_zz_report_counts() -> None:
    """Prints the inputs tried by each fuzz test of this module (run last: names sort after the others)."""
    for name in sorted(TRIED):
        _report(name)
    total = sum(TRIED.values())
    print(f"fuzz total: {total} inputs", file=sys.stderr)
    assert total == 0 or all(v > 0 for v in TRIED.values())


_ = string  # (kept for ad-hoc strategies when extending this module)

"""Hostile-input probe: sends the inputs of issue 21 through the real ``ofgr`` CLI and classifies each outcome.

Run it from the repository root (it is not a pytest module; the regression tests live in ``test_*.py``)::

    PYTHONPATH=$PWD python tests/faults/probe_reliability.py            # every case
    PYTHONPATH=$PWD python tests/faults/probe_reliability.py -k cache   # cases whose id contains "cache"
    PYTHONPATH=$PWD python tests/faults/probe_reliability.py --json out.json

Every command runs in its own process under an address-space limit (``--mem-gib``, default 8), so a run that
tries to allocate the whole machine fails instead of waking the OOM killer. Each outcome is one of:

- ``ok``: refused with one line and a documented exit code other than 1, or succeeded with a correct result;
- ``traceback``: a Python traceback, exit code 1 (a bug), a signal, or an undocumented exit code;
- ``hang``: still running after the case's time limit;
- ``silent-wrong``: exit 0 (or a refusal that should have been a success) with a result the case's judge
  finds wrong: a setting that cannot work accepted, garbage features, a degenerate result not flagged;
- ``wrong-code``: a clear one-line refusal under the exit code reserved for bugs (1);
- ``skipped``: the case needs something this machine lacks (root for a tmpfs full-disk mount).

The summary counts outcomes per class; docs/reliability.md records a run before and after the fixes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
KNOWN_CODES = {0, 2, 3, 4, 5, 6, 7, 8, 9, 130, 143}  # ofgr_core.common.errors.ExitCode, less FAILURE (1)
SYNTH_OPTS = "{seed: 0, num_coarse: 4, fine_per_coarse: 4, images_per_class: 8, image_size: 32}"

Judge = Callable[["Result", Path], tuple[str, str]]


@dataclass
class Result:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("error:")]


@dataclass
class Case:
    id: str
    klass: str  # memory | cache | degenerate | traceback | silent | run-folder | weights | exit-code
    args: list[str] | Callable[[Path], list[str]]
    judge: Judge
    setup: Callable[[Path], None] | None = None
    timeout: float = 180.0
    env: dict[str, str] = field(default_factory=dict)
    needs_root: bool = False
    cleanup: Callable[[Path], None] | None = None


# ----------------------------------------------------------------------------------------------- judges
def refused(*codes: int, text: str | None = None) -> Judge:
    """A one-line refusal with one of ``codes`` (and ``text`` in it); exit 0 is silently wrong."""

    def judge(r: Result, _: Path) -> tuple[str, str]:
        if r.rc == 0:
            return "silent-wrong", "accepted (exit 0)"
        if r.rc not in codes:
            return "silent-wrong", f"exit {r.rc}, expected {sorted(codes)}: {_last(r)}"
        lines = r.error_lines or _usage_lines(r)
        if len(lines) != 1:
            return "silent-wrong", f"exit {r.rc} without a one-line error: {_last(r)}"
        if text is not None and text.lower() not in lines[0].lower():
            return "silent-wrong", f"message does not name {text!r}: {lines[0]}"
        return "ok", lines[0]

    return judge


def refused_or(check: Callable[[Result, Path], str | None], *codes: int, text: tuple[str, ...] = ()) -> Judge:
    """Exit 0 must pass ``check`` (None = fine, else what is wrong); a one-line refusal in ``codes`` is fine
    (when ``text`` is given, only one whose message names one of them)."""

    def judge(r: Result, work: Path) -> tuple[str, str]:
        if r.rc == 0:
            problem = check(r, work)
            return ("ok", "succeeded, result checked") if problem is None else ("silent-wrong", problem)
        if r.rc in codes and len(r.error_lines) == 1:
            if text and not any(t.lower() in r.error_lines[0].lower() for t in text):
                return "silent-wrong", f"refused without naming the cause ({'/'.join(text)}): {r.error_lines[0]}"
            return "ok", r.error_lines[0]
        return "silent-wrong", f"exit {r.rc}: {_last(r)}"

    return judge


def _usage_lines(r: Result) -> list[str]:
    """Typer's usage error (exit 2): its box, joined into the one message it is."""
    if r.rc != 2 or "Invalid value" not in r.stderr and "No such option" not in r.stderr:
        return []
    text = " ".join(ln.strip(" │╭╮╰╯─") for ln in r.stderr.splitlines() if "│" in ln)
    return [" ".join(text.split())]


def _last(r: Result) -> str:
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "(no output)"


def _run_dir(work: Path) -> Path | None:
    runs = [p for p in (work / "runs").iterdir() if p.is_dir()] if (work / "runs").is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def embeddings_distinct(r: Result, work: Path) -> str | None:
    """The unseen embeddings of the case's run are not all (nearly) identical."""
    d = _run_dir(work)
    if d is None or not (d / "embeddings" / "unseen.npy").is_file():
        return "no unseen embeddings written"
    emb = np.load(d / "embeddings" / "unseen.npy")
    spread = float(np.abs(emb - emb[0]).max()) if len(emb) else 0.0
    if spread < 1e-4:
        return f"every unseen embedding is identical (spread {spread:.1e}) and the run finished"
    return None


def same_as(base: Callable[[], Path]) -> Callable[[Result, Path], str | None]:
    """The case's unseen embeddings equal those of the clean run ``base()`` (same config, same seed, CPU)."""

    def check(r: Result, work: Path) -> str | None:
        problem = embeddings_distinct(r, work)
        if problem:
            return problem
        d = _run_dir(work)
        assert d is not None
        got, ref = np.load(d / "embeddings" / "unseen.npy"), np.load(base() / "embeddings" / "unseen.npy")
        if got.shape != ref.shape or not np.allclose(got, ref, atol=1e-4):
            diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
            return f"finished with embeddings that differ from a clean run's (max |diff| {diff:.3g})"
        return None

    return check


def flagged(r: Result, work: Path) -> str | None:
    """A degenerate result finished with ``metrics["warnings"]`` and a loud line on the terminal."""
    d = _run_dir(work)
    if d is None or not (d / "metrics.json").is_file():
        return "no metrics.json"
    metrics = json.loads((d / "metrics.json").read_text())
    if not metrics.get("warnings"):
        return "finished without metrics['warnings']"
    if "degenerate" not in r.output.lower():
        return "metrics has warnings but the terminal output does not say 'degenerate'"
    return None


def finished_ok(r: Result, work: Path) -> str | None:
    return None


# ------------------------------------------------------------------------------------------------ setup
class Probe:
    def __init__(self, root: Path, mem_gib: float) -> None:
        self.root = root
        self.mem = int(mem_gib * (1 << 30))
        self.synth = root / "synth"
        self.base_runs = root / "base-runs"
        self.cache0 = root / "cache0"
        self.fcache0 = root / "fcache0"

    def tiny(self, work: Path, *extra: str) -> list[str]:
        sets = [
            f"data.sources.0.root={self.synth}", f"data.sources.0.options={SYNTH_OPTS}", "data.image_size=32",
            f"data.cache_dir={work / 'cache'}", "model.name=test_resnet", "model.embed_dim=32",
            "sampler.coarse_per_batch=2", "sampler.fine_per_coarse=2", "sampler.k=2", "train.epochs=1",
            "train.log_every=1", "eval.bootstrap=50", *extra,
        ]
        out = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(work / "runs"), "-q"]
        for s in sets:
            out += ["--set", s]
        return out

    def cli(self, args: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> Result:
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "OFGR_DEBUG": "0", "HF_HUB_OFFLINE": "1",
                    "OFGR_CACHE": str(cwd / "ofgr-cache"), "COLUMNS": "200", **(env or {})}
        mem = self.mem

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            os.setsid()

        t0 = time.monotonic()
        code = "import sys; from ofgr_core.cli import app; sys.argv[0] = 'ofgr'; app(prog_name='ofgr')"
        proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", preexec_fn=limits)
        try:
            so, se = proc.communicate(timeout=timeout)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            so, se = proc.communicate()
            rc = None
        return Result(rc, so, se, time.monotonic() - t0)

    def prepare(self) -> None:
        """Synthetic data, one finished tiny run (pixel cache + memo in cache0), one frozen-tower run."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.synth / "manifest.csv").is_file():
            r = self.cli(["data", "synth", str(self.synth), "--num-coarse", "4", "--fine-per-coarse", "4",
                          "--images-per-class", "8", "--size", "32"], cwd=self.root, timeout=300)
            assert r.rc == 0, r.output
        if not (self.base_runs / "base").is_dir():
            work = self.root / "base-work"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            r = self.cli(self.tiny(work), cwd=work, timeout=600)
            assert r.rc == 0, r.output
            self.base_runs.mkdir(exist_ok=True)
            shutil.copytree(_run_dir(work), self.base_runs / "base")
            shutil.copytree(work / "cache", self.cache0)
        if not (self.base_runs / "frozen").is_dir():
            work = self.root / "frozen-work"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            r = self.cli(self.tiny(work, "model.freeze=all", "train.epochs=2"), cwd=work, timeout=600)
            assert r.rc == 0, r.output
            shutil.copytree(_run_dir(work), self.base_runs / "frozen")
            shutil.copytree(work / "ofgr-cache", self.fcache0)

    def copy_run(self, work: Path, which: str = "base", name: str = "r") -> Path:
        (work / "runs").mkdir(exist_ok=True)
        dst = work / "runs" / name
        shutil.copytree(self.base_runs / which, dst)
        return dst


# ------------------------------------------------------------------------------------------------ cases
def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


def _deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def _pickle_payload(target: Path) -> bytes:
    import pickle

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(target), "w"))

    return pickle.dumps({"state_dict": Evil()})


def _captions(work: Path, synth: Path, caption: str) -> Path:
    """A manifest of three copied synthetic images whose first caption is ``caption``."""
    d = work / "caps"
    d.mkdir(parents=True, exist_ok=True)
    imgs = sorted(synth.rglob("*.png"))[:3]
    rows = ["path,caption"]
    for i, p in enumerate(imgs):
        shutil.copy(p, d / f"{i}.png")
        text = caption if i == 0 else f"a car number {i}"
        rows.append(f'{i}.png,"{text}"')
    (d / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return d / "manifest.csv"


def build_cases(p: Probe) -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    tiny = p.tiny

    # -------------------------------------------------------------------------------- memory plan
    def demo_big(work: Path) -> list[str]:
        out = ["run", str(REPO / "configs" / "demo.yaml"), "--runs-dir", str(work / "runs"), "-q",
               "--set", f"data.sources.0.root={p.synth}", "--set", f"data.sources.0.options={SYNTH_OPTS}",
               "--set", f"data.cache_dir={work / 'cache'}", "--set", "data.image_size=2048"]
        return out

    add(Case("memory/image_size_2048", "memory", demo_big, refused(3, text="image_size"), timeout=300))
    add(Case("memory/sampler_k_5000", "memory", lambda w: tiny(w, "sampler.k=5000"),
             refused(3, text="sampler.k"), timeout=300))
    add(Case("memory/batches_per_epoch_1e12", "memory", lambda w: tiny(w, "sampler.batches_per_epoch=1000000000000"),
             refused(3, text="batches_per_epoch"), timeout=90))
    add(Case("memory/eval_batch_huge", "memory", lambda w: tiny(w, "train.eval_batch_size=65536",
                                                                  "data.image_size=512"),
             refused_or(finished_ok, 3), timeout=300))

    # -------------------------------------------------------------------------------- caches
    def pixel_cache(mutate: Callable[[Path], None]) -> Callable[[Path], None]:
        def setup(work: Path) -> None:
            shutil.copytree(p.cache0, work / "cache")
            idx = next((work / "cache").glob("*.idx.npy"))
            mutate(idx)

        return setup

    def idx_wrong_shape(idx: Path) -> None:
        a = np.load(idx)
        np.save(idx, np.zeros((len(a), 2), a.dtype))

    def idx_zero(idx: Path) -> None:
        a = np.load(idx)
        np.save(idx, np.zeros_like(a))

    def idx_short(idx: Path) -> None:
        a = np.load(idx)
        np.save(idx, a[: len(a) // 2])

    def idx_object(idx: Path) -> None:
        np.save(idx, np.array([{"a": 1}, "x"], dtype=object), allow_pickle=True)

    def idx_random(idx: Path) -> None:
        idx.write_bytes(os.urandom(4096))

    def u8_random(idx: Path) -> None:
        u8 = idx.with_name(idx.name.replace(".idx.npy", ".u8"))
        u8.write_bytes(np.full(u8.stat().st_size, 7, np.uint8).tobytes())

    for name, fn in (("idx_wrong_shape", idx_wrong_shape), ("idx_zeros", idx_zero), ("idx_truncated", idx_short),
                     ("idx_object_array", idx_object), ("idx_random_bytes", idx_random),
                     ("pixels_overwritten", u8_random)):
        clean = same_as(lambda: p.base_runs / "base")
        add(Case(f"cache/pixel_{name}", "cache", lambda w: tiny(w), refused_or(clean, 3, 4, text=("cache",)),
                 setup=pixel_cache(fn)))

    def memo(mutate: Callable[[Path], None]) -> Callable[[Path], None]:
        def setup(work: Path) -> None:
            shutil.copytree(p.cache0, work / "cache")
            for f in sorted((work / "cache").glob("image_checks*")):
                mutate(f)

        return setup

    def memo_random(f: Path) -> None:
        n = f.stat().st_size
        f.write_bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())

    def memo_zero_sizes(f: Path) -> None:
        if f.suffix == ".bin":
            raw = bytearray(f.read_bytes())
            # keep keys/stamps, zero everything after them in each 45-byte record (digest, width, height)
            rec = 8 + 8 + 8 + 16 + 4 + 4 + 1
            for i in range(0, len(raw) - rec + 1, rec):
                raw[i + 24 : i + rec] = bytes(rec - 24)
            f.write_bytes(bytes(raw))

    def memo_big_sizes(f: Path) -> None:
        if f.suffix == ".bin":
            raw = bytearray(f.read_bytes())
            rec = 45
            for i in range(0, len(raw) - rec + 1, rec):
                raw[i + 40 : i + 48] = (1 << 20).to_bytes(4, "little") * 2
            f.write_bytes(bytes(raw))

    def memo_text(f: Path) -> None:
        f.write_text("hello\n" * 100)

    for name, fn in (("random", memo_random), ("zeroed_fields", memo_zero_sizes), ("huge_sizes", memo_big_sizes),
                     ("text", memo_text)):
        clean = same_as(lambda: p.base_runs / "base")
        add(Case(f"cache/image_checks_{name}", "cache", lambda w: tiny(w),
                 refused_or(clean, 3, 4, text=("image_checks", "cache")), setup=memo(fn)))

    def feature_cache(mutate: Callable[[Path], None]) -> Callable[[Path], None]:
        def setup(work: Path) -> None:
            shutil.copytree(p.fcache0, work / "ofgr-cache")
            for d in (work / "ofgr-cache" / "features").iterdir():
                mutate(d)

        return setup

    def feat_random(d: Path) -> None:
        f = d / "features.f32"
        f.write_bytes(os.urandom(f.stat().st_size))

    def feat_constant(d: Path) -> None:
        f = d / "features.f32"
        f.write_bytes(np.ones(f.stat().st_size // 4, np.float32).tobytes())

    def feat_hashes_shuffled(d: Path) -> None:
        lines = (d / "hashes.txt").read_text().splitlines()
        (d / "hashes.txt").write_text("\n".join(lines[::-1]) + "\n")

    def feat_hashes_garbage(d: Path) -> None:
        (d / "hashes.txt").write_bytes(b"\xff\xfe garbage\x00\n" * 50)

    def feat_truncated(d: Path) -> None:
        f = d / "features.f32"
        with open(f, "r+b") as fh:
            fh.truncate(f.stat().st_size // 3 + 1)

    def feat_keyjson(d: Path) -> None:
        (d / "key.json").write_text('{"dim": "x"')

    for name, fn in (("features_random", feat_random), ("features_constant", feat_constant),
                     ("hashes_reordered", feat_hashes_shuffled), ("hashes_garbage", feat_hashes_garbage),
                     ("features_truncated", feat_truncated), ("key_json_broken", feat_keyjson)):
        add(Case(f"cache/feature_{name}", "cache",
                 lambda w: tiny(w, "model.freeze=all", "train.epochs=2"),
                 refused_or(same_as(lambda: p.base_runs / "frozen"), 3, 4, text=("cache",)),
                 setup=feature_cache(fn)))

    # -------------------------------------------------------------------------------- degenerate results
    add(Case("degenerate/embed_dim_1", "degenerate", lambda w: tiny(w, "model.embed_dim=1"), refused_or(flagged, 3)))
    add(Case("degenerate/eval_splits_empty", "degenerate", lambda w: tiny(w, "eval.splits=[]"),
             refused(3, text="eval.splits")))
    add(Case("degenerate/clip_random_tower_head", "degenerate",
             lambda w: tiny(w, "model={kind: clip, name: ofgr-tiny-clip, pretrained: null, head: mlp, embed_dim: 16,"
                               " head_width: 32}", "train.epochs=1"),
             refused_or(flagged, 3), timeout=300))

    # -------------------------------------------------------------------------------- tracebacks
    add(Case("traceback/device_mps", "traceback", lambda w: tiny(w, "device=mps"), refused(3, 6, text="mps")))
    add(Case("traceback/device_cuda_absent", "traceback", lambda w: tiny(w, "device=cuda:7"),
             refused_or(finished_ok, 3, 6)))
    add(Case("traceback/name_400_bytes", "traceback", lambda w: [*tiny(w), "--name", "\U0001d400" * 100],
             refused_or(finished_ok, 3)))
    add(Case("traceback/name_set_400_bytes", "traceback", lambda w: tiny(w, "name=" + "\u6f22" * 100),
             refused_or(finished_ok, 3)))
    add(Case("traceback/name_over_100_chars", "traceback", lambda w: [*tiny(w), "--name", "n" * 101],
             refused(2, 3, text="name")))
    add(Case("traceback/ivf_pq_80_rows", "traceback", lambda w: tiny(w, "eval.index.type=ivf_pq"),
             refused(3, 4, text="ivf_pq")))

    def garbage_split(work: Path) -> None:
        _write(work / "split.json", "{not json")

    add(Case("traceback/split_reuse_garbage", "traceback", lambda w: tiny(w, f"split.reuse={w / 'split.json'}"),
             refused(3, 4, text="split.json"), setup=garbage_split))

    def wrong_split(work: Path) -> None:
        _write(work / "split.json", json.dumps({"classes": "x", "indices": [1, 2]}))

    add(Case("traceback/split_reuse_wrong_shape", "traceback", lambda w: tiny(w, f"split.reuse={w / 'split.json'}"),
             refused(3, 4, text="split.json"), setup=wrong_split))
    add(Case("traceback/synth_under_proc", "traceback", ["data", "synth", "/proc/ofgr-probe/x", "--images-per-class",
                                                          "2", "--num-coarse", "1", "--fine-per-coarse", "2"],
             refused(4, 8)))
    add(Case("traceback/hierarchy_per_class_negative", "traceback",
             lambda w: ["data", "hierarchy", str(p.synth), "--out", str(w / "t.yaml"), "--per-class", "-1"],
             refused(2, text="--per-class")))

    def emb_files(work: Path) -> None:
        rng = np.random.default_rng(0)
        emb = rng.normal(size=(40, 8)).astype(np.float32)
        np.save(work / "e.npy", emb)
        np.savez(work / "e.npz", emb=emb)
        _write(work / "l.csv", "id,fine,coarse\n" + "".join(f"i{i},f{i % 5},c{i % 2}\n" for i in range(40)))
        np.save(work / "obj.npy", np.array([[{"a": 1}] * 8] * 40, dtype=object), allow_pickle=True)

    add(Case("traceback/eval_embeddings_npz", "traceback", lambda w: ["eval-embeddings", str(w / "e.npz"),
                                                                      str(w / "l.csv")],
             refused(4, text="e.npz"), setup=emb_files))
    add(Case("traceback/eval_embeddings_object_npy", "traceback", lambda w: ["eval-embeddings", str(w / "obj.npy"),
                                                                             str(w / "l.csv")],
             refused(4, text="obj.npy"), setup=emb_files))
    for seed in ("-1", "1180591620717411303424"):
        add(Case(f"traceback/eval_embeddings_seed_{seed[:6]}", "traceback",
                 lambda w, s=seed: ["eval-embeddings", str(w / "e.npy"), str(w / "l.csv"), "--seed", s],
                 refused(2, text="--seed"), setup=emb_files))
        add(Case(f"silent/synth_seed_{seed[:6]}", "silent",
                 lambda w, s=seed: ["data", "synth", str(w / "s"), "--seed", s, "--images-per-class", "2",
                                    "--num-coarse", "1", "--fine-per-coarse", "2"],
                 refused(2, text="--seed")))
        add(Case(f"silent/hierarchy_seed_{seed[:6]}", "silent",
                 lambda w, s=seed: ["data", "hierarchy", str(p.synth), "--out", str(w / "t.yaml"), "--seed", s],
                 refused(2, text="--seed")))
        add(Case(f"silent/clip_pretrain_seed_{seed[:6]}", "silent",
                 lambda w, s=seed: ["clip", "pretrain", str(_captions(w, p.synth, "a red car")), "--out",
                                    str(w / "o"), "--seed", s, "--epochs", "1", "-q"],
                 refused(2, text="--seed")))

    # -------------------------------------------------------------------------------- silently wrong
    def dup_yaml(work: Path) -> None:
        _write(work / "c.yaml", "train:\n  epochs: 5\nname: a\ntrain:\n  lr: 0.01\n")

    add(Case("silent/duplicate_top_level_key", "silent", lambda w: ["data", "inspect", str(w / "c.yaml"), "--no-check"],
             refused(3, text="train"), setup=dup_yaml))

    def dup_nested(work: Path) -> None:
        _write(work / "c.yaml", "train:\n  epochs: 5\n  epochs: 7\n")

    add(Case("silent/duplicate_nested_key", "silent", lambda w: ["data", "inspect", str(w / "c.yaml"), "--no-check"],
             refused(3, text="epochs"), setup=dup_nested))

    def dup_run_config(work: Path) -> None:
        _write(work / "c.yaml", f"""
data:
  sources: [{{type: synthetic, root: {p.synth}, options: {SYNTH_OPTS}}}]
  image_size: 32
  cache_dir: {work / 'cache'}
model: {{name: test_resnet, embed_dim: 32}}
sampler: {{coarse_per_batch: 2, fine_per_coarse: 2, k: 2}}
train: {{epochs: 1, lr: 0.5}}
eval: {{bootstrap: 0}}
train: {{epochs: 1}}
""")

    add(Case("silent/duplicate_key_run", "silent", lambda w: ["run", str(w / "c.yaml"), "--runs-dir",
                                                              str(w / "runs"), "-q"],
             refused(3, text="train"), setup=dup_run_config))

    def symlink_manifest(work: Path) -> None:
        d = work / "ds"
        d.mkdir()
        outside = work / "outside"
        outside.mkdir()
        imgs = sorted(p.synth.rglob("*.png"))[:12]
        rows = ["path,fine,coarse"]
        for i, img in enumerate(imgs):
            shutil.copy(img, outside / f"{i}.png")
            os.symlink(outside / f"{i}.png", d / f"{i}.png")
            rows.append(f"{i}.png,f{i % 4},c{i % 2}")
        (d / "manifest.csv").write_text("\n".join(rows) + "\n")

    add(Case("silent/manifest_symlink_outside", "silent", lambda w: ["data", "inspect", str(w / "ds")],
             refused(4, text="outside"), setup=symlink_manifest))

    def symlink_dir_manifest(work: Path) -> None:
        d = work / "ds"
        d.mkdir()
        outside = work / "outside"
        outside.mkdir()
        imgs = sorted(p.synth.rglob("*.png"))[:12]
        rows = ["path,fine,coarse"]
        for i, img in enumerate(imgs):
            shutil.copy(img, outside / f"{i}.png")
            rows.append(f"sub/{i}.png,f{i % 4},c{i % 2}")
        os.symlink(outside, d / "sub")
        (d / "manifest.csv").write_text("\n".join(rows) + "\n")

    add(Case("silent/manifest_symlinked_folder_outside", "silent", lambda w: ["data", "inspect", str(w / "ds")],
             refused(4, text="outside"), setup=symlink_dir_manifest))

    names = ["[bold]x[/bold]", "Škoda Octavia", "[red]", "日本車", ":car:"]

    def markup_classes(work: Path) -> None:
        d = work / "ds"
        d.mkdir()
        imgs = sorted(p.synth.rglob("*.png"))[:10]
        rows = ["path,fine,coarse,domain"]
        for i, img in enumerate(imgs):
            shutil.copy(img, d / f"{i}.png")
            rows.append(f'{i}.png,"{names[i % 5] if i < 5 else "f" + str(i % 2)}",c{i % 2},"{names[i % 5]}"')
        (d / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    def literal(r: Result, work: Path) -> str | None:
        missing = [n for n in names if n not in r.stdout]
        return f"names not printed literally: {missing}" if missing else None

    add(Case("silent/inspect_markup_names_text", "silent", lambda w: ["data", "inspect", str(w / "ds")],
             refused_or(literal), setup=markup_classes))
    add(Case("silent/inspect_markup_names_json", "silent", lambda w: ["data", "inspect", str(w / "ds"), "--json"],
             refused_or(literal), setup=markup_classes))

    def emb_scaled(scale: float, dtype: str) -> Callable[[Path], None]:
        def setup(work: Path) -> None:
            rng = np.random.default_rng(1)
            emb = (rng.integers(-64, 64, size=(60, 16)) / 64).astype(dtype)  # |x| <= 1, few mantissa bits
            emb[emb == 0] = 1
            labels = "id,fine,coarse\n" + "".join(f"i{i},f{i % 6},c{i % 2}\n" for i in range(60))
            _write(work / "l.csv", labels)
            np.save(work / "a.npy", emb)
            scaled = emb.copy()
            scaled[3] *= np.asarray(scale, dtype)
            scaled[17] *= np.asarray(scale, dtype)
            np.save(work / "b.npy", scaled)

        return setup

    def same_metrics(r: Result, work: Path) -> str | None:
        base = _eval_json(p, work, "a.npy")
        got = json.loads(r.stdout)
        diff = _diff_metrics(base, got)
        return f"{len(diff)} metrics differ: {diff[:3]}" if diff else None

    for label, scale, dtype in (("2^100_f32", 2.0**100, "float32"), ("2^-140_f32", 2.0**-140, "float32"),
                                ("1e38_f32", 1e38, "float32"), ("1e300_f64", 1e300, "float64"),
                                ("1e-300_f64", 1e-300, "float64")):
        add(Case(f"silent/row_scaled_{label}", "silent",
                 lambda w: ["eval-embeddings", str(w / "b.npy"), str(w / "l.csv"), "--json", "--bootstrap", "0"],
                 refused_or(same_metrics), setup=emb_scaled(scale, dtype)))

    def emb_perm(work: Path) -> None:
        rng = np.random.default_rng(2)
        n = 400
        emb = rng.normal(size=(n, 12)).astype(np.float32)
        labels = [f"i{i},f{i % 37},c{i % 3}\n" for i in range(n)]
        _write(work / "l.csv", "id,fine,coarse\n" + "".join(labels))
        np.save(work / "a.npy", emb)
        perm = rng.permutation(n)
        np.save(work / "b.npy", emb[perm])
        _write(work / "pl.csv", "id,fine,coarse\n" + "".join(labels[i] for i in perm))

    def perm_same(r: Result, work: Path) -> str | None:
        base = _eval_json(p, work, "a.npy")
        got = json.loads(r.stdout)
        diff = _diff_metrics(base, got, exact=True)
        return f"{len(diff)} metrics differ after permuting rows: {diff[:3]}" if diff else None

    add(Case("silent/permutation_last_bit", "silent",
             lambda w: ["eval-embeddings", str(w / "b.npy"), str(w / "pl.csv"), "--json", "--bootstrap", "0"],
             refused_or(perm_same), setup=emb_perm))

    # ------------------------------------------------------------------------------- run folders
    def corrupt(fn: Callable[[Path], None], which: str = "base") -> Callable[[Path], None]:
        def setup(work: Path) -> None:
            fn(p.copy_run(work, which))

        return setup

    def in_run(*cmd: str) -> Callable[[Path], list[str]]:
        return lambda w: [*[c.replace("RUN", str(w / "runs" / "r")) for c in cmd], "--runs-dir", str(w / "runs")]

    metrics_cases = {
        "metrics_wrong_leaves": lambda d: _write(d / "metrics.json", json.dumps(
            {"unseen": {"fine": "high", "ci95": "x"}, "seen": ["a"], "timings": {"a": "b"}, "model": 3,
             "data": "x", "train": []})),
        "metrics_deep": lambda d: _write(d / "metrics.json", _deep_json(100_000)),
        "metrics_nan": lambda d: _write(d / "metrics.json", (d / "metrics.json").read_text().replace(
            '"recall@1": 0', '"recall@1": NaN', 1) if '"recall@1": 0' in (d / "metrics.json").read_text()
            else '{"unseen": {"fine": {"recall@1": NaN}}}'),
        "data_report_wrong_leaves": lambda d: _write(d / "data_report.json", json.dumps(
            {"summary": "x", "split": [1], "unreadable": "y", "warnings": 5, "duplicates": "z"})),
        "data_report_deep": lambda d: _write(d / "data_report.json", _deep_json(100_000)),
    }
    for name, fn in metrics_cases.items():
        add(Case(f"run-folder/show_{name}", "run-folder", in_run("show", "RUN"), refused_or(finished_ok, 4, 5),
                 setup=corrupt(fn)))
        add(Case(f"run-folder/report_{name}", "run-folder",
                 lambda w: ["report", str(w / "runs" / "r"), "-o", str(w / "rep"), "--no-tsne", "--runs-dir",
                            str(w / "runs")],
                 refused_or(finished_ok, 4, 5), setup=corrupt(fn), timeout=240))

    def nan_listed(r: Result, work: Path) -> str | None:
        rows = json.loads(r.stdout)
        bad = [x for x in rows if x["run_id"] == "r" and x["status"] == "finished"]
        return "a run whose metrics.json holds NaN is listed as finished" if bad else None

    add(Case("run-folder/runs_json_nan_metrics", "run-folder", lambda w: ["runs", "--runs-dir", str(w / "runs"),
                                                                          "--json"],
             refused_or(nan_listed), setup=corrupt(lambda d: _write(d / "metrics.json", (d / "metrics.json")
                                                                   .read_text().replace("}", ', "x": NaN}', 1)))))

    events_cases = {
        "events_wrong_types": lambda d: _write(d / "events.jsonl", "\n".join(
            ["[1,2]", '"str"', "3", '{"type": 5, "time": "x"}', '{"type": "run_started", "time": [1]}',
             '{"type": "train_epoch", "epoch": "x", "loss": "y", "val": 3}', "null"]) + "\n"),
        "events_dir": lambda d: ((d / "events.jsonl").unlink(), (d / "events.jsonl").mkdir()),
    }
    for name, fn in events_cases.items():
        add(Case(f"run-folder/show_{name}", "run-folder", in_run("show", "RUN"), refused_or(finished_ok, 4, 5),
                 setup=corrupt(fn)))

    def garbage_csv(d: Path) -> None:
        _write(d / "embeddings" / "unseen.csv", b"\xff\xfe\xfd garbage \x00\x81\n" * 20)

    def object_npy(d: Path) -> None:
        np.save(d / "embeddings" / "unseen.npy", np.array([[{"a": 1}] * 4] * 3, dtype=object), allow_pickle=True)

    def first_id(work: Path) -> str:
        import csv

        with open(p.base_runs / "base" / "embeddings" / "unseen.csv", newline="") as f:
            return next(csv.DictReader(f))["id"]

    for name, fn in (("garbage_csv", garbage_csv), ("object_npy", object_npy)):
        add(Case(f"run-folder/query_{name}", "run-folder",
                 lambda w: ["query", str(w / "runs" / "r"), "--id", first_id(w), "--runs-dir", str(w / "runs")],
                 refused(4, 5), setup=corrupt(fn)))
        add(Case(f"run-folder/suspects_{name}", "run-folder", in_run("data", "suspects", "RUN"), refused(4, 5),
                 setup=corrupt(fn)))

        def two_runs(work: Path, fn: Callable[[Path], None] = fn) -> None:
            fn(p.copy_run(work, "base", "r"))
            p.copy_run(work, "base", "good")

        add(Case(f"run-folder/compare_{name}", "run-folder",  # compare reads metrics and per-query files only
                 lambda w: ["compare", str(w / "runs" / "good"), str(w / "runs" / "r"), "--runs-dir", str(w / "runs")],
                 refused_or(finished_ok, 4, 5), setup=two_runs, timeout=240))

    def per_query_damage(how: str) -> Callable[[Path], None]:
        def setup(work: Path) -> None:
            d = p.copy_run(work, "base", "r")
            p.copy_run(work, "base", "good")
            f = d / "eval" / "per_query_unseen.npz"
            if how == "random":
                f.write_bytes(os.urandom(f.stat().st_size))
            else:
                np.savez(f, ids=np.array([{"a": 1}] * 3, dtype=object), **{"fine_recall@1": np.ones((3, 2))})

        return setup

    for how in ("random", "object"):
        add(Case(f"run-folder/compare_per_query_{how}", "run-folder",
                 lambda w: ["compare", str(w / "runs" / "good"), str(w / "runs" / "r"), "--runs-dir", str(w / "runs")],
                 refused(4, text="per_query_unseen.npz"), setup=per_query_damage(how), timeout=240))

    def index_random(work: Path) -> None:
        d = p.copy_run(work)
        r = p.cli(["index", "build", str(d), "--runs-dir", str(work / "runs")], cwd=work, timeout=120)
        assert r.rc == 0, r.output
        for f in (d / "index").rglob("*"):
            if f.is_file():
                f.write_bytes(os.urandom(max(64, f.stat().st_size)))

    add(Case("run-folder/query_index_random_bytes", "run-folder",
             lambda w: ["query", str(w / "runs" / "r"), "--id", first_id(w), "--runs-dir", str(w / "runs")],
             refused_or(finished_ok, 4), setup=index_random))

    def foreign_ckpt(d: Path) -> None:
        import torch

        for f in (d / "checkpoints").glob("*.pt"):
            torch.save({"weights": {"w": torch.ones(2)}, "epoch": "x"}, f)

    add(Case("run-folder/query_image_foreign_checkpoint", "run-folder",
             lambda w: ["query", str(w / "runs" / "r"), "--image", str(next(iter(sorted(p.synth.rglob("*.png"))))),
                        "--runs-dir", str(w / "runs")],
             refused(4), setup=corrupt(foreign_ckpt)))

    def interrupted(d: Path, extra: Callable[[Path], None]) -> None:
        ev = (d / "events.jsonl").read_text().splitlines()
        ev = [e for e in ev if json.loads(e).get("type") != "run_finished"]
        ev.append(json.dumps({"type": "run_interrupted", "time": time.time(), "reason": "probe"}))
        (d / "events.jsonl").write_text("\n".join(ev) + "\n")
        (d / "metrics.json").unlink()
        extra(d)

    add(Case("run-folder/resume_foreign_checkpoint", "run-folder", in_run("resume", "RUN", "-q"),
             refused(4, text="last.pt"), setup=corrupt(lambda d: interrupted(d, foreign_ckpt))))
    for name, target in (("metrics", "metrics.json"), ("lock", "run.lock"), ("lock_guard", ".run.lock.guard"),
                         ("stop_file", "stop")):
        add(Case(f"run-folder/resume_{name}_is_dir", "run-folder", in_run("resume", "RUN", "-q"),
                 refused_or(finished_ok, 4, 8, 9),
                 setup=corrupt(lambda d, t=target: interrupted(d, lambda d: _folder_in_place(d / t)))))

    def broken_compare(work: Path) -> None:
        """Four runs whose metrics.json is intact but which are broken otherwise (status ``broken``)."""
        p.copy_run(work, "base", "good")
        for i, fn in enumerate((lambda d: _write(d / "events.jsonl", b"\x00\xff garbage\n"),
                                lambda d: _write(d / "config.yaml", "- 1\n- 2\n"),
                                lambda d: _write(d / "run.lock", "{not a lock"),
                                lambda d: _write(d / "metrics.json", json.dumps({"unseen": {"fine": "high"}})))):
            fn(p.copy_run(work, "base", f"bad{i}"))

    def compare_says(r: Result, work: Path) -> str | None:
        return "exit 0 with 4 broken runs of 5"

    add(Case("run-folder/compare_four_broken", "run-folder",
             lambda w: ["compare", *(str(w / "runs" / n) for n in ("good", "bad0", "bad1", "bad2", "bad3")),
                        "--runs-dir", str(w / "runs")],
             refused_or(compare_says, 4, 5), setup=broken_compare, timeout=240))

    # ------------------------------------------------------------------------------- resume conflicts
    def live_run(work: Path, host: str | None = None, stopped: bool = False) -> None:
        import socket

        from ofgr_core.runs.lock import LOCK_FILE, LockInfo, _boot_id, _proc_start, lock_dict

        d = p.copy_run(work)
        ev = (d / "events.jsonl").read_text().splitlines()
        ev = [e for e in ev if json.loads(e).get("type") != "run_finished"]
        (d / "events.jsonl").write_text("\n".join(ev) + "\n")
        (d / "metrics.json").unlink()
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        if stopped:
            os.kill(sleeper.pid, signal.SIGSTOP)
        (work / "sleeper.pid").write_text(str(sleeper.pid))
        info = LockInfo(pid=sleeper.pid, host=host or socket.gethostname(), started=time.time(), command="run",
                        proc_start=_proc_start(sleeper.pid), boot_id=_boot_id())
        _write(d / LOCK_FILE, json.dumps(lock_dict(info)))

    def kill_sleeper(work: Path) -> None:
        pid_file = work / "sleeper.pid"
        if pid_file.is_file():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)

    def conflict(r: Result, work: Path) -> tuple[str, str]:
        if r.rc == 1 and "Traceback" not in r.output:
            return "wrong-code", f"refused with exit 1 (the code of a bug): {_last(r)}"
        return refused(9)(r, work)

    add(Case("exit-code/resume_running", "exit-code", in_run("resume", "RUN", "-q"), conflict, setup=live_run,
             cleanup=kill_sleeper))
    add(Case("exit-code/resume_sigstopped", "exit-code", in_run("resume", "RUN", "-q"), conflict,
             setup=lambda w: live_run(w, stopped=True), cleanup=kill_sleeper))
    add(Case("exit-code/resume_other_host", "exit-code", in_run("resume", "RUN", "-q"), conflict,
             setup=lambda w: live_run(w, host="elsewhere.example"), cleanup=kill_sleeper))

    # ------------------------------------------------------------------------------- weights sources
    def weights(data: bytes | Callable[[Path], None], name: str = "w.pth") -> Callable[[Path], None]:
        def setup(work: Path) -> None:
            if callable(data):
                data(work)
            else:
                _write(work / name, data)

        return setup

    add(Case("weights/timm_pretrained_random_bytes", "weights",
             lambda w: tiny(w, f"model.pretrained={w / 'w.pth'}"), refused(3, 4, 6, text="w.pth"),
             setup=weights(os.urandom(5000))))
    add(Case("weights/timm_pretrained_crafted_pickle", "weights",
             lambda w: tiny(w, f"model.pretrained={w / 'w.pth'}"), refused(3, 4, text="w.pth"),
             setup=lambda w: _write(w / "w.pth", _pickle_payload(w / "PWNED"))))

    def local_dir(safetensors: bytes | None, config: str | None) -> Callable[[Path], None]:
        def setup(work: Path) -> None:
            d = work / "ck"
            d.mkdir()
            if config is not None:
                _write(d / "open_clip_config.json", config)
            if safetensors is not None:
                _write(d / "open_clip_model.safetensors", safetensors)

        return setup

    good_cfg = json.dumps({"model_cfg": {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                                           "patch_size": 8},
                                         "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32,
                                                      "heads": 2, "layers": 1}}, "preprocess_cfg": {}})
    huge_header = (8 + 0).to_bytes(8, "little")  # header claims 8 bytes
    claims = (1 << 40).to_bytes(8, "little") + b"{}"
    clip_ld = ("{kind: clip, name: ofgr-tiny-clip, pretrained: 'local-dir:CK', head: mlp, embed_dim: 16,"
               " head_width: 32}")
    for name, st, cfg in (("empty_safetensors", b"", good_cfg), ("random_safetensors", os.urandom(3000), good_cfg),
                          ("safetensors_claims_2^40", claims, good_cfg), ("safetensors_tiny_header", huge_header,
                                                                          good_cfg),
                          ("config_deep", b"", "[" * 100_000 + "]" * 100_000),
                          ("config_nan", b"", '{"model_cfg": {"embed_dim": NaN}}'),
                          ("config_wrong_types", b"", '{"model_cfg": ["x"], "preprocess_cfg": 3}')):
        add(Case(f"weights/clip_local_dir_{name}", "weights",
                 lambda w: tiny(w, "model=" + clip_ld.replace("CK", str(w / "ck"))),
                 refused(3, 4, 6, text="model.pretrained"), setup=local_dir(st, cfg), timeout=240))

    # ------------------------------------------------------------------------------- captions, clip pretrain
    add(Case("silent/clip_pretrain_nul_caption", "silent",
             lambda w: ["clip", "pretrain", str(_captions(w, p.synth, "a red\x00car")), "--out", str(w / "o"),
                        "--epochs", "1", "-q"],
             refused(4, text="NUL")))
    add(Case("traceback/clip_pretrain_300kb_caption", "traceback",
             lambda w: ["clip", "pretrain", str(_captions(w, p.synth, "a" * 300_000)), "--out", str(w / "o"),
                        "--epochs", "1", "-q", "--batch-size", "2"],
             refused_or(finished_ok, 4), timeout=240))

    def mount_full(work: Path) -> None:
        (work / "full").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(work / "full")], check=True)
        _write(work / "full" / "filler", b"\0" * 40_000)

    def umount_full(work: Path) -> None:
        subprocess.run(["umount", str(work / "full")], check=False)

    add(Case("exit-code/clip_pretrain_out_full_disk", "exit-code",
             lambda w: ["clip", "pretrain", str(_captions(w, p.synth, "a red car")), "--out", str(w / "full" / "o"),
                        "--epochs", "1", "-q", "--batch-size", "2"],
             refused(8), setup=mount_full, cleanup=umount_full, needs_root=True, timeout=240))
    return cases


def _folder_in_place(path: Path) -> None:
    if path.is_file():
        path.unlink()
    path.mkdir(exist_ok=True)


def _eval_json(p: Probe, work: Path, npy: str) -> dict[str, Any]:
    r = p.cli(["eval-embeddings", str(work / npy), str(work / "l.csv"), "--json", "--bootstrap", "0"], cwd=work,
              timeout=120)
    assert r.rc == 0, r.output
    return json.loads(r.stdout)


def _diff_metrics(a: Any, b: Any, path: str = "", exact: bool = False) -> list[str]:
    if path.endswith(("index", "seconds", "timings")):
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_metrics(a.get(k), b.get(k), f"{path}.{k}", exact)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _diff_metrics(x, y, f"{path}[{i}]",
                                                                                             exact)]
    if isinstance(a, float) and isinstance(b, float) and not exact:
        return [] if abs(a - b) <= 1e-9 else [f"{path}: {a!r} -> {b!r}"]
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


# ----------------------------------------------------------------------------------------------- runner
def classify(case: Case, r: Result, work: Path) -> tuple[str, str]:
    if r.rc is None:
        return "hang", f"no exit after {case.timeout:.0f} s"
    if "Traceback (most recent call last)" in r.output:
        tail = [ln for ln in r.output.splitlines() if ln.strip()][-1:]
        return "traceback", tail[0][:200] if tail else ""
    if r.rc < 0 or (r.rc not in KNOWN_CODES and r.rc != 1):
        return "traceback", f"exit {r.rc} ({'signal ' + str(-r.rc) if r.rc < 0 else 'undocumented code'})"
    try:
        verdict = case.judge(r, work)
    except Exception as e:  # a judge that cannot read the result: the result is wrong
        verdict = ("silent-wrong", f"judge failed: {type(e).__name__}: {e}")
    if r.rc == 1 and verdict[0] != "wrong-code":
        return "traceback", f"exit 1: {_last(r)}"
    return verdict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only cases whose id contains this")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, kept)")
    ap.add_argument("--json", type=Path, default=None, help="write every outcome here")
    ap.add_argument("--mem-gib", type=float, default=8.0, help="address-space limit per command")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    root = args.work or Path(tempfile.mkdtemp(prefix="ofgr-probe-"))
    probe = Probe(root, args.mem_gib)
    cases = [c for c in build_cases(probe) if args.k in c.id]
    if args.list:
        for c in cases:
            print(f"{c.klass:11} {c.id}")
        return 0
    print(f"probe: {len(cases)} cases in {root}", file=sys.stderr)
    probe.prepare()
    results = []
    counts: Counter[str] = Counter()
    by_class: dict[str, Counter[str]] = {}
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    for case in cases:
        work = root / "cases" / case.id.replace("/", "__")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        if case.needs_root and not is_root:
            outcome, detail, seconds = "skipped", "needs root (tmpfs mount)", 0.0
        else:
            try:
                if case.setup is not None:
                    case.setup(work)
                argv_ = case.args(work) if callable(case.args) else list(case.args)
            except Exception as e:  # the probe's own preparation failed: recorded, never counted as a result
                outcome, detail, seconds = "setup-failed", f"{type(e).__name__}: {str(e)[:150]}", 0.0
            else:
                r = probe.cli(argv_, cwd=work, timeout=case.timeout, env=case.env)
                outcome, detail = classify(case, r, work)
                seconds = r.seconds
            finally:
                if case.cleanup is not None:
                    case.cleanup(work)
        counts[outcome] += 1
        by_class.setdefault(case.klass, Counter())[outcome] += 1
        results.append({"id": case.id, "class": case.klass, "outcome": outcome, "detail": detail,
                        "seconds": round(seconds, 1)})
        print(f"{outcome:12} {case.id:48} {seconds:6.1f}s  {detail[:150]}", flush=True)
    kinds = ("ok", "traceback", "hang", "silent-wrong", "wrong-code", "skipped", "setup-failed")
    print("\nclass        " + "  ".join(f"{k:>12}" for k in kinds))
    for klass, c in sorted(by_class.items()):
        print(f"{klass:12} " + "  ".join(f"{c[k]:>12}" for k in kinds))
    print(f"total: {len(cases)} inputs; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "results": results}, indent=2) + "\n")
    return 0 if counts["ok"] + counts["skipped"] == len(cases) else 1  # setup-failed counts as a failure


if __name__ == "__main__":
    sys.exit(main())

"""Hand-written run folders that follow docs/run-folder.md exactly: finished, failed, interrupted, live.

Fixed run ids, times and data so that TUI snapshots are deterministic.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ofgr_core.runs.folder import RunFolder

T0 = 1_764_238_500.0  # 2025-11-27 10:15:00 UTC
HOST = socket.gethostname()
DEAD_PID = 2**22 + 12345  # above the usual pid_max: never alive


def config(name: str, model: str = "resnet18", epochs: int = 3) -> dict[str, Any]:
    return {
        "name": name,
        "seed": 0,
        "data": {"sources": [{"type": "synthetic", "name": "synthetic", "options": {}}]},
        "split": {"protocol": "random"},
        "model": {"kind": "timm", "name": model, "embed_dim": 64},
        "train": {"epochs": epochs},
    }


def training_events(t0: float, epochs: int, spe: int, *, step_dt: float = 2.0, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    t = t0
    for epoch in range(epochs):
        for step in range(1, spe + 1):
            t += step_dt
            x = epoch + step / spe
            arc = 3.0 * math.exp(-0.6 * x) + 0.05 * float(rng.random())
            trip = 0.4 * math.exp(-0.4 * x) + 0.02 * float(rng.random())
            out.append(
                {
                    "type": "train_step", "time": t, "epoch": epoch + 1, "step": step, "steps_per_epoch": spe,
                    "loss": arc + trip, "losses": {"arcface": arc, "htriplet": trip},
                    "lr": 1e-3 * min(1.0, x) * (0.5 + 0.5 * math.cos(math.pi * x / epochs)),
                    "images_per_s": 850.0 + 10 * step, "gpu_mem_mb": 2048.0,
                }
            )  # fmt: skip
        t += 1.0
        out.append(
            {
                "type": "train_epoch", "time": t, "epoch": epoch + 1, "epochs": epochs, "loss": out[-1]["loss"],
                "losses": out[-1]["losses"], "lr": out[-1]["lr"], "val": {"recall@1": 0.3 + 0.1 * epoch},
                "seconds": spe * step_dt, "best": True,
            }
        )  # fmt: skip
    return out


def metrics(run_id: str, name: str, r1: float, *, model: str = "resnet18") -> dict[str, Any]:
    def block(base: float) -> dict[str, Any]:
        fine = {"recall@1": base, "recall@2": base + 0.08, "recall@4": base + 0.15, "recall@8": base + 0.22,
                "map@r": base * 0.5, "r_precision": base * 0.6, "map": base * 0.55}  # fmt: skip
        coarse = {k: min(1.0, v + 0.3) for k, v in fine.items()}
        ci = {
            lv: {k: [v - 0.02, v + 0.02] for k, v in d.items()}
            for lv, d in (("fine", fine), ("coarse", coarse))
        }
        per_class = {f"class_{i:02d}": {"n": 10, "recall@1": round(base + 0.03 * (i - 4), 3), "map@r": 0.2}
                     for i in range(9)}  # fmt: skip
        return {"n_queries": 120, "n_gallery": 120, "n_skipped_queries": 0, "fine": fine, "coarse": coarse,
                "ci95": ci, "right_coarse_wrong_fine@1": 0.3, "per_class": per_class}  # fmt: skip

    return {
        "schema_version": 1, "run_id": run_id, "name": name,
        "model": {"kind": "timm", "name": model, "embed_dim": 64, "params": 11_200_000},
        "data": {"dataset": "synthetic", "n_images": 240, "n_fine_seen": 12, "n_fine_unseen": 12},
        "train": {"epochs": 3, "best_epoch": 2, "val_recall@1": 0.5, "seconds": 63.0, "images_seen": 7680,
                  "device": "cuda:0"},
        "timings": {"data": 1.2, "split": 0.01, "train": 63.0, "embed": 5.0, "index": 0.1, "evaluate": 0.3},
        "index": {"type": "flat", "device": "cpu"},
        "unseen": block(r1), "seen": block(min(0.95, r1 + 0.2)),
    }  # fmt: skip


def write_embeddings(
    run_dir: Path, n_classes: int = 6, per_class: int = 10, dim: int = 16, seed: int = 0
) -> None:
    rng = np.random.default_rng(seed)
    folder = RunFolder(run_dir)
    folder.embeddings_dir.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(("seen", "unseen")):
        centers = rng.normal(size=(n_classes, dim))
        rows, vecs = [], []
        for c in range(n_classes):
            for j in range(per_class):
                v = centers[c] + 0.3 * rng.normal(size=dim)
                vecs.append(v / np.linalg.norm(v))
                rows.append(f"{split}-{c}-{j},img/{split}/{c}/{j}.png,{split}_fine_{c},coarse_{c % 3}")
        np.save(folder.embeddings_npy(split), np.asarray(vecs, dtype=np.float32))
        folder.embeddings_csv(split).write_text("id,path,fine,coarse\n" + "\n".join(rows) + "\n")
        del s


def write_tsne_cache(run_dir: Path, split: str = "all") -> None:
    """A fixed projection in the cache, so TUI tests and snapshots need no scikit-learn and never vary."""
    from ofgr_core.reports import tsne

    splits = tsne._splits_for(run_dir, split)
    npy = [RunFolder(run_dir).embeddings_npy(s) for s in splits]
    n = sum(len(np.load(p)) for p in npy)
    idx = np.arange(n)
    angle = np.linspace(0, 6 * np.pi, n)
    xy = np.stack([angle * np.cos(angle), angle * np.sin(angle)], axis=1).astype(np.float32)
    tsne._save_cache(
        RunFolder(run_dir).cache_dir / f"tsne_{split}_{n}.npz", xy=xy, idx=idx, sig=tsne._signature(npy), seed=0
    )


def write_per_query(run_dir: Path, split: str, r1: float, n: int = 120, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = RunFolder(run_dir)
    folder.eval_dir.mkdir(exist_ok=True)
    hits = (rng.random(n) < r1).astype(np.float64)
    np.savez(
        folder.per_query(split),
        ids=np.array([f"{split}-{i}" for i in range(n)]),
        **{
            "fine_recall@1": hits,
            "fine_map@r": hits * 0.5,
            "coarse_recall@1": np.maximum(hits, rng.random(n) < 0.8),
        },
    )


def _write(run_dir: Path, events: list[dict], cfg: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(run_dir)
    folder.checkpoints.mkdir(exist_ok=True)
    folder.config.write_text(yaml.safe_dump(cfg))
    folder.events.write_text("".join(json.dumps(e) + "\n" for e in events))
    os.utime(folder.events, (events[-1]["time"], events[-1]["time"]))


def started(run_id: str, name: str, t: float, pid: int, host: str = "gpu-box-1") -> dict:
    """A fixed host for hand-written past runs (stable snapshots); a live run must use this host (HOST)."""
    return {"type": "run_started", "time": t, "run_id": run_id, "name": name, "pid": pid, "host": host,
            "config_path": "configs/demo.yaml"}  # fmt: skip


def stage(kind: str, name: str, t: float, **kw: Any) -> dict:
    return {"type": f"stage_{kind}", "time": t, "stage": name, **kw}


def finished_run(runs: Path, run_id: str, *, r1: float = 0.5, t0: float = T0, model: str = "resnet18",
                 embeddings: bool = False, per_query: bool = False, seed: int = 0) -> Path:  # fmt: skip
    name = run_id.split("-", 2)[-1]
    d = runs / run_id
    evs = [started(run_id, name, t0, DEAD_PID)]
    t = t0 + 0.5
    for s in ("data", "split"):
        evs += [stage("started", s, t), stage("finished", s, t + 0.5, seconds=0.5)]
        t += 1
    evs.append(stage("started", "train", t))
    tr = training_events(t, 3, 10, seed=seed)
    evs += tr
    t = tr[-1]["time"]
    evs.append(stage("finished", "train", t, seconds=63.0))
    for s in ("embed", "evaluate", "report"):  # the stages of ofgr_core/workflows/pipeline.py
        evs += [stage("started", s, t), stage("finished", s, t + 1, seconds=1.0)]
        t += 1
    evs.append(
        {"type": "eval_result", "time": t, "split": "unseen", "level": "fine", "metrics": {"recall@1": r1}}
    )
    evs.append({"type": "run_finished", "time": t + 1, "seconds": t + 1 - t0, "metrics_path": "metrics.json"})
    _write(d, evs, config(name, model))
    RunFolder(d).metrics.write_text(json.dumps(metrics(run_id, name, r1, model=model), indent=2))
    (d / "split.json").write_text(json.dumps({"seen": ["a"], "unseen": ["b"]}))
    if embeddings:
        write_embeddings(d, seed=seed)
        write_tsne_cache(d)
    if per_query:
        write_per_query(d, "unseen", r1, seed=seed)
    return d


def failed_run(runs: Path, run_id: str, *, t0: float = T0) -> Path:
    name = run_id.split("-", 2)[-1]
    evs = [started(run_id, name, t0, DEAD_PID), stage("started", "data", t0 + 1)]
    evs.append({"type": "log", "time": t0 + 2, "level": "warning", "message": "3 unreadable images skipped"})
    evs.append({"type": "run_failed", "time": t0 + 3, "error": "data: /data/cars: no such folder",
                "traceback": "Traceback..."})  # fmt: skip
    _write(runs / run_id, evs, config(name))
    return runs / run_id


def interrupted_run(runs: Path, run_id: str, *, t0: float = T0, partial_last_line: bool = False) -> Path:
    """Process gone without a terminal event (killed): status derives to stale."""
    name = run_id.split("-", 2)[-1]
    evs = [started(run_id, name, t0, DEAD_PID), stage("started", "train", t0 + 1)]
    evs += training_events(t0 + 1, 1, 10)[:7]
    d = runs / run_id
    _write(d, evs, config(name))
    if partial_last_line:
        with open(RunFolder(d).events, "a") as f:
            f.write('{"type": "train_step", "time": 17642')
        os.utime(RunFolder(d).events, (evs[-1]["time"], evs[-1]["time"]))
    return d


class LiveRun:
    """A 'running' run owned by this test process: a thread appends events (sometimes in two halves)."""

    def __init__(
        self, runs: Path, run_id: str, *, epochs: int = 2, spe: int = 10, interval: float = 0.05
    ) -> None:
        self.dir = runs / run_id
        self.epochs, self.spe, self.interval = epochs, spe, interval
        name = run_id.split("-", 2)[-1]
        now = time.time()
        self.events = [started(run_id, name, now, os.getpid(), HOST), stage("started", "train", now)]
        _write(self.dir, self.events, config(name, epochs=epochs))
        os.utime(RunFolder(self.dir).events)
        self.pending = training_events(now, epochs, spe)
        self._stop = threading.Event()
        self.written = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LiveRun:
        self.thread.start()
        return self

    def _run(self) -> None:
        with open(RunFolder(self.dir).events, "a") as f:
            for ev in self.pending:
                if self._stop.is_set():
                    return
                line = json.dumps({**ev, "time": time.time()}) + "\n"
                half = len(line) // 2
                f.write(line[:half])  # a reader may see this partial line; it must wait for the rest
                f.flush()
                time.sleep(self.interval / 2)
                f.write(line[half:])
                f.flush()
                self.written += 1
                time.sleep(self.interval / 2)
                if self._stopped(f):
                    return
            while not self._stop.is_set():  # "evaluating": still alive, still honours a stop request
                if self._stopped(f):
                    return
                time.sleep(self.interval)

    def _stopped(self, f) -> bool:  # noqa: ANN001
        if (self.dir / "stop").exists():
            f.write(json.dumps({"type": "run_interrupted", "time": time.time(), "reason": "stop"}) + "\n")
            f.flush()
            return True
        return False

    def finish(self) -> None:
        self._stop.set()
        self.thread.join(5)


def clip_run(runs: Path, run_id: str, images: Path, *, t0: float = T0 + 40000) -> Path:
    """A finished run of the tiny built-in CLIP (random weights, frozen tower, no head): it takes text
    queries. Its gallery images are real files, since the raw CLIP space embeds them."""
    from PIL import Image

    d = runs / run_id
    rng = np.random.default_rng(0)
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in range(4):
        for j in range(5):
            p = images / f"{c}_{j}.png"
            Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(p)
            rows.append(f"unseen-{c}-{j},{p},fine_{c},coarse_{c % 2}")
    cfg = {"name": "clip", "model": {"kind": "clip", "name": "ofgr-tiny-clip", "pretrained": None, "head": "none"}}
    evs = [started(run_id, "clip", t0, DEAD_PID)]
    evs.append({"type": "run_finished", "time": t0 + 5, "seconds": 5.0, "metrics_path": "metrics.json"})
    _write(d, evs, cfg)
    folder = RunFolder(d)
    folder.embeddings_dir.mkdir(exist_ok=True)
    folder.embeddings_csv("unseen").write_text("id,path,fine,coarse\n" + "\n".join(rows) + "\n")
    np.save(folder.embeddings_npy("unseen"), rng.normal(size=(len(rows), 32)).astype(np.float32))
    m = metrics(run_id, "clip", 0.3, model="ofgr-tiny-clip")
    m["model"]["kind"] = "clip"
    for split in ("unseen", "seen"):  # zero-shot text -> image, as a CLIP run's metrics.json carries it
        m[split]["text_to_image"] = {
            "fine": {"recall@1": 0.21, "map@r": 0.12}, "coarse": {"recall@1": 0.55, "map@r": 0.4},
            "n_queries": 12, "space_for_free_text": "raw",
        }  # fmt: skip
    folder.metrics.write_text(json.dumps(m))
    # its random-init tower, as the pipeline saves an untrained encoder (a rebuild needs the weights)
    import torch

    from ofgr_core.config import Config
    from ofgr_core.models.factory import create_model
    from ofgr_core.runs.checkpoint import save_checkpoint

    torch.manual_seed(0)
    enc = create_model(Config.model_validate({"model": cfg["model"]}).model)
    save_checkpoint(folder.checkpoint("best"), {"model": enc.trainable_state_dict()})
    return d

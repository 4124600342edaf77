"""Compute accounting of a run, per stage and in total: the ``compute`` block of metrics.json.

``ComputeMeter`` watches the pipeline's own stage events (``StageStarted``/``StageFinished``), so the pipeline
needs no timers of its own: per stage it records wall time, images processed and images/s, the peak resident
set size of the process (sampled by a background thread) and the peak GPU memory torch allocated (reset at
each stage start). ``summary`` adds the run-level figures: total wall time, GPU-hours (wall time x GPUs in
use), trainable and total parameters, a training FLOPs estimate and the device.

Training FLOPs estimate: ``forward FLOPs per image x images seen x (1 + 2 x trainable fraction)``: a forward
pass for every image, and a backward pass (about twice a forward) through the trainable share of the model.
For full fine-tuning this is the usual 3x forward; for a frozen backbone with a small head it is ~1x forward.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ofgr_core.runs.metrics import DATA, MODEL, TRAIN

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int | None:
    """Resident set size of this process now (Linux ``/proc``), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``getrusage``; kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _torch_cuda() -> Any | None:
    torch = sys.modules.get("torch")  # never import torch just to account for it
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.cuda
    except Exception:
        return None
    return None


@dataclass
class StageCompute:
    seconds: float = 0.0
    images: int = 0
    peak_rss_bytes: int = 0
    peak_gpu_bytes: int | None = None

    def as_dict(self, n_gpus: int) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "images": self.images or None,
            "images_per_s": self.images / self.seconds if self.images and self.seconds > 0 else None,
            "peak_rss_mb": self.peak_rss_bytes / 2**20 if self.peak_rss_bytes else None,
            "peak_gpu_mb": None if self.peak_gpu_bytes is None else self.peak_gpu_bytes / 2**20,
            "gpu_hours": self.seconds * n_gpus / 3600 if n_gpus else 0.0,
        }


@dataclass
class ComputeMeter:
    """Turns stage events into per-stage compute figures. Call ``observe`` with every pipeline event."""

    interval: float = 0.1
    stages: dict[str, StageCompute] = field(default_factory=dict)
    _open: dict[str, float] = field(default_factory=dict)
    _peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = field(default_factory=time.perf_counter)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = current_rss_bytes()
            if rss is not None and rss > self._peak:
                self._peak = rss

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._sample, name="ofgr-compute-meter", daemon=True)
            self._thread.start()

    def observe(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "stage_started":
            self._ensure_thread()
            self._open[event.stage] = time.perf_counter()
            self._peak = current_rss_bytes() or 0
            cuda = _torch_cuda()
            if cuda is not None:
                with contextlib.suppress(Exception):
                    cuda.reset_peak_memory_stats()
            st = self.stages.setdefault(event.stage, StageCompute())
            if event.stage in ("embed", "data") and event.total:
                st.images += int(event.total)
        elif kind == "stage_finished" and event.stage in self._open:
            self._open.pop(event.stage)
            st = self.stages.setdefault(event.stage, StageCompute())
            st.seconds += float(event.seconds)
            rss = max(self._peak, current_rss_bytes() or 0)
            st.peak_rss_bytes = max(st.peak_rss_bytes, rss)
            cuda = _torch_cuda()
            if cuda is not None:
                try:
                    gpu = int(cuda.max_memory_allocated())
                    st.peak_gpu_bytes = max(st.peak_gpu_bytes or 0, gpu)
                except Exception:
                    pass

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The ``compute`` block for ``metrics`` (the pipeline's metrics.json, without ``compute``)."""
        model = metrics.get(MODEL) or {}
        train = metrics.get(TRAIN) or {}
        data = metrics.get(DATA) or {}
        device = str(train.get("device") or "cpu")
        world = int(train.get("world_size") or 1)
        n_gpus = world if device.startswith("cuda") else 0
        if "train" in self.stages and train.get("images_seen"):
            self.stages["train"].images = int(train["images_seen"])
        if "data" in self.stages and not self.stages["data"].images and data.get("n_images"):
            self.stages["data"].images = int(data["n_images"])
        stages = {name: st.as_dict(n_gpus) for name, st in self.stages.items()}
        wall = time.perf_counter() - self._t0
        params, trainable = model.get("params"), model.get("trainable_params")
        fwd = train.get("forward_gflops_per_image")
        flops = None
        if fwd and train.get("images_seen") and params:
            frac = (trainable if trainable is not None else params) / params
            flops = float(fwd) * 1e9 * int(train["images_seen"]) * (1 + 2 * frac)
        gpu_peaks = [s["peak_gpu_mb"] for s in stages.values() if s["peak_gpu_mb"] is not None]
        cuda = _torch_cuda()
        gpu_name = None
        if cuda is not None:
            try:
                gpu_name = str(cuda.get_device_name())
            except Exception:
                gpu_name = None
        train_st = stages.get("train", {})
        return {
            "device": device,
            "gpu_name": gpu_name,
            "n_gpus": n_gpus,
            "wall_seconds": wall,
            "fit_seconds": train_st.get("seconds"),
            "gpu_hours": wall * n_gpus / 3600,
            "fit_gpu_hours": (train_st.get("seconds") or 0.0) * n_gpus / 3600,
            "peak_rss_mb": peak_rss_bytes() / 2**20,
            "peak_gpu_mb": max(gpu_peaks) if gpu_peaks else None,
            "params": params,
            "trainable_params": trainable,
            "train_flops": flops,
            "train_flops_method": "forward FLOPs/image x images seen x (1 + 2 x trainable fraction)",
            "train_images_per_s": train_st.get("images_per_s"),
            "stages": stages,
        }

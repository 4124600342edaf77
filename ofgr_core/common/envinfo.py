"""What a run ran on: package versions, device, git commit, command line (written to env.json)."""

from __future__ import annotations

import contextlib
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "ofgr", "torch", "torchvision", "timm", "open_clip_torch", "faiss-cpu", "faiss-gpu",
    "pytorch-metric-learning", "numpy", "scikit-learn", "pillow", "pydantic",
)


def git_commit(cwd: str | Path = ".") -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def collect_env(seed: int, device: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": versions,
        "device": device,
        "seed": seed,
        "git_commit": git_commit(),
        "command": sys.argv,
    }
    try:
        import torch

        env["cuda"] = torch.version.cuda
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["torch_threads"] = torch.get_num_threads()
    except Exception:  # environment info must never fail a run
        pass
    env.update(extra or {})
    return env

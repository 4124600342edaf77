"""Distributed data parallel helpers: the same config runs on CPU, one GPU, or many (``torchrun``)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); no-op otherwise.

    Uses NCCL when every rank has a GPU, gloo otherwise (CPU tests run 2 gloo processes).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    join_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def join_process_group(backend: str) -> None:
    """``dist.init_process_group(backend)`` unless a group exists: the one place ofgr joins a process group.

    ``torch.distributed.nn`` is imported first. Its functions take ``group=group.WORLD`` as a default argument,
    evaluated when the module is imported: imported after the group exists (importing timm does it, through
    torchvision and ``torch._dynamo``), those defaults hold the group past ``destroy_process_group``, so its
    gloo worker threads live into interpreter shutdown, where one freeing the tensors of the last
    ``all_gather_object`` aborts the rank ("terminate called without an active exception", SIGABRT). Imported
    before, the defaults are None (the current group at call time).
    """
    if dist.is_initialized():
        return
    with contextlib.suppress(ImportError):  # (a build without it: nothing binds the group through it either)
        import torch.distributed.nn  # noqa: F401  (see above: before the group exists)
    dist.init_process_group(backend=backend)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. a stop request seen by rank 0)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def cleanup(info: DistInfo) -> None:
    """Leave the process group (every ``ofgr run``/``resume`` under torchrun ends here). The group's worker threads
    end once nothing else holds it (see :func:`join_process_group`); a group left to interpreter shutdown can
    abort the rank (pytorch/pytorch#179291)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

def resolve_device(pref: str, dist_info: DistInfo | None = None) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            from ofgr_core.common.errors import ConfigError

            raise ConfigError(f"device={pref!r} but no CUDA GPU is visible; use --set device=cpu or auto")
        if dist_info is not None and dist_info.enabled:
            return torch.device(f"cuda:{dist_info.local_rank}")
        index = int(pref.split(":", 1)[1]) if ":" in pref else 0
        if index >= torch.cuda.device_count():
            from ofgr_core.common.errors import ConfigError

            raise ConfigError(f"device={pref!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); use --set device=cuda or auto")
    if pref == "mps" and not (torch.backends.mps.is_built() and torch.backends.mps.is_available()):
        from ofgr_core.common.errors import ConfigError

        why = "has no MPS support" if not torch.backends.mps.is_built() else "sees no MPS device"
        raise ConfigError(f"device='mps' but this PyTorch build {why} (Apple GPUs only); use --set device=cpu "
                          "or auto")
    return torch.device(pref)

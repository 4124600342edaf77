"""Query sharding for evaluation under ``torchrun``: each rank searches its share of the queries.

The evaluation loop walks the queries in fixed chunks; rank ``r`` of ``W`` takes chunks ``r, r + W, ...``
(interleaved, so ranks get similar work even when query cost drifts along the table), searches them against
the whole gallery, and the per-query metric values are then gathered to every rank. Everything after the
gather (means, bootstrap intervals, per-class breakdowns) runs on the full arrays, so the numbers are those of
one process, to the last digit. Only rank 0 writes files.

torch is imported only when a process group exists: ``ofgr eval-embeddings`` in one process stays torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar, cast

T = TypeVar("T")


@dataclass(frozen=True)
class QueryShard:
    """This process's share of the evaluation queries.

    Attributes:
        rank: this process, ``0 <= rank < world``.
        world: number of processes.
    """

    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, chunk: int) -> bool:
        """Whether chunk number ``chunk`` of the query loop is this rank's."""
        return chunk % self.world == self.rank

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        import torch.distributed as dist

        box: list[T | None] = [None] * self.world
        dist.all_gather_object(box, obj)
        return cast("list[T]", box)  # all_gather_object has filled every slot

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


def current_shard() -> QueryShard | None:
    """The shard of this process when a process group of more than one rank is running, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() <= 1:
        return None
    return QueryShard(dist.get_rank(), dist.get_world_size())


def init_shard_from_env() -> QueryShard | None:
    """Join the process group ``torchrun`` describes (gloo: evaluation gathers small CPU arrays) and return
    this rank's shard; None when not launched with more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from ofgr_core.train.ddp import join_process_group

    join_process_group("gloo")
    return current_shard()


def close_shard(shard: QueryShard | None) -> None:
    """Leave the process group joined by :func:`init_shard_from_env`."""
    if shard is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()

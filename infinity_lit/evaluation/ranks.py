"""Evaluation on several processes (one per device): this process's share of the work, and the
collectives (``torch.distributed``) that put the shares back together.

Launch an evaluation command with torchrun (or SLURM's srun, which sets the same variables)::

    torchrun --nproc_per_node 2 -m infinity_lit.cli eval sample --checkpoint RUN --prompts P.txt --out S
    torchrun --nproc_per_node 2 -m infinity_lit.cli eval score S --reference data/openmoji64

Every process reads ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` from the environment;
``ranks()`` joins the default process group on first use (NCCL when CUDA is there, else gloo) unless the
caller (Lightning, say) already did. Work item i goes to rank i mod W and results are gathered back in
item order, so the images and numbers are those of one process: image i is seeded by its index, never by
its rank, and Inception features are per image. One process (no ``WORLD_SIZE``, or 1) does everything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """The processes of one evaluation.

    Attributes:
        rank: this process, in [0, world_size).
        world_size: number of processes (1: no collectives are used).
        local_rank: this process on its machine (its device index with CUDA).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that writes shared files and prints."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``world_size``-th, starting at ``rank``."""
        return list(items[self.rank :: self.world_size])

    def device(self, device: str) -> str:
        """``"cuda"`` → this rank's GPU (``cuda:<local_rank>``) when several processes share a machine."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.world_size > 1 else device

    def barrier(self) -> None:
        """Wait for every rank (a no-op for one process)."""
        if self.world_size > 1:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def ranks() -> Ranks:
    """The processes of this evaluation: torch.distributed's group when one exists, else the one torchrun's
    environment describes (joined here), else this process alone.

    Raises:
        RuntimeError: ``WORLD_SIZE`` > 1 without the rendezvous variables (``MASTER_ADDR``, ``MASTER_PORT``,
            ``RANK``); launch with torchrun or srun.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), local)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch several evaluation processes with "
            "torchrun (torchrun --nproc_per_node N -m infinity_lit.cli eval ...) or srun"
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return Ranks(dist.get_rank(), dist.get_world_size(), local)


__all__ = ["Ranks", "ranks"]

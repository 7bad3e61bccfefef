"""The run's seed and the method's random streams, reproducible across an interruption.

Every random draw of training belongs to a named stream (the generator's Bitwise Self-Correction flips and
its CFG caption dropout, the tokenizer's scale dropping), and the training order of the data follows the
run's seed too (``data.ShardDataModule``). ``RandomStreams`` gives a module one ``torch.Generator`` per stream
and training batch, seeded from (run seed, stream, rank, batch index): the draws of batch n are the same
whether the run went straight to n or was stopped, checkpointed and resumed in a new process, and they do
not depend on torch's global generator, which Lightning re-seeds when a run resumes. The batch counter and
the seed are saved in the checkpoint (``state_dict``), so a resumed run continues the same streams.

``run_seed()`` is the seed of the run: ``seed_everything`` (LightningCLI's ``--seed_everything``, 0 by
default in this toolkit) records it in the ``PL_GLOBAL_SEED`` environment variable.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

#: The environment variable in which Lightning's ``seed_everything`` records the run's seed.
SEED_ENV = "PL_GLOBAL_SEED"
#: Top-level checkpoint entry holding a module's ``RandomStreams.state_dict()``.
RANDOM_STREAMS = "random_streams"


def run_seed(default: int = 0) -> int:
    """The run's seed (``PL_GLOBAL_SEED``, set by ``seed_everything``), else ``default``."""
    value = os.environ.get(SEED_ENV)
    return int(value) if value not in (None, "") else int(default)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (SHA-256 of their text): the same in every process and on every machine,
    and unrelated for different parts."""
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


class RandomStreams:
    """Named random streams of a module: one ``torch.Generator`` per stream and training batch.

    Call ``next_batch`` once at the start of every training batch, then ``generator(name, device)`` for each
    draw of that batch. The generator of stream ``name`` at batch n on rank r is seeded with
    ``derive_seed(seed, name, r, n)``.

    Args:
        names: the stream names (a name not listed is an error, so a typo cannot open a new stream).

    Attributes:
        seed: the run seed (set by ``start``; kept from the checkpoint on resume).
        batches: training batches begun so far (the index of the current one is ``batches - 1``).
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self.seed: int | None = None
        self.batches = 0
        self.rank = 0
        self._generators: dict[tuple[str, str], torch.Generator] = {}

    def start(self, seed: int, rank: int = 0) -> None:
        """Set the run seed (unless a checkpoint already did) and this process's rank."""
        if self.seed is None:
            self.seed = int(seed)
        self.rank = int(rank)

    def next_batch(self) -> None:
        """Begin a training batch: the next draws come from fresh generators for it."""
        self.batches += 1
        self._generators.clear()

    def generator(self, name: str, device: torch.device | str = "cpu") -> torch.Generator:
        """The generator of stream ``name`` for the current batch, on ``device`` (the same one for every
        call within a batch, so successive draws continue one sequence).

        Raises:
            KeyError: ``name`` is not one of the module's streams.
            RuntimeError: ``start`` or ``next_batch`` was not called.
        """
        if name not in self.names:
            raise KeyError(f"unknown random stream {name!r}; the streams are {', '.join(self.names)}")
        if self.seed is None or self.batches == 0:
            raise RuntimeError("RandomStreams: call start(seed) and next_batch() before drawing")
        device = torch.device(device)
        key = (name, str(device))
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(derive_seed(self.seed, name, self.rank, self.batches - 1))
            self._generators[key] = g
        return self._generators[key]

    def state_dict(self) -> dict[str, int | None]:
        """``{"seed", "batches"}``: all that the streams' future draws depend on, besides the rank."""
        return {"seed": self.seed, "batches": self.batches}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seed = None if state.get("seed") is None else int(state["seed"])
        self.batches = int(state.get("batches", 0))
        self._generators.clear()

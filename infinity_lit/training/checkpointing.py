"""``RunCheckpoint``: Lightning's ``ModelCheckpoint`` with ``last.ckpt`` always the latest state of the run.

Lightning's own callback, given a ``monitor``, refreshes ``last.ckpt`` only when it saves a new best: a run
whose best validation score came early ends with a ``last.ckpt`` of that early step, and everything after
it is saved nowhere (a resume restarts from there, and a downstream stage silently reads old weights).
Here the two jobs are separate:

- ``last.ckpt`` (``save_last``, on by default) is written at every saving point — each validation,
  ``every_n_train_steps``, ``train_time_interval`` — whether or not the score improved, and once more at
  the end of training when the final step was not saved yet (a step-bounded run whose ``max_steps`` is not
  a multiple of the validation interval, or a run stopped by ``max_time``). It is what every downstream
  stage reads (a run folder stands for it, ``infinity_lit.runs``).
- With a ``monitor``, the best checkpoint is a separate, named file: ``best.ckpt`` (``save_top_k`` 1) or
  ``best-step=<n>.ckpt`` (more), unless ``filename`` says otherwise. Without one, no second copy of the
  latest state is kept (``save_top_k`` −1 still keeps a numbered checkpoint at every saving point).

File names are fixed (no ``-v1`` versions: a fit never writes into a run folder holding checkpoints
unless it resumes from one of them, ``runs.check_new_run``), so a run folder that was moved or copied
resumes in place. Writing is Lightning's (``trainer.save_checkpoint``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

#: File name (without ``.ckpt``) of the best checkpoint when one is kept.
BEST = "best"


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest saved step (see the module docstring).

    Takes ``ModelCheckpoint``'s arguments; ``enable_version_counter`` defaults to False here.
    """

    def __init__(self, *args: Any, enable_version_counter: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, enable_version_counter=enable_version_counter, **kwargs)
        if self.monitor is not None and self.filename is None:
            self.filename = BEST if self.save_top_k == 1 else f"{BEST}-{{step}}"
        self._last_written_step: int | None = None

    def _save_topk_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        # Every saving point comes through here: the best (when monitored) first, then last.ckpt.
        if self.monitor is not None or self.save_top_k not in (0, 1):
            super()._save_topk_checkpoint(trainer, monitor_candidates)
        self._save_last_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self._last_written_step == trainer.global_step:
            return  # Lightning's hooks call this again after a saving point: one write per step
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_written_step = trainer.global_step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write ``last.ckpt`` at the final step if no saving point fell on it."""
        if (
            self.save_last
            and not trainer.fast_dev_run
            and trainer.global_step > 0
            and self._last_written_step != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

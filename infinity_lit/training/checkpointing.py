"""``RunCheckpoint``: Lightning's ``ModelCheckpoint`` with ``last.ckpt`` always the latest state of the run.

Lightning's own callback, given a ``monitor``, refreshes ``last.ckpt`` only when it saves a new best: a run
whose best validation score came early ends with a ``last.ckpt`` of that early step, and everything after
it is saved nowhere (a resume restarts from there, and a downstream stage silently reads old weights).
Here the two jobs are separate:

- ``last.ckpt`` (``save_last``, on by default) is written at every saving point — each validation,
  ``every_n_train_steps``, ``train_time_interval`` — whether or not the score improved, at the last step of
  a step-bounded run (right after its optimiser step, so that a resume with a larger ``max_steps`` goes on
  in the same epoch), and at the end of training when the final step was not saved yet (``max_time``). It is what every downstream
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


def _on_last_batch(trainer: Trainer) -> bool:
    """Whether training is at the last batch of an epoch (before the epoch's end hooks)."""
    return bool(getattr(trainer.fit_loop.epoch_loop.batch_progress, "is_last_batch", False))


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest saved step (see the module docstring).

    Takes ``ModelCheckpoint``'s arguments; ``enable_version_counter`` defaults to False here.
    """

    def __init__(self, *args: Any, enable_version_counter: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, enable_version_counter=enable_version_counter, **kwargs)
        if self.monitor is not None and self.filename is None:
            self.filename = BEST if self.save_top_k == 1 else f"{BEST}-{{step}}"
        self._last_written_step: int | None = None
        self._due_at_epoch_end = False
        self._in_epoch_end = False

    def _save_topk_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        # Every saving point comes through here: the best (when monitored) first, then last.ckpt.
        if self.monitor is not None or self.save_top_k not in (0, 1):
            super()._save_topk_checkpoint(trainer, monitor_candidates)
        self._save_last_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self._last_written_step == trainer.global_step:
            return  # Lightning's hooks call this again after a saving point: one write per step
        if not self._in_epoch_end and _on_last_batch(trainer):
            # Written now, the loops would hold a finished epoch that is not counted as finished yet, and a
            # resume would skip the next epoch: written at the epoch's end instead (``on_train_epoch_end``).
            self._due_at_epoch_end = True
            return
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_written_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        # The last step of a step-bounded run is saved here, inside its epoch, as any mid-epoch saving
        # point: a resume goes on in the same epoch, at the next batch (saved at the end of training, the
        # loops would already count the epoch as finished and the resume would start the next one).
        if (
            self.save_last
            and not trainer.fast_dev_run
            and trainer.max_steps is not None
            and 0 < trainer.max_steps <= trainer.global_step
            and self._last_written_step != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._in_epoch_end = True
        try:
            super().on_train_epoch_end(trainer, pl_module)
            if self._due_at_epoch_end and self._last_written_step != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._in_epoch_end = False
            self._due_at_epoch_end = False

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write ``last.ckpt`` at the final step if no saving point fell on it (a run stopped by
        ``max_time``, ``max_epochs`` or a callback)."""
        if (
            self.save_last
            and not trainer.fast_dev_run
            and trainer.global_step > 0
            and self._last_written_step != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

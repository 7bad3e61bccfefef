"""The training progress bar: Lightning's ``RichProgressBar``, counting steps on a step-bounded run.

A run bounded by ``trainer.max_steps`` (``max_epochs`` unset, as every recipe here is) has no last epoch:
Lightning's bar then reads "Epoch 33/-2" (``max_epochs - 1`` with ``max_epochs = -1``) and counts the
batches of the current epoch. ``StepProgressBar`` shows one bar across epochs instead, counting optimiser
steps (``trainer.global_step``, what ``max_steps`` bounds) up to ``max_steps``: "Epoch 33 ━━━━ 1200/3200".
Epoch-bounded runs, validation and testing look exactly as Lightning draws them.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE


def max_steps_bound(trainer: Trainer) -> int | None:
    """``trainer.max_steps`` when it alone bounds training (``max_epochs`` unset or -1), else None."""
    if trainer.max_epochs in (None, -1) and trainer.max_steps is not None and trainer.max_steps > 0:
        return trainer.max_steps
    return None


class StepProgressBar(RichProgressBar):
    """``RichProgressBar`` whose training bar, on a step-bounded run, spans the run: global step / max_steps,
    labelled with the current epoch (no bogus "/-2" epoch total)."""

    @property
    def total_train_batches(self) -> int | float:
        steps = max_steps_bound(self.trainer)
        return super().total_train_batches if steps is None else steps

    def _get_train_description(self, current_epoch: int) -> str:
        if max_steps_bound(self.trainer) is None:
            return super()._get_train_description(current_epoch)
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        steps = max_steps_bound(trainer)
        if steps is None or self.is_disabled or self.progress is None or self.train_progress_bar_id is None:
            super().on_train_epoch_start(trainer, pl_module)
            if steps is not None and self.progress is not None and self.train_progress_bar_id is not None:
                # The first epoch, of a new or a resumed run: start at the current step (a reset also
                # restarts the speed estimate, so a resumed run's earlier steps do not count as fast ones).
                self.progress.reset(
                    self.train_progress_bar_id,
                    total=steps,
                    completed=trainer.global_step,
                    description=self._themed(self._get_train_description(trainer.current_epoch)),
                )
            return
        # Later epochs: the same bar goes on; only its epoch label changes.
        self.progress.update(
            self.train_progress_bar_id,
            description=self._themed(self._get_train_description(trainer.current_epoch)),
        )
        self.refresh()

    def _update(self, progress_bar_id: Any, current: int, visible: bool = True, hard: bool = False) -> None:
        if (
            progress_bar_id is not None
            and progress_bar_id == self.train_progress_bar_id
            and max_steps_bound(self.trainer) is not None
        ):
            current = self.trainer.global_step  # steps of the run, not batches of the epoch
        super()._update(progress_bar_id, current, visible, hard)

    def _themed(self, description: str) -> str:
        """``description`` in the theme's style, as ``RichProgressBar`` adds a task."""
        return f"[{self.theme.description}]{description}" if self.theme.description else description


def step_progress_bar() -> ProgressBar | None:
    """A ``StepProgressBar``, or None without ``rich`` (Lightning then shows its ``TQDMProgressBar``)."""
    return StepProgressBar() if _RICH_AVAILABLE else None

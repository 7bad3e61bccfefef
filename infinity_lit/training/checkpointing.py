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

Stopping. SIGTERM (a cluster's pre-emption, ``kill``) and a first Ctrl+C (SIGINT) stop training at the end
of the batch in flight and write ``last.ckpt`` at that step before the process exits (``save_on_signal``,
on by default; a second Ctrl+C interrupts at once, saving nothing more). Lightning's own SIGTERM handling
ends the loop (``SIGTERMException``); a Ctrl+C is turned into the same stop (unless the process was started
ignoring SIGINT, as ``nohup`` and background jobs are; data loader workers, which inherit the handler, leave
the stop to the training process). ``stopped_by`` says which signal stopped the run. A signal during a
validation stops after its batch in flight; the checkpoint then records that validation as begun but not
done, so the resumed fit runs it again in full before it trains on (Lightning's own resume would skip it,
and that step's validation would be logged nowhere). Against SIGKILL or a crash, ``train_time_interval`` (``--checkpoint.
train_time_interval 0:15:00``) or ``every_n_train_steps`` bound what can be lost to one interval.

Writing. ``AtomicCheckpointIO`` (the trainer's checkpoint IO plugin in every fit of the toolkit) writes a
local checkpoint into a temporary file beside it, ``fsync``s it and renames it over the old one
(``checkpoints.atomic_save``). Lightning's default goes through an fsspec transaction whose temporary file is
in ``$TMPDIR``: where that is another file system (a node-local ``/tmp``, checkpoints on shared storage) the
final move is a copy into the destination, and a kill or a full disk during it leaves a truncated
``last.ckpt``. Remote URLs (``s3://`` …) keep Lightning's writer. A write that fails leaves the previous
file whole and is re-raised as ``CheckpointWriteError`` naming the file.

File names are fixed (no ``-v1`` versions: a fit never writes into a run folder holding checkpoints
unless it resumes from one of them, ``runs.check_new_run``), so a run folder that was moved or copied
resumes in place.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from infinity_lit.checkpoints import atomic_save

#: File name (without ``.ckpt``) of the best checkpoint when one is kept.
BEST = "best"


def _restart_validation(checkpoint: dict[str, Any]) -> None:
    """Mark the validation in flight in ``checkpoint`` as restarting at its first batch.

    Lightning resumes a validation only from a checkpoint written in the middle of one of its batches
    (``_EvaluationLoop.restarted_mid_evaluation``: one batch started, not processed); one written between
    two batches, as a signal's is, reads as a finished validation. The counters are set to "the first batch
    started, none processed": the resumed fit runs the whole validation from its first batch.
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    done = progress["current"]["completed"]  # batches of the interrupted validation
    total = {k: v - done for k, v in progress["total"].items()}
    progress["total"] = {**total, "ready": total["completed"] + 1, "started": total["completed"] + 1}
    progress["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    progress["is_last_batch"] = False


def _on_last_batch(trainer: Trainer) -> bool:
    """Whether training is at the last batch of an epoch (before the epoch's end hooks)."""
    return bool(getattr(trainer.fit_loop.epoch_loop.batch_progress, "is_last_batch", False))


#: The signal that stopped the latest fit of this process (None: none did); what ``stop_signal`` returns.
_STOPPED_BY: signal.Signals | None = None


def stop_signal() -> signal.Signals | None:
    """The signal (``SIGTERM`` / ``SIGINT``) that stopped this process's latest fit, or None."""
    return _STOPPED_BY


#: Lightning's logger of the signal handlers ("Received SIGTERM: 15").
_SIGNAL_LOGGER = "lightning.pytorch.trainer.connectors.signal_connector"


class _DropSigtermLine(logging.Filter):
    """Drops Lightning's next "Received SIGTERM" line (the one a Ctrl+C causes), then removes itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "Received SIGTERM" not in str(record.msg):
            return True
        logging.getLogger(_SIGNAL_LOGGER).removeFilter(self)
        return False


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, a lost mount, no permission); the previous file is intact."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose local writes are atomic on the checkpoint's own file system
    (``checkpoints.atomic_save``: a temporary file beside the target, ``fsync``, ``os.replace``); remote
    URLs are written by Lightning's fsspec writer. Reading is Lightning's."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        protocol = get_filesystem(path).protocol
        local = "file" in ((protocol,) if isinstance(protocol, str) else protocol)
        if storage_options is not None or not local:
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, os.fspath(path))
        return None


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest saved step (see the module docstring).

    Takes ``ModelCheckpoint``'s arguments; ``enable_version_counter`` defaults to False here.

    Args:
        save_on_signal: on SIGTERM or a first Ctrl+C, stop at the end of the batch in flight and write
            ``last.ckpt`` there (default True).
    """

    def __init__(
        self, *args: Any, enable_version_counter: bool = False, save_on_signal: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, enable_version_counter=enable_version_counter, **kwargs)
        self.save_on_signal = save_on_signal
        #: The signal that stopped the last fit (``signal.SIGTERM`` / ``signal.SIGINT``), else None.
        self.stopped_by: signal.Signals | None = None
        self._previous_sigint: Any = None
        self._pid = os.getpid()  # the process whose Ctrl+C stops the fit (not a forked loader worker)
        self._sigint_installed = False
        if self.monitor is not None and self.filename is None:
            self.filename = BEST if self.save_top_k == 1 else f"{BEST}-{{step}}"
        self._last_written_step: int | None = None
        self._due_at_epoch_end = False
        self._in_epoch_end = False
        self._redo_validation = False

    # ------------------------------------------------------------------ stopping on a signal
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Installed here, after Lightning has registered its handlers (its teardown puts back the ones it
        # found then, so the caller's Ctrl+C handler is restored however the fit ends).
        super().on_train_start(trainer, pl_module)
        self.stopped_by = None
        if (
            self.save_on_signal
            and threading.current_thread() is threading.main_thread()
            # A process started to ignore Ctrl+C (``nohup``, a shell's background job) keeps ignoring it.
            and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        ):
            self._pid = os.getpid()
            self._previous_sigint = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._on_sigint)
            self._sigint_installed = True

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        # The first Ctrl+C asks for the same stop as SIGTERM (Lightning's handler ends the loop at the end
        # of the batch, on every rank); the next one is the previous handler's (KeyboardInterrupt).
        if os.getpid() != self._pid:
            # A data loader worker, forked with this handler: a terminal's Ctrl+C reaches the whole process
            # group. The worker goes on serving batches until the trainer stops; it must not stop itself.
            return
        self._restore_sigint()
        if self.stopped_by is None:
            self.stopped_by = signal.SIGINT
        rank_zero_info("Ctrl+C: stopping after this batch and saving last.ckpt (again to stop at once)")
        # Lightning's "Received SIGTERM" line would read as if something else had killed the run.
        logging.getLogger(_SIGNAL_LOGGER).addFilter(_DropSigtermLine())
        os.kill(os.getpid(), signal.SIGTERM)

    def _restore_sigint(self) -> None:
        if self._sigint_installed:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._sigint_installed = False

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_sigint()
        super().teardown(trainer, pl_module, stage)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if not isinstance(exception, SIGTERMException):
            # A crash or a non-finite loss: the last good checkpoint stays last.ckpt.
            return super().on_exception(trainer, pl_module, exception)
        global _STOPPED_BY
        if self.stopped_by is None:
            self.stopped_by = signal.SIGTERM
        _STOPPED_BY = self.stopped_by
        if not self.save_on_signal or trainer.fast_dev_run or trainer.global_step == 0:
            return None
        # Stopped inside the validation of a fit: saved (again, if this step was saved before the validation
        # began) with the validation to be run again on resume.
        in_validation = trainer.validating and trainer.state.fn == TrainerFn.FITTING
        if in_validation:
            # A validation runs with the averaged weights swapped into the module (WeightAveraging, e.g.
            # EMA): the trained ones go back first, as at the validation's end, or they would be saved as
            # the averaged ones and the other way round.
            for callback in trainer.callbacks:
                if isinstance(callback, WeightAveraging):
                    callback.on_validation_epoch_end(trainer, pl_module)
        if self._last_written_step != trainer.global_step or in_validation:
            # The batch in flight has finished (Lightning stops between batches): its state is whole.
            self._in_epoch_end = True  # no deferral to an epoch end that will not come
            self._redo_validation = in_validation
            self._last_written_step = None
            try:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            finally:
                self._in_epoch_end = False
                self._redo_validation = False
        rank_zero_info(
            f"{self.stopped_by.name} at step {trainer.global_step}: saved {self.last_model_path}; "
            "resume with --ckpt_path pointing at it (or its run folder)"
        )
        return None

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._redo_validation:
            _restart_validation(checkpoint)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        try:
            super()._save_checkpoint(trainer, filepath)
        except OSError as err:
            if isinstance(err, CheckpointWriteError):
                raise
            raise CheckpointWriteError(
                err.errno,
                f"could not write checkpoint {filepath} ({err.strerror or err}); the previous checkpoint "
                "there is intact: free space (or fix the folder) and resume from it",
            ) from err

    # ------------------------------------------------------------------ saving points
    def _save_topk_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        # Every saving point comes through here: the best (when monitored) first, then last.ckpt.
        if self.monitor is not None or self.save_top_k not in (0, 1):
            super()._save_topk_checkpoint(trainer, monitor_candidates)
        self._save_last_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self._last_written_step == trainer.global_step:
            return  # Lightning's hooks call this again after a saving point: one write per step
        if not self._in_epoch_end and _on_last_batch(trainer) and not trainer.validating:
            # Written now, the loops would hold a finished epoch that is not counted as finished yet, and a
            # resume would skip the next epoch: written at the epoch's end instead (``on_train_epoch_end``).
            # Not after a validation of the last batch: Lightning resumes that state itself (it finishes the
            # batch and starts the next epoch), while an epoch-end checkpoint of a validation step would
            # resume one step further on the logging axis (its restart skips that validation by running the
            # batch's end once more).
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


class DiscardUnstartedRun(Callback):
    """Removes a run folder that this fit created when the fit fails before its first optimiser step.

    A configuration the module or data module refuses in ``setup`` (a scale schedule that does not fit the
    data, a setting that conflicts with the tokenizer checkpoint, an unreadable data folder) is found only
    after Lightning has made the run folder and written ``config.yaml`` and a TensorBoard event file into
    it; left there, that folder shows in TensorBoard as a run and its ``config.yaml`` as the config of a run
    that never trained. ``RunCLI`` adds this callback only to a ``fit`` whose run folder did not exist when
    the command started, so nothing that was there before is touched; a folder that holds a checkpoint, or
    a fit that stopped after training began, is kept. Ctrl+C and SIGTERM keep the folder too.

    Args:
        folder: the run folder (``runs.logger_run_dir``) of the fit.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if (
            not isinstance(exception, Exception)
            or isinstance(exception, SIGTERMException)
            or trainer.global_step > 0
            or not trainer.is_global_zero
            or not self.folder.is_dir()
            or any(self.folder.rglob("*.ckpt"))
        ):
            return
        shutil.rmtree(self.folder, ignore_errors=True)

"""Callbacks and TensorBoard writers shared by both LightningModules.

``log_hparams_with_metrics`` writes a run's hyper-parameters with its final metrics as one TensorBoard
HParams session; ``HParamsWithFinalMetrics`` calls it at the end of ``fit`` / ``test``, so TensorBoard's
HParams tab lists every run under a parent log folder with its hyper-parameters and final metrics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if str(key).startswith("_"):
            continue  # internal keys, e.g. LightningCLI's "_instantiator", are not hyper-parameters
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            out[name] = "None" if value is None else value
        else:
            # TensorBoard's HParams plugin takes only scalars and strings; lists (a scale schedule) become text.
            out[name] = str(value)
    return out


def numeric_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numeric entries of a (nested) metrics mapping, keys joined with "/"; strings such as
    the CLIP score's "not computed (...)" and non-finite values are left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(numeric_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def log_hparams_with_metrics(
    logger: Any,
    hparams: Mapping[str, Any],
    metrics: Mapping[str, Any],
    step: int | None = None,
    log_scalars: bool = True,
) -> dict[str, float]:
    """Log a run's hyper-parameters together with its final metrics (TensorBoard's HParams tab).

    Writes the metrics as scalars and the hyper-parameters as an HParams *session* (start and end), but
    no HParams *experiment* summary. Without an experiment summary TensorBoard builds the table from
    the sessions it finds: one row per run, one column per hyper-parameter and per scalar tag of the
    runs (its last value), so runs logged at different times, with different metric sets, line up. (An
    experiment summary, which Lightning writes when ``default_hp_metric`` is on, pins the metric columns
    for every run under the log folder to its own list, typically just ``hp_metric``.) Create study
    loggers with ``TensorBoardLogger(..., default_hp_metric=False)``; a logger with it on gets a warning.

    Args:
        logger: a Lightning ``TensorBoardLogger`` (e.g. ``trainer.logger``), or a log folder path, for which
            one is created writing into that folder.
        hparams: nested mapping of hyper-parameters; nested keys are joined with "/", lists become text;
            keys starting with "_" (LightningCLI's ``_instantiator``) are left out.
        metrics: nested mapping of final metrics (e.g. ``{"eval": {"fid": 12.3}}`` → ``eval/fid``);
            non-numeric entries (a "not computed" CLIP score) are skipped.
        step: global step of the metric scalars (default: the logger's convention, 0).
        log_scalars: write the metrics as scalars; False when the run has logged them already (TensorBoard
            reads each column's last value of that tag in the run), so no value appears twice on the axis.

    Returns:
        the numeric metrics that were logged.

    Raises:
        ValueError: no numeric metric to log.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    values = numeric_metrics(metrics)
    if not values:
        raise ValueError(f"no numeric metric to log among {sorted(metrics)}")
    own = isinstance(logger, (str, Path))
    if own:
        logger = TensorBoardLogger(save_dir=str(logger), name="", version="", default_hp_metric=False)
    elif getattr(logger, "_default_hp_metric", False):
        warnings.warn(
            "this TensorBoardLogger has default_hp_metric=True: Lightning's 'hp_metric' HParams experiment "
            "will hide the final metrics in TensorBoard's HParams tab; create it with default_hp_metric=False",
            stacklevel=2,
        )
    flat = _flatten(hparams)
    if log_scalars:
        logger.log_metrics(values, step=step)
    _, session_start, session_end = hparams_summary(flat, values)
    # SummaryWriter exposes no public call for a bare session; Lightning's own log_hyperparams uses this one.
    writer = logger.experiment._get_file_writer()
    writer.add_summary(session_start)
    writer.add_summary(session_end)
    if own:
        logger.finalize("success")
    else:
        logger.experiment.flush()
    return values


class HParamsWithFinalMetrics(Callback):
    """At the end of ``fit`` and ``test``, log the module's hyper-parameters with the final ``val/*`` /
    ``test/*`` metrics as one TensorBoard HParams session (``log_hparams_with_metrics``).

    The metrics are not written again as scalars: Lightning logged them when validation or test ended, at
    the step of that evaluation, and the HParams table reads the last value of each tag.
    """

    def _log(self, trainer: Trainer, pl_module: LightningModule, prefix: str) -> None:
        if not trainer.is_global_zero or not isinstance(trainer.logger, TensorBoardLogger):
            return
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(prefix) and getattr(v, "numel", lambda: 1)() == 1
        }
        if metrics:
            log_hparams_with_metrics(trainer.logger, dict(pl_module.hparams), metrics, log_scalars=False)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "val/")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "test/")


# ------------------------------------------------------------------ exact epoch means over ranks


def epoch_means(names: list[str], stages: tuple[str, ...] = ("val", "test")):
    """One batch-size-weighted running mean per ``<stage>/<name>`` metric, as an ``nn.ModuleDict`` keyed
    ``<stage>_<name>`` (a module name has no "/"); log with ``log_epoch_means``.

    A float ``nan_strategy`` replaces NaN by itself, so a NaN metric stays NaN as in Lightning's own logging;
    "disable" would also drop the weights (torchmetrics 1.9), "warn" / "ignore" drop NaN values.
    """
    from torch import nn
    from torchmetrics.aggregation import MeanMetric

    return nn.ModuleDict(
        {f"{stage}_{n}": MeanMetric(nan_strategy=math.nan) for stage in stages for n in names}
    )


def log_epoch_means(module: LightningModule, means: Any, metrics: Mapping[str, Any], batch_size: int) -> None:
    """Update and log ``metrics`` ({"val/loss": tensor, ...}) through their ``epoch_means`` entries.

    Each metric's epoch value is Σ value·batch_size / Σ batch_size over all batches of all ranks
    (torchmetrics sums both over ranks). Lightning's own reduction (``batch_size=…, sync_dist=True``)
    averages the integer sample counts over the ranks and truncates them: on an uneven split (13 samples on
    2 ranks) it divides by 2·6 instead of 13.
    """
    for name, value in metrics.items():
        mean = means[name.replace("/", "_")]
        mean.update(value, batch_size)
        module.log(name, mean)


#: Checkpoint key of the step ``log_skipped_samples`` last logged at (kept across a resume).
SKIPPED_LOGGED_AT = "skipped_samples_logged_at"


def log_skipped_samples(module: LightningModule) -> None:
    """Log ``data/skipped_samples``: the samples the data module skipped so far (undecodable images, samples
    lost in damaged shards; ``ShardDataModule.skipped_samples``, this rank's count), when it counts them.

    Called at the end of each validation and training epoch, it logs once per step: the last step of a
    step-bounded run ends both, and a run resumed at an epoch's last batch ends that epoch again. The step
    is the module's ``SKIPPED_LOGGED_AT`` attribute; save it with the checkpoint.
    """
    datamodule = getattr(module.trainer, "datamodule", None)
    skipped = getattr(datamodule, "skipped_samples", None)
    step = module.trainer.global_step
    if skipped is not None and getattr(module, SKIPPED_LOGGED_AT, None) != step:
        module.log("data/skipped_samples", float(skipped), rank_zero_only=True)
        setattr(module, SKIPPED_LOGGED_AT, step)


class SkippedSamplesText(Callback):
    """Writes the ``SHARD/KEY`` names of the samples the data loader skipped (undecodable images, samples lost
    in damaged shards; a batch's ``"skipped"`` entry, ``data.datamodule.SKIPPED``) to TensorBoard as text
    (``data/skipped``, at the step where they were met), beside the count ``log_skipped_samples`` logs.
    Names reach it from loader workers too; on rank 0 only those of rank 0's loader."""

    def _write(self, trainer: Trainer, batch: Any) -> None:
        names = batch.get("skipped") if isinstance(batch, Mapping) else None
        if not names or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text("data/skipped", "  \n".join(map(str, names)), trainer.global_step)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._write(trainer, batch)

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, batch)

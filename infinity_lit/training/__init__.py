"""Lightning glue shared by both LightningModules: the LightningCLI set-up, callbacks, the optimiser and
learning-rate schedule, and frozen stages.

lightning_cli   RunCLI, run_cli (one LightningCLI for ``infinity-lit tokenizer`` and ``generator``), training_seconds
callbacks       HParamsWithFinalMetrics, log_hparams_with_metrics, numeric_metrics
progress        StepProgressBar (the training bar: steps / max_steps on a step-bounded run)
checkpointing   RunCheckpoint (``--checkpoint.*``: last.ckpt always the latest state, best.ckpt apart; saves on
                SIGTERM/SIGINT)
finite          NonFiniteGuard, NonFiniteError (``--nonfinite.*``: a NaN/Inf loss or gradient stops or skips)
optim           OptimizerConfig (``model.optimizer``: AdamW + schedule settings of both modules)
schedules       lr_factor, warmup_cosine (the one warm-up + cosine / constant learning-rate factor)
frozen          FrozenStages (frozen sub-modules: eval, no gradients, saved by reference)
"""

from .callbacks import HParamsWithFinalMetrics, log_hparams_with_metrics, numeric_metrics
from .checkpointing import AtomicCheckpointIO, CheckpointWriteError, RunCheckpoint
from .finite import NonFiniteError, NonFiniteGuard
from .frozen import FrozenStages
from .lightning_cli import RunCLI, run_cli, training_seconds
from .optim import OptimizerConfig
from .schedules import lr_factor, warmup_cosine

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointWriteError",
    "FrozenStages",
    "HParamsWithFinalMetrics",
    "NonFiniteError",
    "NonFiniteGuard",
    "OptimizerConfig",
    "RunCLI",
    "RunCheckpoint",
    "log_hparams_with_metrics",
    "lr_factor",
    "numeric_metrics",
    "run_cli",
    "training_seconds",
    "warmup_cosine",
]

"""Lightning glue shared by both LightningModules: the LightningCLI set-up and callbacks.

lightning_cli   RunCLI, run_cli (one LightningCLI for ``infinity-lit tokenizer`` and ``generator``)
callbacks       HParamsWithFinalMetrics, log_hparams_with_metrics, numeric_metrics
"""

from .callbacks import HParamsWithFinalMetrics, log_hparams_with_metrics, numeric_metrics
from .lightning_cli import RunCLI, run_cli

__all__ = ["HParamsWithFinalMetrics", "RunCLI", "log_hparams_with_metrics", "numeric_metrics", "run_cli"]

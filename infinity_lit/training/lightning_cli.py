"""The LightningCLI shared by ``infinity-lit tokenizer`` and ``infinity-lit generator``.

Both are LightningCLI over one LightningModule and any LightningDataModule (``data: class_path: …``),
with an always-on ``ModelCheckpoint`` (``--checkpoint.*``, keeping ``last.ckpt``, written atomically by
Lightning), a TensorBoard logger under ``runs/<model>/<name>/version_<n>/`` by default (no ``hp_metric``
placeholder) and ``HParamsWithFinalMetrics``, so TensorBoard's HParams tab lists every run of a parent
log folder with its hyper-parameters and final metrics; seed 0 by default; attribute docstrings in
``--help`` / ``--print_config``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from jsonargparse import set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .callbacks import HParamsWithFinalMetrics


class RunCLI(LightningCLI):
    """LightningCLI with an always-on ``ModelCheckpoint`` (``--checkpoint.*``) that keeps ``last.ckpt``."""

    #: Subcommands offered (None: all of LightningCLI's).
    allowed_subcommands: tuple[str, ...] | None = None

    @classmethod
    def subcommands(cls) -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        if cls.allowed_subcommands is None:
            return commands
        return {k: v for k, v in commands.items() if k in cls.allowed_subcommands}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})


def run_cli(
    model_class: type[LightningModule],
    argv: list[str] | None,
    runs_dir: str,
    subcommands: Iterable[str] | None = None,
    **kwargs: Any,
) -> LightningCLI:
    """Run LightningCLI for ``model_class`` on ``argv`` (e.g. ``["fit", "--config", "recipe.yaml"]``).

    Args:
        model_class: the LightningModule.
        argv: command-line arguments (default ``sys.argv[2:]`` semantics of LightningCLI).
        runs_dir: default TensorBoard ``save_dir``.
        subcommands: the subcommands offered (default: all).
        **kwargs: further ``LightningCLI`` arguments.

    Returns:
        the CLI object (its ``trainer`` and ``model`` hold the run's state).
    """
    if torch.cuda.is_available():
        # TF32 matmuls on GPUs; CPU fp32 matmuls stay exact fp32.
        torch.set_float32_matmul_precision("high")
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    cli_class = type(
        "RunCLI", (RunCLI,), {"allowed_subcommands": tuple(subcommands) if subcommands is not None else None}
    )
    trainer_defaults = {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": runs_dir, "name": "default", "default_hp_metric": False},
        },
        # LightningCLI adds default callbacks to those of the config.
        "callbacks": [HParamsWithFinalMetrics()],
    }
    return cli_class(
        model_class,
        LightningDataModule,
        subclass_mode_data=True,
        args=argv,
        trainer_defaults=trainer_defaults,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        **kwargs,
    )

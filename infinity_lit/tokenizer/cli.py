"""``infinity-lit tokenizer fit|validate|test``: LightningCLI for ``TokenizerModule`` and any data module.

    infinity-lit tokenizer fit --config experiments/tokenizer/openmoji64.yaml
    infinity-lit tokenizer fit -c experiments/tokenizer/openmoji64.yaml -c my_delta.yaml --trainer.max_steps 100
    infinity-lit tokenizer fit --config experiments/tokenizer/openmoji64.yaml --print_config
    infinity-lit tokenizer test --config CONFIG --ckpt_path runs/tokenizer/<name>/version_<n>/checkpoints/last.ckpt

Runs are written under ``runs/tokenizer/<logger name>/version_<n>/``: TensorBoard events, the resolved
``config.yaml`` and ``checkpoints/`` (``last.ckpt`` always, plus the best by ``checkpoint.monitor`` when
one is set). ``--checkpoint.*`` configures that ``ModelCheckpoint``. The seed defaults to 0.
"""

from __future__ import annotations

from typing import Any

import torch
from jsonargparse import set_parsing_settings
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .module import TokenizerModule

RUNS_DIR = "runs/tokenizer"


class TokenizerCLI(LightningCLI):
    """LightningCLI with an always-on ``ModelCheckpoint`` (``--checkpoint.*``) that keeps ``last.ckpt``."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # The tokenizer has no predict step.
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate", "test")}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})


def _trainer_defaults() -> dict[str, Any]:
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": RUNS_DIR, "name": "default"},
        },
    }


def main(argv: list[str] | None = None) -> TokenizerCLI:
    """Run the tokenizer LightningCLI on ``argv`` (e.g. ``["fit", "--config", "recipe.yaml"]``).

    Returns:
        the ``TokenizerCLI`` (its ``trainer`` and ``model`` hold the run's state).
    """
    # TF32 matmuls on CUDA (Ampere+); on the CPU fp32 stays full fp32 (use trainer.precision bf16-mixed
    # for speed there instead).
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    # --help and --print_config carry the attribute docstrings of TokenizerConfig.
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    return TokenizerCLI(
        TokenizerModule,
        LightningDataModule,
        subclass_mode_data=True,
        args=argv,
        trainer_defaults=_trainer_defaults(),
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()

"""``infinity-lit generator fit|validate|test|predict``: LightningCLI for ``GeneratorModule`` and a data module.

    infinity-lit generator fit --config experiments/generator/openmoji64.yaml
    infinity-lit generator fit -c experiments/generator/openmoji64.yaml -c my_delta.yaml --trainer.max_steps 100
    infinity-lit generator fit --config experiments/generator/openmoji64.yaml --print_config
    infinity-lit generator validate --config CONFIG --ckpt_path runs/generator/<name>/version_<n>/checkpoints/last.ckpt

Runs are written under ``runs/generator/<logger name>/version_<n>/``: TensorBoard events, the resolved
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

from .module import GeneratorModule

RUNS_DIR = "runs/generator"


class GeneratorCLI(LightningCLI):
    """LightningCLI with an always-on ``ModelCheckpoint`` (``--checkpoint.*``) that keeps ``last.ckpt``."""

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


def main(argv: list[str] | None = None) -> GeneratorCLI:
    """Run the generator LightningCLI on ``argv`` (e.g. ``["fit", "--config", "recipe.yaml"]``).

    Returns:
        the ``GeneratorCLI`` (its ``trainer`` and ``model`` hold the run's state).
    """
    if torch.cuda.is_available():
        # TF32 matmuls on GPUs; CPU fp32 matmuls stay exact fp32.
        torch.set_float32_matmul_precision("high")
    # --help and --print_config carry the attribute docstrings of TransformerConfig.
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    return GeneratorCLI(
        GeneratorModule,
        LightningDataModule,
        subclass_mode_data=True,
        args=argv,
        trainer_defaults=_trainer_defaults(),
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()

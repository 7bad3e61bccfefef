"""``infinity-lit tokenizer|generator fit|validate|test …``: LightningCLI for the two models.

    infinity-lit tokenizer fit --config experiments/tokenizer/openmoji64.yaml
    infinity-lit tokenizer fit -c experiments/tokenizer/openmoji64.yaml -c my_delta.yaml --trainer.max_steps 100
    infinity-lit generator fit --config experiments/generator/openmoji64.yaml --print_config
    infinity-lit generator validate --config CONFIG --ckpt_path runs/generator/<name>/checkpoints/last.ckpt

Both run ``infinity_lit.training.run_cli`` over their LightningModule and any data module (``data:
class_path: …``); where runs are written is ``infinity_lit.runs``. Neither offers ``predict``: images are
sampled from a generator checkpoint with ``infinity-lit eval sample``.
"""

from __future__ import annotations

import sys

#: What each model's ``--help`` says first.
DESCRIPTIONS = {
    "tokenizer": "Train, validate or test the bitwise tokenizer (LightningCLI).",
    "generator": "Train, validate or test the bitwise generator (LightningCLI). To sample images from a "
    "trained generator: infinity-lit eval sample --help.",
}
#: The Trainer methods offered as subcommands.
SUBCOMMANDS = ("fit", "validate", "test")


def _run(model: str, module_class: type, argv: list[str] | None):
    from lightning.pytorch.cli import LightningArgumentParser

    from infinity_lit.runs import model_runs_dir
    from infinity_lit.training import run_cli

    from .common import short_errors

    if argv is not None and argv[:1] == ["predict"]:
        print(
            f"error: infinity-lit {model} has no predict; sample images from a generator checkpoint with "
            "`infinity-lit eval sample`\nsee `infinity-lit eval sample --help`",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return run_cli(
        module_class,
        argv,
        str(model_runs_dir(model)),
        subcommands=SUBCOMMANDS,
        prog=f"infinity-lit {model}",
        description=DESCRIPTIONS[model],
        parser_class=short_errors(LightningArgumentParser),
    )


def tokenizer(argv: list[str] | None = None):
    """Run the tokenizer LightningCLI on ``argv`` (e.g. ``["fit", "--config", "recipe.yaml"]``).

    Returns:
        the LightningCLI object (its ``trainer`` and ``model`` hold the run's state).
    """
    from infinity_lit.tokenizer.module import TokenizerModule

    return _run("tokenizer", TokenizerModule, argv)


def generator(argv: list[str] | None = None):
    """Run the generator LightningCLI on ``argv`` (e.g. ``["fit", "--config", "recipe.yaml"]``).

    Returns:
        the LightningCLI object (its ``trainer`` and ``model`` hold the run's state).
    """
    from infinity_lit.generator.module import GeneratorModule

    return _run("generator", GeneratorModule, argv)

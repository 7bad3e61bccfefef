"""``infinity-lit tokenizer|generator fit|validate|test …``: LightningCLI for the two models.

    infinity-lit tokenizer fit --config experiments/tokenizer/openmoji64.yaml
    infinity-lit tokenizer fit -c experiments/tokenizer/openmoji64.yaml -c my_delta.yaml --trainer.max_steps 100
    infinity-lit generator fit --config experiments/generator/openmoji64.yaml --print_config
    infinity-lit generator validate --config CONFIG --ckpt_path runs/generator/<name>/checkpoints/last.ckpt

Both run ``infinity_lit.training.run_cli`` over their LightningModule and any data module (``data:
class_path: …``); where runs are written is ``infinity_lit.runs``. The tokenizer has no predict step.
"""

from __future__ import annotations


def tokenizer(argv: list[str] | None = None):
    """Run the tokenizer LightningCLI on ``argv`` (e.g. ``["fit", "--config", "recipe.yaml"]``).

    Returns:
        the LightningCLI object (its ``trainer`` and ``model`` hold the run's state).
    """
    from infinity_lit.runs import model_runs_dir
    from infinity_lit.tokenizer.module import TokenizerModule
    from infinity_lit.training import run_cli

    return run_cli(
        TokenizerModule,
        argv,
        str(model_runs_dir("tokenizer")),
        subcommands=("fit", "validate", "test"),
    )


def generator(argv: list[str] | None = None):
    """Run the generator LightningCLI on ``argv`` (e.g. ``["fit", "--config", "recipe.yaml"]``).

    Returns:
        the LightningCLI object (its ``trainer`` and ``model`` hold the run's state).
    """
    from infinity_lit.generator.module import GeneratorModule
    from infinity_lit.runs import model_runs_dir
    from infinity_lit.training import run_cli

    return run_cli(GeneratorModule, argv, str(model_runs_dir("generator")))

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

from infinity_lit.lightning_cli import run_cli

from .module import TokenizerModule

RUNS_DIR = "runs/tokenizer"


def main(argv: list[str] | None = None):
    """Run the tokenizer LightningCLI on ``argv`` (e.g. ``["fit", "--config", "recipe.yaml"]``).

    Returns:
        the LightningCLI object (its ``trainer`` and ``model`` hold the run's state).
    """
    return run_cli(
        TokenizerModule,
        argv,
        RUNS_DIR,
        subcommands=("fit", "validate", "test"),  # the tokenizer has no predict step
        auto_configure_optimizers=False,  # manual optimisation: the module owns its optimisers
    )


if __name__ == "__main__":
    main()

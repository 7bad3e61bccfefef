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

from infinity_lit.lightning_cli import run_cli

from .module import GeneratorModule

RUNS_DIR = "runs/generator"


def main(argv: list[str] | None = None):
    """Run the generator LightningCLI on ``argv`` (e.g. ``["fit", "--config", "recipe.yaml"]``).

    Returns:
        the LightningCLI object (its ``trainer`` and ``model`` hold the run's state).
    """
    return run_cli(
        GeneratorModule,
        argv,
        RUNS_DIR,
    )


if __name__ == "__main__":
    main()

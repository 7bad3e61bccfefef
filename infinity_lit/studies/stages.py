"""Resumable stages of a run: fit a model, reconstruct, sample, score, report.

Each stage calls the library (``training.run_cli`` with a LightningModule class, the evaluation suite's
functions); none builds argv for a command-line module. A finished stage leaves a done marker
(``infinity_lit.runs``) in its folder and is skipped when run again; an interrupted fit resumes from its
``last.ckpt``. The quickstart (``studies.quickstart``) is a one-arm study made of these stages.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from infinity_lit import runs

#: The two trainable models, by stage name.
Model = Literal["tokenizer", "generator"]


def log(message: str, prefix: str = "quickstart") -> None:
    """One progress line on stdout, flushed."""
    print(f"[{prefix}] {message}", flush=True)


def _module_class(model: Model):
    if model == "tokenizer":
        from infinity_lit.tokenizer.module import TokenizerModule

        return TokenizerModule, {"auto_configure_optimizers": False}
    if model == "generator":
        from infinity_lit.generator.module import GeneratorModule

        return GeneratorModule, {}
    raise ValueError(f"model must be 'tokenizer' or 'generator', got {model!r}")


def fit(
    model: Model,
    recipe: Path,
    out: Path,
    data_dir: Path,
    resolution: int,
    max_time: str | None = None,
    max_steps: int | None = None,
    overrides: list[str] | None = None,
) -> Path:
    """Fit (or resume) ``model`` with ``recipe`` into ``OUT/<model>/run``; returns its ``last.ckpt``.

    Args:
        model: "tokenizer" or "generator".
        recipe: the LightningCLI YAML recipe.
        out: run folder; the stage writes ``OUT/<model>/``.
        data_dir: shard directory (``data.init_args.data_dir``).
        resolution: image side (``data.init_args.resolution``).
        max_time: time budget "DD:HH:MM:SS" overriding the recipe's.
        max_steps: step budget overriding the recipe's (and lifting its time budget).
        overrides: further LightningCLI arguments (``["--model.x", "1"]``).

    Raises:
        RuntimeError: training ended without writing ``last.ckpt``.
    """
    from infinity_lit.training import run_cli

    module_class, cli_kwargs = _module_class(model)
    stage_dir = out / model
    last = runs.last_checkpoint(stage_dir / runs.STAGE_RUN)
    args = [
        "fit",
        "--config",
        str(recipe),
        "--data.init_args.data_dir",
        str(data_dir),
        "--data.init_args.resolution",
        str(resolution),
        *runs.logger_args(out, model, runs.STAGE_RUN),
        *(overrides or []),
    ]
    if max_time is not None:
        args += ["--trainer.max_time", max_time]
    if max_steps is not None:
        args += ["--trainer.max_steps", str(max_steps), "--trainer.max_time", "null"]
    if last.is_file():
        log(f"{model}: resuming from {last}")
        args += ["--ckpt_path", str(last)]
    start = time.time()
    run_cli(module_class, args, str(runs.model_runs_dir(model)), **cli_kwargs)
    if not last.is_file():
        raise RuntimeError(f"{model} training finished without writing {last}")
    runs.mark_done(
        stage_dir, {"checkpoint": str(last), "seconds": round(time.time() - start, 1), "args": args}
    )
    return last


def fit_once(model: Model, out: Path, **kwargs: Any) -> Path:
    """``fit`` unless ``OUT/<model>`` is already done; returns the checkpoint either way."""
    done = runs.read_done(out / model)
    if done:
        ckpt = Path(done["checkpoint"])
        log(f"{model}: done ({ckpt})")
        return ckpt
    return fit(model, out=out, **kwargs)


def untrained_twin(trained: Path, path: Path, seed: int) -> Path:
    """Write a generator checkpoint with the trained one's hyper-parameters and a fresh initialisation
    (seeded by ``seed``): the FID baseline. Kept if it exists."""
    import torch

    from infinity_lit.generator.checkpoint import load_generator
    from infinity_lit.generator.transformer import BitwiseTransformer

    if path.is_file():
        return path
    loaded = load_generator(trained)
    torch.manual_seed(seed)
    model = BitwiseTransformer(loaded.model.config)
    state = {f"transformer.{k}": v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": state, "hyper_parameters": loaded.hparams}, tmp)
    tmp.replace(path)
    return path


def reconstruction(
    tokenizer: Path, data_dir: Path, out: Path, num_images: int | None, inception_weights: Path | None
) -> dict:
    """The tokenizer's reconstruction record on the held-out split (``evaluation.recon``)."""
    from infinity_lit.evaluation.recon import reconstruction_record

    return reconstruction_record(
        tokenizer=tokenizer,
        data=data_dir,
        out=out,
        max_images=num_images,
        inception_weights=inception_weights,
    )


def sample_and_score(
    checkpoint: Path,
    folder: Path,
    data_dir: Path,
    num_images: int | None,
    cfg: float,
    tau: float,
    seed: int,
    clip_weights: Path | None,
    inception_weights: Path | None,
) -> dict:
    """One sample per held-out caption into ``folder``, scored against the held-out images."""
    from infinity_lit.evaluation.sampling import sample_checkpoint
    from infinity_lit.evaluation.scoring import score_folder

    sample_checkpoint(
        checkpoint=checkpoint,
        out=folder,
        captions_from=data_dir,
        num_images=num_images,
        seed=seed,
        cfg=cfg,
        tau=tau,
    )
    return score_folder(
        generated=folder,
        reference=data_dir,
        max_reference=num_images,
        inception_weights=inception_weights,
        clip_weights=clip_weights,
    )

"""Resumable stages of a run: fit a model, reconstruct, sample, score, report.

Each stage calls the library (``training.run_cli`` with a LightningModule class, the evaluation suite's
functions); none builds argv for a command-line module. A finished stage leaves a done marker
(``infinity_lit.runs``) in its folder and is skipped when run again; an interrupted fit resumes from its
``last.ckpt``. The quickstart (``studies.quickstart``) is a one-arm study made of these stages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from infinity_lit import runs

if TYPE_CHECKING:
    from .spec import DataSettings, EvaluationSettings

#: The two trainable models, by stage name.
Model = Literal["tokenizer", "generator"]


def log(message: str, prefix: str = "quickstart") -> None:
    """One progress line on stdout, flushed."""
    print(f"[{prefix}] {message}", flush=True)


def module_class(model: Model):
    """The LightningModule class of ``model`` ("tokenizer" or "generator")."""
    if model == "tokenizer":
        from infinity_lit.tokenizer.module import TokenizerModule

        return TokenizerModule
    if model == "generator":
        from infinity_lit.generator.module import GeneratorModule

        return GeneratorModule
    raise ValueError(f"model must be 'tokenizer' or 'generator', got {model!r}")


def fit(
    model: Model,
    recipe: Path,
    out: Path,
    data_dir: Path,
    resolution: int,
    configs: Sequence[Path] = (),
    max_time: str | None = None,
    max_steps: int | None = None,
    overrides: list[str] | None = None,
    hparams_session: bool = True,
) -> Path:
    """Fit (or resume) ``model`` with ``recipe`` into ``OUT/<model>/run``; returns its ``last.ckpt``.

    Args:
        model: "tokenizer" or "generator".
        recipe: the LightningCLI YAML recipe.
        configs: further YAML files stacked after the recipe (a study arm's deltas), in order.
        out: run folder; the stage writes ``OUT/<model>/``.
        data_dir: shard directory (``data.init_args.data_dir``).
        resolution: image side (``data.init_args.resolution``).
        max_time: time budget "DD:HH:MM:SS" overriding the recipe's.
        max_steps: step budget overriding the recipe's (and lifting its time budget).
        overrides: further LightningCLI arguments (``["--model.x", "1"]``).
        hparams_session: let the fit log its own TensorBoard HParams session (``--hparams_session``); the
            study runner turns it off and writes one session per (arm, seed) itself.

    The stage's done marker records ``global_step`` and ``seconds``: this attempt's wall-clock plus the
    training time of earlier, interrupted attempts up to the checkpoint it resumed from
    (``earlier_attempts_seconds``, from the checkpoint's Timer state: ``training.training_seconds``; 0 for a
    checkpoint written before fits kept it).

    Raises:
        RuntimeError: training ended without writing ``last.ckpt``.
    """
    from infinity_lit.training import run_cli, training_seconds

    cls = module_class(model)
    stage_dir = out / model
    last = runs.last_checkpoint(stage_dir / runs.STAGE_RUN)
    args = [
        "fit",
        "--config",
        str(recipe),
        *[arg for config in configs for arg in ("--config", str(config))],
        "--data.init_args.data_dir",
        str(data_dir),
        "--data.init_args.resolution",
        str(resolution),
        *runs.logger_args(out, model, runs.STAGE_RUN),
        *(overrides or []),
    ]
    if not hparams_session:
        args += ["--hparams_session", "false"]
    if max_time is not None:
        args += ["--trainer.max_time", max_time]
    if max_steps is not None:
        args += ["--trainer.max_steps", str(max_steps), "--trainer.max_time", "null"]
    resume = last if last.is_file() else _newest_checkpoint(last.parent)
    if resume is not None:
        log(f"{model}: resuming from {resume}")
        args += ["--ckpt_path", str(resume)]
    start = time.time()
    cli = run_cli(cls, args, str(runs.model_runs_dir(model)))
    if not last.is_file():
        raise RuntimeError(f"{model} training finished without writing {last}")
    # An interrupted fit's earlier attempts count too (their training time up to the checkpoint resumed from).
    timed = training_seconds(cli.trainer)
    earlier = timed[1] if timed is not None else 0.0
    record = {
        "checkpoint": str(last),
        "global_step": int(cli.trainer.global_step),
        "seconds": round(time.time() - start + earlier, 1),
        "earlier_attempts_seconds": round(earlier, 1),
        "args": args,
    }
    runs.mark_done(stage_dir, record)
    return last


def _newest_checkpoint(folder: Path) -> Path | None:
    """The latest-step checkpoint in ``folder`` (an interrupted fit may leave one without ``last.ckpt``)."""
    found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []
    return found[-1] if found else None


#: File in a fit stage's folder recording its identity when it starts (``fit_once``).
IDENTITY = "IDENTITY.json"


def content_of(value: str | Path) -> str:
    """What a command-line value stands for in a stage's identity: an existing file by the SHA-256 of its
    bytes, a shard directory by ``data.shards_digest``, anything else as it is. So the identity follows
    contents, not places (a moved folder keeps it; a file replaced under the same name changes it)."""
    from infinity_lit.metrics.inception import file_digest

    path = Path(value)
    if path.is_file():
        return f"sha256:{file_digest(path)}"
    if path.is_dir() and (path / "manifest.json").is_file():
        from infinity_lit.data.shards import shards_digest

        return f"shards-sha256:{shards_digest(path)}"
    return str(value)


def _training_precision(recipe: Path, configs: Sequence[Path], overrides: Sequence[str]) -> str:
    """The ``trainer.precision`` the fit runs in (``precision.training_precision_of`` of the stacked
    configs' trainer settings and ``--trainer.*`` overrides): a recipe that names none trains in this
    machine's fast precision, so the identity must say which."""
    import yaml

    from infinity_lit.precision import training_precision_of

    trainer: dict[str, Any] = {}
    for path in (recipe, *configs):
        loaded = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
        if isinstance(loaded, dict) and isinstance(loaded.get("trainer"), dict):
            trainer.update(loaded["trainer"])
    args = list(overrides)
    for i, arg in enumerate(args):
        for key in ("precision", "accelerator"):
            flag = f"--trainer.{key}"
            if arg == flag and i + 1 < len(args):
                trainer[key] = args[i + 1]
            elif arg.startswith(flag + "="):
                trainer[key] = arg.split("=", 1)[1]
    return training_precision_of(trainer)


def fit_identity(
    model: Model,
    recipe: Path,
    data_dir: Path,
    resolution: int,
    configs: Sequence[Path] = (),
    max_time: str | None = None,
    max_steps: int | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """What a ``fit`` stage computes from, by content (``content_of``): the recipe and stacked configs, the
    data, the resolution, the budgets, the further arguments (an upstream checkpoint by its bytes) and the
    training precision (``_training_precision``)."""
    return {
        "model": model,
        "precision": _training_precision(recipe, configs, overrides or []),
        "configs": [content_of(recipe), *(content_of(c) for c in configs)],
        "data": content_of(data_dir),
        "resolution": int(resolution),
        "max_time": max_time,
        "max_steps": max_steps,
        "overrides": [content_of(arg) for arg in (overrides or [])],
    }


def changed_keys(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two identities (``fit_identity``), sorted."""
    return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))


def fit_once(model: Model, out: Path, **kwargs: Any) -> Path:
    """``fit`` unless ``OUT/<model>`` is already done with the same identity; returns the checkpoint.

    The stage's identity (``fit_identity`` of ``kwargs``) is recorded when it starts and in its done marker.
    A finished or interrupted stage whose identity differs (other data, recipe, budget, upstream
    checkpoint) is never reused: its folder is set aside (``runs.set_aside``: ``OUT/<model>.stale-<n>``,
    nothing deleted) and the stage reruns, saying what changed. An interrupted stage with the same
    identity resumes from its checkpoint.
    """
    stage_dir = out / model
    identity = fit_identity(model, **kwargs)
    done = runs.read_done(stage_dir)
    started = stage_dir / IDENTITY
    recorded = (done or {}).get("identity")
    if recorded is None and started.is_file():
        recorded = json.loads(started.read_text(encoding="utf-8"))
    if recorded is None and done:
        recorded = {}  # finished before identities were recorded: nothing says it matches
    if recorded is not None and recorded != identity:
        aside = runs.set_aside(stage_dir)
        log(
            f"{model}: {', '.join(changed_keys(recorded, identity))} changed; rerunning (earlier run kept in {aside})"
        )
        done = None
    if done:
        ckpt = Path(done["checkpoint"])
        log(f"{model}: done ({ckpt})")
        return ckpt
    runs.atomic_write_text(started, json.dumps(identity, indent=2))
    ckpt = fit(model, out=out, **kwargs)
    record = runs.read_done(stage_dir) or {}
    runs.mark_done(stage_dir, {**record, "identity": identity})
    return ckpt


def untrained_twin(trained: Path, path: Path, seed: int) -> Path:
    """Write a generator checkpoint with the trained one's hyper-parameters and a fresh initialisation
    (seeded by ``seed``): the FID baseline. Kept if it exists."""
    import torch

    from infinity_lit.checkpoints import GENERATOR, write_checkpoint
    from infinity_lit.generator.checkpoint import load_generator
    from infinity_lit.generator.transformer import BitwiseTransformer

    if path.is_file():
        return path
    loaded = load_generator(trained)
    torch.manual_seed(seed)
    model = BitwiseTransformer(loaded.model.config)
    return write_checkpoint(path, loaded.hparams, model.state_dict(), prefix=GENERATOR.prefix)


def reconstruction(
    tokenizer: Path, data_dir: Path, out: Path, num_images: int | None, inception_weights: Path | None
) -> dict:
    """The tokenizer's reconstruction record on the held-out split (``evaluation.recon``): on data with
    aspect-ratio buckets, each bucket at its own size (at most ``num_images`` of each, ``metrics
    ["per_aspect_ratio"]``) and all of them pooled; otherwise at most ``num_images`` images at the
    tokenizer's size."""
    from infinity_lit.evaluation.recon import reconstruction_record

    return reconstruction_record(
        tokenizer=tokenizer,
        data=data_dir,
        out=out,
        max_images=num_images,
        inception_weights=inception_weights,
    )


def prepare_data(folder: Path, data: DataSettings) -> Path:
    """The shards of a study: ``data.dir`` as it is, or OpenMoji built once under ``folder``."""
    if data.dir is not None:
        from infinity_lit.data import read_manifest

        read_manifest(data.dir)  # a clear error when the folder holds no shards
        return Path(data.dir)
    from infinity_lit.data import build_openmoji_shards

    suffix = f"-{data.openmoji_limit}" if data.openmoji_limit is not None else ""
    buckets: dict[str, Any] = {}
    if data.aspect_ratios is not None:
        from infinity_lit.data.shards import bucket_name

        suffix += "-ar" + "_".join(bucket_name(r) for r in data.aspect_ratios) + f"-s{data.stride}"
        buckets = {"aspect_ratios": list(data.aspect_ratios), "stride": data.stride}
    data_dir = folder / f"openmoji{data.resolution}{suffix}"
    log(f"data: OpenMoji shards in {data_dir}", "study")
    build_openmoji_shards(data_dir, data.resolution, limit=data.openmoji_limit, **buckets)
    return data_dir


def write_deltas(folder: Path, deltas: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write config deltas as ``folder/delta_<i>.yaml`` (for ``fit(configs=...)``); returns their paths."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, delta in enumerate(deltas):
        path = folder / f"delta_{i}.yaml"
        runs.atomic_write_text(path, yaml.safe_dump(dict(delta), sort_keys=False))
        paths.append(path)
    return paths


def sample(checkpoint: Path, folder: Path, data_dir: Path, evaluation: EvaluationSettings) -> dict[str, int]:
    """One sample per held-out caption of ``data_dir`` into ``folder`` with the study's settings."""
    from infinity_lit.evaluation.sampling import sample_checkpoint

    return sample_checkpoint(
        checkpoint=checkpoint,
        out=folder,
        captions_from=data_dir,
        split=evaluation.split,
        num_images=evaluation.num_images,
        seed=evaluation.seed,
        cfg=evaluation.cfg,
        tau=evaluation.tau,
        top_p=evaluation.top_p,
    )


def score(samples: Path, folder: Path, data_dir: Path, evaluation: EvaluationSettings) -> dict:
    """FID / KID / CLIP score of a sample folder against the held-out images → ``folder/metrics.json``."""
    from infinity_lit.evaluation.scoring import score_folder

    return score_folder(
        generated=samples,
        reference=data_dir,
        out=folder / "metrics.json",
        split=evaluation.split,
        max_reference=evaluation.num_images,
        inception_weights=evaluation.inception_weights,
        clip_weights=evaluation.clip_weights,
    )


def bucket_folder(bucket: str) -> str:
    """The sub-folder of a sample or score stage that holds aspect-ratio bucket ``bucket``: ``ar<name>``
    ("ar0.5", "ar1", "ar2")."""
    return f"ar{bucket}"


def bucket_prompts(data_dir: Path, split: str, bucket: str, folder: Path) -> Path:
    """The captions of one bucket's ``split`` of ``data_dir``, in shard order, as a JSON prompts file
    ``folder/<split>-ar<bucket>.json`` (rewritten only when its content would change, so that stages sampling
    side by side read one file).

    Raises:
        ValueError: the data set has no such bucket (the message lists its buckets).
        FileNotFoundError: the bucket has no ``split`` samples.
    """
    from infinity_lit.data.shards import iter_samples

    captions = [caption for _, _, caption in iter_samples(data_dir, split, bucket=bucket)]
    text = json.dumps(captions, ensure_ascii=False, indent=0) + "\n"
    path = folder / f"{split}-{bucket_folder(bucket)}.json"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        folder.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_text(path, text)
    return path


def sample_buckets(
    checkpoint: Path, folder: Path, data_dir: Path, evaluation: EvaluationSettings, prompts_dir: Path
) -> dict[str, Any]:
    """One sample per held-out caption of each of ``evaluation.aspect_ratios``' buckets, at that bucket's
    aspect ratio (``eval sample --aspect_ratio R``), into ``folder/ar<bucket>/`` (``bucket_folder``); at
    most ``evaluation.num_images`` per bucket. The captions are read through ``bucket_prompts`` (files in
    ``prompts_dir``).

    Returns:
        {"written", "skipped", "total"}: summed over the buckets, and "per_aspect_ratio": bucket name → that
        bucket's ``sample_checkpoint`` result.

    Raises:
        ValueError: an aspect ratio the generator was not trained on, or that the data has no bucket of.
    """
    from infinity_lit.data.shards import bucket_name
    from infinity_lit.evaluation.sampling import sample_checkpoint

    per: dict[str, dict[str, int]] = {}
    for ratio in evaluation.aspect_ratios or ():
        name = bucket_name(ratio)
        per[name] = sample_checkpoint(
            checkpoint=checkpoint,
            out=folder / bucket_folder(name),
            prompts=bucket_prompts(data_dir, evaluation.split, name, prompts_dir),
            num_images=evaluation.num_images,
            seed=evaluation.seed,
            cfg=evaluation.cfg,
            tau=evaluation.tau,
            top_p=evaluation.top_p,
            aspect_ratio=ratio,
        )
    totals = {k: sum(r[k] for r in per.values()) for k in ("written", "skipped", "total")}
    return {**totals, "per_aspect_ratio": per}


def score_buckets(samples: Path, folder: Path, data_dir: Path, evaluation: EvaluationSettings) -> dict:
    """FID / KID / CLIP score of the bucket sample folders of ``sample_buckets``: each against its bucket's
    held-out images (at most ``evaluation.num_images``; ``folder/ar<bucket>/metrics.json``), and all of them
    pooled against the whole held-out split (``folder/metrics.json``: ``eval score --generated A --generated
    B … --reference DATA``).

    Returns:
        the pooled record, its ``metrics`` with ``per_aspect_ratio``: bucket name → that bucket's metrics,
        and ``buckets``: which buckets each number covers, ``{"pooled": {"sample_buckets": [...],
        "reference_buckets": [every bucket of the split]}, "<bucket>": {"sample_buckets": [bucket],
        "reference_buckets": [bucket]}, ...}``.

    Raises:
        ValueError: as ``evaluation.scoring.score_generated`` (a set of fewer than 2 images, ...).
    """
    from infinity_lit.data.shards import bucket_name, read_manifest, split_buckets
    from infinity_lit.evaluation.scoring import score_folder

    names = [bucket_name(r) for r in evaluation.aspect_ratios or ()]
    common = dict(
        split=evaluation.split,
        inception_weights=evaluation.inception_weights,
        clip_weights=evaluation.clip_weights,
    )
    per = {
        name: score_folder(
            generated=samples / bucket_folder(name),
            reference=data_dir,
            out=folder / bucket_folder(name) / "metrics.json",
            max_reference=evaluation.num_images,
            bucket=name,
            **common,
        )
        for name in names
    }
    pooled = score_folder(
        generated=[samples / bucket_folder(name) for name in names],
        reference=data_dir,
        out=folder / "metrics.json",
        max_reference=None,
        **common,
    )
    reference_buckets = list(split_buckets(read_manifest(data_dir), evaluation.split))
    covered = {"pooled": {"sample_buckets": names, "reference_buckets": reference_buckets}}
    covered.update({name: {"sample_buckets": [name], "reference_buckets": [name]} for name in names})
    metrics = {
        **pooled["metrics"],
        "per_aspect_ratio": {name: record["metrics"] for name, record in per.items()},
    }
    return {**pooled, "metrics": metrics, "buckets": covered}

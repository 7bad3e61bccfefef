"""``infinity-lit quickstart``: the whole method on real data, end to end, on a laptop-class CPU.

Stages (each resumable; a finished stage leaves ``OUT/<stage>/DONE.json`` and is skipped on a re-run,
an interrupted training resumes from its ``last.ckpt``):

1. ``data``        OpenMoji shards at 64² (or ``--data DIR``: a folder of your images + captions).
2. ``tokenizer``   ``infinity-lit tokenizer fit`` with ``experiments/tokenizer/openmoji64.yaml``.
3. ``generator``   ``infinity-lit generator fit`` with ``experiments/generator/openmoji64.yaml`` on the
                   frozen tokenizer (Bitwise Self-Correction on).
4. ``eval``        tokenizer reconstruction (PSNR, SSIM, per-scale PSNR, rFID = the FID ceiling row);
                   samples for the held-out captions from the trained generator and from an untrained
                   twin (same architecture, fresh initialisation: the FID baseline row); FID/KID of both
                   against the held-out images; CLIP score when CLIP weights are configured.
5. ``report``      one HTML page + Markdown twin (metrics, curves, per-scale plots, sample grids) and
                   ``OUT/metrics.json`` with the headline numbers, including the share of the
                   baseline-to-ceiling FID gap that the generator closes:
                   (FID_untrained − FID_samples) / (FID_untrained − FID_reconstructions).

Everything here calls the same code as the individual commands; nothing is implemented twice.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

#: Repository folder of the YAML recipes (the quickstart runs from a source checkout).
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
DONE = "DONE.json"


def _log(message: str) -> None:
    print(f"[quickstart] {message}", flush=True)


def _done(stage_dir: Path) -> dict | None:
    path = stage_dir / DONE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _mark_done(stage_dir: Path, record: dict[str, Any]) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / (DONE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    tmp.replace(stage_dir / DONE)


def _recipe(path: Path | None, default_name: str) -> Path:
    recipe = Path(path) if path is not None else EXPERIMENTS / default_name
    if not recipe.is_file():
        raise FileNotFoundError(
            f"recipe {str(recipe)!r} not found; run the quickstart from a source checkout of infinity-lit "
            "(pip install -e .) or pass --tokenizer_config / --generator_config"
        )
    return recipe


def _fit(
    group: str,
    recipe: Path,
    out: Path,
    data_dir: Path,
    resolution: int,
    max_time: str | None,
    max_steps: int | None,
    extra: list[str],
) -> Path:
    """Run (or resume) ``infinity-lit GROUP fit`` writing to ``OUT/GROUP/run``; returns its last.ckpt."""
    import importlib

    stage_dir = out / group
    last = stage_dir / "run" / "checkpoints" / "last.ckpt"
    args = [
        "fit",
        "--config",
        str(recipe),
        "--data.init_args.data_dir",
        str(data_dir),
        "--data.init_args.resolution",
        str(resolution),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.logger.init_args.name",
        group,
        "--trainer.logger.init_args.version",
        "run",
        *extra,
    ]
    if max_time is not None:
        args += ["--trainer.max_time", max_time]
    if max_steps is not None:
        args += ["--trainer.max_steps", str(max_steps), "--trainer.max_time", "null"]
    if last.is_file():
        _log(f"{group}: resuming from {last}")
        args += ["--ckpt_path", str(last)]
    start = time.time()
    importlib.import_module(f"infinity_lit.{group}.cli").main(args)
    if not last.is_file():
        raise RuntimeError(f"{group} training finished without writing {last}")
    _mark_done(stage_dir, {"checkpoint": str(last), "seconds": round(time.time() - start, 1), "args": args})
    return last


def _untrained_twin(trained: Path, path: Path, seed: int) -> Path:
    """Write a generator checkpoint with the trained one's hyper-parameters and a fresh initialisation."""
    import torch

    from infinity_lit.generator.sample_cli import load_generator
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


def _evaluate(
    eval_dir: Path,
    tok_ckpt: Path,
    gen_ckpt: Path,
    data_dir: Path,
    num_eval_images: int | None,
    cfg: float,
    tau: float,
    seed: int,
    clip_weights: Path | None,
    inception_weights: Path | None,
) -> tuple[dict, dict[str, dict]]:
    """Reconstruction metrics of the tokenizer, and samples + FID/KID/CLIP of the trained and untrained
    generators, all on the held-out split. Returns (recon record, {"samples"|"untrained": score record})."""
    from infinity_lit.evaluation import cli as eval_cli

    _log("eval: tokenizer reconstructions of the held-out images")
    recon = eval_cli.recon(
        tokenizer=tok_ckpt,
        data=data_dir,
        out=eval_dir / "tokenizer",
        max_images=num_eval_images,
        inception_weights=inception_weights,
    )
    rows: dict[str, dict] = {}
    for name, ckpt in (
        ("samples", gen_ckpt),
        ("untrained", _untrained_twin(gen_ckpt, eval_dir / "untrained.ckpt", seed)),
    ):
        _log(f"eval: sampling the held-out captions ({name})")
        folder = eval_dir / name
        eval_cli.sample(
            checkpoint=ckpt,
            out=folder,
            captions_from=data_dir,
            num_images=num_eval_images,
            seed=seed,
            cfg=cfg,
            tau=tau,
        )
        _log(f"eval: scoring {name} against the held-out images")
        rows[name] = eval_cli.score(
            generated=folder,
            reference=data_dir,
            max_reference=num_eval_images,
            inception_weights=inception_weights,
            clip_weights=clip_weights,
        )
    return recon, rows


def gap_closed(fid_untrained: float, fid_samples: float, fid_reconstructions: float) -> float:
    """Share of the baseline-to-ceiling FID gap the generator closes.

    (FID_untrained − FID_samples) / (FID_untrained − FID_reconstructions): 0 = no better than an untrained
    generator, 1 = as good as the tokenizer's own reconstructions. NaN when the gap is not positive.
    """
    gap = fid_untrained - fid_reconstructions
    return (fid_untrained - fid_samples) / gap if gap > 0 else math.nan


def quickstart(
    out: Path = Path("runs/quickstart"),
    data: Path | None = None,
    captions: Path | None = None,
    resolution: int = 64,
    tokenizer_config: Path | None = None,
    generator_config: Path | None = None,
    tokenizer_max_time: str | None = None,
    generator_max_time: str | None = None,
    tokenizer_max_steps: int | None = None,
    generator_max_steps: int | None = None,
    num_eval_images: int | None = None,
    cfg: float = 3.0,
    tau: float = 1.0,
    seed: int = 0,
    clip_weights: Path | None = None,
    inception_weights: Path | None = None,
    openmoji_limit: int | None = None,
) -> dict[str, Any]:
    """Data → tokenizer → generator → samples → evaluation → report, resumable stage by stage.

    Args:
        out: run folder; everything (shards, TensorBoard logs, checkpoints, samples, report) goes under it.
        data: a folder of your own images (searched recursively) instead of OpenMoji.
        captions: with ``data``: a JSON-lines file of {"image": path, "caption": text} (else sidecar .txt).
        resolution: image side in pixels (the recipes are sized for 64).
        tokenizer_config: tokenizer recipe (default experiments/tokenizer/openmoji64.yaml).
        generator_config: generator recipe (default experiments/generator/openmoji64.yaml).
        tokenizer_max_time: override of the tokenizer's time budget, "DD:HH:MM:SS".
        generator_max_time: override of the generator's time budget, "DD:HH:MM:SS".
        tokenizer_max_steps: train the tokenizer for this many steps instead of a time budget.
        generator_max_steps: train the generator for this many steps instead of a time budget.
        num_eval_images: evaluate on at most this many held-out images (default: all of the val split).
        cfg: classifier-free guidance scale of the evaluation samples (1 = no guidance).
        tau: sampling temperature of the evaluation samples.
        seed: seed of sampling (image i uses seed + i) and of the untrained baseline.
        clip_weights: local CLIP weights for the CLIP score (else reported as not computed).
        inception_weights: torch-fidelity Inception weights (default: converted offline weights).
        openmoji_limit: render only this many OpenMoji emoji (spread over the set), for quick trials.

    Returns:
        the summary written to ``OUT/metrics.json``.
    """
    from infinity_lit.evaluation import cli as eval_cli

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    timings: dict[str, float] = {}

    # 1. data -----------------------------------------------------------------------------------------
    tic = time.time()
    if data is not None:
        from infinity_lit.data import build_folder_shards

        data_dir = out / "data" / f"{Path(data).name}{resolution}"
        _log(f"data: building shards from {data} into {data_dir}")
        manifest = build_folder_shards(data, data_dir, resolution, captions=captions)
    else:
        from infinity_lit.data import build_openmoji_shards

        suffix = f"-{openmoji_limit}" if openmoji_limit is not None else ""
        data_dir = out / "data" / f"openmoji{resolution}{suffix}"
        _log(f"data: OpenMoji shards in {data_dir}")
        manifest = build_openmoji_shards(data_dir, resolution, limit=openmoji_limit)
    timings["data"] = time.time() - tic

    # 2. tokenizer ------------------------------------------------------------------------------------
    tic = time.time()
    tok_done = _done(out / "tokenizer")
    if tok_done:
        tok_ckpt = Path(tok_done["checkpoint"])
        _log(f"tokenizer: done ({tok_ckpt})")
    else:
        _log("tokenizer: training (TensorBoard: runs under " + str(out) + ")")
        tok_ckpt = _fit(
            "tokenizer",
            _recipe(tokenizer_config, "tokenizer/openmoji64.yaml"),
            out,
            data_dir,
            resolution,
            tokenizer_max_time,
            tokenizer_max_steps,
            [],
        )
    timings["tokenizer"] = time.time() - tic

    # 3. generator ------------------------------------------------------------------------------------
    tic = time.time()
    gen_done = _done(out / "generator")
    if gen_done:
        gen_ckpt = Path(gen_done["checkpoint"])
        _log(f"generator: done ({gen_ckpt})")
    else:
        _log("generator: training on the frozen tokenizer")
        gen_ckpt = _fit(
            "generator",
            _recipe(generator_config, "generator/openmoji64.yaml"),
            out,
            data_dir,
            resolution,
            generator_max_time,
            generator_max_steps,
            ["--model.tokenizer_checkpoint", str(tok_ckpt)],
        )
    timings["generator"] = time.time() - tic

    # 4. evaluation -----------------------------------------------------------------------------------
    tic = time.time()
    eval_dir = out / "eval"
    eval_settings = {
        "tokenizer": str(tok_ckpt),
        "generator": str(gen_ckpt),
        "num_eval_images": num_eval_images,
        "cfg": cfg,
        "tau": tau,
        "seed": seed,
        "clip_weights": str(clip_weights) if clip_weights else None,
        "inception_weights": str(inception_weights) if inception_weights else None,
    }
    eval_done = _done(eval_dir)
    if eval_done and eval_done.get("settings") == eval_settings:
        _log(f"eval: done ({eval_dir})")
        recon, rows = eval_done["recon"], eval_done["rows"]
    else:
        recon, rows = _evaluate(
            eval_dir,
            tok_ckpt,
            gen_ckpt,
            data_dir,
            num_eval_images,
            cfg,
            tau,
            seed,
            clip_weights,
            inception_weights,
        )
        _mark_done(eval_dir, {"settings": eval_settings, "recon": recon, "rows": rows})
    timings["eval"] = time.time() - tic

    # 5. summary + report -----------------------------------------------------------------------------
    fid_samples = rows["samples"]["metrics"]["fid"]
    fid_untrained = rows["untrained"]["metrics"]["fid"]
    fid_recon = recon["metrics"]["rfid"]
    summary = {
        "kind": "quickstart",
        "data": {"dir": str(data_dir), "counts": manifest.get("counts")},
        "tokenizer_checkpoint": str(tok_ckpt),
        "generator_checkpoint": str(gen_ckpt),
        "num_eval_images": rows["samples"].get("num_images"),
        "cfg": cfg,
        "tau": tau,
        "seed": seed,
        "metrics": {
            "tokenizer_psnr": recon["metrics"]["psnr"],
            "tokenizer_ssim": recon["metrics"]["ssim"],
            "tokenizer_psnr_per_scale": recon["metrics"]["psnr_per_scale"],
            "fid_samples": fid_samples,
            "fid_untrained": fid_untrained,
            "fid_reconstructions": fid_recon,
            "fid_gap_closed": gap_closed(fid_untrained, fid_samples, fid_recon),
            "clip_score": rows["samples"]["metrics"].get("clip_score"),
        },
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    tic = time.time()
    html_path, md_path = eval_cli.report(
        [out / "tokenizer", out / "generator", eval_dir],
        out / "report",
        title="infinity-lit quickstart",
        headline=headline_rows(summary),
    )
    summary["seconds"]["report"] = round(time.time() - tic, 1)
    summary["seconds"]["total_this_invocation"] = round(time.time() - t0, 1)
    summary["report"] = {"html": str(html_path), "markdown": str(md_path)}
    from infinity_lit.evaluation.scoring import write_metrics_json

    write_metrics_json(summary, out / "metrics.json")
    _summarise(summary, out)
    return summary


#: Quality floors of the quickstart (checked in the summary, shown in the report).
PSNR_FLOOR_DB = 20.0
GAP_CLOSED_FLOOR = 0.5


def headline_rows(summary: dict) -> list[tuple[str, str]]:
    """(label, value) rows of the quickstart's headline numbers, with the floors they are held to."""
    m = summary["metrics"]
    n = summary.get("num_eval_images")

    def verdict(ok: bool) -> str:
        return "meets" if ok else "BELOW"

    clip = m["clip_score"]
    return [
        (
            f"tokenizer held-out PSNR (floor {PSNR_FLOOR_DB:.0f} dB)",
            f"{m['tokenizer_psnr']:.2f} dB ({verdict(m['tokenizer_psnr'] >= PSNR_FLOOR_DB)})",
        ),
        ("tokenizer held-out SSIM", f"{m['tokenizer_ssim']:.3f}"),
        (f"FID generator samples (N = {n})", f"{m['fid_samples']:.1f}"),
        ("FID untrained generator (baseline)", f"{m['fid_untrained']:.1f}"),
        ("FID tokenizer reconstructions (ceiling)", f"{m['fid_reconstructions']:.1f}"),
        (
            f"FID gap closed (floor {GAP_CLOSED_FLOOR})",
            f"{m['fid_gap_closed']:.2f} ({verdict(m['fid_gap_closed'] >= GAP_CLOSED_FLOOR)})",
        ),
        ("CLIP score", clip if isinstance(clip, str) else f"{clip:.2f}"),
        ("sampling", f"cfg {summary['cfg']}, τ {summary['tau']}, seed {summary['seed']}"),
    ]


def _summarise(summary: dict, out: Path) -> None:
    lines = ["", "infinity-lit quickstart: done"]
    lines += [f"  {label:<45} {value}" for label, value in headline_rows(summary)]
    lines += [
        f"  report      {summary['report']['html']}",
        f"  metrics     {out / 'metrics.json'}",
        f"  TensorBoard tensorboard --logdir {out}",
    ]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``infinity-lit quickstart [--out DIR] [--data DIR] …`` (jsonargparse over ``quickstart``)."""
    from jsonargparse import CLI

    return CLI(quickstart, args=list(sys.argv[1:] if argv is None else argv), as_positional=False)


if __name__ == "__main__":
    main()

"""The quickstart: the whole method on real data, end to end, on a laptop-class CPU (a one-arm study).

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

Every stage is a function of ``studies.stages`` calling the library; ``infinity-lit quickstart``
(``cli.quickstart``) parses its options from ``quickstart``'s signature.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from infinity_lit import recipes, runs
from infinity_lit.evaluation.report import make_report
from infinity_lit.evaluation.scoring import write_metrics_json

from . import stages
from .spec import EvaluationSettings
from .stages import log

#: The shipped recipes the quickstart trains with (names for ``recipes.recipe_path``).
TOKENIZER_RECIPE = "tokenizer/openmoji64.yaml"
GENERATOR_RECIPE = "generator/openmoji64.yaml"


def _recipe(path: Path | None, default_name: str) -> Path:
    """``path`` if given, else the shipped recipe ``default_name`` (found in the installed package)."""
    if path is None:
        return recipes.recipe_path(default_name)
    if not Path(path).is_file():
        raise FileNotFoundError(f"recipe {str(path)!r} not found")
    return Path(path)


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
    log("eval: tokenizer reconstructions of the held-out images")
    recon = stages.reconstruction(
        tok_ckpt, data_dir, eval_dir / "tokenizer", num_eval_images, inception_weights
    )
    # The study stages' evaluation, with the quickstart's settings.
    settings = EvaluationSettings(
        split="val",
        num_images=num_eval_images,
        cfg=cfg,
        tau=tau,
        seed=seed,
        clip_weights=str(clip_weights) if clip_weights is not None else None,
        inception_weights=str(inception_weights) if inception_weights is not None else None,
    )
    rows: dict[str, dict] = {}
    for name, ckpt in (
        ("samples", gen_ckpt),
        ("untrained", stages.untrained_twin(gen_ckpt, eval_dir / "untrained.ckpt", seed)),
    ):
        log(f"eval: sampling and scoring the held-out captions ({name})")
        stages.sample(ckpt, eval_dir / name, data_dir, settings)
        rows[name] = stages.score(eval_dir / name, eval_dir / name, data_dir, settings)
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
        tokenizer_config: tokenizer recipe (default: the shipped experiments/tokenizer/openmoji64.yaml).
        generator_config: generator recipe (default: the shipped experiments/generator/openmoji64.yaml).
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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    timings: dict[str, float] = {}

    # 1. data -----------------------------------------------------------------------------------------
    tic = time.time()
    if data is not None:
        from infinity_lit.data import build_folder_shards

        data_dir = out / "data" / f"{Path(data).name}{resolution}"
        log(f"data: building shards from {data} into {data_dir}")
        manifest = build_folder_shards(data, data_dir, resolution, captions=captions)
    else:
        from infinity_lit.data import build_openmoji_shards

        suffix = f"-{openmoji_limit}" if openmoji_limit is not None else ""
        data_dir = out / "data" / f"openmoji{resolution}{suffix}"
        log(f"data: OpenMoji shards in {data_dir}")
        manifest = build_openmoji_shards(data_dir, resolution, limit=openmoji_limit)
    timings["data"] = time.time() - tic

    # 2. tokenizer, 3. generator (on the frozen tokenizer) ----------------------------------------------
    fit_args = {"data_dir": data_dir, "resolution": resolution}
    tic = time.time()
    tok_ckpt = stages.fit_once(
        "tokenizer",
        out,
        recipe=_recipe(tokenizer_config, TOKENIZER_RECIPE),
        max_time=tokenizer_max_time,
        max_steps=tokenizer_max_steps,
        **fit_args,
    )
    timings["tokenizer"] = time.time() - tic
    tic = time.time()
    gen_ckpt = stages.fit_once(
        "generator",
        out,
        recipe=_recipe(generator_config, GENERATOR_RECIPE),
        max_time=generator_max_time,
        max_steps=generator_max_steps,
        overrides=["--model.tokenizer_checkpoint", str(tok_ckpt)],
        **fit_args,
    )
    timings["generator"] = time.time() - tic

    # 4. evaluation -----------------------------------------------------------------------------------
    tic = time.time()
    eval_dir = out / "eval"
    # By content (``stages.content_of``): other weights or data under the same paths evaluate again.
    eval_settings = {
        "tokenizer": stages.content_of(tok_ckpt),
        "generator": stages.content_of(gen_ckpt),
        "data": stages.content_of(data_dir),
        "num_eval_images": num_eval_images,
        "cfg": cfg,
        "tau": tau,
        "seed": seed,
        "clip_weights": str(clip_weights) if clip_weights else None,
        "inception_weights": str(inception_weights) if inception_weights else None,
    }
    eval_done = runs.read_done(eval_dir)
    started = eval_dir / stages.IDENTITY
    recorded = (eval_done or {}).get("settings")
    if recorded is None and started.is_file():
        recorded = json.loads(started.read_text(encoding="utf-8"))  # interrupted: resumes if unchanged
    if eval_dir.exists() and recorded != eval_settings:
        # Samples and scores of other weights, data or settings are never mixed with the new ones.
        changed = stages.changed_keys(recorded or {}, eval_settings)
        aside = runs.set_aside(eval_dir)
        log(f"eval: {', '.join(changed)} changed; evaluating again (earlier results kept in {aside})")
        eval_done = None
    if eval_done:
        log(f"eval: done ({eval_dir})")
        recon, rows = eval_done["recon"], eval_done["rows"]
    else:
        runs.atomic_write_text(started, json.dumps(eval_settings, indent=2))
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
        runs.mark_done(eval_dir, {"settings": eval_settings, "recon": recon, "rows": rows})
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
    html_path, md_path = make_report(
        [out / "tokenizer", out / "generator", eval_dir],
        out / "report",
        title="infinity-lit quickstart",
        headline=headline_rows(summary),
    )
    summary["seconds"]["report"] = round(time.time() - tic, 1)
    summary["seconds"]["total_this_invocation"] = round(time.time() - t0, 1)
    summary["report"] = {"html": str(html_path), "markdown": str(md_path)}
    write_metrics_json(summary, out / "metrics.json")
    _summarise(summary, out)
    return summary


#: Quality floors of the quickstart (checked in the summary, shown in the report).
PSNR_FLOOR_DB = 20.0
GAP_CLOSED_FLOOR = 0.5
#: Fewest evaluation images for which the FID gap gets a verdict: below, three FIDs of a handful of images
#: are mostly noise (a gap above 1 on N = 2 was reported as "meets").
MIN_JUDGED_IMAGES = 50


def gap_closed_text(
    gap: float, fid_untrained: float, fid_reconstructions: float, num_images: int | None = None
) -> str:
    """The "FID gap closed" headline value: the share with its verdict against ``GAP_CLOSED_FLOOR`` (none on
    fewer than ``MIN_JUDGED_IMAGES`` images), or, when there is no gap to close (``gap_closed`` is NaN),
    why not."""
    if math.isfinite(gap):
        if num_images is not None and num_images < MIN_JUDGED_IMAGES:
            return (
                f"{gap:.2f} (not judged: N = {num_images} < {MIN_JUDGED_IMAGES} images, FID is mostly noise)"
            )
        return f"{gap:.2f} ({'meets' if gap >= GAP_CLOSED_FLOOR else 'BELOW'})"
    if math.isfinite(fid_untrained) and math.isfinite(fid_reconstructions):
        return (
            f"n/a (untrained FID {fid_untrained:.1f} ≤ reconstruction-ceiling FID {fid_reconstructions:.1f}: "
            "no gap to close)"
        )
    return "n/a (needs a finite untrained FID and reconstruction-ceiling FID)"


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
            gap_closed_text(m["fid_gap_closed"], m["fid_untrained"], m["fid_reconstructions"], n),
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

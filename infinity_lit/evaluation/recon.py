"""Reconstruction quality of a tokenizer over a data set: the record behind ``infinity-lit eval recon``.

``evaluate_reconstruction``: PSNR / SSIM of the full reconstruction, PSNR per scale (decoding only the
first k scales of the schedule: the progressive reconstruction the generator sees after scale k) and rFID
(FID of the reconstructions against the originals). ``reconstruction_record`` wraps it for a checkpoint and
an image set, writes ``OUT/metrics.json`` and skips the work when that file already records the same
inputs. The numbers come from ``infinity_lit.metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from infinity_lit.metrics.reconstruction import PSNR_CAP_DB, psnr_per_image, ssim, to_float, to_uint8


@dataclass
class ReconstructionResult:
    """Reconstruction quality of a tokenizer over a data set.

    Attributes:
        psnr: mean per-image PSNR (dB, each image capped at ``PSNR_CAP_DB``) of the full reconstruction.
        ssim: mean SSIM of the full reconstruction.
        psnr_per_scale: k → mean PSNR (dB) decoding only the first k scales (k = 1..K; K is the full one).
        rfid: FID of reconstructions vs originals (None when not computed).
        num_images: images evaluated.
        num_scales: K, scales in the schedule.
        warnings: e.g. a set smaller than the Inception feature dimension.
    """

    psnr: float
    ssim: float
    psnr_per_scale: dict[int, float]
    rfid: float | None
    num_images: int
    num_scales: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["psnr_per_scale"] = {str(k): v for k, v in self.psnr_per_scale.items()}
        return out


@torch.no_grad()
def evaluate_reconstruction(
    tokenizer: torch.nn.Module,
    images: Iterable[Tensor],
    scales: Sequence[int] | None = None,
    compute_rfid: bool = True,
    inception: torch.nn.Module | None = None,
    inception_weights: str | Path | None = None,
    progress: str | None = None,
    total: int | None = None,
) -> ReconstructionResult:
    """PSNR / SSIM, per-scale PSNR and rFID of a tokenizer on a stream of image batches.

    For each batch the latent is encoded once, then quantised with the first k scales of the schedule
    and decoded, for every k in ``scales`` (plus K, the full schedule): the same result as
    ``tokenizer.reconstruct(images, num_scales=k)`` without re-running the encoder.

    Args:
        tokenizer: a ``BitwiseTokenizer`` in eval mode (``encode``, ``quantize(z, num_scales=k)``,
            ``decode``, ``scale_schedule``, ``check_image_size``).
        images: batches (B, 3, H, W) float in [-1, 1] on the tokenizer's device (H, W fitting its schedule).
        scales: the k values to report (1-based, ≤ K); default every k in 1..K.
        compute_rfid: also compute rFID (needs the Inception weights; ≥ 2 images).
        inception: a loaded ``load_inception`` model (default: loaded on the tokenizer's device).
        inception_weights: torch-fidelity Inception weights for a newly loaded model.
        progress: tqdm description, or None for no bar.
        total: number of images, for the bar.

    Returns:
        a ``ReconstructionResult``. Originals and reconstructions enter Inception as uint8 [0, 255]
        (``to_uint8``: clamp to [-1, 1], then round((x + 1) · 127.5)).

    Raises:
        ValueError: a k outside 1..K, image size vs schedule, no images, or rFID with fewer than 2 images.
    """
    from tqdm import tqdm

    from infinity_lit.metrics.fid import check_set_sizes, fid_from_features
    from infinity_lit.metrics.inception import inception_features, load_inception

    num_scales = len(tokenizer.scale_schedule)
    ks = sorted(set(range(1, num_scales + 1) if scales is None else [int(k) for k in scales]) | {num_scales})
    if ks[0] < 1 or ks[-1] > num_scales:
        raise ValueError(
            f"scales must be in 1..{num_scales} (the tokenizer's schedule has {num_scales} scales), got {ks}"
        )
    if compute_rfid and inception is None:
        device = next(tokenizer.parameters()).device
        inception = load_inception(inception_weights, device)

    psnrs: dict[int, list[Tensor]] = {k: [] for k in ks}
    ssim_sum, count = 0.0, 0
    feats_real, feats_recon = [], []
    with tqdm(total=total, desc=progress, unit="img", disable=progress is None) as bar:
        for batch in images:
            schedule = tokenizer.check_image_size(batch.shape[-2], batch.shape[-1])
            z = tokenizer.encode(batch)
            for k in ks:
                recon = tokenizer.decode(
                    tokenizer.quantize(z, scale_schedule=schedule, num_scales=k).quantized
                )
                recon = recon.float().clamp(-1, 1)
                psnrs[k].append(psnr_per_image(recon, batch).clamp_max(PSNR_CAP_DB).cpu())
            # recon now holds the full (k = K) reconstruction.
            ssim_sum += float(ssim(recon, batch)) * len(batch)
            count += len(batch)
            if compute_rfid:
                feats_real.append(inception_features(inception, to_uint8(batch)))
                feats_recon.append(inception_features(inception, to_uint8(recon)))
            bar.update(len(batch))
    if count == 0:
        raise ValueError("evaluate_reconstruction got no images")
    per_scale = {k: float(torch.cat(v).mean()) for k, v in psnrs.items()}
    warnings_: list[str] = []
    rfid = None
    if compute_rfid:
        warnings_ += check_set_sizes(count)
        rfid = fid_from_features(torch.cat(feats_recon), torch.cat(feats_real))
    return ReconstructionResult(
        psnr=per_scale[num_scales],
        ssim=ssim_sum / count,
        psnr_per_scale=per_scale,
        rfid=rfid,
        num_images=count,
        num_scales=num_scales,
        warnings=warnings_,
    )


def reconstruction_record(
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
        tokenizer: tokenizer checkpoint (.ckpt from 'infinity-lit tokenizer fit'), or its run folder
            (``runs/tokenizer/<name>``: its checkpoints/last.ckpt).
        data: shard directory (or image folder, read recursively) of the images to reconstruct; images that
            cannot be decoded are skipped, named in a warning and listed under ``unreadable_images``.
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

    Returns:
        the record of OUT/metrics.json (its path under "path"; "reused": True when it was already there).

    Raises:
        FileNotFoundError: no tokenizer checkpoint or no images. ValueError: images of another size than the
            tokenizer's (non-square), not a tokenizer checkpoint, or none of the images can be read.
    """
    import json

    from infinity_lit.metrics.inception import inception_weights_path
    from infinity_lit.runs import resolve_checkpoint
    from infinity_lit.tokenizer import load_tokenizer

    from .images import batched, open_image_set
    from .scoring import write_metrics_json

    tokenizer = resolve_checkpoint(tokenizer)
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
            previous.update(path=str(path), reused=True)
            return previous

    from infinity_lit.checkpoints import TOKENIZER, read_checkpoint

    source = read_checkpoint(tokenizer, TOKENIZER)
    model = load_tokenizer(source, map_location=device, use_ema=use_ema)
    height, width = model.config.image_size

    def float_batches():
        from infinity_lit.data.shards import resize_center_crop

        for batch in batched(_resized(images, height, width, resize_center_crop), batch_size):
            yield to_float(batch).to(device)  # uint8 [0,255] → float [-1,1]

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

    warnings_ = list(result.warnings)
    if images.unreadable:
        warnings_.append(images.unreadable_warning())
    record = {
        "kind": "reconstruction",
        "checkpoint": str(tokenizer),
        # Which weights were scored: path, global step, weights digest (``Checkpoint.identity``).
        "tokenizer": source.identity(use_ema=use_ema),
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
        # Files skipped because they cannot be decoded (relative path or SHARD/KEY → reason).
        "unreadable_images": dict(images.unreadable),
        "warnings": warnings_,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_metrics_json(record, path)
    record["path"] = str(path)
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

"""Reconstruction quality of a tokenizer over a data set: the record behind ``infinity-lit eval recon``.

``evaluate_reconstruction``: PSNR / SSIM of the full reconstruction, PSNR per scale (decoding only the
first k scales of the schedule: the progressive reconstruction the generator sees after scale k) and rFID
(FID of the reconstructions against the originals), over all images and per group of batches (e.g. per
aspect-ratio bucket). ``reconstruction_record`` wraps it for a checkpoint and an image set, writes
``OUT/metrics.json`` and skips the work when that file already records the same inputs; on shards built
with aspect-ratio buckets it scores every bucket at its own size (``metrics["per_aspect_ratio"]``) and all
of them pooled. The numbers come from ``infinity_lit.metrics``.
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
        ssim: mean SSIM of the full reconstruction (each batch's mean SSIM weighted by its images).
        psnr_per_scale: k → mean PSNR (dB) decoding only the first k scales (k = 1..K; K is the full one).
        rfid: FID of reconstructions vs originals (None when not computed, or for a group of fewer than 2
            images).
        num_images: images evaluated.
        num_scales: K, scales in the schedule.
        warnings: e.g. a set smaller than the Inception feature dimension.
        scale_schedules: image size (H, W) in pixels → the scale schedule its images were quantised with
            (``tokenizer.check_image_size``), for every size evaluated.
        groups: label → the same numbers over the batches given with that label (see
            ``evaluate_reconstruction``; their ``groups`` are empty); empty without labels.
    """

    psnr: float
    ssim: float
    psnr_per_scale: dict[int, float]
    rfid: float | None
    num_images: int
    num_scales: int
    warnings: list[str] = field(default_factory=list)
    scale_schedules: dict[tuple[int, int], list[tuple[int, int]]] = field(default_factory=dict)
    groups: dict[str, ReconstructionResult] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain types: ``psnr_per_scale`` keys as strings, ``scale_schedules`` keyed "HxW" with [h, w]
        lists, ``groups`` as such dicts."""
        out = asdict(self)
        out["psnr_per_scale"] = {str(k): v for k, v in self.psnr_per_scale.items()}
        out["scale_schedules"] = {
            f"{h}x{w}": [list(hw) for hw in schedule] for (h, w), schedule in self.scale_schedules.items()
        }
        out["groups"] = {label: group.to_dict() for label, group in self.groups.items()}
        return out


@dataclass
class _Tally:
    """The running sums of ``evaluate_reconstruction`` over one set of batches (all, or one group)."""

    psnrs: dict[int, list[Tensor]]  # k → per-image PSNR (B,) of each batch, on CPU
    ssim_sum: float = 0.0  # Σ batch mean SSIM × batch size
    count: int = 0
    feats_real: list[Tensor] = field(default_factory=list)
    feats_recon: list[Tensor] = field(default_factory=list)
    scale_schedules: dict[tuple[int, int], list[tuple[int, int]]] = field(default_factory=dict)

    def add(
        self,
        psnrs: dict[int, Tensor],
        ssim_mean: float,
        size: int,
        features: tuple[Tensor, Tensor] | None,
        image_size: tuple[int, int],
        schedule: Sequence[Sequence[int]],
    ) -> None:
        for k, values in psnrs.items():
            self.psnrs[k].append(values)
        self.ssim_sum += ssim_mean * size
        self.count += size
        if features is not None:
            self.feats_real.append(features[0])
            self.feats_recon.append(features[1])
        self.scale_schedules.setdefault(image_size, [tuple(hw) for hw in schedule])

    def result(self, num_scales: int, compute_rfid: bool, group: str | None = None) -> ReconstructionResult:
        """The numbers of the tally; rFID of a group with fewer than 2 images is None (with a warning),
        of the whole set a ValueError (``check_set_sizes``)."""
        from infinity_lit.metrics.fid import check_set_sizes, fid_from_features

        per_scale = {k: float(torch.cat(v).mean()) for k, v in self.psnrs.items()}
        warnings_: list[str] = []
        rfid = None
        if compute_rfid and group is not None and self.count < 2:
            warnings_.append(f"rFID not computed: {self.count} image, FID needs at least 2")
        elif compute_rfid:
            warnings_ += check_set_sizes(self.count)
            rfid = fid_from_features(torch.cat(self.feats_recon), torch.cat(self.feats_real))
        return ReconstructionResult(
            psnr=per_scale[num_scales],
            ssim=self.ssim_sum / self.count,
            psnr_per_scale=per_scale,
            rfid=rfid,
            num_images=self.count,
            num_scales=num_scales,
            warnings=warnings_,
            scale_schedules=dict(self.scale_schedules),
        )


@torch.no_grad()
def evaluate_reconstruction(
    tokenizer: torch.nn.Module,
    images: Iterable[Tensor | tuple[str, Tensor]],
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
    ``tokenizer.reconstruct(images, num_scales=k)`` without re-running the encoder. Each batch is quantised
    with the schedule of its own size (``tokenizer.check_image_size(H, W)``: the tokenizer's own for its
    image size, an aspect-ratio schedule with as many scales for a non-square size), so batches of different
    sizes can follow each other; the numbers over all of them are per image (PSNR, SSIM) and over all
    images' features (rFID).

    Args:
        tokenizer: a ``BitwiseTokenizer`` in eval mode (``encode``, ``quantize(z, num_scales=k)``,
            ``decode``, ``scale_schedule``, ``check_image_size``).
        images: batches (B, 3, H, W) float in [-1, 1] on the tokenizer's device (H, W fitting a schedule of
            the tokenizer; one size per batch), or ``(label, batch)`` pairs: a labelled batch counts in the
            whole set and in its label's group (``ReconstructionResult.groups``, in order of first
            appearance).
        scales: the k values to report (1-based, ≤ K); default every k in 1..K.
        compute_rfid: also compute rFID (needs the Inception weights; ≥ 2 images in all; a group of fewer
            gets ``rfid`` None and a warning).
        inception: a loaded ``load_inception`` model (default: loaded on the tokenizer's device).
        inception_weights: torch-fidelity Inception weights for a newly loaded model.
        progress: tqdm description, or None for no bar.
        total: number of images, for the bar.

    Returns:
        a ``ReconstructionResult`` over every image, with one per label under ``groups``. Originals and
        reconstructions enter Inception as uint8 [0, 255] (``to_uint8``: clamp to [-1, 1], then
        round((x + 1) · 127.5)).

    Raises:
        ValueError: a k outside 1..K, an image size without a schedule, no images, or rFID with fewer than
            2 images in all.
    """
    from tqdm import tqdm

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

    def new_tally() -> _Tally:
        return _Tally({k: [] for k in ks})

    whole = new_tally()
    groups: dict[str, _Tally] = {}
    with tqdm(total=total, desc=progress, unit="img", disable=progress is None) as bar:
        for item in images:
            label, batch = item if isinstance(item, tuple) else (None, item)
            size = (int(batch.shape[-2]), int(batch.shape[-1]))
            schedule = tokenizer.check_image_size(*size)
            z = tokenizer.encode(batch)
            psnrs = {}
            for k in ks:
                recon = tokenizer.decode(
                    tokenizer.quantize(z, scale_schedule=schedule, num_scales=k).quantized
                )
                recon = recon.float().clamp(-1, 1)
                psnrs[k] = psnr_per_image(recon, batch).clamp_max(PSNR_CAP_DB).cpu()
            # recon now holds the full (k = K) reconstruction.
            ssim_mean = float(ssim(recon, batch))
            features = None
            if compute_rfid:
                real = inception_features(inception, to_uint8(batch))
                features = (real, inception_features(inception, to_uint8(recon)))
            tallies = [whole] if label is None else [whole, groups.setdefault(label, new_tally())]
            for tally in tallies:
                tally.add(psnrs, ssim_mean, len(batch), features, size, schedule)
            bar.update(len(batch))
    if whole.count == 0:
        raise ValueError("evaluate_reconstruction got no images")
    result = whole.result(num_scales, compute_rfid)
    result.groups = {label: t.result(num_scales, compute_rfid, group=label) for label, t in groups.items()}
    return result


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

    Square data (an image folder, shards without aspect-ratio buckets): every image is resized and
    centre-cropped to the tokenizer's square size. Shards built with aspect-ratio buckets (``data folder
    --aspect_ratios``; the manifest's ``buckets``): every bucket with images in ``split`` is reconstructed
    at its own size, without resizing, with the tokenizer's schedule for that size (``check_image_size``),
    at most ``max_images`` per bucket. ``metrics`` then holds the numbers over all of those images (PSNR,
    SSIM and per-scale PSNR per image, so buckets weigh by their image counts; rFID of all reconstructions
    against all originals) and ``metrics["per_aspect_ratio"]``: bucket name → ``{"psnr", "ssim", "rfid"
    (None when off or for fewer than 2 images), "psnr_per_scale", "num_images", "image_size": [h, w]
    pixels, "scale_schedule": [[h, w], …]}``, in the manifest's order.

    Args:
        tokenizer: tokenizer checkpoint (.ckpt from 'infinity-lit tokenizer fit'), or its run folder
            (``runs/tokenizer/<name>``: its checkpoints/last.ckpt).
        data: shard directory (or image folder, read recursively) of the images to reconstruct; images that
            cannot be decoded are skipped, named in a warning and listed under ``unreadable_images``.
        out: output folder (metrics.json).
        split: shard split.
        max_images: at most this many images (per aspect-ratio bucket on bucketed shards).
        scales: the k values for per-scale PSNR (default all 1..K).
        rfid: compute rFID (reconstructions vs originals through Inception).
        inception_weights: torch-fidelity Inception weights (default: the converted offline weights).
        batch_size: images per batch.
        device: where the tokenizer and Inception run.
        use_ema: prefer EMA weights in the checkpoint.
        overwrite: recompute even when OUT/metrics.json records the same inputs and settings.

    Returns:
        the record of OUT/metrics.json (its path under "path"; "reused": True when it was already there).
        PSNR in dB (each image capped at ``PSNR_CAP_DB``), SSIM ≤ 1, both on [-1, 1] images; "image_size"
        and "scale_schedule" are the tokenizer's own; "inputs" lists the buckets evaluated one by one under
        "aspect_ratio_buckets" (absent for square data).

    Raises:
        FileNotFoundError: no tokenizer checkpoint or no images. ValueError: images of another size than the
            tokenizer's (non-square), an aspect-ratio bucket whose size has no schedule of the tokenizer (the
            message names the bucket, its size and what to do), not a tokenizer checkpoint, or none of the
            images can be read.
    """
    import json

    from infinity_lit.data.shards import MANIFEST, read_manifest, split_buckets
    from infinity_lit.metrics.inception import inception_weights_path
    from infinity_lit.runs import resolve_checkpoint
    from infinity_lit.tokenizer import load_tokenizer

    from .images import batched, open_image_set
    from .scoring import write_metrics_json

    tokenizer = resolve_checkpoint(tokenizer)
    images = open_image_set(data, split=split, max_images=max_images)
    # Shards without a manifest have no buckets (and are not scanned twice).
    has_manifest = images.kind == "shards" and (images.path / MANIFEST).is_file()
    buckets = split_buckets(read_manifest(data), split) if has_manifest else {}
    # One set per bucket (each capped at max_images), or the whole set.
    sets = {name: open_image_set(data, split, max_images, bucket=name) for name in buckets} or {None: images}
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
    if buckets:
        inputs["aspect_ratio_buckets"] = list(buckets)
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
    model.check_bucket_sizes({name: bucket["size"] for name, bucket in buckets.items()}, str(data))

    def float_batches():
        from infinity_lit.data.shards import resize_center_crop

        for name, image_set in sets.items():
            if name is None:  # square data: at the tokenizer's size
                items = _resized(image_set, height, width, resize_center_crop)
            else:  # a bucket: at its own size
                items = (im for _, im, _ in image_set.iter_items())
            for batch in batched(items, batch_size):
                batch = to_float(batch).to(device)  # uint8 [0,255] → float [-1,1]
                yield batch if name is None else (name, batch)

    result = evaluate_reconstruction(
        model,
        float_batches(),
        scales=scales,
        compute_rfid=rfid,
        inception_weights=inception_weights,
        progress="reconstruction",
        total=sum(len(image_set) for image_set in sets.values()),
    )
    import datetime as _dt

    warnings_ = list(result.warnings)
    metrics = _metrics(result)
    if buckets:
        metrics["per_aspect_ratio"] = {
            name: _bucket_metrics(name, group) for name, group in result.groups.items()
        }
        warnings_ += [
            f"aspect-ratio bucket {name}: {w}" for name, g in result.groups.items() for w in g.warnings
        ]
    warnings_ += [image_set.unreadable_warning() for image_set in sets.values() if image_set.unreadable]
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
        "metrics": metrics,
        "settings": {
            "batch_size": batch_size,
            "device": device,
            "image_range": "uint8 shards → float [-1,1] into the tokenizer; PSNR/SSIM on [-1,1] (data range 2); "
            "uint8 [0,255] into Inception for rFID",
        },
        # Files skipped because they cannot be decoded (relative path or SHARD/KEY → reason).
        "unreadable_images": {k: v for image_set in sets.values() for k, v in image_set.unreadable.items()},
        "warnings": warnings_,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_metrics_json(record, path)
    record["path"] = str(path)
    return record


def _metrics(result: ReconstructionResult) -> dict:
    """The numbers of a result as a record's ``metrics`` (per-scale keys as strings)."""
    return {
        "psnr": result.psnr,
        "ssim": result.ssim,
        "rfid": result.rfid,
        "psnr_per_scale": {str(k): v for k, v in result.psnr_per_scale.items()},
    }


def _bucket_metrics(name: str, group: ReconstructionResult) -> dict:
    """One bucket's entry of ``metrics["per_aspect_ratio"]``: its numbers, image count, size and schedule.

    Raises:
        ValueError: the bucket's images are of several sizes (the shards are not as built).
    """
    if len(group.scale_schedules) != 1:
        sizes = ", ".join(f"{h}×{w}" for h, w in group.scale_schedules)
        raise ValueError(
            f"aspect-ratio bucket {name} holds images of several sizes ({sizes}); rebuild the data set"
        )
    [(size, schedule)] = group.scale_schedules.items()
    return {
        **_metrics(group),
        "num_images": group.num_images,
        "image_size": list(size),
        "scale_schedule": [list(hw) for hw in schedule],
    }


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

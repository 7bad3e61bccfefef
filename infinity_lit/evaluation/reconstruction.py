"""Reconstruction metrics for images in [-1, 1]: PSNR and SSIM through torchmetrics.

Both metrics are told the data range of the [-1, 1] convention, 2.0 (max − min), so that
PSNR = 10·log10(2² / MSE): a target in [-0.9, 0.9] with the prediction offset by 0.1 gives
10·log10(4 / 0.01) = 26.02 dB (not 20.00 dB, which a range of 1 would give). Identical images give
PSNR = +inf (never NaN); averages over a data set are taken over per-image PSNRs with +inf capped at
``PSNR_CAP_DB`` so a single perfect image cannot make the mean infinite.

This module is the one implementation used by ``TokenizerModule`` validation/test, ``eval recon`` and
the reports. ``evaluate_reconstruction`` adds, for a tokenizer over a data set: PSNR / SSIM of the full
reconstruction, PSNR per scale (decoding only the first k scales of the schedule: the progressive
reconstruction the generator sees after scale k) and rFID (FID of the reconstructions against the
originals, through ``fid.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

#: Data range (max − min) of images in [-1, 1].
DATA_RANGE = 2.0
#: Cap applied to per-image PSNR (dB) before averaging, for identical images (MSE = 0 → +inf).
PSNR_CAP_DB = 100.0


def _check(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(
            f"expected two image batches (B,3,H,W) of equal shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def psnr_per_image(pred: Tensor, target: Tensor) -> Tensor:
    """PSNR of each image, in dB.

    Args:
        pred: (B, C, H, W) float in [-1, 1].
        target: (B, C, H, W) float in [-1, 1].

    Returns:
        (B,) float32 dB; +inf for an image identical to its target.

    Raises:
        ValueError: shapes differ or are not 4-D.
    """
    _check(pred, target)
    return peak_signal_noise_ratio(
        pred.float(), target.float(), data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3)
    )


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Mean per-image PSNR (dB) of a batch of [-1, 1] images, each image capped at ``PSNR_CAP_DB``.

    Returns:
        scalar float32 dB (+inf only through the cap: at most ``PSNR_CAP_DB``).
    """
    return psnr_per_image(pred, target).clamp_max(PSNR_CAP_DB).mean()


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Mean SSIM (Gaussian window 11, σ 1.5) of a batch of [-1, 1] images; 1.0 for identical images.

    Returns:
        scalar float32 in [-1, 1].
    """
    _check(pred, target)
    return structural_similarity_index_measure(pred.float(), target.float(), data_range=DATA_RANGE)


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float (B, 3, H, W) → uint8 [0, 255] (B, 3, H, W), rounding to nearest, clamped."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


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

    from .fid import check_set_sizes, fid_from_features
    from .inception import inception_features, load_inception

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

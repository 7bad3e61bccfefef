"""Reconstruction metrics for images in [-1, 1]: PSNR and SSIM through torchmetrics.

Both metrics are told the data range of the [-1, 1] convention, 2.0 (max − min), so that
PSNR = 10·log10(2² / MSE): a target in [-0.9, 0.9] with the prediction offset by 0.1 gives
10·log10(4 / 0.01) = 26.02 dB (not 20.00 dB, which a range of 1 would give). Identical images give
PSNR = +inf (never NaN); averages over a data set are taken over per-image PSNRs with +inf capped at
``PSNR_CAP_DB`` so a single perfect image cannot make the mean infinite.

This module is the one implementation used by ``TokenizerModule`` validation/test, ``eval recon``
(``infinity_lit.evaluation.recon``) and the reports. Numbers only: no model, no checkpoint.
"""

from __future__ import annotations

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


def to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] (…, 3, H, W) → float32 [-1, 1] (x / 127.5 − 1); the inverse of ``to_uint8``."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images in [0, 255], got {images.dtype}")
    return images.float() / 127.5 - 1.0

"""FID and KID between two image sets, through torch-fidelity.

Features are torch-fidelity's Inception pool3 features (``inception.py``: uint8 [0, 255] images in,
(N, 2048) out); the statistics and the distances are torch-fidelity's own functions
(``fid_features_to_statistics`` → ``fid_statistics_to_metric``; ``kid_features_to_metric``), so a number
here equals ``torch_fidelity.calculate_metrics`` on the same images with the same weights.

FID (Heusel et al. 2017): ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), over Gaussian fits of the two feature
sets; 0 for identical sets; biased upwards for small sets, so only FIDs over sets of the same size are
comparable, and a set much smaller than the feature dimension (2048) gives a rank-deficient covariance
(a warning is recorded). KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel,
mean ± std over random subsets; unbiased, may be slightly negative for matching distributions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .inception import FEATURE_DIM, inception_features, load_inception

#: Default number of KID subsets and the largest subset size (torch-fidelity's defaults).
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def check_set_sizes(*sizes: int, feature_dim: int = FEATURE_DIM) -> list[str]:
    """Validate image-set sizes for FID/KID.

    Returns:
        warnings (strings) for sets smaller than ``feature_dim``.

    Raises:
        ValueError: a set has fewer than 2 images (no covariance can be estimated).
    """
    warnings_: list[str] = []
    for i, n in enumerate(sizes, start=1):
        if n < 2:
            raise ValueError(f"FID/KID need at least 2 images per set; set {i} has {n}")
        if n < feature_dim:
            warnings_.append(
                f"set {i} has {n} images, fewer than the feature dimension {feature_dim}: the covariance is "
                "rank-deficient and FID is biased upwards; compare only FIDs computed on sets of the same size "
                "(use >= 10,000 images for reported numbers)"
            )
    return warnings_


def fid_from_features(features_1: Tensor, features_2: Tensor) -> float:
    """FID between two feature sets, computed by torch-fidelity.

    Args:
        features_1: (N1, D) float features (N1 ≥ 2).
        features_2: (N2, D) float features (N2 ≥ 2), same D.

    Returns:
        FID (≥ 0 up to rounding; ~0 for identical sets).

    Raises:
        ValueError: shapes are not (N, D) with equal D, or a set has fewer than 2 rows.
    """
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    _check_features(features_1, features_2)
    stats_1 = fid_features_to_statistics(features_1.detach().double().cpu())
    stats_2 = fid_features_to_statistics(features_2.detach().double().cpu())
    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)[KEY_METRIC_FID])


def kid_from_features(
    features_1: Tensor,
    features_2: Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 2020,
) -> tuple[float, float, int]:
    """KID (mean, std over subsets) between two feature sets, computed by torch-fidelity.

    The subset size is ``min(subset_size, N1, N2)`` so that small sets still get a value.

    Returns:
        (kid_mean, kid_std, subset size used).
    """
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    _check_features(features_1, features_2)
    size = min(subset_size, len(features_1), len(features_2))
    out = kid_features_to_metric(
        features_1.detach().double().cpu(),
        features_2.detach().double().cpu(),
        kid_subsets=subsets,
        kid_subset_size=size,
        rng_seed=seed,
        verbose=False,
    )
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD]), size


def _check_features(features_1: Tensor, features_2: Tensor) -> None:
    if features_1.dim() != 2 or features_2.dim() != 2 or features_1.shape[1] != features_2.shape[1]:
        raise ValueError(
            f"expected feature sets (N1,D) and (N2,D), got {tuple(features_1.shape)} and {tuple(features_2.shape)}"
        )
    check_set_sizes(len(features_1), len(features_2), feature_dim=features_1.shape[1])


@dataclass
class FidKidResult:
    """FID/KID of set 1 against set 2 (reference), with the settings that produced them."""

    fid: float
    kid_mean: float
    kid_std: float
    kid_subset_size: int
    kid_subsets: int
    num_images_1: int
    num_images_2: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def fid_kid_from_features(
    features_1: Tensor, features_2: Tensor, kid_subsets: int = KID_SUBSETS, seed: int = 2020
) -> FidKidResult:
    """FID and KID of two pool3 feature sets (see ``fid_from_features`` / ``kid_from_features``)."""
    warnings_ = check_set_sizes(len(features_1), len(features_2), feature_dim=features_1.shape[1])
    fid = fid_from_features(features_1, features_2)
    kid_mean, kid_std, size = kid_from_features(features_1, features_2, subsets=kid_subsets, seed=seed)
    return FidKidResult(
        fid, kid_mean, kid_std, size, kid_subsets, len(features_1), len(features_2), warnings_
    )


def extract_features(
    batches: Iterable[Tensor],
    model: torch.nn.Module | None = None,
    weights_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    progress: str | None = None,
    total: int | None = None,
) -> Tensor:
    """Inception pool3 features of a stream of image batches.

    Args:
        batches: uint8 (B, 3, H, W) batches in [0, 255].
        model: a loaded ``load_inception`` model, or None to load one from ``weights_path``.
        weights_path: torch-fidelity Inception weights (default: the converted offline weights).
        device: device for a newly loaded model.
        batch_size: images per forward pass.
        progress: tqdm description, or None for no bar.
        total: number of images, for the bar.

    Returns:
        float64 (N, 2048) on CPU.
    """
    from tqdm import tqdm

    model = model if model is not None else load_inception(weights_path, device)
    feats = []
    with tqdm(total=total, desc=progress, unit="img", disable=progress is None) as bar:
        for batch in batches:
            feats.append(inception_features(model, batch, batch_size))
            bar.update(len(batch))
    return torch.cat(feats) if feats else torch.zeros(0, FEATURE_DIM, dtype=torch.float64)


def fid_kid(
    images_1: Iterable[Tensor],
    images_2: Iterable[Tensor],
    weights_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    kid_subsets: int = KID_SUBSETS,
    seed: int = 2020,
) -> FidKidResult:
    """FID/KID between two image sets.

    Args:
        images_1: uint8 (B, 3, H, W) batches in [0, 255] (e.g. generated or reconstructed images).
        images_2: uint8 (B, 3, H, W) batches in [0, 255] (the reference set).
        weights_path: torch-fidelity Inception weights (default: the converted offline weights).
        device: where Inception runs.
        batch_size: images per Inception forward pass.
        kid_subsets: number of KID subsets.
        seed: seed of KID's subset sampling.

    Raises:
        ValueError: a set has fewer than 2 images, or a batch is not uint8 (B, 3, H, W).
    """
    model = load_inception(weights_path, device)
    f1 = extract_features(images_1, model, batch_size=batch_size)
    f2 = extract_features(images_2, model, batch_size=batch_size)
    return fid_kid_from_features(f1, f2, kid_subsets=kid_subsets, seed=seed)

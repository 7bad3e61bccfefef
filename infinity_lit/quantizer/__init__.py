"""Bitwise quantizers (pure torch; no Lightning imports): BSQ / LFQ and the multi-scale residual BSQ."""

from .bsq import BSQ, LFQ, QuantizerOutput
from .multiscale import MultiScaleBSQ, MultiScaleOutput, downsample, resample_bilinear, upsample
from .schedules import (
    REFERENCE_ASPECT_RATIOS,
    REFERENCE_SIDES,
    ScaleSchedule,
    aspect_ratio_schedule,
    named_schedule,
    num_tokens,
    schedule_for_latent,
    square_schedule,
    validate_schedule,
)

__all__ = [
    "BSQ",
    "LFQ",
    "REFERENCE_ASPECT_RATIOS",
    "REFERENCE_SIDES",
    "MultiScaleBSQ",
    "MultiScaleOutput",
    "QuantizerOutput",
    "ScaleSchedule",
    "aspect_ratio_schedule",
    "downsample",
    "named_schedule",
    "num_tokens",
    "resample_bilinear",
    "schedule_for_latent",
    "square_schedule",
    "upsample",
    "validate_schedule",
]

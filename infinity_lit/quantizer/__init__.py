"""Bitwise quantizers (pure torch; no Lightning imports): BSQ / LFQ and the multi-scale residual BSQ.

The residual step (with its per-scale flip hook) and the bits ↔ codes ↔ indices conversions live here
once; the generator's self-correction and sampling wrap them.
"""

from .bsq import BSQ, LFQ, QuantizerOutput, bits_to_indices, indices_to_bits
from .multiscale import (
    FlipHook,
    MultiScaleBSQ,
    MultiScaleOutput,
    ResidualState,
    ScaleStep,
    downsample,
    resample_bilinear,
    upsample,
)
from .schedules import (
    REFERENCE_ASPECT_RATIOS,
    REFERENCE_SIDES,
    ScaleSchedule,
    aspect_ratio_schedule,
    named_schedule,
    num_tokens,
    scale_bounds,
    schedule_for_latent,
    square_schedule,
    validate_schedule,
)

__all__ = [
    "BSQ",
    "LFQ",
    "REFERENCE_ASPECT_RATIOS",
    "REFERENCE_SIDES",
    "FlipHook",
    "MultiScaleBSQ",
    "MultiScaleOutput",
    "QuantizerOutput",
    "ResidualState",
    "ScaleSchedule",
    "ScaleStep",
    "aspect_ratio_schedule",
    "bits_to_indices",
    "downsample",
    "indices_to_bits",
    "named_schedule",
    "num_tokens",
    "resample_bilinear",
    "scale_bounds",
    "schedule_for_latent",
    "square_schedule",
    "upsample",
    "validate_schedule",
]

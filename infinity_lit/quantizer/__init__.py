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
    ASPECT_RATIO_TEMPLATES,
    ASPECT_RATIOS,
    REFERENCE_SIDES,
    TEMPLATE_SCALE_COUNTS,
    ScaleSchedule,
    aspect_ratio_schedule,
    named_schedule,
    nearest_aspect_ratio,
    num_tokens,
    scale_bounds,
    schedule_for_grid,
    schedule_for_latent,
    schedule_for_ratio,
    shape_schedule_for,
    shape_schedules,
    square_schedule,
    template_scale_count,
    template_schedule,
    validate_schedule,
)

__all__ = [
    "ASPECT_RATIOS",
    "ASPECT_RATIO_TEMPLATES",
    "BSQ",
    "LFQ",
    "REFERENCE_SIDES",
    "TEMPLATE_SCALE_COUNTS",
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
    "nearest_aspect_ratio",
    "num_tokens",
    "resample_bilinear",
    "scale_bounds",
    "schedule_for_grid",
    "schedule_for_latent",
    "schedule_for_ratio",
    "shape_schedule_for",
    "shape_schedules",
    "square_schedule",
    "template_scale_count",
    "template_schedule",
    "upsample",
    "validate_schedule",
]

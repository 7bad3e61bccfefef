"""Bitwise Self-Correction (BSC): teacher forcing with random bit flips (Infinity, arXiv 2412.04431, §3.4).

Training only, generator only (the tokenizer never flips). Given the tokenizer's latent F (B, d, h, w)
and its multi-scale BSQ, for each scale k in order:

    r_k   = down(F − F̂_{<k}, (h_k, w_k))            area; the residual of the *corrupted* reconstruction
    b_k   = bits of BSQ(r_k)                          the target of scale k, never flipped
    p     ~ uniform on {0, 0.01, …, max_flip_prob}    one draw per scale, shared by the whole batch
    b̃_k   = b_k XOR Bernoulli(p)                      each bit flipped independently
    F̂_{≤k} = F̂_{<k} + up(q(b̃_k))                     the flipped codes enter the reconstruction
    input_{k+1} = next_scale_input(F̂_{≤k}, (h_{k+1}, w_{k+1}))     bilinear

so the targets of scale k+1 are re-quantised against the corrupted reconstruction and the model learns
to correct earlier mistakes.

BSC is a *flip policy*, not a second quantizer: the residual loop is the tokenizer's own
(``MultiScaleBSQ.start`` / ``step``), and BSC only supplies the per-scale flip hook (draw p, draw the
flips, return b̃_k) and reads the next-scale inputs off the reconstruction. ``max_flip_prob = 0`` is
therefore plain teacher forcing, bit for bit the tokenizer's ``MultiScaleBSQ`` (same steps, same
codes). The ``requantize=False`` ablation flips the inputs but keeps the residual, and so the targets,
on the clean chain (``step(..., requantize=False)``; the paper: no gain).

A flipped bit negates its code (codes are ±1/√d, or ±1 for LFQ), so rebuilding the codes of the flipped
bits is exact and, without flips, returns the quantizer's own codes. Everything runs in fp32 under
``no_grad`` (the tokenizer is frozen).

Random draws, per scale in order: the level of p (``torch.randint``, skipped when p_max = 0), then the
flips (``torch.rand`` of the scale's (B, h·w, d) bits, skipped when p = 0), from the given generator or
torch's global one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from infinity_lit.quantizer import (
    MultiScaleBSQ,
    ResidualState,
    ScaleSchedule,
    downsample,
    scale_bounds,
    upsample,
    validate_schedule,
)

from .transformer import next_scale_input

#: Granularity of the per-scale flip probability (the reference draws from {0, 0.01, …, p_max}).
FLIP_PROB_STEP = 0.01


@dataclass
class BSCOutput:
    """Targets and inputs of one teacher-forced step.

    Attributes:
        targets: (B, L, d) int64 {0,1}, the bits every scale must predict, concatenated in scale order.
        inputs: (B, L − h₁w₁, d) float32, the next-scale inputs of scales 2..K for the transformer.
        flips: (B, L, d) bool, True where a bit was flipped before entering the reconstruction.
        flip_probs: (K,) float32, the flip probability drawn for each scale.
        quantized: (B, d, h, w) float32, the (corrupted) reconstruction F̂ after all scales.
    """

    targets: Tensor
    inputs: Tensor
    flips: Tensor
    flip_probs: Tensor
    quantized: Tensor


def flip_levels(max_flip_prob: float) -> int:
    """Number of values in {0, 0.01, …, max_flip_prob}.

    Raises:
        ValueError: max_flip_prob outside [0, 1] or not a multiple of 0.01.
    """
    if not 0.0 <= max_flip_prob <= 1.0:
        raise ValueError(f"max_flip_prob must be in [0, 1], got {max_flip_prob}")
    steps = round(max_flip_prob / FLIP_PROB_STEP)
    if abs(steps * FLIP_PROB_STEP - max_flip_prob) > 1e-9:
        raise ValueError(f"max_flip_prob must be a multiple of {FLIP_PROB_STEP}, got {max_flip_prob}")
    return steps + 1


class BitwiseSelfCorrection:
    """Builds BSC targets / inputs from a latent with the tokenizer's (frozen) multi-scale BSQ.

    Args:
        quantizer: the tokenizer's ``MultiScaleBSQ``; its residual steps do the quantization.
        max_flip_prob: p_max in [0, 1], a multiple of 0.01 (reference best 0.3; 0 = teacher forcing).
        requantize: True (BSC): targets from the corrupted residual. False (ablation): targets from the
            clean residual chain, inputs from the flipped codes.

    Raises:
        ValueError: max_flip_prob out of range.
    """

    def __init__(self, quantizer: MultiScaleBSQ, max_flip_prob: float = 0.0, requantize: bool = True) -> None:
        self.quantizer = quantizer
        self.levels = flip_levels(max_flip_prob)
        self.max_flip_prob = float(max_flip_prob)
        self.requantize = bool(requantize)

    def _draw_p(self, generator: torch.Generator | None, device: torch.device) -> float:
        if self.levels == 1:
            return 0.0
        dev = generator.device if generator is not None else device
        level = torch.randint(self.levels, (), generator=generator, device=dev)
        return float(level.item()) * FLIP_PROB_STEP

    def draw_flips(self, bits: Tensor, generator: torch.Generator | None = None) -> tuple[float, Tensor]:
        """One scale's flip probability p and flips, for the bits (B, h·w, d) of that scale.

        Returns:
            (p, flips): p in {0, 0.01, …, p_max}; flips (B, h·w, d) bool on ``bits``' device, each True
            with probability p (all False, without a draw, when p = 0).
        """
        p = self._draw_p(generator, bits.device)
        if p > 0:
            dev = generator.device if generator is not None else bits.device
            flips = (torch.rand(*bits.shape, generator=generator, device=dev) < p).to(bits.device)
        else:
            flips = torch.zeros(bits.shape, dtype=torch.bool, device=bits.device)
        return p, flips

    @torch.no_grad()
    def __call__(
        self,
        latent: Tensor,
        scale_schedule: Sequence[Sequence[int]] | None = None,
        generator: torch.Generator | None = None,
    ) -> BSCOutput:
        """Targets, inputs and flips for a batch of latents.

        Args:
            latent: F (B, d, h, w) from ``tokenizer.encode`` (any float dtype; computed in fp32).
            scale_schedule: default: the quantizer's; its last scale must equal (h, w).
            generator: source of the flip probabilities and flips (default: torch's global generator,
                seeded by Lightning); must live on ``latent``'s device.

        Returns:
            ``BSCOutput``.

        Raises:
            ValueError: latent shape does not fit d or the schedule.
        """
        schedule: ScaleSchedule = (
            self.quantizer.scale_schedule if scale_schedule is None else validate_schedule(scale_schedule)
        )
        d = self.quantizer.codebook_dim
        if latent.dim() != 4 or latent.shape[1] != d or tuple(latent.shape[-2:]) != schedule[-1]:
            raise ValueError(
                f"latent must be (B, {d}, {schedule[-1][0]}, {schedule[-1][1]}) for this tokenizer, "
                f"got {tuple(latent.shape)}"
            )
        flips: list[Tensor] = []
        probs: list[float] = []

        def flip(k: int, bits: Tensor) -> Tensor | None:  # the flip hook of the residual step
            p, f = self.draw_flips(bits, generator)
            probs.append(p)
            flips.append(f)
            return bits ^ f if p > 0 else None

        targets, inputs = [], []
        with torch.autocast(device_type=latent.device.type, enabled=False):
            state = self.quantizer.start(latent, schedule)
            for k in range(len(schedule)):
                step = self.quantizer.step(state, flip, requantize=self.requantize)
                targets.append(step.output.bits)  # the quantizer's own bits: never flipped
                if k + 1 < len(schedule):
                    inputs.append(next_scale_input(state.quantized, schedule[k + 1]))
        empty = latent.new_zeros(latent.shape[0], 0, d, dtype=torch.float32)
        return BSCOutput(
            targets=torch.cat(targets, 1),
            inputs=torch.cat(inputs, 1) if inputs else empty,
            flips=torch.cat(flips, 1),
            flip_probs=torch.tensor(probs, dtype=torch.float32),
            quantized=state.quantized,
        )


def teacher_forcing_inputs(codes: Sequence[Tensor], scale_schedule: Sequence[Sequence[int]]) -> Tensor:
    """Next-scale inputs from given per-scale codes (no flips): input_{k+1} = resample(Σ_{j≤k} up(q_j)).

    The sum is the quantizer's accumulation (``ResidualState.add_codes``), as in sampling.

    Args:
        codes: per scale k, (B, d, h_k, w_k) float codes (e.g. ``MultiScaleOutput.codes``).
        scale_schedule: the schedule of the codes.

    Returns:
        (B, L − h₁w₁, d) float32.

    Raises:
        ValueError: codes for another number of scales, or of the wrong shape.
    """
    schedule = validate_schedule(scale_schedule)
    if len(codes) != len(schedule):
        raise ValueError(f"got codes for {len(codes)} scales, the schedule has {len(schedule)}")
    state = ResidualState.empty(schedule)
    inputs = []
    for k, c in enumerate(codes[:-1]):
        state.add_codes(c)
        inputs.append(next_scale_input(state.quantized, schedule[k + 1]))
    if not inputs:
        return codes[0].new_zeros(codes[0].shape[0], 0, codes[0].shape[1])
    return torch.cat(inputs, 1)


# ---------------------------------------------------------------------------------------- diagnostic


@functools.lru_cache(maxsize=16)
def _footprints(
    schedule: tuple[tuple[int, int], ...], device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, ...]:
    hw = schedule[-1]
    out = []
    for k in range(len(schedule) - 1):
        h, w = schedule[k]
        eye = torch.eye(h * w, device=device, dtype=dtype).view(h * w, 1, h, w)
        out.append(downsample(upsample(eye, hw), schedule[k + 1]).flatten(1))  # (l_k, l_{k+1})
    return tuple(out)


def flip_footprints(
    scale_schedule: Sequence[Sequence[int]],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, ...]:
    """Footprint a_j = down_area(up_bilinear(e_j)) of every cell j of scale k on the grid of scale k+1.

    They depend on the schedule only, so they are built once per (schedule, device, dtype) and cached
    (up to 16 such keys); treat them as read-only.

    Returns:
        for k = 1..K−1, a (h_k·w_k, h_{k+1}·w_{k+1}) tensor: row j is cell j's footprint.
    """
    schedule = tuple(validate_schedule(scale_schedule))
    return _footprints(schedule, torch.device(device), dtype)


def self_correction_rate(
    flips: Tensor, targets: Tensor, predicted: Tensor, scale_schedule: Sequence[Sequence[int]]
) -> tuple[Tensor, Tensor]:
    """How often the model's next-scale prediction pushes a flipped bit's error back (BSC diagnostic).

    Definition. A flip of bit c at cell j of scale k (original bit b, sign σ = 2b − 1) moves the
    reconstruction by −2σ·s·up(e_j) in channel c (e_j the one-hot of cell j, s the code magnitude). Its
    footprint on the grid of scale k+1 is the weight vector a_j = down_area(up_bilinear(e_j)), the same
    resampling that builds the residual the scale-(k+1) target comes from (``flip_footprints``, cached).
    The model's scale-(k+1) prediction removes the error when its predicted codes in channel c, weighted by
    that footprint, point back towards the original bit: Σ_i a_j[i]·(2·b̂_{k+1}[i, c] − 1) has the sign σ.
    The rate is the fraction of flipped bits (scales 1..K−1) for which this holds; the same criterion over
    the bits that were *not* flipped gives the baseline (how often the next scale agrees with a bit's sign
    anyway).

    Args:
        flips: (B, L, d) bool, from ``BSCOutput``.
        targets: (B, L, d) {0,1}, the (unflipped) target bits.
        predicted: (B, L, d) {0,1}, the model's argmax bits on the same teacher-forced sequence.
        scale_schedule: the schedule.

    Returns:
        (rate, baseline): scalar float32 tensors; NaN when no bit was flipped (resp. none unflipped).
    """
    schedule = validate_schedule(scale_schedule)
    bounds = scale_bounds(schedule)
    footprints = flip_footprints(schedule, flips.device)
    corrected = flipped = agree = unflipped = 0
    for k, footprint in enumerate(footprints):
        (a0, a1), (b0, b1) = bounds[k], bounds[k + 1]
        pred_sign = predicted[:, b0:b1].float() * 2 - 1  # (B, l_{k+1}, d)
        score = torch.einsum("jl,bld->bjd", footprint, pred_sign)  # (B, l_k, d)
        sigma = targets[:, a0:a1].float() * 2 - 1
        ok = score * sigma > 0
        f = flips[:, a0:a1]
        corrected += (ok & f).sum()
        flipped += f.sum()
        agree += (ok & ~f).sum()
        unflipped += (~f).sum()
    nan = torch.tensor(float("nan"))
    rate = torch.as_tensor(corrected, dtype=torch.float32) / flipped if flipped else nan
    baseline = torch.as_tensor(agree, dtype=torch.float32) / unflipped if unflipped else nan
    return rate, baseline

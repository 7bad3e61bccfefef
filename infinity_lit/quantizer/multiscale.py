"""Multi-scale residual bitwise quantization over a scale schedule (Infinity, arXiv 2412.04431, §3.1).

Given a latent F (B, d, h, w) and a schedule [(h₁,w₁), …, (h_K,w_K)] with (h_K,w_K) = (h,w):

    residual ← F
    for k = 1..K:
        r_k = down(residual, (h_k, w_k))          area interpolation
        q_k = BSQ(r_k)                            (B, d, h_k, w_k), unit-norm codes
        residual ← residual − up(q_k, (h, w))      bilinear interpolation
    F̂ = Σ_k up(q_k, (h, w))

Each scale's quantizer gets the straight-through gradient of its own input; the residual chain is
detached (as in the reference code), so F receives one gradient path per scale.

Decoding from the first k scales only gives the progressive reconstruction. The optional "_reg"
regulariser (``scale_drop_prob``) keeps only a random prefix of the scales for a whole batch during
training, so that early scales alone decode well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bsq import BSQ
from .schedules import ScaleSchedule, validate_schedule


def downsample(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """Area down-sampling of (B, C, H, W) to ``hw`` (identity when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=tuple(hw), mode="area")


def upsample(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """Bilinear up-sampling (align_corners=False) of (B, C, h, w) to ``hw`` (identity on equal size)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)


def resample_bilinear(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """Bilinear resampling in either direction (used for the generator's next-scale input)."""
    return upsample(x, hw)


class MultiScaleOutput(NamedTuple):
    """Result of multi-scale quantization.

    Attributes:
        quantized: F̂ = Σ_k up(q_k), (B, d, h, w) float32, with straight-through gradient to the input.
        codes: per scale, (B, d, h_k, w_k) float32 codes ±1/√d.
        bits: per scale, (B, h_k·w_k, d) int64 bits in {0, 1}.
        entropy_loss: scalar, weighted entropy penalty averaged over the scales used.
        commit_loss: scalar, weighted commitment loss averaged over the scales used.
        per_sample_entropy: scalar, mean over scales (nats), detached.
        codebook_entropy: scalar, mean over scales (nats), detached.
    """

    quantized: Tensor
    codes: list[Tensor]
    bits: list[Tensor]
    entropy_loss: Tensor
    commit_loss: Tensor
    per_sample_entropy: Tensor
    codebook_entropy: Tensor


class MultiScaleBSQ(nn.Module):
    """Residual BSQ over a scale schedule; wraps one shared single-scale ``BSQ``.

    Args:
        codebook_dim: d, bits per position, 1..64.
        scale_schedule: list of (h, w) pairs, strictly growing, last = latent grid.
        spherical: BSQ (True) or LFQ (False).
        entropy_weight: weight of the per-bit entropy penalty (0 = off, exactly 0).
        commit_weight: commitment weight β (0 = off, exactly 0).
        codebook_entropy_weight: γ of the codebook-entropy term.
        entropy_temperature: T of the soft bit probabilities.
        scale_drop_prob: training only; probability that a batch keeps only a random prefix of 1..K−1
            scales ("_reg" variant, reference 0.5). 0 = always all scales.

    Raises:
        ValueError: invalid schedule (empty, not growing), codebook_dim outside 1..64, probability
            outside [0, 1].
    """

    def __init__(
        self,
        codebook_dim: int,
        scale_schedule: Sequence[Sequence[int]],
        spherical: bool = True,
        entropy_weight: float = 0.0,
        commit_weight: float = 0.25,
        codebook_entropy_weight: float = 1.0,
        entropy_temperature: float = 1.0,
        scale_drop_prob: float = 0.0,
    ) -> None:
        super().__init__()
        self.bsq = BSQ(
            codebook_dim,
            spherical=spherical,
            entropy_weight=entropy_weight,
            commit_weight=commit_weight,
            codebook_entropy_weight=codebook_entropy_weight,
            entropy_temperature=entropy_temperature,
        )
        self.scale_schedule: ScaleSchedule = validate_schedule(scale_schedule)
        if not 0.0 <= scale_drop_prob <= 1.0:
            raise ValueError(f"scale_drop_prob must be in [0, 1], got {scale_drop_prob}")
        self.scale_drop_prob = float(scale_drop_prob)

    @property
    def codebook_dim(self) -> int:
        return self.bsq.codebook_dim

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.scale_schedule[-1]

    def _schedule_for(self, z: Tensor, scale_schedule: Sequence[Sequence[int]] | None) -> ScaleSchedule:
        schedule = self.scale_schedule if scale_schedule is None else validate_schedule(scale_schedule)
        if tuple(z.shape[-2:]) != schedule[-1]:
            raise ValueError(
                f"latent grid {tuple(z.shape[-2:])} does not match the last scale {schedule[-1]} of the schedule; "
                "the image size must be the last scale × the tokenizer stride"
            )
        return schedule

    def forward(
        self,
        z: Tensor,
        scale_schedule: Sequence[Sequence[int]] | None = None,
        num_scales: int | None = None,
        generator: torch.Generator | None = None,
    ) -> MultiScaleOutput:
        """Quantize a latent over the schedule.

        Args:
            z: (B, d, h, w) latent (any float dtype; quantization in fp32).
            scale_schedule: override of the module's schedule (e.g. an aspect-ratio schedule);
                its last scale must equal (h, w).
            num_scales: quantize only the first ``num_scales`` scales (progressive reconstruction).
            generator: randomness for ``scale_drop_prob``.

        Returns:
            ``MultiScaleOutput``; ``quantized`` sums the scales actually used.

        Raises:
            ValueError: shape mismatch with the schedule or codebook_dim.
        """
        schedule = self._schedule_for(z, scale_schedule)
        K = len(schedule)
        if num_scales is None:
            num_scales = K
            if self.training and self.scale_drop_prob > 0 and K > 1:
                draw = torch.rand((), generator=generator).item()
                if draw < self.scale_drop_prob:
                    num_scales = int(torch.randint(1, K, (), generator=generator).item())
        if not 1 <= num_scales <= K:
            raise ValueError(f"num_scales must be in 1..{K}, got {num_scales}")

        hw = schedule[-1]
        with torch.autocast(device_type=z.device.type, enabled=False):
            residual = z.float()
            quantized = torch.zeros_like(residual)
            codes, bits = [], []
            entropy, commit, ps_ent, cb_ent = [], [], [], []
            for k in range(num_scales):
                out = self.bsq(downsample(residual, schedule[k]))
                up = upsample(out.codes, hw)
                residual = residual - up.detach()
                quantized = quantized + up
                codes.append(out.codes)
                bits.append(out.bits)
                entropy.append(out.entropy_loss)
                commit.append(out.commit_loss)
                ps_ent.append(out.per_sample_entropy)
                cb_ent.append(out.codebook_entropy)
        mean = lambda xs: torch.stack(xs).mean()  # noqa: E731
        return MultiScaleOutput(
            quantized, codes, bits, mean(entropy), mean(commit), mean(ps_ent), mean(cb_ent)
        )

    # ------------------------------------------------------------------ decoding helpers
    def codes_to_quantized(self, codes: Sequence[Tensor], latent_hw: tuple[int, int] | None = None) -> Tensor:
        """F̂ = Σ_k up(codes_k) for the given (possibly first-k) per-scale codes, (B, d, h, w) float32."""
        hw = tuple(latent_hw) if latent_hw is not None else self.latent_hw
        out = None
        for c in codes:
            up = upsample(c.float(), hw)
            out = up if out is None else out + up
        if out is None:
            raise ValueError("need the codes of at least one scale")
        return out

    def bits_to_codes(self, bits: Tensor, hw: tuple[int, int]) -> Tensor:
        """Bits (B, h·w, d) of one scale → codes (B, d, h, w) float32."""
        B, L, d = bits.shape
        if L != hw[0] * hw[1] or d != self.codebook_dim:
            raise ValueError(
                f"bits of shape {tuple(bits.shape)} do not fit scale {hw} with d={self.codebook_dim}"
            )
        return self.bsq.bits_to_codes(bits).transpose(1, 2).reshape(B, d, hw[0], hw[1])

    def bits_to_quantized(
        self, bits: Sequence[Tensor], scale_schedule: Sequence[Sequence[int]] | None = None
    ) -> Tensor:
        """F̂ from the per-scale bits of the first k = len(bits) scales, (B, d, h, w) float32.

        Args:
            bits: list of (B, h_j·w_j, d) {0,1} tensors for scales j = 1..k.
            scale_schedule: the schedule the bits follow (default: the module's).
        """
        schedule = self.scale_schedule if scale_schedule is None else validate_schedule(scale_schedule)
        if not 1 <= len(bits) <= len(schedule):
            raise ValueError(f"got bits for {len(bits)} scales; the schedule has {len(schedule)}")
        codes = [self.bits_to_codes(b, schedule[j]) for j, b in enumerate(bits)]
        return self.codes_to_quantized(codes, schedule[-1])

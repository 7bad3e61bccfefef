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

The loop body lives in one place, ``MultiScaleBSQ.step``, over a ``ResidualState`` begun by
``MultiScaleBSQ.start``; ``forward`` is that loop. An optional per-scale *flip hook* may replace the bits
of scale k before they enter the reconstruction (a replaced bit negates its code, which is exact since
codes are ±s): Bitwise Self-Correction (``infinity_lit.generator.self_correction``) is such a hook.
Rebuilding F̂ from given bits (sampling, decoding) uses the same accumulation, F̂ ← F̂ + up(q_k), through
``MultiScaleBSQ.start_decoding`` and ``add_bits`` (``ResidualState.add_codes`` underneath).

Decoding from the first k scales only gives the progressive reconstruction. The optional "_reg"
regulariser (``scale_drop_prob``) keeps only a random prefix of the scales for a whole batch during
training, so that early scales alone decode well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bsq import BSQ, QuantizerOutput
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


#: A per-scale flip hook: ``hook(k, bits)`` gets the index k (0-based) of the scale and its bits
#: (B, h_k·w_k, d) int64 {0,1} as BSQ gave them, and returns the bits (same shape, {0,1}) that enter the
#: reconstruction instead, or None to keep them.
FlipHook = Callable[[int, Tensor], Tensor | None]


def _tokens_to_grid(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """(B, h·w, d), row-major over the grid → (B, d, h, w)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1])


@dataclass
class ResidualState:
    """Where a scale-by-scale pass over a schedule stands; advanced in place, one scale at a time.

    Begun by ``MultiScaleBSQ.start`` (quantizing a latent: ``residual`` set), ``MultiScaleBSQ.start_decoding``
    (rebuilding F̂ from given bits) or ``ResidualState.empty`` (summing given codes).

    Attributes:
        schedule: the scales of the pass, in order.
        latent_hw: (h, w), the grid of F̂ and of the residual.
        quantized: F̂ = Σ_{j<num_done} up(q_j), (B, d, h, w) float32; None while F̂ is still 0 and not
            materialised (``empty``): the first ``add_codes`` then sets F̂ = up(q_1) itself, so F̂ keeps the
            memory layout of the up-sampled codes. ``start`` / ``start_decoding`` begin from a zero tensor
            instead (F̂ then has the layout of the latent, resp. is contiguous).
        residual: (B, d, h, w) float32, what the next scale quantizes (after area down-sampling); None
            when there is no latent.
        num_done: the number of scales accumulated so far.
    """

    schedule: ScaleSchedule
    latent_hw: tuple[int, int]
    quantized: Tensor | None = None
    residual: Tensor | None = None
    num_done: int = 0

    @classmethod
    def empty(
        cls, schedule: Sequence[Sequence[int]], latent_hw: Sequence[int] | None = None
    ) -> ResidualState:
        """A pass with F̂ = 0 (not materialised) and no residual; latent_hw defaults to the last scale."""
        schedule = [(int(h), int(w)) for h, w in schedule]
        hw = schedule[-1] if latent_hw is None else (int(latent_hw[0]), int(latent_hw[1]))
        return cls(schedule, hw)

    @property
    def next_hw(self) -> tuple[int, int]:
        """(h_k, w_k) of the next scale.

        Raises:
            ValueError: every scale of the schedule is done.
        """
        if self.num_done >= len(self.schedule):
            raise ValueError(f"all {len(self.schedule)} scales are already accumulated")
        return self.schedule[self.num_done]

    def add_codes(self, codes: Tensor) -> Tensor:
        """Accumulate the next scale: F̂ ← F̂ + up(codes) (bilinear, in fp32); ``num_done`` advances.

        Args:
            codes: (B, d, h_k, w_k) float codes of the next scale (gradients flow through).

        Returns:
            up(codes), (B, d, h, w) float32.

        Raises:
            ValueError: all scales done, or codes that do not fit the next scale.
        """
        hw_k = self.next_hw
        if tuple(codes.shape[-2:]) != hw_k or (
            self.quantized is not None and codes.shape[:2] != self.quantized.shape[:2]
        ):
            expected = (*self.quantized.shape[:2], *hw_k) if self.quantized is not None else ("B", "d", *hw_k)
            raise ValueError(
                f"codes of shape {tuple(codes.shape)} do not fit scale {self.num_done}: expected {expected}"
            )
        with torch.autocast(device_type=codes.device.type, enabled=False):
            up = upsample(codes.float(), self.latent_hw)
            self.quantized = up if self.quantized is None else self.quantized + up
        self.num_done += 1
        return up


class ScaleStep(NamedTuple):
    """One residual step of ``MultiScaleBSQ.step``.

    Attributes:
        scale: k, the 0-based index of the scale.
        output: BSQ(r_k) of the residual: its codes (B, d, h_k, w_k) float32 and bits (B, h_k·w_k, d)
            int64 (the quantizer's own, before any hook), and its losses.
        codes: the codes that entered F̂, (B, d, h_k, w_k) float32: ``output.codes`` with the code of
            every replaced bit negated (``output.codes`` itself without a replacement).
        bits: the bits that entered F̂, (B, h_k·w_k, d): the hook's, or ``output.bits``.
    """

    scale: int
    output: QuantizerOutput
    codes: Tensor
    bits: Tensor


class MultiScaleBSQ(nn.Module):
    """Residual BSQ over a scale schedule; wraps one shared single-scale ``BSQ``.

    ``forward`` quantizes a latent in one call; ``start`` + ``step`` walk the same residual loop one scale
    at a time (with an optional flip hook), ``start_decoding`` + ``add_bits`` rebuild F̂ from given bits.

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

        with torch.autocast(device_type=z.device.type, enabled=False):
            state = self._begin(z, schedule)
            codes, bits = [], []
            entropy, commit, ps_ent, cb_ent = [], [], [], []
            for _ in range(num_scales):
                out = self.step(state).output
                codes.append(out.codes)
                bits.append(out.bits)
                entropy.append(out.entropy_loss)
                commit.append(out.commit_loss)
                ps_ent.append(out.per_sample_entropy)
                cb_ent.append(out.codebook_entropy)
        mean = lambda xs: torch.stack(xs).mean()  # noqa: E731
        return MultiScaleOutput(
            state.quantized, codes, bits, mean(entropy), mean(commit), mean(ps_ent), mean(cb_ent)
        )

    # ------------------------------------------------------------------ residual steps
    def _begin(self, z: Tensor, schedule: ScaleSchedule) -> ResidualState:
        residual = z.float()
        return ResidualState(schedule, schedule[-1], torch.zeros_like(residual), residual)

    def start(self, z: Tensor, scale_schedule: Sequence[Sequence[int]] | None = None) -> ResidualState:
        """Begin a scale-by-scale residual pass over a latent: residual ← F, F̂ ← 0.

        Args:
            z: (B, d, h, w) latent (any float dtype; kept in fp32).
            scale_schedule: override of the module's schedule; its last scale must equal (h, w).

        Returns:
            a ``ResidualState`` for ``step``.

        Raises:
            ValueError: the latent grid differs from the last scale.
        """
        return self._begin(z, self._schedule_for(z, scale_schedule))

    def start_decoding(
        self,
        batch_size: int,
        scale_schedule: Sequence[Sequence[int]] | None = None,
        device: torch.device | str | None = None,
    ) -> ResidualState:
        """Begin rebuilding F̂ from per-scale bits (``add_bits``): F̂ = 0, a contiguous (batch_size, d, h, w)
        float32 tensor on ``device`` (so F̂ stays contiguous, whatever the layout of the codes)."""
        schedule = self.scale_schedule if scale_schedule is None else validate_schedule(scale_schedule)
        zeros = torch.zeros(batch_size, self.codebook_dim, *schedule[-1], dtype=torch.float32, device=device)
        return ResidualState(schedule, schedule[-1], zeros)

    def step(self, state: ResidualState, flip: FlipHook | None = None, requantize: bool = True) -> ScaleStep:
        """One residual step at the next scale k, in fp32 (also under autocast); ``state`` advances in place.

        r_k = down(residual, (h_k, w_k)) (area); q_k = BSQ(r_k); the hook may replace q_k's bits (a
        replaced bit negates its code); F̂ ← F̂ + up(q_k) (bilinear); residual ← residual − sg(up(q_k)).

        Args:
            state: from ``start``.
            flip: optional ``FlipHook`` (e.g. Bitwise Self-Correction's random flips); called once, after
                BSQ, with the scale index and the quantizer's own bits.
            requantize: True: the replaced codes also leave the residual, so later scales are quantized
                against the reconstruction with the replaced bits (Bitwise Self-Correction). False: the
                residual follows the quantizer's own codes and the replacement reaches F̂ only (the
                "flip without re-quantisation" ablation). No effect without a replacement.

        Returns:
            ``ScaleStep``.

        Raises:
            ValueError: a state without residual (begun from bits), all scales done, a latent of another
                codebook_dim, or a hook that returns bits of another shape.
        """
        if state.residual is None:
            raise ValueError("this pass has no latent to quantize (it rebuilds F̂ from bits); use add_bits")
        k, hw_k = state.num_done, state.next_hw
        with torch.autocast(device_type=state.residual.device.type, enabled=False):
            out = self.bsq(downsample(state.residual, hw_k))
            codes, bits = out.codes, out.bits
            replaced = flip(k, out.bits) if flip is not None else None
            if replaced is not None:
                if tuple(replaced.shape) != tuple(out.bits.shape):
                    raise ValueError(
                        f"the flip hook returned bits of shape {tuple(replaced.shape)} for scale {k}; "
                        f"expected {tuple(out.bits.shape)}"
                    )
                changed = _tokens_to_grid(replaced != out.bits, hw_k)  # (B, d, h_k, w_k) bool
                codes, bits = torch.where(changed, -out.codes, out.codes), replaced
            up = state.add_codes(codes)  # (B, d, h, w)
            if replaced is not None and not requantize:
                up = upsample(out.codes, state.latent_hw)
            state.residual = state.residual - up.detach()
        return ScaleStep(k, out, codes, bits)

    def add_bits(self, state: ResidualState, bits: Tensor) -> Tensor:
        """Accumulate given bits (B, h_k·w_k, d) {0,1} of the next scale: F̂ ← F̂ + up(codes(bits)).

        Returns:
            the codes (B, d, h_k, w_k) float32 of the bits.

        Raises:
            ValueError: all scales done, or bits that do not fit the next scale.
        """
        codes = self.bits_to_codes(bits, state.next_hw)
        state.add_codes(codes)
        return codes

    # ------------------------------------------------------------------ decoding helpers
    def codes_to_quantized(self, codes: Sequence[Tensor], latent_hw: tuple[int, int] | None = None) -> Tensor:
        """F̂ = Σ_k up(codes_k) for the given (possibly first-k) per-scale codes, (B, d, h, w) float32."""
        if len(codes) == 0:
            raise ValueError("need the codes of at least one scale")
        hw = tuple(latent_hw) if latent_hw is not None else self.latent_hw
        state = ResidualState.empty([c.shape[-2:] for c in codes], hw)
        for c in codes:
            state.add_codes(c)
        return state.quantized

    def bits_to_codes(self, bits: Tensor, hw: tuple[int, int]) -> Tensor:
        """Bits (B, h·w, d) of one scale → codes (B, d, h, w) float32."""
        _, L, d = bits.shape
        if L != hw[0] * hw[1] or d != self.codebook_dim:
            raise ValueError(
                f"bits of shape {tuple(bits.shape)} do not fit scale {hw} with d={self.codebook_dim}"
            )
        return _tokens_to_grid(self.bsq.bits_to_codes(bits), hw)

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

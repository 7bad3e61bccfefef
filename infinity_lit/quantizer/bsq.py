"""Binary spherical quantization (BSQ) and lookup-free quantization (LFQ).

BSQ (Zhao et al., arXiv 2406.07548, §3; used by Infinity, arXiv 2412.04431, §3.1) projects each
d-dimensional latent vector onto the unit sphere and quantizes every channel to its sign:

    u = z / ‖z‖₂,     q = sign(u) / √d,     sign(0) := +1,

so every code has unit norm and the implicit codebook has 2^d entries. LFQ (Yu et al., MAGVIT-v2) is the
same without the normalisation: q = sign(z). Gradients pass straight through (q = u + sg(q − u)).

Each channel is one bit: bit = 1 where the code is positive. Bits convert to integer indices
(most significant bit first, int64, exact for d ≤ 63) and back (``bits_to_indices`` /
``indices_to_bits``, the project's only such conversion).

The entropy penalty factorises over bits (cost O(d), not O(2^d)): with p_i = P(bit_i = 1 | u) =
σ(4·u_i / (√d·T)) (a softmax over the two codes ±1/√d of the distance-based logits),

    L_entropy = mean_positions Σ_i H(p_i)  −  Σ_i H(mean_positions p_i),

per-sample entropy (to be low: confident bits) minus codebook entropy (to be high: all codes used).
It can be negative. The commitment loss is mean((u − sg(q))²).

All quantization math runs in fp32, also under bf16 / fp16 autocast.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_INDEX_BITS = 63  # int64 holds indices exactly up to d = 63


class QuantizerOutput(NamedTuple):
    """Result of one quantization.

    Attributes:
        codes: quantized latent, same shape as the input (B, d, h, w), float32; values ±1/√d (BSQ) or
            ±1 (LFQ); carries the straight-through gradient to the input.
        bits: (B, h·w, d) int64 in {0, 1}, row-major over (h, w); bit = 1 where the code is positive.
        entropy_loss: scalar float32, the weighted entropy penalty (exactly 0 when its weight is 0).
        commit_loss: scalar float32, the weighted commitment loss (exactly 0 when its weight is 0).
        per_sample_entropy: scalar float32 (nats, summed over bits), unweighted, detached.
        codebook_entropy: scalar float32 (nats, summed over bits), unweighted, detached.
    """

    codes: Tensor
    bits: Tensor
    entropy_loss: Tensor
    commit_loss: Tensor
    per_sample_entropy: Tensor
    codebook_entropy: Tensor


def _require_index_bits(codebook_dim: int) -> None:
    if codebook_dim > MAX_INDEX_BITS:
        raise ValueError(
            f"codebook_dim {codebook_dim} > {MAX_INDEX_BITS}: indices do not fit int64; use bits"
        )


def _place_values(codebook_dim: int, device: torch.device) -> Tensor:
    """(d,) int64 place values 2^(d−1−i) of bit i: the most significant bit comes first."""
    return 2 ** torch.arange(codebook_dim - 1, -1, -1, dtype=torch.int64, device=device)


def bits_to_indices(bits: Tensor) -> Tensor:
    """Bits (…, d) {0,1} (any integer/bool dtype) → indices (…) int64 in [0, 2^d), most significant bit first.

    The one bits → index conversion of the project (the tokenizer's ``BSQ`` and the generator's index head
    both use it).

    Raises:
        ValueError: d = 64 (an index would not fit in int64; keep the bits).
    """
    _require_index_bits(bits.shape[-1])
    return (bits.to(torch.int64) * _place_values(bits.shape[-1], bits.device)).sum(-1)


def indices_to_bits(indices: Tensor, codebook_dim: int) -> Tensor:
    """Indices (…) int64 → bits (…, d) int64 in {0,1}; inverse of ``bits_to_indices``.

    Raises:
        ValueError: d = 64.
    """
    _require_index_bits(codebook_dim)
    place = _place_values(codebook_dim, indices.device)
    return torch.bitwise_and(indices.to(torch.int64).unsqueeze(-1), place).ne(0).to(torch.int64)


#: |logit| beyond which σ is 0 or 1 in fp32 (σ(50) = 1 − 2e-22): logits are clamped there so that an
#: infinite logit (an LFQ latent near the fp32 maximum) cannot give ∞ − ∞.
_LOGIT_LIMIT = 50.0
#: p is kept in [ε, 1 − ε] for the codebook entropy: the slope of H, ln((1 − p)/p), is infinite at 0 and 1, and
#: ∞ · σ'(x) = ∞ · 0 would make the gradient NaN once every sample saturates. H(ε) ≤ 2.1e-6 nats in fp32.
_P_LIMIT = 1e-7
#: Largest |z_i| whose squares, summed over d ≤ 64 channels, cannot overflow fp32 (2^60 ≈ 1.2e18).
_NORM_SAFE = 2.0**60


def _binary_entropy(p: Tensor) -> Tensor:
    """H(p) = −p ln p − (1−p) ln(1−p) in nats for p in [0, 1]; value and gradient finite everywhere (p is
    clamped to [1e-7, 1 − 1e-7], where the gradient is 0)."""
    p = p.clamp(_P_LIMIT, 1 - _P_LIMIT)
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def _binary_entropy_of_logits(x: Tensor) -> Tensor:
    """H(σ(x)) = softplus(x) − x·σ(x) in nats: the same value as ``_binary_entropy(σ(x))``, with a finite
    gradient −x·σ(x)(1 − σ(x)) for every x, saturated ones included."""
    x = x.clamp(-_LOGIT_LIMIT, _LOGIT_LIMIT)
    return F.softplus(x) - x * torch.sigmoid(x)


class BSQ(nn.Module):
    """Single-scale binary spherical (or lookup-free) quantizer over the channel dimension.

    Args:
        codebook_dim: d, bits per latent position, 1..64.
        spherical: True for BSQ (normalise to the unit sphere, codes ±1/√d); False for LFQ (codes ±1).
        entropy_weight: weight of the entropy penalty; 0 disables it (the loss is then exactly 0).
        commit_weight: weight of the commitment loss (β, reference 0.25); 0 disables it.
        codebook_entropy_weight: relative weight γ of the codebook-entropy term inside the penalty.
        entropy_temperature: T in p_i = σ(4·u_i/(√d·T)).
        eps: guard for the normalisation of an all-zero vector.

    Raises:
        ValueError: codebook_dim outside 1..64 or a negative weight.
    """

    def __init__(
        self,
        codebook_dim: int,
        spherical: bool = True,
        entropy_weight: float = 0.0,
        commit_weight: float = 0.25,
        codebook_entropy_weight: float = 1.0,
        entropy_temperature: float = 1.0,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if not 1 <= int(codebook_dim) <= 64:
            raise ValueError(f"codebook_dim must be in 1..64, got {codebook_dim}")
        for name, value in (("entropy_weight", entropy_weight), ("commit_weight", commit_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if entropy_temperature <= 0:
            raise ValueError(f"entropy_temperature must be > 0, got {entropy_temperature}")
        self.codebook_dim = int(codebook_dim)
        self.spherical = spherical
        self.entropy_weight = float(entropy_weight)
        self.commit_weight = float(commit_weight)
        self.codebook_entropy_weight = float(codebook_entropy_weight)
        self.entropy_temperature = float(entropy_temperature)
        self.eps = eps

    @property
    def code_scale(self) -> float:
        """|q_i|: 1/√d for BSQ, 1 for LFQ."""
        return 1.0 / math.sqrt(self.codebook_dim) if self.spherical else 1.0

    # ------------------------------------------------------------------ conversions
    def bits_to_codes(self, bits: Tensor) -> Tensor:
        """Bits {0,1} (…, d) (any integer/bool dtype) → codes (…, d) float32 in {−s, +s}, s = code_scale."""
        return (bits.to(torch.float32) * 2 - 1) * self.code_scale

    def codes_to_bits(self, codes: Tensor) -> Tensor:
        """Codes (…, d) → bits (…, d) int64; a code ≥ 0 (sign(0) = +1) gives bit 1."""
        return (codes >= 0).to(torch.int64)

    def bits_to_indices(self, bits: Tensor) -> Tensor:
        """Bits (…, d) → indices (…) int64 in [0, 2^d), most significant bit first (``bits_to_indices``).

        Raises:
            ValueError: d = 64 (an index would not fit in int64; keep the bits), or bits of another d.
        """
        _require_index_bits(self.codebook_dim)
        if bits.shape[-1] != self.codebook_dim:
            raise ValueError(f"bits must end in d={self.codebook_dim}, got shape {tuple(bits.shape)}")
        return bits_to_indices(bits)

    def indices_to_bits(self, indices: Tensor) -> Tensor:
        """Indices (…) int64 → bits (…, d) int64 in {0,1}; inverse of ``bits_to_indices``.

        Raises:
            ValueError: d = 64.
        """
        return indices_to_bits(indices, self.codebook_dim)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Indices (…) → codes (…, d) float32."""
        return self.bits_to_codes(self.indices_to_bits(indices))

    # ------------------------------------------------------------------ quantization
    def normalize(self, z: Tensor, dim: int = 1) -> Tensor:
        """u = z/‖z‖ over ``dim`` for BSQ (identity for LFQ), in fp32."""
        z = z.float()
        if not self.spherical:
            return z
        # ‖z‖ overflows fp32 once |z_i| nears 1.8e19/√d (a bf16 latent near its maximum, a diverging encoder),
        # and z/∞ would give a zero code and a NaN gradient: such vectors are divided by their largest |z_i|
        # first. Every other vector is left exactly as it is.
        peak = z.abs().amax(dim=dim, keepdim=True)
        z = z / torch.where(peak > _NORM_SAFE, peak, torch.ones_like(peak))
        return z / z.norm(dim=dim, keepdim=True).clamp_min(self.eps)

    def quantize(self, u: Tensor) -> Tensor:
        """Straight-through sign quantization of (normalised) ``u``: forward sign(u)·s, backward identity."""
        hard = torch.where(u >= 0, self.code_scale, -self.code_scale).to(u.dtype)
        # hard + (u − u) rather than u + (hard − u): exactly ±s in the forward pass, also where |u| is so large
        # (an LFQ latent) that u + (hard − u) rounds to 0.
        return hard + (u - u.detach())

    def entropy_terms(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample and codebook entropy (nats, summed over bits) of (N, d) normalised latents."""
        logits = 4.0 * self.code_scale * u / self.entropy_temperature
        per_sample = _binary_entropy_of_logits(logits).sum(-1).mean()
        p = torch.sigmoid(logits)  # P(bit = 1)
        codebook = _binary_entropy(p.mean(0)).sum()
        return per_sample, codebook

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize a latent map.

        Args:
            z: (B, d, h, w) float (any dtype; computed in fp32).

        Returns:
            ``QuantizerOutput`` with codes (B, d, h, w) float32 and bits (B, h·w, d) int64.

        Raises:
            ValueError: channel dimension ≠ codebook_dim.
        """
        if z.dim() != 4 or z.shape[1] != self.codebook_dim:
            raise ValueError(f"expected a latent (B, {self.codebook_dim}, h, w), got shape {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            u = self.normalize(z, dim=1)
            codes = self.quantize(u)
            flat_u = u.permute(0, 2, 3, 1).reshape(-1, self.codebook_dim)  # (B·h·w, d)
            bits = (
                self.codes_to_bits(codes.detach())
                .permute(0, 2, 3, 1)
                .reshape(z.shape[0], -1, self.codebook_dim)
            )
            zero = u.new_zeros(())
            if self.entropy_weight > 0 or not self.training:
                per_sample, codebook = self.entropy_terms(flat_u)
            else:
                per_sample, codebook = zero, zero
            entropy = (
                self.entropy_weight * (per_sample - self.codebook_entropy_weight * codebook)
                if self.entropy_weight > 0
                else zero
            )
            commit = self.commit_weight * F.mse_loss(u, codes.detach()) if self.commit_weight > 0 else zero
        return QuantizerOutput(codes, bits, entropy, commit, per_sample.detach(), codebook.detach())


class LFQ(BSQ):
    """Lookup-free quantization: ``BSQ`` without the spherical normalisation (codes ±1)."""

    def __init__(self, codebook_dim: int, **kwargs) -> None:
        kwargs.pop("spherical", None)
        super().__init__(codebook_dim, spherical=False, **kwargs)

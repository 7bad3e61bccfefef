"""Convolutional encoder and decoder of the bitwise tokenizer (pure torch; no Lightning imports).

The layout follows the VQGAN / MAGVIT family of tokenizers that Infinity builds on (arXiv 2412.04431,
§3.1 uses a CNN encoder/decoder around the BSQ quantizer): a stem convolution, one level per channel
multiplier with ``num_res_blocks`` GroupNorm+SiLU residual blocks each, a stride-2 resampling between
levels, a middle section, and a GroupNorm+SiLU+conv head. The spatial stride is
``2 ** (len(channel_multipliers) - 1)``: 4 multipliers give stride 8 (small images), 5 give stride 16
(the reference 256² / 1024² tokenizers). Self-attention in the middle section is optional; at the
latent sizes used on a CPU (8×8, 16×16) the receptive field of the convolutions already covers them.

Image boundary: the encoder takes images (B, 3, H, W) float in [-1, 1]; the decoder returns images in
[-1, 1] through a *straight-through clamp*: the forward value is ``clamp(x, -1, 1)`` and the gradient is
the identity. A ``tanh`` would have to saturate to reach the exact ±1 of flat white/black regions (the
OpenMoji backgrounds), and a plain clamp would stop the gradient of out-of-range pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------- helpers


def _group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    if channels % num_groups != 0:
        raise ValueError(
            f"GroupNorm: {channels} channels are not divisible by num_groups={num_groups}; "
            "choose base_channels and channel_multipliers so every level's width is a multiple of num_groups"
        )
    return nn.GroupNorm(num_groups, channels, eps=1e-6)


def straight_through_clamp(x: Tensor, low: float = -1.0, high: float = 1.0) -> Tensor:
    """Forward ``clamp(x, low, high)``; backward identity (the gradient also reaches clipped pixels)."""
    return x + (x.clamp(low, high) - x).detach()


def stride_of(channel_multipliers: Sequence[int]) -> int:
    """Spatial stride of an encoder/decoder with these multipliers: ``2 ** (levels - 1)``."""
    return 2 ** (len(channel_multipliers) - 1)


def _check_multipliers(channel_multipliers: Sequence[int]) -> tuple[int, ...]:
    mults = tuple(int(m) for m in channel_multipliers)
    if len(mults) == 0 or any(m < 1 for m in mults):
        raise ValueError(
            f"channel_multipliers must be a non-empty list of positive ints (e.g. [1, 2, 2, 4] for stride 8), "
            f"got {list(channel_multipliers)}"
        )
    return mults


# ---------------------------------------------------------------------------------------- blocks


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3 → GroupNorm → SiLU → conv3×3, plus a (1×1-projected) skip.

    The second convolution is zero-initialised so every block starts as the identity, which keeps the
    activations of a deep stack well scaled at initialisation.
    """

    def __init__(self, in_channels: int, out_channels: int, num_groups: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels, num_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over the h·w positions (optional; VQGAN's middle block)."""

    def __init__(self, channels: int, num_groups: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels, num_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = (
            self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)
        )  # (B, HW, C) each
        h = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(h.transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Stride-2 3×3 convolution with asymmetric (right/bottom) padding: exact halving of even sizes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 followed by a 3×3 convolution (no checkerboard artefacts of transposed convs)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


def _middle(channels: int, num_groups: int, attention: bool) -> nn.Sequential:
    layers: list[nn.Module] = [ResBlock(channels, channels, num_groups)]
    if attention:
        layers.append(AttnBlock(channels, num_groups))
    layers.append(ResBlock(channels, channels, num_groups))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------- encoder / decoder


class Encoder(nn.Module):
    """CNN encoder: images (B, 3, H, W) in [-1, 1] → latent (B, latent_channels, H/s, W/s), s = stride.

    Args:
        latent_channels: channels of the output latent; the codebook dimension d for the tokenizer.
        base_channels: width of the first level.
        channel_multipliers: width of level i is ``base_channels * channel_multipliers[i]``; there are
            ``len - 1`` stride-2 steps, so [1, 2, 2, 4] gives stride 8 and [1, 1, 2, 2, 4] stride 16.
        num_res_blocks: residual blocks per level.
        attention: add a self-attention block in the middle section.
        num_groups: GroupNorm groups; every level's width must be divisible by it.
        in_channels: image channels.

    Raises:
        ValueError: empty / non-positive multipliers, widths not divisible by num_groups, non-positive sizes.
    """

    def __init__(
        self,
        latent_channels: int,
        base_channels: int = 64,
        channel_multipliers: Sequence[int] = (1, 2, 2, 4),
        num_res_blocks: int = 2,
        attention: bool = False,
        num_groups: int = 32,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        mults = _check_multipliers(channel_multipliers)
        if latent_channels < 1 or base_channels < 1 or num_res_blocks < 1:
            raise ValueError("latent_channels, base_channels and num_res_blocks must be >= 1")
        self.stride = stride_of(mults)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        levels: list[nn.Module] = []
        ch = base_channels
        for i, m in enumerate(mults):
            out = base_channels * m
            blocks: list[nn.Module] = []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, out, num_groups))
                ch = out
            if i < len(mults) - 1:
                blocks.append(Downsample(ch))
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)
        self.mid = _middle(ch, num_groups, attention)
        self.norm_out = _group_norm(ch, num_groups)
        self.conv_out = nn.Conv2d(ch, latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1], H and W divisible by ``stride`` → (B, latent_channels, H/s, W/s)."""
        h = self.levels(self.conv_in(x))  # (B, C_top, H/s, W/s)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """CNN decoder: latent (B, latent_channels, h, w) → images (B, 3, h·s, w·s) in [-1, 1].

    The mirror of ``Encoder`` with ``num_res_blocks + 1`` blocks per level (as in VQGAN). The output
    passes a straight-through clamp to [-1, 1] (see the module docstring).

    Args: as ``Encoder`` (``out_channels`` = image channels).

    Raises:
        ValueError: as ``Encoder``.
    """

    def __init__(
        self,
        latent_channels: int,
        base_channels: int = 64,
        channel_multipliers: Sequence[int] = (1, 2, 2, 4),
        num_res_blocks: int = 2,
        attention: bool = False,
        num_groups: int = 32,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        mults = _check_multipliers(channel_multipliers)
        if latent_channels < 1 or base_channels < 1 or num_res_blocks < 1:
            raise ValueError("latent_channels, base_channels and num_res_blocks must be >= 1")
        self.stride = stride_of(mults)
        ch = base_channels * mults[-1]
        self.conv_in = nn.Conv2d(latent_channels, ch, 3, padding=1)
        self.mid = _middle(ch, num_groups, attention)
        levels: list[nn.Module] = []
        for i in reversed(range(len(mults))):
            out = base_channels * mults[i]
            blocks: list[nn.Module] = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(ch, out, num_groups))
                ch = out
            if i > 0:
                blocks.append(Upsample(ch))
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)
        self.norm_out = _group_norm(ch, num_groups)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        """(B, latent_channels, h, w) → (B, 3, h·s, w·s) float in [-1, 1]."""
        h = self.mid(self.conv_in(z))
        h = self.levels(h)  # (B, base_channels, h·s, w·s)
        return straight_through_clamp(self.conv_out(F.silu(self.norm_out(h))))


def num_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())

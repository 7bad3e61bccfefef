"""PatchGAN discriminator (pix2pix, Isola et al. 2017; the GAN of VQGAN-style tokenizers). Pure torch.

A stack of 4×4 convolutions, stride 2 for the first ``num_layers`` and stride 1 for the last two,
maps an image to a grid of real/fake logits, one per overlapping patch (70×70 receptive field with the
default 3 layers). Used with the hinge loss and LeCam regularisation of ``losses.py``.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

NormKind = Literal["group", "batch", "none"]


def _norm(kind: NormKind, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'group', 'batch' or 'none', got {kind!r}")


class PatchDiscriminator(nn.Module):
    """PatchGAN: images (B, 3, H, W) in [-1, 1] → logits (B, 1, H', W') (one per patch, unbounded).

    Args:
        base_channels: width of the first layer; doubles per layer up to ``8 * base_channels``.
        num_layers: number of stride-2 layers (3 → 70×70 patches; output H' ≈ H/8 − 2).
        norm: normalisation after each inner convolution. ``"group"`` (default) does not couple the
            samples of a batch; ``"batch"`` is the pix2pix original.
        in_channels: image channels.

    Raises:
        ValueError: non-positive sizes or an unknown norm.
    """

    def __init__(
        self, base_channels: int = 64, num_layers: int = 3, norm: NormKind = "group", in_channels: int = 3
    ) -> None:
        super().__init__()
        if base_channels < 1 or num_layers < 1:
            raise ValueError(f"base_channels and num_layers must be >= 1, got {base_channels}, {num_layers}")
        use_bias = norm == "none"
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        ch = base_channels
        for n in range(1, num_layers + 1):
            out = base_channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                nn.Conv2d(ch, out, 4, stride=stride, padding=1, bias=use_bias),
                _norm(norm, out),
                nn.LeakyReLU(0.2),
            ]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, 1, H', W') real/fake logits."""
        return self.net(images)


def _init_weights(m: nn.Module) -> None:
    # pix2pix initialisation: N(0, 0.02) convolutions, N(1, 0.02) norm scales.
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)

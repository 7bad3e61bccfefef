"""The bitwise multi-scale tokenizer: Encoder → MultiScaleBSQ → Decoder (pure torch; no Lightning imports).

Infinity (arXiv 2412.04431, §3.1) tokenizes an image into K scales of bits: the encoder gives a latent
F (B, d, h, w), the multi-scale residual BSQ quantizes it over a scale schedule into bits
(B, h_k·w_k, d) per scale, and the decoder maps F̂ = Σ_k up(q_k) back to an image. ``BitwiseTokenizer``
offers the generator a small, explicit interface, as VAR's VQVAE does:

    images (B,3,H,W) in [-1,1] ──img_to_bits──► [(B, h_k·w_k, d) int64 {0,1}]_k ──bits_to_img──► images

plus ``encode`` (image → latent), ``decode`` (F̂ → image) and ``reconstruct`` (progressive decoding
from the first k scales). ``load_tokenizer`` rebuilds a frozen tokenizer from a ``TokenizerModule``
checkpoint without importing Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from infinity_lit.checkpoints import TOKENIZER, Checkpoint, read_checkpoint
from infinity_lit.quantizer import (
    MultiScaleBSQ,
    MultiScaleOutput,
    ScaleSchedule,
    nearest_aspect_ratio,
    schedule_for_grid,
    schedule_for_ratio,
    shape_schedule_for,
    shape_schedules,
    template_scale_count,
    template_schedule,
    validate_schedule,
)

from .networks import Decoder, Encoder, stride_of

# ---------------------------------------------------------------------------------------- config


@dataclass
class TokenizerConfig:
    """Architecture of a ``BitwiseTokenizer``; everything needed to rebuild it from a checkpoint.

    The image size the tokenizer is trained for is ``scale_schedule[-1] × stride`` (e.g. the latent grid
    8×8 at stride 8 is 64×64). Other sizes go through per-call schedules whose last scale equals
    ``(H/stride, W/stride)``.
    """

    codebook_dim: int = 16
    """d: bits per latent position (implicit vocabulary 2^d)."""
    scale_schedule: list[tuple[int, int]] = field(
        default_factory=lambda: [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)]
    )
    """Latent grid sizes (h, w) visited by the multi-scale quantizer; the last is the latent grid."""
    aspect_ratio_schedules: list[list[tuple[int, int]]] = field(default_factory=list)
    """Scale schedules for non-square images, each replacing the method's template of its aspect ratio (the
    nearest template to its last grid's h/w) for training and sampling: each ends at the latent grid (H/s, W/s)
    of its images and has as many scales as ``scale_schedule``, starting at
    the same first scale; at most one per template aspect ratio (``quantizer.shape_schedules``). Empty: every
    non-square shape uses the method's template (``quantizer.template_schedule``)."""
    base_channels: int = 64
    """Width of the first encoder level (and the last decoder level)."""
    channel_multipliers: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    """Per-level width multipliers; ``len - 1`` stride-2 steps: [1,2,2,4] → stride 8, [1,1,2,2,4] → 16."""
    num_res_blocks: int = 2
    """Residual blocks per encoder level (the decoder has one more per level)."""
    attention: bool = False
    """Self-attention in the middle sections of encoder and decoder."""
    num_groups: int = 32
    """GroupNorm groups; every level width must be divisible by it."""
    spherical: bool = True
    """BSQ (unit-sphere codes ±1/√d) when true, LFQ (codes ±1) when false."""
    entropy_weight: float = 0.0
    """Weight of the per-bit BSQ entropy penalty (0 = off)."""
    commit_weight: float = 0.25
    """Commitment loss weight β (0 = off)."""
    codebook_entropy_weight: float = 1.0
    """γ: weight of the codebook-entropy term inside the entropy penalty."""
    entropy_temperature: float = 1.0
    """T of the soft bit probabilities of the entropy penalty."""
    scale_drop_prob: float = 0.0
    """Training only: probability that a batch keeps only a random prefix of the scales ("_reg")."""

    def __post_init__(self) -> None:
        self.scale_schedule = validate_schedule(self.scale_schedule)
        self.aspect_ratio_schedules = shape_schedules(self.scale_schedule, self.aspect_ratio_schedules)
        self.channel_multipliers = [int(m) for m in self.channel_multipliers]
        if len(self.channel_multipliers) == 0:
            raise ValueError("channel_multipliers must not be empty; e.g. [1, 2, 2, 4] for stride 8")
        for name in ("codebook_dim", "base_channels", "num_res_blocks"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"tokenizer {name} must be >= 1, got {getattr(self, name)}")

    @property
    def stride(self) -> int:
        """Spatial stride s = 2^(levels − 1)."""
        return stride_of(self.channel_multipliers)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images the default schedule fits: last scale × stride."""
        h, w = self.scale_schedule[-1]
        return h * self.stride, w * self.stride

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict (lists, no tuples) for checkpoints and YAML."""
        out = asdict(self)
        out["scale_schedule"] = [list(hw) for hw in self.scale_schedule]
        out["aspect_ratio_schedules"] = [[list(hw) for hw in s] for s in self.aspect_ratio_schedules]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenizerConfig:
        """Inverse of ``to_dict``; unknown keys are an error naming them.

        Raises:
            ValueError: keys that are not fields of ``TokenizerConfig``.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown tokenizer config keys {unknown}; known: {sorted(names)}")
        return cls(**dict(data))


# ---------------------------------------------------------------------------------------- tokenizer


class BitwiseTokenizer(nn.Module):
    """Encoder → multi-scale residual BSQ → decoder (Infinity, arXiv 2412.04431, §3.1).

    Args:
        config: the architecture (a ``TokenizerConfig`` or a mapping of its fields).

    Attributes:
        codebook_dim: d, bits per position.
        scale_schedule: default schedule, list of (h, w); the last is the latent grid.
        stride: spatial stride s (image side / latent side).
        quantizer: the ``MultiScaleBSQ``.
        encoder, decoder: the CNNs.

    Every image argument and result is (B, 3, H, W) float in [-1, 1]. Methods that take
    ``scale_schedule`` accept a per-call schedule (e.g. an aspect-ratio schedule for non-square images);
    its last scale must equal (H/s, W/s).
    """

    def __init__(self, config: TokenizerConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if config is None:
            config = TokenizerConfig()
        elif isinstance(config, Mapping):
            config = TokenizerConfig.from_dict(config)
        self.config = config
        net = dict(
            latent_channels=config.codebook_dim,
            base_channels=config.base_channels,
            channel_multipliers=config.channel_multipliers,
            num_res_blocks=config.num_res_blocks,
            attention=config.attention,
            num_groups=config.num_groups,
        )
        self.encoder = Encoder(**net)
        self.quantizer = MultiScaleBSQ(
            config.codebook_dim,
            config.scale_schedule,
            spherical=config.spherical,
            entropy_weight=config.entropy_weight,
            commit_weight=config.commit_weight,
            codebook_entropy_weight=config.codebook_entropy_weight,
            entropy_temperature=config.entropy_temperature,
            scale_drop_prob=config.scale_drop_prob,
        )
        self.decoder = Decoder(**net)
        self.stride = config.stride

    @property
    def codebook_dim(self) -> int:
        return self.quantizer.codebook_dim

    @property
    def scale_schedule(self) -> ScaleSchedule:
        return self.quantizer.scale_schedule

    # ------------------------------------------------------------------ size checks
    def check_image_size(
        self, height: int, width: int, scale_schedule: Sequence[Sequence[int]] | None = None
    ) -> ScaleSchedule:
        """Check that (height, width) fits the stride and the schedule; return the schedule to use.

        Without ``scale_schedule``: the tokenizer's schedule for its own image size, and for another shape
        its configured schedule of that shape or the method's aspect-ratio template (``schedule_for``).

        Raises:
            ValueError: a side not divisible by the stride, or a latent grid (H/s, W/s) different from the
                schedule's last scale; the message says which size or schedule would fit.
        """
        s = self.stride
        if height % s or width % s:
            raise ValueError(
                f"image size {height}×{width} is not divisible by the tokenizer stride {s}; resize or crop "
                f"the images to multiples of {s} (e.g. {max(s, height // s * s)}×{max(s, width // s * s)})"
            )
        if scale_schedule is None:
            return self.schedule_for(height, width)
        schedule = validate_schedule(scale_schedule)
        latent = (height // s, width // s)
        if schedule[-1] != latent:
            h, w = schedule[-1]
            raise ValueError(
                f"image size {height}×{width} gives a latent grid {latent[0]}×{latent[1]} at stride {s}, but the "
                f"scale schedule ends at {h}×{w}; use images of {h * s}×{w * s} or pass a scale_schedule ending "
                f"at {latent} (e.g. infinity_lit.quantizer.schedule_for_latent({latent}))"
            )
        return schedule

    @property
    def aspect_ratio_schedules(self) -> list[ScaleSchedule]:
        """The configured schedules of non-square shapes (``TokenizerConfig.aspect_ratio_schedules``)."""
        return self.config.aspect_ratio_schedules

    def schedule_for(self, height: int, width: int) -> ScaleSchedule:
        """The scale schedule for images of (height, width) pixels: the tokenizer's own for its image size;
        for another shape, the configured schedule ending at the latent grid (H/s, W/s)
        (``aspect_ratio_schedules``), else the method's dynamic-resolution template of that aspect ratio with
        as many scales (``quantizer.template_schedule``) if it ends there (``quantizer.schedule_for_grid``).
        Images built by ``data folder --aspect_ratios`` at this tokenizer's resolution and stride have the
        templates' sizes.

        Raises:
            ValueError: no such schedule; the message gives the sizes that have one.
        """
        s = self.stride
        latent = (height // s, width // s)
        own = self.scale_schedule
        if height % s == 0 and width % s == 0:
            found = schedule_for_grid(latent, own, self.aspect_ratio_schedules)
            if found is not None:
                return found
        h, w = own[-1]
        ratio = nearest_aspect_ratio(height / width)
        configured = shape_schedule_for(ratio, self.aspect_ratio_schedules)
        if configured is not None:
            gh, gw = configured[-1]
            fits = (
                f"the tokenizer's own schedule for h/w {ratio:g} (aspect_ratio_schedules) ends at {gh}×{gw}; use "
                f"images of {gh * s}×{gw * s}"
            )
        else:
            template = None if len(own) > 13 else template_schedule(ratio, len(own))[-1]
            grids = [(h, w), *(g[-1] for g in self.aspect_ratio_schedules), *([template] if template else [])]
            sizes = " or ".join(dict.fromkeys(f"{gh * s}×{gw * s}" for gh, gw in grids))
            if template is None or template == (h, w):  # a square image of another size: its template is own
                fits = f"the scale schedule ends at {h}×{w}; use images of {sizes}"
            else:
                fits = (
                    f"the scale schedule ends at {h}×{w} and the method's template for h/w ≈ {height / width:.3g} "
                    f"with {len(own)} scales at {template[0]}×{template[1]}; use images of {sizes} "
                    f"(`infinity-lit data folder --aspect_ratios … --stride {s}` builds the templates' sizes)"
                )
            k = template_scale_count(latent) if latent[0] >= 1 and latent[1] >= 1 else None
            if k is not None and k != len(own):
                fits += f", train a tokenizer with {k} scales (the template ends at {latent[0]}×{latent[1]} with {k})"
        raise ValueError(
            f"image size {height}×{width} gives a latent grid {latent[0]}×{latent[1]} at stride {s}, but {fits}, "
            f"or give the tokenizer a schedule ending at {latent} (model.tokenizer.aspect_ratio_schedules; per "
            f"call: scale_schedule=infinity_lit.quantizer.schedule_for_latent({latent}, {len(own)}))"
        )

    def check_bucket_sizes(self, sizes: Mapping[str, Sequence[int]], where: str) -> None:
        """Check that every aspect-ratio bucket of a data set has a scale schedule (``schedule_for``).

        Args:
            sizes: bucket name → its image size (height, width) in pixels (a manifest's ``size``).
            where: the data set, as the message names it ("the data", a shard folder).

        Raises:
            ValueError: the first bucket without one, naming it, its size, the tokenizer's size, stride and
                scale count, and what would fit (``schedule_for``'s message).
        """
        for name, size in sizes.items():
            h, w = (int(v) for v in size)
            try:
                self.schedule_for(h, w)
            except ValueError as exc:
                height, width = self.config.image_size
                raise ValueError(
                    f"aspect-ratio bucket {name} of {where} holds {h}×{w} images, for which the tokenizer "
                    f"({height}×{width} px, stride {self.stride}, {len(self.scale_schedule)} scales) has no scale "
                    f"schedule: {exc}"
                ) from exc

    def schedule_for_aspect_ratio(self, aspect_ratio: float) -> ScaleSchedule:
        """The scale schedule for images of template aspect ratio h/w: the tokenizer's own for 1 (its square
        images), the configured one of that aspect ratio (``aspect_ratio_schedules``), otherwise the method's
        template with as many scales (``quantizer.schedule_for_ratio``); images of it are (last grid × stride)
        pixels.

        Raises:
            ValueError: an aspect ratio that is no template (the message lists them).
        """
        return schedule_for_ratio(aspect_ratio, self.scale_schedule, self.aspect_ratio_schedules)

    def _check_images(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")

    # ------------------------------------------------------------------ image ↔ latent
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] → latent F (B, d, H/s, W/s) (before quantization).

        Raises:
            ValueError: not (B, 3, H, W), or H / W not divisible by the stride.
        """
        self._check_images(images)
        s = self.stride
        if images.shape[-2] % s or images.shape[-1] % s:
            H, W = images.shape[-2:]
            raise ValueError(
                f"image size {H}×{W} is not divisible by the tokenizer stride {s}; resize or crop the images to "
                f"multiples of {s}"
            )
        return self.encoder(images)

    def decode(self, quantized: Tensor) -> Tensor:
        """Quantized latent F̂ (B, d, h, w) → images (B, 3, h·s, w·s) in [-1, 1]."""
        if quantized.dim() != 4 or quantized.shape[1] != self.codebook_dim:
            raise ValueError(
                f"expected a latent (B, {self.codebook_dim}, h, w), got shape {tuple(quantized.shape)}"
            )
        return self.decoder(quantized)

    def quantize(
        self,
        z: Tensor,
        scale_schedule: Sequence[Sequence[int]] | None = None,
        num_scales: int | None = None,
    ) -> MultiScaleOutput:
        """Multi-scale residual BSQ of a latent (B, d, h, w); see ``MultiScaleBSQ.forward``."""
        return self.quantizer(z, scale_schedule=scale_schedule, num_scales=num_scales)

    def forward(
        self,
        images: Tensor,
        scale_schedule: Sequence[Sequence[int]] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, MultiScaleOutput]:
        """Reconstruct images through all scales (during training: the scales kept by ``scale_drop_prob``).

        Args:
            images: (B, 3, H, W) float in [-1, 1].
            scale_schedule: per-call schedule ending at (H/s, W/s) (default: the tokenizer's).
            generator: a CPU ``torch.Generator`` for the scale-dropping draw (default torch's global one).

        Returns:
            (recon (B, 3, H, W) float in [-1, 1], the quantizer's ``MultiScaleOutput``).

        Raises:
            ValueError: image size vs stride / schedule (see ``check_image_size``).
        """
        self._check_images(images)
        schedule = self.check_image_size(images.shape[-2], images.shape[-1], scale_schedule)
        out = self.quantizer(self.encoder(images), scale_schedule=schedule, generator=generator)
        return self.decoder(out.quantized), out

    # ------------------------------------------------------------------ the generator's interface
    @torch.no_grad()
    def img_to_bits(
        self, images: Tensor, scale_schedule: Sequence[Sequence[int]] | None = None
    ) -> list[Tensor]:
        """Images (B, 3, H, W) in [-1, 1] → bits per scale, each (B, h_k·w_k, d) int64 in {0, 1}.

        Row-major over (h_k, w_k); all scales of the schedule are used (no scale dropping).

        Raises:
            ValueError: image size vs stride / schedule.
        """
        self._check_images(images)
        schedule = self.check_image_size(images.shape[-2], images.shape[-1], scale_schedule)
        z = self.encoder(images)
        return self.quantizer(z, scale_schedule=schedule, num_scales=len(schedule)).bits

    def bits_to_quantized(
        self, bits_list: Sequence[Tensor], scale_schedule: Sequence[Sequence[int]] | None = None
    ) -> Tensor:
        """Bits of the first k scales → F̂ (B, d, h, w) float32 (the sum of their up-sampled codes)."""
        return self.quantizer.bits_to_quantized(bits_list, scale_schedule)

    def bits_to_img(
        self, bits_list: Sequence[Tensor], scale_schedule: Sequence[Sequence[int]] | None = None
    ) -> Tensor:
        """Bits of the first k scales (list of (B, h_j·w_j, d) {0,1}) → images (B, 3, H, W) in [-1, 1].

        Fewer than K scales give the progressive (coarser) reconstruction.
        """
        return self.decode(self.bits_to_quantized(bits_list, scale_schedule))

    @torch.no_grad()
    def reconstruct(
        self,
        images: Tensor,
        num_scales: int | None = None,
        scale_schedule: Sequence[Sequence[int]] | None = None,
    ) -> Tensor:
        """Progressive reconstruction: decode F̂ from the first ``num_scales`` scales only.

        Args:
            images: (B, 3, H, W) float in [-1, 1].
            num_scales: k in 1..K (default K: the full reconstruction).
            scale_schedule: per-call schedule ending at (H/s, W/s).

        Returns:
            (B, 3, H, W) float in [-1, 1].

        Raises:
            ValueError: image size vs stride / schedule, or num_scales outside 1..K.
        """
        self._check_images(images)
        schedule = self.check_image_size(images.shape[-2], images.shape[-1], scale_schedule)
        k = len(schedule) if num_scales is None else int(num_scales)
        out = self.quantizer(self.encoder(images), scale_schedule=schedule, num_scales=k)
        return self.decoder(out.quantized)


# ---------------------------------------------------------------------------------------- checkpoints


def load_tokenizer(
    path: str | Path | Checkpoint, map_location: str | torch.device = "cpu", use_ema: bool = True
) -> BitwiseTokenizer:
    """Rebuild a frozen ``BitwiseTokenizer`` from a ``TokenizerModule`` Lightning checkpoint.

    Reads the checkpoint (``infinity_lit.checkpoints``: weights-only) for its ``hyper_parameters["tokenizer"]``
    (the ``TokenizerConfig`` as a dict) and the ``tokenizer.*`` entries of its weights. When the run used
    Lightning's ``EMAWeightAveraging`` callback, ``state_dict`` holds the averaged (EMA) weights and
    ``current_model_state`` the raw ones; ``use_ema=False`` picks the raw ones. Lightning is not imported.

    Args:
        path: a ``.ckpt`` written by ``infinity-lit tokenizer fit``, or its run folder (which stands for
            ``checkpoints/last.ckpt``), or such a checkpoint already read (``read_checkpoint``).
        map_location: device for the weights.
        use_ema: prefer the EMA weights when the checkpoint has both.

    Returns:
        the tokenizer in eval mode with ``requires_grad`` False on every parameter.

    Raises:
        FileNotFoundError: no file at ``path`` (or a run folder without ``checkpoints/last.ckpt``).
        ValueError: (``infinity_lit.checkpoints.CheckpointError``) a truncated or corrupt file, or not a
            tokenizer checkpoint (no tokenizer hyper-parameters / weights).
    """
    ckpt = path if isinstance(path, Checkpoint) else read_checkpoint(path, TOKENIZER)
    weights = ckpt.weights(use_ema=use_ema)
    tokenizer = BitwiseTokenizer(TokenizerConfig.from_dict(ckpt.hyper_parameters["tokenizer"]))
    tokenizer.load_state_dict(weights)
    tokenizer.to(map_location).eval().requires_grad_(False)
    return tokenizer

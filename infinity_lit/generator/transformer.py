"""``BitwiseTransformer``: next-scale prediction of bits with an Infinite-Vocabulary Classifier.

Infinity (arXiv 2412.04431, §3.2–3.3) predicts all d bits of every position of scale k at once, given the
text and scales < k. With a scale schedule [(h₁,w₁), …, (h_K,w_K)] the token sequence is

    [SOS × h₁w₁] + [input of scale 2] + … + [input of scale K]      (L = Σ_k h_k·w_k positions)

where the input of scale k+1 is the accumulated reconstruction F̂_k = Σ_{j≤k} up(q_j) resampled to
(h_{k+1}, w_{k+1}) bilinearly (``next_scale_input``) and embedded by a linear layer d → C (there is no
token table). The SOS slot holds the projected pooled text plus a learned start embedding; every position
adds a learned per-scale embedding. The output at the positions of scale k predicts the bits of scale k.

Blocks are pre-norm with shared adaLN (one projection of the pooled text to 6·C, plus learned per-block
offsets), block-causal cosine self-attention (q, k L2-normalised, a learned per-head scale, 2-D RoPE on
q and k with every scale's cell centres mapped onto the final grid), cross-attention to the projected
text tokens (masked), and a GELU FFN.

Heads: the IVC ``Linear(C, 2d)`` gives logits (B, L, d, 2), trained with a 2-way cross-entropy per bit;
the conventional index head ``Linear(C, 2^d)`` (for d ≤ 16, the IVC ablation) gives (B, L, 2^d), with
the tokenizer's own bits ↔ index conversion (``infinity_lit.quantizer.bits_to_indices``). Scale k's
positions in the sequence are ``scale_bounds[k]`` (``infinity_lit.quantizer.scale_bounds``).

Sampling uses ``start`` + ``forward_scale``: one scale at a time with a KV cache. Keys are cached after
RoPE at their own positions, so a cached prefix is exactly what the teacher-forced pass sees (a known
pitfall of one reference code path, whose logits drift by ~1e-2, is rotating cached keys at the wrong
positions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infinity_lit.quantizer import (
    ScaleSchedule,
    bits_to_indices,
    indices_to_bits,
    num_tokens,
    resample_bilinear,
    scale_bounds,
    validate_schedule,
)

from .text_encoders import TextFeatures

HeadKind = Literal["ivc", "index"]

#: Largest codebook dimension the conventional index head accepts (2^16 · C weights).
MAX_INDEX_HEAD_BITS = 16

# ---------------------------------------------------------------------------------------- config


@dataclass
class TransformerConfig:
    """Architecture of a ``BitwiseTransformer``.

    ``codebook_dim`` and ``scale_schedule`` belong to the tokenizer; ``GeneratorModule`` fills them from
    the tokenizer checkpoint (leave them unset there), and ``text_dim`` from the text encoder.
    """

    depth: int = 12
    """Number of transformer blocks."""
    width: int = 768
    """C, the model width."""
    num_heads: int = 8
    """Attention heads; width / num_heads must be a multiple of 4 (2-D RoPE)."""
    mlp_ratio: float = 4.0
    """FFN hidden width = mlp_ratio · C."""
    head: HeadKind = "ivc"
    """``ivc`` (Linear(C, 2d), per-bit classifiers) or ``index`` (Linear(C, 2^d), d ≤ 16 only)."""
    cross_attention: bool = True
    """Cross-attend to the text tokens in every block (else the text enters only via SOS and adaLN)."""
    rope_base: float = 10000.0
    """RoPE frequency base θ."""
    attn_scale_init: float = 4.0
    """Initial per-head scale of the cosine attention logits (kept ≤ 100 during training)."""
    dropout: float = 0.0
    """Dropout on the attention / FFN outputs."""
    codebook_dim: int | None = None
    """d, bits per position (from the tokenizer)."""
    scale_schedule: list[tuple[int, int]] | None = None
    """Latent grids (h, w) per scale (from the tokenizer)."""
    text_dim: int | None = None
    """C_text, width of the text encoder's features (from the text encoder)."""

    def __post_init__(self) -> None:
        for name in ("depth", "width", "num_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if (self.width // self.num_heads) % 4:
            raise ValueError(
                f"head dim {self.width // self.num_heads} must be a multiple of 4 for 2-D RoPE "
                "(half the pairs rotate with the row, half with the column); change width or num_heads"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.head not in ("ivc", "index"):
            raise ValueError(f"head must be 'ivc' or 'index', got {self.head!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attn_scale_init <= 0 or self.attn_scale_init > 100:
            raise ValueError(f"attn_scale_init must be in (0, 100], got {self.attn_scale_init}")
        if self.scale_schedule is not None:
            self.scale_schedule = validate_schedule(self.scale_schedule)
        if self.codebook_dim is not None:
            if not 1 <= self.codebook_dim <= 64:
                raise ValueError(f"codebook_dim must be in 1..64, got {self.codebook_dim}")
            if self.head == "index" and self.codebook_dim > MAX_INDEX_HEAD_BITS:
                raise ValueError(
                    f"the conventional index head needs C·2^d weights: d={self.codebook_dim} is too large "
                    f"(allowed d ≤ {MAX_INDEX_HEAD_BITS}); use head='ivc' (2·d·C weights)"
                )
        if self.text_dim is not None and self.text_dim < 1:
            raise ValueError(f"text_dim must be >= 1, got {self.text_dim}")

    @classmethod
    def preset(cls, name: str, **overrides) -> TransformerConfig:
        """A named size (``PRESETS``) with optional field overrides.

        Raises:
            ValueError: unknown preset name.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown transformer preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def complete(self, codebook_dim: int, scale_schedule: ScaleSchedule, text_dim: int) -> TransformerConfig:
        """This config with the tokenizer's d and schedule and the text width filled in.

        Raises:
            ValueError: a value already set here conflicts with the given one.
        """
        schedule = validate_schedule(scale_schedule)
        given = {"codebook_dim": codebook_dim, "scale_schedule": schedule, "text_dim": text_dim}
        for name, value in given.items():
            mine = getattr(self, name)
            if mine is not None and mine != value:
                raise ValueError(
                    f"the generator config sets {name}={mine}, but the "
                    f"{'text encoder' if name == 'text_dim' else 'tokenizer checkpoint'} has {value}; "
                    f"remove {name} from the generator config (it is read from there)"
                )
        return replace(self, **given)

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def _require(self) -> tuple[int, ScaleSchedule, int]:
        if self.codebook_dim is None or self.scale_schedule is None or self.text_dim is None:
            raise ValueError(
                "TransformerConfig needs codebook_dim, scale_schedule and text_dim; fill them with "
                ".complete(tokenizer.codebook_dim, tokenizer.scale_schedule, text_encoder.dim)"
            )
        return self.codebook_dim, self.scale_schedule, self.text_dim


#: Sizes (depth / width / heads): the paper's (Infinity, Table 2 and §4) and tiny ones for tests / CPU.
PRESETS: dict[str, dict] = {
    "tiny": dict(depth=2, width=64, num_heads=4),
    "small": dict(depth=6, width=256, num_heads=4),
    "125M": dict(depth=12, width=768, num_heads=8),
    "361M": dict(depth=16, width=1152, num_heads=12),
    "940M": dict(depth=24, width=1536, num_heads=16),
    "2.2B": dict(depth=32, width=2080, num_heads=20),
    "4.7B": dict(depth=40, width=2688, num_heads=24),
}

# ---------------------------------------------------------------------------------------- helpers


def next_scale_input(f_hat: Tensor, hw: tuple[int, int]) -> Tensor:
    """The transformer input for the scale of size ``hw``: F̂ resampled bilinearly, flattened.

    Args:
        f_hat: (B, d, h_K, w_K) float, the accumulated reconstruction Σ_{j≤k} up(q_j).
        hw: (h_{k+1}, w_{k+1}).

    Returns:
        (B, h_{k+1}·w_{k+1}, d) float32, row-major over the grid.
    """
    x = resample_bilinear(f_hat.float(), tuple(hw))  # (B, d, h, w)
    return x.flatten(2).transpose(1, 2)


def scale_positions(schedule: ScaleSchedule) -> tuple[Tensor, Tensor]:
    """Row / column of every position's cell centre on the final grid, float64 (L,) each.

    Cell i of a scale with h rows covers final-grid rows [i·H/h, (i+1)·H/h); its centre is at
    (i + ½)·H/h − ½ in final-grid pixel coordinates, so the final scale gets the integers 0..H−1.
    (The reference rounds the cells' top-left corners instead; centres keep coarse scales aligned
    with the fine grid they summarise.)
    """
    H, W = schedule[-1]
    rows, cols = [], []
    for h, w in schedule:
        r = (torch.arange(h, dtype=torch.float64) + 0.5) * (H / h) - 0.5
        c = (torch.arange(w, dtype=torch.float64) + 0.5) * (W / w) - 0.5
        rows.append(r[:, None].expand(h, w).reshape(-1))
        cols.append(c[None, :].expand(h, w).reshape(-1))
    return torch.cat(rows), torch.cat(cols)


def rope_2d(schedule: ScaleSchedule, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos, sin tables (L, head_dim/2) float32 of the 2-D rotary embedding.

    Rotation pair j = (x_j, x_{j+head_dim/2}); the first head_dim/4 pairs turn with the row, the others
    with the column, at frequencies base^(−i/(head_dim/4)).
    """
    quarter = head_dim // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = scale_positions(schedule)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)  # (L, head_dim/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, N, hd) by the (N, hd/2) fp32 tables, in x's dtype (exact fp32 in fp32; under bf16
    autocast the result feeds a bf16 attention anyway, and skipping an fp32 round trip saves two copies).
    """
    half = x.shape[-1] // 2
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def block_causal_mask(schedule: ScaleSchedule) -> Tensor:
    """(L, L) bool, True where query i may attend to key j: scale(j) ≤ scale(i).

    The pattern ``attention_by_scale`` computes without building it (kept as the reference for checks).
    """
    ids = scale_ids(schedule)
    return ids[None, :] <= ids[:, None]


def scale_ids(schedule: ScaleSchedule) -> Tensor:
    """(L,) int64: the scale index (0-based) of every position."""
    return torch.cat([torch.full((h * w,), k, dtype=torch.long) for k, (h, w) in enumerate(schedule)])


def attention_by_scale(q: Tensor, k: Tensor, v: Tensor, bounds: list[tuple[int, int]]) -> Tensor:
    """Block-causal attention computed one scale at a time, without an (L, L) mask.

    The queries of scale k (positions [a_k, b_k)) attend to the keys [0, b_k): their own scale and every
    earlier one, which is exactly ``scaled_dot_product_attention`` under ``block_causal_mask`` (logits
    scale 1: q already carries the cosine attention's learned scale). The masked blocks (later scales) are
    never computed, and nothing of size L² is built: at the 1024² schedule (L = 10,521) a boolean mask alone
    is 111 MB, and the attention kernels turn it into a float one.

    Args:
        q, k, v: (B, H, L, hd); the positions run over whole scales, in order.
        bounds: the [start, end) range of every scale in those L positions (``scale_bounds``), covering 0..L.

    Returns:
        (B, H, L, hd) in q's dtype.
    """
    outs = [
        F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, :b], v[:, :, :b], scale=1.0) for a, b in bounds
    ]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


# ---------------------------------------------------------------------------------------- layers


class SelfAttention(nn.Module):
    """Cosine self-attention with 2-D RoPE; optionally appends to a KV cache.

    Logits are s_h · cos(q, k) with a learned per-head scale s_h (initialised to ``scale_init``, clamped
    at 100), so the softmax temperature is learned instead of fixed at 1/√hd.
    """

    def __init__(self, width: int, num_heads: int, scale_init: float, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.log_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(scale_init)))
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        bounds: list[tuple[int, int]] | None,
        cache: dict[str, Tensor] | None,
    ) -> Tensor:
        """``bounds``: the [start, end) positions of every scale of ``x`` for the block-causal pass
        (``attention_by_scale``); None: every query sees every key (one scale, after the cached ones)."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        scale = self.log_scale.clamp_max(math.log(100.0)).exp()
        q = apply_rope(F.normalize(q, dim=-1) * scale.to(q.dtype), cos, sin)  # (B, H, N, hd)
        k = apply_rope(F.normalize(k, dim=-1), cos, sin)
        if cache is not None:
            # Keys enter the cache already rotated at their own positions; later queries reuse them as is.
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if bounds is None:
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, H, N, hd)
        else:
            out = attention_by_scale(q, k, v, bounds)
        return self.drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class CrossAttention(nn.Module):
    """Attention from image tokens to the (projected) text tokens, with the text padding mask."""

    def __init__(self, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def text_kv(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, C) text tokens → keys, values (B, H, T, hd)."""
        B, T, C = text.shape
        k, v = self.kv(text).view(B, T, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], text_mask: Tensor) -> Tensor:
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)
        k, v = kv
        out = F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=text_mask[:, None, None, :]
        )
        return self.drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    """Pre-norm block: adaLN-modulated self-attention, cross-attention, adaLN-modulated GELU FFN.

    The six modulation vectors (γ₁, γ₂, scale₁, scale₂, shift₁, shift₂) are the shared projection of the
    text condition plus this block's learned offsets (Infinity's shared adaLN).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        C = config.width
        self.norm1 = nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(C, config.num_heads, config.attn_scale_init, config.dropout)
        self.cross = CrossAttention(C, config.num_heads, config.dropout) if config.cross_attention else None
        self.norm_cross = nn.LayerNorm(C, eps=1e-6) if config.cross_attention else None
        self.norm2 = nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)
        hidden = round(config.mlp_ratio * C)
        self.ffn = nn.Sequential(
            nn.Linear(C, hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden, C),
            nn.Dropout(config.dropout),
        )
        self.ada_offsets = nn.Parameter(torch.randn(6, C) / math.sqrt(C))

    def forward(
        self,
        x: Tensor,
        ada: Tensor,
        cos: Tensor,
        sin: Tensor,
        bounds: list[tuple[int, int]] | None,
        text_kv: tuple[Tensor, Tensor] | None,
        text_mask: Tensor,
        cache: dict[str, Tensor] | None = None,
    ) -> Tensor:
        mod = (ada + self.ada_offsets).to(x.dtype).unsqueeze(2)  # (B, 6, 1, C)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.unbind(1)
        x = x + gamma1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, cos, sin, bounds, cache)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), text_kv, text_mask)
        return x + gamma2 * self.ffn(self.norm2(x) * (1 + scale2) + shift2)


# ---------------------------------------------------------------------------------------- model


@dataclass
class TextContext:
    """The text condition, prepared once per batch.

    Attributes:
        cond: (B, C) projected pooled text (the SOS token and the adaLN condition).
        ada: (B, 6, C) shared adaLN modulation.
        tokens: (B, T, C) projected text tokens (cross-attention keys / values).
        mask: (B, T) bool text mask.
    """

    cond: Tensor
    ada: Tensor
    tokens: Tensor
    mask: Tensor


@dataclass(frozen=True)
class ScheduleTables:
    """What a pass over one scale schedule needs: the schedule, each scale's [start, end) token range, the
    2-D RoPE tables (L, head_dim/2) float32 and the (L,) int64 scale index of every position, on the
    model's device (``BitwiseTransformer.tables``). The block-causal pattern is the scale ranges themselves
    (``attention_by_scale``): no (L, L) mask is built."""

    schedule: ScaleSchedule
    bounds: list[tuple[int, int]]
    cos: Tensor
    sin: Tensor
    scale_index: Tensor


@dataclass
class InferenceState:
    """KV cache and text context of an incremental (scale-by-scale) pass; see ``BitwiseTransformer.start``."""

    context: TextContext
    caches: list[dict[str, Tensor]]
    text_kv: list[tuple[Tensor, Tensor] | None]
    next_scale: int = 0
    #: The schedule of the pass (None: the model's own).
    tables: ScheduleTables | None = None


class BitwiseTransformer(nn.Module):
    """Decoder-only next-scale transformer over bits with an IVC (or index) head (Infinity §3.2–3.3).

    Args:
        config: a complete ``TransformerConfig`` (codebook_dim, scale_schedule and text_dim set).

    Attributes:
        trained_schedules: the scale schedules the weights were trained on (``GeneratorModule`` records them
            in its checkpoints, ``load_generator`` sets them); ``generator.sample`` refuses another one. None
            (a model built here): not recorded, any schedule with the model's number of scales is sampled.

    Raises:
        ValueError: incomplete or invalid config.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        d, schedule, Ct = config._require()
        self.config = config
        self.codebook_dim = d
        self.scale_schedule: ScaleSchedule = schedule
        self.trained_schedules: list[ScaleSchedule] | None = None
        C = config.width
        self.first_len = schedule[0][0] * schedule[0][1]
        self.seq_len = num_tokens(schedule)
        self.scale_bounds = scale_bounds(schedule)  # [(start, end)) token range of every scale

        # text condition: a learned null text (one token + a pooled vector) stands in for dropped captions
        self.text_norm = nn.LayerNorm(Ct)
        self.text_pool_proj = nn.Linear(Ct, C)
        self.text_token_proj = nn.Sequential(nn.Linear(Ct, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.null_token = nn.Parameter(torch.randn(Ct) * 0.02)
        self.null_pooled = nn.Parameter(torch.randn(Ct) * 0.02)
        self.shared_ada = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

        # inputs
        self.pos_start = nn.Parameter(torch.randn(self.first_len, C) * 0.02)
        self.word_embed = nn.Linear(d, C)
        self.scale_embed = nn.Embedding(len(schedule), C)

        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))

        # head: adaLN before the classifier
        self.head_norm = nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)
        self.head_ada = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))
        out = 2 * d if config.head == "ivc" else 2**d
        self.head = nn.Linear(C, out)

        cos, sin = rope_2d(schedule, config.head_dim, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("scale_index", scale_ids(schedule), persistent=False)
        #: Tables of the other schedules passes have used, by (schedule, device).
        self._tables: dict[tuple[tuple[tuple[int, int], ...], torch.device], ScheduleTables] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=0.02)
        # adaLN projections start at zero: every block starts from its learned offsets alone
        for ada in (self.shared_ada[1], self.head_ada[1]):
            nn.init.zeros_(ada.weight)

    # ------------------------------------------------------------------ scale schedules
    def tables(self, schedule: ScaleSchedule | None = None) -> ScheduleTables:
        """The tables of a pass over ``schedule`` (default: the model's own ``scale_schedule``).

        Any schedule with the model's number of scales and its first scale serves (an aspect-ratio
        template, ``quantizer.template_schedule``): the weights do not depend on the grid sizes; the RoPE
        positions and the scale ranges (the block-causal pattern) do. Built once per schedule and device.

        Raises:
            ValueError: an invalid schedule, or one whose scale count or first scale differs.
        """
        if schedule is None or [tuple(hw) for hw in schedule] == list(self.scale_schedule):
            return ScheduleTables(
                self.scale_schedule,
                self.scale_bounds,
                self.rope_cos,
                self.rope_sin,
                self.scale_index,
            )
        schedule = validate_schedule(schedule)
        if len(schedule) != len(self.scale_schedule) or schedule[0] != self.scale_schedule[0]:
            raise ValueError(
                f"a schedule of {len(schedule)} scales starting at {schedule[0]} does not fit this model's "
                f"{len(self.scale_schedule)} scales starting at {self.scale_schedule[0]}"
            )
        device = self.rope_cos.device
        key = (tuple(schedule), device)
        if key not in self._tables:
            cos, sin = rope_2d(schedule, self.config.head_dim, self.config.rope_base)
            self._tables[key] = ScheduleTables(
                schedule,
                scale_bounds(schedule),
                cos.to(device),
                sin.to(device),
                scale_ids(schedule).to(device),
            )
        return self._tables[key]

    # ------------------------------------------------------------------ text
    def null_text(self, batch_size: int) -> TextFeatures:
        """The learned unconditional text for ``batch_size`` rows (one token, mask [True])."""
        tokens = self.null_token.view(1, 1, -1).expand(batch_size, 1, -1)
        mask = torch.ones(batch_size, 1, dtype=torch.bool, device=tokens.device)
        return TextFeatures(tokens, mask, self.null_pooled.expand(batch_size, -1))

    def drop_text(self, text: TextFeatures, drop: Tensor) -> TextFeatures:
        """Replace the rows where ``drop`` (B,) bool is True by the null text (CFG training).

        The null row keeps one real position (the null token) and masks the rest.
        """
        if not bool(drop.any()):
            return text
        d = drop.to(text.tokens.device).view(-1, 1)
        tokens = torch.where(d.unsqueeze(-1), torch.zeros_like(text.tokens), text.tokens)
        tokens = tokens.clone()
        tokens[:, 0] = torch.where(d, self.null_token.to(tokens.dtype), tokens[:, 0])
        first = torch.zeros_like(text.mask)
        first[:, 0] = True
        mask = torch.where(d, first, text.mask)
        pooled = torch.where(d, self.null_pooled.to(text.pooled.dtype), text.pooled)
        return TextFeatures(tokens, mask, pooled)

    def text_context(self, text: TextFeatures) -> TextContext:
        """Project the text features once per batch (see ``TextContext``).

        Raises:
            ValueError: wrong text width, or a caption with no valid token.
        """
        if text.tokens.shape[-1] != self.config.text_dim:
            raise ValueError(
                f"text features have width {text.tokens.shape[-1]}, the model expects {self.config.text_dim}; "
                "use the text encoder the generator was built with"
            )
        if not bool(text.mask.any(1).all()):
            raise ValueError("every caption needs at least one unmasked text token")
        cond = self.text_pool_proj(self.text_norm(text.pooled))  # (B, C)
        ada = self.shared_ada(cond).view(cond.shape[0], 6, -1)  # (B, 6, C)
        tokens = self.text_token_proj(self.text_norm(text.tokens))  # (B, T, C)
        return TextContext(cond, ada, tokens, text.mask)

    def _sos(self, ctx: TextContext) -> Tensor:
        return ctx.cond.unsqueeze(1) + self.pos_start  # (B, first_len, C)

    # ------------------------------------------------------------------ teacher-forced pass
    def forward(
        self,
        inputs: Tensor,
        text: TextFeatures,
        num_scales: int | None = None,
        schedule: ScaleSchedule | None = None,
    ) -> Tensor:
        """Teacher-forced pass, block-causal (``attention_by_scale``), over all scales or a prefix of them.

        Args:
            inputs: (B, L_n − h₁w₁, d) float, the next-scale inputs of scales 2..n (``next_scale_input``),
                concatenated in scale order; L_n = Σ_{k≤n} h_k·w_k.
            text: the text features (B rows), after any CFG dropout.
            num_scales: n, the number of scales to run (default: all K). A prefix gives exactly the
                logits of the full pass at those positions (no query sees a later scale).
            schedule: the scale schedule of the batch (default: the model's; see ``tables``), e.g. an
                aspect-ratio template; every row of a batch has the same one.

        Returns:
            logits: IVC (B, L_n, d, 2) or index head (B, L_n, 2^d); the positions of scale k predict its bits.

        Raises:
            ValueError: inputs of the wrong shape, or num_scales outside 1..K.
        """
        t = self.tables(schedule)
        K = len(t.schedule)
        n = K if num_scales is None else int(num_scales)
        if not 1 <= n <= K:
            raise ValueError(f"num_scales must be in 1..{K}, got {num_scales}")
        L = t.bounds[n - 1][1]
        B = text.batch_size
        expected = (B, L - self.first_len, self.codebook_dim)
        if tuple(inputs.shape) != expected:
            raise ValueError(f"inputs must be (B, L − first, d) = {expected}, got {tuple(inputs.shape)}")
        ctx = self.text_context(text)
        x = torch.cat([self._sos(ctx), self.word_embed(inputs)], dim=1)  # (B, L, C)
        x = x + self.scale_embed(t.scale_index[:L])
        cos, sin, bounds = t.cos[:L], t.sin[:L], t.bounds[:n]
        kv = [blk.cross.text_kv(ctx.tokens) if blk.cross is not None else None for blk in self.blocks]
        for blk, text_kv in zip(self.blocks, kv):
            x = blk(x, ctx.ada, cos, sin, bounds, text_kv, ctx.mask)
        return self._logits(x, ctx)

    def _logits(self, x: Tensor, ctx: TextContext) -> Tensor:
        shift, scale = self.head_ada(ctx.cond).view(x.shape[0], 1, 2, -1).to(x.dtype).unbind(2)
        out = self.head(self.head_norm(x) * (1 + scale) + shift)
        if self.config.head == "ivc":
            return out.view(*x.shape[:2], self.codebook_dim, 2)  # (B, N, d, 2)
        return out  # (B, N, 2^d)

    # ------------------------------------------------------------------ incremental pass (KV cache)
    def start(self, text: TextFeatures, schedule: ScaleSchedule | None = None) -> InferenceState:
        """Begin a scale-by-scale pass over ``schedule`` (default: the model's; see ``tables``): prepare the
        text and empty KV caches."""
        tables = self.tables(schedule)
        ctx = self.text_context(text)
        kv = [blk.cross.text_kv(ctx.tokens) if blk.cross is not None else None for blk in self.blocks]
        return InferenceState(ctx, [{} for _ in self.blocks], kv, tables=tables)

    def forward_scale(self, state: InferenceState, inputs: Tensor | None) -> Tensor:
        """Logits of the next scale, attending to the cached keys of all earlier scales plus its own.

        Args:
            state: from ``start``; updated in place (its caches grow, ``next_scale`` advances).
            inputs: None for the first scale (SOS); else (B, h_k·w_k, d) ``next_scale_input`` of scale k.

        Returns:
            logits of scale k: (B, h_k·w_k, d, 2) (IVC) or (B, h_k·w_k, 2^d).

        Raises:
            ValueError: all scales done, or inputs of the wrong shape.
        """
        t = state.tables if state.tables is not None else self.tables()
        k = state.next_scale
        if k >= len(t.schedule):
            raise ValueError(f"all {len(t.schedule)} scales are done; call start() again")
        B = state.context.cond.shape[0]
        a, b = t.bounds[k]
        if k == 0:
            if inputs is not None:
                raise ValueError("the first scale takes no inputs (its slot is the SOS token); pass None")
            x = self._sos(state.context)
        else:
            if inputs is None or tuple(inputs.shape) != (B, b - a, self.codebook_dim):
                got = None if inputs is None else tuple(inputs.shape)
                raise ValueError(
                    f"scale {k} needs inputs (B, h·w, d) = {(B, b - a, self.codebook_dim)}, got {got}"
                )
            x = self.word_embed(inputs)
        x = x + self.scale_embed.weight[k]
        cos, sin = t.cos[a:b], t.sin[a:b]
        for blk, cache, text_kv in zip(self.blocks, state.caches, state.text_kv):
            x = blk(x, state.context.ada, cos, sin, None, text_kv, state.context.mask, cache)
        state.next_scale = k + 1
        return self._logits(x, state.context)

    # ------------------------------------------------------------------ losses and predictions
    def bits_to_index(self, bits: Tensor) -> Tensor:
        """(…, d) {0,1} → (…) int64, most significant bit first: the tokenizer's own conversion."""
        return bits_to_indices(bits)

    def index_to_bits(self, index: Tensor) -> Tensor:
        """(…) int64 → (…, d) int64 {0,1}: the tokenizer's own conversion."""
        return indices_to_bits(index, self.codebook_dim)

    def loss(self, logits: Tensor, targets: Tensor, reduction: Literal["mean", "none"] = "mean") -> Tensor:
        """Cross-entropy in nats per bit, computed in fp32.

        IVC: the 2-way cross-entropy of every bit, averaged over bits and tokens. Index head: the
        2^d-way cross-entropy of every token divided by d (nats per bit, comparable with IVC).

        Args:
            logits: from ``forward`` (B, L, d, 2) or (B, L, 2^d).
            targets: (B, L, d) int {0, 1}.
            reduction: ``mean`` → scalar; ``none`` → (B, L) per-token loss per bit.
        """
        if self.config.head == "ivc":
            ce = F.cross_entropy(logits.float().flatten(0, -2), targets.reshape(-1).long(), reduction="none")
            per_token = ce.view(targets.shape).mean(-1)
        else:
            idx = self.bits_to_index(targets)
            ce = F.cross_entropy(logits.float().flatten(0, -2), idx.reshape(-1), reduction="none")
            per_token = ce.view(idx.shape) / self.codebook_dim
        return per_token.mean() if reduction == "mean" else per_token

    def predict_bits(self, logits: Tensor) -> Tensor:
        """Most likely bits (…, d) int64 from IVC or index logits."""
        if self.config.head == "ivc":
            return logits.argmax(-1)
        return self.index_to_bits(logits.argmax(-1))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

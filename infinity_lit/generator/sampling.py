"""Text-to-image sampling: scale by scale with a KV cache, CFG on logits, bitwise top-p (Infinity §3.2, §4).

For every scale k the transformer gives logits for all bits of the scale at once. With guidance,
ℓ = cfg_k·ℓ_cond + (1 − cfg_k)·ℓ_uncond (the unconditional pass uses the model's learned null text;
when cfg is 1 at every scale that pass is skipped). Bits are drawn from softmax(ℓ/τ_k) over the two
classes with top-p filtering (top-k is meaningless with two classes), codes are rebuilt from the bits,
F̂ accumulates Σ_j up(q_j) (both by the tokenizer's quantizer, ``ScaleAccumulator``), the next scale's
input is F̂ resampled bilinearly, and finally the tokenizer decodes F̂ to an image.

Randomness: image i draws all its bits from its own ``torch.Generator`` seeded with ``seed + i`` (or
``seeds[i]``), so an image depends on its prompt and seed only, not on the batch it was sampled in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from infinity_lit.precision import inference_precision
from infinity_lit.quantizer import MultiScaleBSQ

from .text_encoders import TextEncoder, TextFeatures
from .transformer import BitwiseTransformer, next_scale_input


class SampleOutput(NamedTuple):
    """Sampled images and their bits.

    Attributes:
        images: (N, 3, H, W) float32 in [-1, 1].
        bits: per scale k, (N, h_k·w_k, d) int64 in {0, 1}.
        seeds: the seed of each image.
    """

    images: Tensor
    bits: list[Tensor]
    seeds: list[int]


class ScaleAccumulator:
    """F̂ = Σ_j up(q_j) built scale by scale from bits, and the next scale's transformer input.

    A thin wrapper of the quantizer's own accumulation (``MultiScaleBSQ.start_decoding`` / ``add_bits``),
    the one ``MultiScaleBSQ.forward`` and the training path (``BitwiseSelfCorrection`` without flips) use,
    so forced labels give the teacher-forced inputs bit for bit.

    Args:
        quantizer: the tokenizer's ``MultiScaleBSQ`` (rebuilds codes from bits).
        scale_schedule: the schedule; the last scale is the latent grid.
        batch_size, device: of the latent F̂ (batch_size, d, h_K, w_K), float32.
    """

    def __init__(
        self,
        quantizer: MultiScaleBSQ,
        scale_schedule: Sequence[Sequence[int]],
        batch_size: int,
        device: torch.device | str,
    ) -> None:
        self.quantizer = quantizer
        self.state = quantizer.start_decoding(batch_size, scale_schedule, device=device)

    @property
    def schedule(self) -> list[tuple[int, int]]:
        return self.state.schedule

    @property
    def num_done(self) -> int:
        """Scales accumulated so far."""
        return self.state.num_done

    @property
    def f_hat(self) -> Tensor:
        """F̂ so far, (B, d, h_K, w_K) float32."""
        return self.state.quantized

    def add(self, bits: Tensor) -> None:
        """Accumulate the next scale's bits (B, h_k·w_k, d) {0,1}.

        Raises:
            ValueError: all scales are already accumulated, or bits that do not fit the next scale.
        """
        self.quantizer.add_bits(self.state, bits)

    def next_input(self) -> Tensor:
        """(B, h·w, d) float32 input of the next scale: F̂ so far, resampled bilinearly to its grid."""
        if not 0 < self.num_done < len(self.schedule):
            raise ValueError(f"no next-scale input after {self.num_done} of {len(self.schedule)} scales")
        return next_scale_input(self.f_hat, self.schedule[self.num_done])


def per_scale(value: float | Sequence[float], num_scales: int, name: str) -> list[float]:
    """A constant or a per-scale list → a list of ``num_scales`` floats.

    Raises:
        ValueError: a list of the wrong length.
    """
    if isinstance(value, (int, float)):
        return [float(value)] * num_scales
    values = [float(v) for v in value]
    if len(values) != num_scales:
        raise ValueError(f"{name} has {len(values)} values but the schedule has {num_scales} scales")
    return values


def top_p_probs(probs: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of classes whose probability reaches ``top_p`` (always ≥ 1 class), renormalised.

    Args:
        probs: (…, V) probabilities.
        top_p: in (0, 1]; 1 keeps everything.
    """
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(-1) - sorted_p
    keep_sorted = mass_before < top_p  # the first class always has mass_before = 0
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


def sample_classes(probs: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """Draw one class per row of (N, …, V) ``probs``; row group n uses ``generators[n]``.

    Inverse-CDF sampling with one uniform draw per (n, …) from that image's own generator.
    """
    u = torch.stack(
        [torch.rand(probs.shape[1:-1], generator=g, device=g.device).to(probs.device) for g in generators]
    )
    cdf = probs.cumsum(-1)
    idx = (cdf < u.unsqueeze(-1)).sum(-1)
    return idx.clamp_max(probs.shape[-1] - 1)


def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} prompts; pass one seed per prompt or a single int")
    return seeds


@torch.no_grad()
def sample(
    model: BitwiseTransformer,
    tokenizer,
    text_encoder: TextEncoder,
    prompts: Sequence[str],
    cfg: float | Sequence[float] = 4.0,
    tau: float | Sequence[float] = 1.0,
    top_p: float = 1.0,
    seed: int | Sequence[int] = 0,
    use_cache: bool = True,
    batch_size: int | None = None,
    schedule: Sequence[Sequence[int]] | None = None,
    aspect_ratio: float | None = None,
    precision: str = "auto",
) -> SampleOutput:
    """Generate one image per prompt.

    Args:
        model: the trained transformer (put in eval mode here).
        tokenizer: the frozen ``BitwiseTokenizer`` the model was trained with (its ``quantizer`` rebuilds
            codes from bits, its ``decode`` maps F̂ to images).
        text_encoder: the frozen text encoder the model was trained with.
        prompts: N captions.
        cfg: guidance scale, a constant or one per scale (reference 4 for evaluation); 1 everywhere skips
            the unconditional pass.
        tau: softmax temperature τ > 0, a constant or one per scale (reference 1).
        top_p: nucleus mass in (0, 1] (1 = off).
        seed: image i uses ``seed + i``; or a list of N seeds.
        use_cache: KV-cached scale-by-scale pass (default); False recomputes the whole prefix of scales at
            every scale with the teacher-forced pass (reference path for tests and benchmarks).
        batch_size: prompts per forward pass (default: all N); results do not depend on it.
        schedule: the scale schedule to sample on (default: the model's); another one with as many scales
            (an aspect-ratio template, ``quantizer.template_schedule``) gives images of its final grid
            times the tokenizer's stride, e.g. (16, 32) → 256×512 at stride 16.
        aspect_ratio: sample at this template aspect ratio h/w instead (``tokenizer.schedule_for_aspect_ratio``:
            the model's own schedule for 1, the method's template with as many scales otherwise); not with
            ``schedule``.
        precision: ``auto`` (bf16 autocast with the matrix weights cast once per call and channels-last
            decoder convolutions where the device runs bf16 fast — CUDA, a CPU with AMX — else plain fp32),
            ``bf16`` or ``fp32`` (the plain reference path); see ``infinity_lit.precision``. Weights already
            cast (inside ``inference_precision``, as ``eval sample`` runs a folder) are not cast again. The
            bits are drawn from fp32 probabilities and F̂ accumulates in fp32 in every case.

    Returns:
        ``SampleOutput`` with images (N, 3, H, W) float32 in [-1, 1] and per-scale bits.

    Raises:
        ValueError: bad settings (a negative or non-finite cfg among them), a tokenizer whose codebook_dim /
            schedule differ from the model's, a schedule that does not fit the model
            (``BitwiseTransformer.tables``), an aspect ratio that is no template, a schedule the model was
            not trained on (``model.trained_schedules``; the message lists the aspect ratios it was), or an
            unknown precision.
    """
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    if aspect_ratio is not None:
        if schedule is not None:
            raise ValueError("give schedule or aspect_ratio, not both")
        schedule = tokenizer.schedule_for_aspect_ratio(aspect_ratio)
    tables = model.tables(schedule)
    check_trained(model, tables.schedule)
    K = len(tables.schedule)
    cfgs = per_scale(cfg, K, "cfg")
    if any(not math.isfinite(c) or c < 0 for c in cfgs):
        raise ValueError(f"cfg must be finite and >= 0 (1 = no guidance, 0 = unconditional), got {cfgs}")
    taus = per_scale(tau, K, "tau")
    if any(t <= 0 for t in taus):
        raise ValueError(f"tau must be > 0, got {taus}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if tokenizer.codebook_dim != model.codebook_dim or list(tokenizer.scale_schedule) != list(
        model.scale_schedule
    ):
        raise ValueError(
            f"tokenizer (d={tokenizer.codebook_dim}, schedule {tokenizer.scale_schedule}) does not match the "
            f"model (d={model.codebook_dim}, schedule {model.scale_schedule}); use the generator's own tokenizer"
        )
    seeds = _seeds(seed, len(prompts))
    step = len(prompts) if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    images, bits = [], []
    device = next(model.parameters()).device
    with inference_precision([model, tokenizer.decoder], precision, device):
        for i in range(0, len(prompts), step):
            out = _sample_batch(
                model,
                tokenizer,
                text_encoder,
                prompts[i : i + step],
                cfgs,
                taus,
                top_p,
                seeds[i : i + step],
                use_cache,
                tables.schedule,
            )
            images.append(out[0])
            bits.append(out[1])
    return SampleOutput(torch.cat(images), [torch.cat(b) for b in zip(*bits)], seeds)


def check_trained(model: BitwiseTransformer, schedule: Sequence[Sequence[int]]) -> None:
    """Refuse a scale schedule the model was not trained on (``model.trained_schedules``; None: unchecked).

    Raises:
        ValueError: naming the schedule's aspect ratio and grids, and the aspect ratios the model was trained on.
    """
    trained = model.trained_schedules
    schedule = [tuple(int(v) for v in hw) for hw in schedule]
    if trained is None or schedule in [[tuple(hw) for hw in t] for t in trained]:
        return
    h, w = schedule[-1]
    listed = ", ".join(f"{t[-1][0] / t[-1][1]:.3g} (last grid {t[-1][0]}×{t[-1][1]})" for t in trained)
    raise ValueError(
        f"this generator was not trained on the scale schedule ending at {h}×{w} (h/w = {h / w:.3g}): its "
        f"checkpoint records training on h/w = {listed}; sample at one of those aspect ratios, or train on "
        "data of this one (`infinity-lit data folder --aspect_ratios`)"
    )


def _sample_batch(
    model: BitwiseTransformer,
    tokenizer,
    text_encoder: TextEncoder,
    prompts: list[str],
    cfgs: list[float],
    taus: list[float],
    top_p: float,
    seeds: list[int],
    use_cache: bool,
    schedule: list[tuple[int, int]],
) -> tuple[Tensor, list[Tensor]]:
    device = next(model.parameters()).device
    N = len(prompts)
    bounds = model.tables(schedule).bounds
    d = model.codebook_dim
    text = text_encoder(prompts).to(device)
    guided = any(c != 1.0 for c in cfgs)
    if guided:
        text = TextFeatures.cat([text, model.null_text(N)])  # rows N..2N−1: unconditional
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    acc = ScaleAccumulator(tokenizer.quantizer, schedule, N, device)
    state = model.start(text, schedule) if use_cache else None
    inputs: list[Tensor] = []
    all_bits = []
    for k in range(len(schedule)):
        x = None if k == 0 else acc.next_input()
        if x is not None and guided:
            x = torch.cat([x, x])
        if use_cache:
            logits = model.forward_scale(state, x)
        else:
            if x is not None:
                inputs.append(x)
            prefix = torch.cat(inputs, 1) if inputs else acc.f_hat.new_zeros(text.batch_size, 0, d)
            a, b = bounds[k]
            logits = model(prefix, text, num_scales=k + 1, schedule=schedule)[:, a:b]
        logits = logits.float()
        if guided:
            cond, uncond = logits.chunk(2)
            logits = cfgs[k] * cond + (1.0 - cfgs[k]) * uncond
        probs = top_p_probs(torch.softmax(logits / taus[k], dim=-1), top_p)
        drawn = sample_classes(probs, generators)
        bits_k = drawn if model.config.head == "ivc" else model.index_to_bits(drawn)  # (N, h·w, d)
        acc.add(bits_k)
        all_bits.append(bits_k)
    images = tokenizer.decode(acc.f_hat).float().clamp(-1.0, 1.0)
    return images, all_bits

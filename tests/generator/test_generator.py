"""BitwiseTransformer, Bitwise Self-Correction and sampling: tiny fp32 models, exact and statistical checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from infinity_lit.generator import self_correction
from infinity_lit.generator.sampling import ScaleAccumulator, sample, sample_classes, top_p_probs
from infinity_lit.generator.self_correction import (
    BitwiseSelfCorrection,
    flip_footprints,
    flip_levels,
    self_correction_rate,
    teacher_forcing_inputs,
)
from infinity_lit.generator.text_encoders import MiniLMTextEncoder, TextFeatures
from infinity_lit.generator.transformer import (
    PRESETS,
    BitwiseTransformer,
    TransformerConfig,
    attention_by_scale,
    block_causal_mask,
    scale_positions,
)
from infinity_lit.quantizer import BSQ, MultiScaleBSQ, downsample, scale_bounds, upsample
from infinity_lit.tokenizer import BitwiseTokenizer, TokenizerConfig

SCHEDULE = [(1, 1), (2, 2), (4, 4)]  # 1 + 4 + 16 = 21 positions


def tiny_model(d=4, text_dim=8, head="ivc", schedule=SCHEDULE, seed=0, **kw) -> BitwiseTransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        depth=2,
        width=64,
        num_heads=4,
        head=head,
        codebook_dim=d,
        scale_schedule=schedule,
        text_dim=text_dim,
        **kw,
    )
    return BitwiseTransformer(cfg).eval()


def random_text(B=3, T=5, C=8, seed=1) -> TextFeatures:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, 2, 1, 4, 3][:B])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    tokens = torch.randn(B, T, C, generator=g) * mask.unsqueeze(-1)
    return TextFeatures(tokens, mask, torch.randn(B, C, generator=g))


# ---------------------------------------------------------------------------------------- transformer


@pytest.mark.parametrize("head", ["ivc", "index"])
def test_kv_cached_logits_equal_teacher_forced(head):
    model = tiny_model(head=head)
    text = random_text()
    x = torch.randn(3, 20, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(x, text)
        state = model.start(text)
        parts = [
            model.forward_scale(state, None),
            model.forward_scale(state, x[:, :4]),
            model.forward_scale(state, x[:, 4:]),
        ]
        prefix = model(x[:, :4], text, num_scales=2)
    cached = torch.cat(parts, 1)
    assert full.shape == ((3, 21, 4, 2) if head == "ivc" else (3, 21, 16))
    assert (cached - full).abs().max() <= 1e-5
    assert (prefix - full[:, :5]).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="all 3 scales are done"):
        model.forward_scale(state, x[:, 4:])


def test_cached_keys_need_their_own_rope_positions():
    """The equality above is sensitive to RoPE: caching scale-1 keys rotated at other positions breaks it."""
    model = tiny_model()
    text = random_text()
    x = torch.randn(3, 20, 4)
    with torch.no_grad():
        full = model(x, text)
        cos, sin = model.rope_cos.clone(), model.rope_sin.clone()
        state = model.start(text)
        model.forward_scale(state, None)
        model.rope_cos[1:5], model.rope_sin[1:5] = cos[5:9], sin[5:9]  # the reference pitfall, simulated
        model.forward_scale(state, x[:, :4])
        model.rope_cos, model.rope_sin = cos, sin
        last = model.forward_scale(state, x[:, 4:])
    assert (last - full[:, 5:]).abs().max() > 1e-3


def test_block_causal_mask_counts():
    """Scales indexed from 0: the 1×1 query sees 1 key, the 2×2 queries 5, the 4×4 queries 21."""
    mask = block_causal_mask(SCHEDULE)
    assert mask.shape == (21, 21)
    seen = mask.sum(1)
    assert seen[0] == 1 and torch.all(seen[1:5] == 5) and torch.all(seen[5:] == 21)
    # none sees a later scale; each sees all of its own scale
    ids = torch.tensor([0] + [1] * 4 + [2] * 16)
    assert torch.equal(mask, ids[None, :] <= ids[:, None])


def test_mask_hides_later_scales_functionally():
    model = tiny_model()
    text = random_text()
    x = torch.randn(3, 20, 4)
    y = x.clone()
    y[:, 4:] += torch.randn(3, 16, 4)  # change only the inputs of the last scale
    with torch.no_grad():
        a, b = model(x, text), model(y, text)
    assert torch.equal(a[:, :5], b[:, :5]) and (a[:, 5:] - b[:, 5:]).abs().max() > 1e-4


def test_attention_by_scale_equals_masked_attention_with_gradients():
    """Per-scale blocks give the masked SDPA's outputs and gradients, for the full schedule and a prefix."""
    schedule = [(1, 1), (2, 2), (3, 3), (5, 5)]
    bounds = scale_bounds(schedule)
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(2, 3, 39, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    mask = block_causal_mask(schedule)
    for n in (len(schedule), 2):
        L = bounds[n - 1][1]
        ours = attention_by_scale(q[:, :, :L], k[:, :, :L], v[:, :, :L], bounds[:n])
        ref = F.scaled_dot_product_attention(
            q[:, :, :L], k[:, :, :L], v[:, :, :L], attn_mask=mask[:L, :L], scale=1.0
        )
        assert ours.shape == ref.shape == (2, 3, L, 8)
        assert torch.allclose(ours, ref, atol=1e-12)
        w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad((ours * w).sum(), (q, k, v))
        ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
        for a, b in zip(grads, ref_grads):
            assert torch.allclose(a, b, atol=1e-12)
    # the first query (scale 1) sees only the first key: changing any later key leaves it alone
    k2 = k.detach().clone()
    k2[:, :, 1:] += 1.0
    a = attention_by_scale(q.detach(), k.detach(), v.detach(), bounds)
    b = attention_by_scale(q.detach(), k2, v.detach(), bounds)
    assert torch.equal(a[:, :, 0], b[:, :, 0]) and not torch.allclose(a[:, :, 1:], b[:, :, 1:])


def test_rope_positions_map_scales_onto_the_final_grid():
    rows, cols = scale_positions(SCHEDULE)
    assert rows[0] == 1.5 and cols[0] == 1.5  # the 1×1 cell's centre on a 4×4 grid
    assert rows[1:5].tolist() == [0.5, 0.5, 2.5, 2.5] and cols[1:5].tolist() == [0.5, 2.5, 0.5, 2.5]
    assert rows[5:].tolist() == [float(i) for i in range(4) for _ in range(4)]


def test_text_matters_and_null_text():
    model = tiny_model()
    text = random_text()
    x = torch.randn(3, 20, 4)
    with torch.no_grad():
        a = model(x, text)
        other = TextFeatures(text.tokens.flip(0), text.mask.flip(0), text.pooled.flip(0))
        b = model(x, other)
        drop = torch.tensor([True, False, True])
        dropped = model.drop_text(text, drop)
        c = model(x, dropped)
        null = model(x, model.null_text(3))
    assert (a - b).abs().max() > 1e-4
    assert torch.allclose(c[drop], null[drop], atol=1e-5) and torch.allclose(c[1], a[1], atol=1e-5)
    assert dropped.mask[0].tolist() == [True, False, False, False, False]


def test_ivc_and_index_head_parameter_counts():
    for d, C in [(4, 64), (16, 64), (32, 96)]:
        model = BitwiseTransformer(
            TransformerConfig(
                depth=1, width=C, num_heads=4, codebook_dim=d, scale_schedule=SCHEDULE, text_dim=8
            )
        )
        assert sum(p.numel() for p in model.head.parameters()) == 2 * d * C + 2 * d
    model = tiny_model(d=10, head="index")
    assert sum(p.numel() for p in model.head.parameters()) == 64 * 2**10 + 2**10
    with pytest.raises(ValueError, match="d ≤ 16"):
        TransformerConfig(head="index", codebook_dim=17)


def test_loss_is_per_bit_cross_entropy():
    model = tiny_model()
    logits = torch.randn(2, 21, 4, 2)
    targets = torch.randint(0, 2, (2, 21, 4))
    p1 = torch.softmax(logits, -1)[..., 1]
    by_hand = -(targets * p1.log() + (1 - targets) * (1 - p1).log()).mean()
    torch.testing.assert_close(model.loss(logits, targets), by_hand)
    # index head: token CE / d; uniform logits give ln 2 per bit
    idx_model = tiny_model(head="index")
    assert math.isclose(idx_model.loss(torch.zeros(2, 21, 16), targets).item(), math.log(2), rel_tol=1e-6)
    bits = torch.randint(0, 2, (5, 4))
    assert torch.equal(idx_model.index_to_bits(idx_model.bits_to_index(bits)), bits)
    assert idx_model.bits_to_index(torch.tensor([1, 0, 1, 1])) == 11  # most significant bit first


def test_index_head_uses_the_quantizers_bits_index_conversion():
    for d in (4, 10):
        model = tiny_model(d=d, head="index")
        bits = torch.randint(0, 2, (3, 21, d), generator=torch.Generator().manual_seed(d))
        idx = model.bits_to_index(bits)
        assert torch.equal(idx, BSQ(d).bits_to_indices(bits))
        assert torch.equal(model.index_to_bits(idx), BSQ(d).indices_to_bits(idx))
        assert torch.equal(model.predict_bits(F.one_hot(idx, 2**d).float()), bits)
    assert model.scale_bounds == scale_bounds(SCHEDULE) == [(0, 1), (1, 5), (5, 21)]


def _bf16_cached_and_teacher_forced(model, text, x, device):
    """fp32 teacher-forced logits, and bf16-autocast teacher-forced / KV-cached logits (as fp32) on device."""
    model, x = model.to(device), x.to(device)
    text = TextFeatures(text.tokens.to(device), text.mask.to(device), text.pooled.to(device))
    with torch.no_grad():
        ref = model(x, text)
        cached_fp32 = torch.cat(_cached_pass(model, text, x), 1)
        with torch.autocast(device, dtype=torch.bfloat16):
            forced = model(x, text)
            cached = torch.cat(_cached_pass(model, text, x), 1)
    assert forced.dtype == torch.bfloat16 and cached.dtype == torch.bfloat16
    return ref, cached_fp32, forced.float(), cached.float()


def _cached_pass(model, text, x):
    state = model.start(text)
    return [
        model.forward_scale(state, None),
        model.forward_scale(state, x[:, :4]),
        model.forward_scale(state, x[:, 4:]),
    ]


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
            ],
        ),
    ],
)
def test_bf16_autocast_cached_logits_agree_with_teacher_forced(device):
    """Under bf16 autocast the KV-cached pass stays within bf16 rounding of the teacher-forced one.

    fp32 on the device must agree to 1e-5 (the RoPE pitfall moves logits by > 1e-3); bf16 to a few bf16
    steps of the logit scale (measured on CPU: ≤ 2e-3 at a scale of ~0.5, and ~2e-3 from fp32).
    """
    model = tiny_model()
    text = random_text()
    x = torch.randn(3, 20, 4, generator=torch.Generator().manual_seed(2))
    ref, cached_fp32, forced, cached = _bf16_cached_and_teacher_forced(model, text, x, device)
    assert (cached_fp32 - ref).abs().max() <= 1e-5
    tol = 3e-2 * ref.abs().max().item()
    assert (cached - forced).abs().max().item() <= tol
    assert (forced - ref).abs().max().item() <= tol and (cached - ref).abs().max().item() <= tol
    assert (cached - forced).abs().max().item() > 0 or device == "cpu"  # bf16 did run on the device


def test_config_validation_and_presets():
    assert PRESETS["2.2B"] == dict(depth=32, width=2080, num_heads=20)
    cfg = TransformerConfig.preset("125M")
    assert (cfg.depth, cfg.width, cfg.num_heads, cfg.head_dim) == (12, 768, 8, 96)
    with pytest.raises(ValueError, match="multiple of 4"):
        TransformerConfig(width=60, num_heads=10)
    with pytest.raises(ValueError, match="unknown transformer preset"):
        TransformerConfig.preset("huge")
    with pytest.raises(ValueError, match="complete"):
        BitwiseTransformer(TransformerConfig.preset("tiny"))
    done = TransformerConfig.preset("tiny").complete(4, SCHEDULE, 8)
    assert done.codebook_dim == 4
    with pytest.raises(ValueError, match=r"codebook_dim=8.*tokenizer checkpoint has 4"):
        TransformerConfig.preset("tiny", codebook_dim=8).complete(4, SCHEDULE, 8)


def test_param_count_of_paper_sizes_roughly_matches():
    """125M preset at d=32 with a 2048-d text encoder: within 25% of the paper's 125M."""
    with torch.device("meta"):
        cfg = TransformerConfig.preset("125M").complete(32, [(1, 1), (2, 2)], 2048)
        n = BitwiseTransformer(cfg).num_parameters()
    assert 0.75 * 125e6 < n < 1.25 * 125e6, n


# ---------------------------------------------------------------------------------------- next-scale inputs / BSC


def _latent(B=4, d=4, hw=(4, 4), seed=3):
    return torch.randn(B, d, *hw, generator=torch.Generator().manual_seed(seed))


def test_next_scale_input_is_bilinear_resample_of_the_sum():
    g = torch.Generator().manual_seed(0)
    codes = [torch.randn(2, 4, h, w, generator=g) for h, w in SCHEDULE]
    got = teacher_forcing_inputs(codes, SCHEDULE)
    ref = []
    acc = torch.zeros(2, 4, 4, 4)
    for k in range(2):
        acc = acc + F.interpolate(codes[k], size=(4, 4), mode="bilinear", align_corners=False)
        nxt = F.interpolate(acc, size=SCHEDULE[k + 1], mode="bilinear", align_corners=False)
        ref.append(nxt.permute(0, 2, 3, 1).reshape(2, -1, 4))
    assert got.shape == (2, 20, 4)
    assert (got - torch.cat(ref, 1)).abs().max() <= 1e-6


def test_bsc_without_flips_is_teacher_forcing_exactly():
    quantizer = MultiScaleBSQ(4, SCHEDULE).eval()
    z = _latent()
    ref = quantizer(z)
    out = BitwiseSelfCorrection(quantizer, max_flip_prob=0.0)(z, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.targets, torch.cat(ref.bits, 1))
    assert torch.equal(out.quantized, ref.quantized.detach())
    assert torch.equal(out.inputs, teacher_forcing_inputs(ref.codes, SCHEDULE))
    assert not out.flips.any() and out.flip_probs.tolist() == [0.0, 0.0, 0.0]
    # the inference path with the labels forced builds the very same inputs
    acc = ScaleAccumulator(quantizer, SCHEDULE, 4, "cpu")
    forced = []
    for k, bits in enumerate(ref.bits):
        acc.add(bits)
        if k + 1 < len(SCHEDULE):
            forced.append(acc.next_input())
    torch.testing.assert_close(torch.cat(forced, 1), out.inputs, atol=1e-6, rtol=0)
    torch.testing.assert_close(acc.f_hat, ref.quantized, atol=1e-6, rtol=0)


def test_scale_accumulator_is_the_quantizers_accumulation():
    quantizer = MultiScaleBSQ(4, SCHEDULE).eval()
    g = torch.Generator().manual_seed(4)
    bits = [torch.randint(0, 2, (2, h * w, 4), generator=g) for h, w in SCHEDULE]
    acc = ScaleAccumulator(quantizer, SCHEDULE, 2, "cpu")
    state = quantizer.start_decoding(2)
    for k, b in enumerate(bits):
        acc.add(b)
        quantizer.add_bits(state, b)
        assert acc.num_done == k + 1
        assert torch.equal(acc.f_hat, state.quantized)
        assert torch.equal(acc.f_hat, quantizer.bits_to_quantized(bits[: k + 1]))
    with pytest.raises(ValueError, match="already accumulated"):
        acc.add(bits[0])


def test_bsc_is_a_flip_policy_over_the_quantizer_steps(monkeypatch):
    """BSC quantizes only through ``MultiScaleBSQ.step``: replaying its flips through the steps reproduces it."""
    schedule = [(1, 1), (2, 2), (4, 4), (8, 8)]
    quantizer = MultiScaleBSQ(8, schedule).eval()
    z = _latent(B=8, d=8, hw=(8, 8))
    calls = []
    original = quantizer.step

    def counting(state, flip=None, requantize=True):
        calls.append(requantize)
        return original(state, flip, requantize=requantize)

    monkeypatch.setattr(quantizer, "step", counting)
    for requantize in (True, False):
        calls.clear()
        out = BitwiseSelfCorrection(quantizer, 0.3, requantize=requantize)(
            z, generator=torch.Generator().manual_seed(5)
        )
        assert calls == [requantize] * 4
        assert out.flips.any()
        # replay the reported flips through the quantizer's own steps
        bounds = scale_bounds(schedule)
        state = quantizer.start(z)
        targets, inputs = [], []
        for k, (a, b) in enumerate(bounds):
            flips_k = out.flips[:, a:b]
            step = original(state, lambda _, bits, f=flips_k: bits ^ f, requantize=requantize)
            targets.append(step.output.bits)
            if k + 1 < len(schedule):
                inputs.append(self_correction.next_scale_input(state.quantized, schedule[k + 1]))
        assert torch.equal(out.targets, torch.cat(targets, 1))
        assert torch.equal(out.inputs, torch.cat(inputs, 1))
        assert torch.equal(out.quantized, state.quantized)


def test_bsc_targets_are_requantised_against_the_corrupted_reconstruction():
    schedule = [(1, 1), (2, 2), (4, 4), (8, 8)]
    quantizer = MultiScaleBSQ(8, schedule).eval()
    z = _latent(B=8, d=8, hw=(8, 8))
    out = BitwiseSelfCorrection(quantizer, max_flip_prob=0.3)(z, generator=torch.Generator().manual_seed(5))
    assert out.flips.any()
    # independent re-derivation: walk the scales with the flipped bits the BSC output reports
    residual = z.clone()
    start = 0
    for h, w in schedule:
        n = h * w
        r = F.interpolate(residual, size=(h, w), mode="area")
        u = r / r.norm(dim=1, keepdim=True)
        bits = (u >= 0).long().permute(0, 2, 3, 1).reshape(8, n, 8)
        assert torch.equal(bits, out.targets[:, start : start + n])
        flipped = bits ^ out.flips[:, start : start + n].long()
        codes = (flipped.float() * 2 - 1).transpose(1, 2).reshape(8, 8, h, w) / math.sqrt(8)
        residual = residual - F.interpolate(codes, size=(8, 8), mode="bilinear", align_corners=False)
        start += n
    clean = torch.cat(quantizer(z).bits, 1)
    assert not torch.equal(out.targets, clean)


def test_bsc_flip_rate_matches_its_expectation():
    quantizer = MultiScaleBSQ(16, [(1, 1), (4, 4), (16, 16)]).eval()
    z = torch.randn(4, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    bsc = BitwiseSelfCorrection(quantizer, max_flip_prob=0.3)
    g = torch.Generator().manual_seed(11)
    drawn = []
    for _ in range(60):
        out = bsc(z, generator=g)
        start = 0
        for k, (h, w) in enumerate([(1, 1), (4, 4), (16, 16)]):
            n = 4 * h * w * 16
            p = out.flip_probs[k].item()
            drawn.append(p)
            assert round(p * 100) == pytest.approx(p * 100, abs=1e-4) and 0 <= p <= 0.3 + 1e-6
            flips = out.flips[:, start : start + h * w].sum().item()
            sd = math.sqrt(n * p * (1 - p))
            assert abs(flips - n * p) <= 5 * sd + 1e-9, (k, p, flips, n)  # 5σ: false alarm < 1e-6 per check
            start += h * w
    # p is uniform on {0, .01, …, .3}: mean 0.15, sd of the mean sqrt(var/180)
    var = sum((i / 100 - 0.15) ** 2 for i in range(31)) / 31
    assert abs(sum(drawn) / len(drawn) - 0.15) <= 4 * math.sqrt(var / len(drawn))
    assert len(set(drawn)) > 15
    assert flip_levels(0.3) == 31
    with pytest.raises(ValueError, match=r"multiple of 0\.01"):
        flip_levels(0.305)


def test_bsc_without_requantisation_keeps_clean_targets():
    quantizer = MultiScaleBSQ(8, [(1, 1), (2, 2), (4, 4), (8, 8)]).eval()
    z = _latent(B=8, d=8, hw=(8, 8))
    ref = quantizer(z)
    clean_targets = torch.cat(ref.bits, 1)
    plain = BitwiseSelfCorrection(quantizer, max_flip_prob=0.3, requantize=False)
    out = plain(z, generator=torch.Generator().manual_seed(5))
    assert out.flips.any()
    assert torch.equal(out.targets, clean_targets)
    assert not torch.equal(out.inputs, teacher_forcing_inputs(ref.codes, quantizer.scale_schedule))
    requant = BitwiseSelfCorrection(quantizer, max_flip_prob=0.3)(
        z, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(requant.flips, out.flips)  # same draws, so the two variants differ only in targets
    assert not torch.equal(requant.targets, out.targets)


def test_self_correction_rate_by_hand():
    schedule = [(1, 1), (2, 2)]
    # the 1×1 cell's footprint on the 2×2 grid is uniform (0.25 each)
    flips = torch.zeros(1, 5, 2, dtype=torch.bool)
    flips[0, 0, :] = True  # both bits of the 1×1 cell flipped
    targets = torch.zeros(1, 5, 2, dtype=torch.long)
    targets[0, 0] = torch.tensor([1, 0])
    predicted = torch.zeros(1, 5, 2, dtype=torch.long)
    predicted[0, 1:, 0] = torch.tensor([1, 1, 1, 0])  # channel 0: mostly 1 → pushes back towards bit 1
    predicted[0, 1:, 1] = torch.tensor([1, 1, 1, 0])  # channel 1: mostly 1 → away from bit 0
    rate, baseline = self_correction_rate(flips, targets, predicted, schedule)
    assert rate.item() == 0.5 and math.isnan(baseline.item())


def test_self_correction_footprints_are_built_once_per_schedule(monkeypatch):
    schedule = [(1, 1), (2, 2), (4, 4), (8, 8)]
    quantizer = MultiScaleBSQ(8, schedule).eval()
    out = BitwiseSelfCorrection(quantizer, 0.3)(
        _latent(B=8, d=8, hw=(8, 8)), generator=torch.Generator().manual_seed(2)
    )
    predicted = torch.randint(0, 2, out.targets.shape, generator=torch.Generator().manual_seed(3))
    self_correction._footprints.cache_clear()
    eyes = []
    real_eye = torch.eye

    def counting_eye(*args, **kwargs):
        eyes.append(args[0])
        return real_eye(*args, **kwargs)

    monkeypatch.setattr(torch, "eye", counting_eye)
    first = self_correction_rate(out.flips, out.targets, predicted, schedule)
    second = self_correction_rate(out.flips, out.targets, predicted, [list(hw) for hw in schedule])
    assert eyes == [1, 4, 16]  # one identity per scale pair, on the first call only
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not math.isnan(first[0].item())
    cached = flip_footprints(schedule)
    assert all(a is b for a, b in zip(cached, flip_footprints(tuple(schedule), torch.device("cpu"))))
    assert len(eyes) == 3
    # the cached footprints are the resampled one-hots, built here without the cache
    for k, fp in enumerate(cached):
        h, w = schedule[k]
        ref = downsample(upsample(real_eye(h * w).view(h * w, 1, h, w), (8, 8)), schedule[k + 1]).flatten(1)
        assert torch.equal(fp, ref)
        # bilinear up keeps a cell's mass ×(64 / h·w); area down averages it back: each row sums to l_{k+1}/l_k
        nh, nw = schedule[k + 1]
        torch.testing.assert_close(fp.sum(1), torch.full((h * w,), nh * nw / (h * w)))
    assert flip_footprints(schedule, dtype=torch.float64)[0].dtype == torch.float64 and len(eyes) == 6


# ---------------------------------------------------------------------------------------- sampling


def test_top_p_by_hand():
    p = torch.tensor([[0.7, 0.3], [0.1, 0.9]])
    assert torch.equal(top_p_probs(p, 0.5), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(top_p_probs(p, 0.8), torch.tensor([[0.7, 0.3], [0.0, 1.0]]))
    q = top_p_probs(torch.tensor([0.1, 0.4, 0.3, 0.2]), 0.6)
    torch.testing.assert_close(q, torch.tensor([0.0, 4 / 7, 3 / 7, 0.0]))


def test_sample_classes_frequency():
    probs = torch.tensor([0.3, 0.7]).expand(2, 20000, 2)
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    draws = sample_classes(probs, gens)
    n = draws.numel()
    assert abs(draws.float().mean().item() - 0.7) <= 5 * math.sqrt(0.21 / n)
    assert not torch.equal(draws[0], draws[1])


@pytest.fixture(scope="module")
def text_encoder():
    return MiniLMTextEncoder(max_length=16)


@pytest.fixture(scope="module")
def tiny_tokenizer():
    torch.manual_seed(0)
    cfg = TokenizerConfig(
        codebook_dim=4,
        scale_schedule=SCHEDULE,
        base_channels=8,
        channel_multipliers=[1, 2],
        num_res_blocks=1,
        num_groups=4,
    )
    return BitwiseTokenizer(cfg).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def sampler_model(text_encoder):
    return tiny_model(text_dim=text_encoder.dim)


PROMPTS = ["grinning face", "red apple", "blue car"]


def test_sample_shapes_and_determinism(sampler_model, tiny_tokenizer, text_encoder):
    a = sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, cfg=3.0, seed=7)
    b = sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, cfg=3.0, seed=7)
    c = sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, cfg=3.0, seed=8)
    assert a.images.shape == (3, 3, 8, 8) and a.images.min() >= -1 and a.images.max() <= 1
    assert [t.shape for t in a.bits] == [(3, 1, 4), (3, 4, 4), (3, 16, 4)]
    assert torch.equal(a.images, b.images) and a.seeds == [7, 8, 9]
    assert not torch.equal(torch.cat(a.bits, 1), torch.cat(c.bits, 1))
    # image i depends on its prompt and seed only, not on its batch
    one = sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS[1:2], cfg=3.0, seed=8)
    assert torch.equal(torch.cat([t[1:2] for t in a.bits], 1), torch.cat(one.bits, 1))
    # the bits decode to the images through the tokenizer
    torch.testing.assert_close(a.images, tiny_tokenizer.bits_to_img(a.bits).clamp(-1, 1))


def test_cached_and_uncached_sampling_agree(sampler_model, tiny_tokenizer, text_encoder):
    kw = dict(cfg=[1.0, 2.0, 4.0], tau=[1.0, 0.9, 0.8], top_p=0.95, seed=3)
    a = sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, **kw)
    b = sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, use_cache=False, **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.bits, b.bits))


def test_cfg_one_skips_the_unconditional_pass(sampler_model, tiny_tokenizer, text_encoder, monkeypatch):
    rows = []
    original = sampler_model.forward_scale

    def counting(state, inputs):
        out = original(state, inputs)
        rows.append(state.context.cond.shape[0])
        return out

    monkeypatch.setattr(sampler_model, "forward_scale", counting)
    sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, cfg=1.0, seed=0)
    assert rows == [3, 3, 3]
    rows.clear()
    sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, cfg=[1.0, 1.0, 2.0], seed=0)
    assert rows == [6, 6, 6]  # a later scale needs guidance, so the unconditional rows run all along


def test_cfg_zero_ignores_the_prompt_and_tiny_top_p_is_greedy(sampler_model, tiny_tokenizer, text_encoder):
    a = sample(
        sampler_model, tiny_tokenizer, text_encoder, ["grinning face", "a blue car"], cfg=0.0, seed=[1, 1]
    )
    assert all(torch.equal(t[0], t[1]) for t in a.bits)  # ℓ = ℓ_uncond: both rows are the same sample
    g1 = sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, cfg=2.0, top_p=1e-6, seed=0)
    g2 = sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, cfg=2.0, top_p=1e-6, seed=99)
    assert torch.equal(g1.images, g2.images)


def test_sample_rejects_bad_settings(sampler_model, tiny_tokenizer, text_encoder):
    with pytest.raises(ValueError, match="3 scales"):
        sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, cfg=[1.0, 2.0])
    with pytest.raises(ValueError, match="top_p"):
        sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, top_p=0.0)
    with pytest.raises(ValueError, match="tau"):
        sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, tau=0.0)
    for cfg in (-1.0, [1.0, -0.5, 1.0], float("nan")):
        with pytest.raises(ValueError, match="cfg must be finite and >= 0"):
            sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, cfg=cfg)
    with pytest.raises(ValueError, match="one seed per prompt"):
        sample(sampler_model, tiny_tokenizer, text_encoder, PROMPTS, seed=[1, 2])


def test_tiny_model_fits_a_fixed_batch():
    """The whole training path (BSC targets/inputs → transformer → per-bit loss) can be optimised."""
    quantizer = MultiScaleBSQ(4, SCHEDULE).eval()
    out = BitwiseSelfCorrection(quantizer, 0.0)(_latent(B=4))
    model = tiny_model().train()
    text = random_text(B=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        loss = model.loss(model(out.inputs, text), out.targets)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 0.6 and loss.item() < 0.15, (first, loss.item())


# ---------------------------------------------------------------------------------------- aspect ratios


def _ar_tokenizer() -> BitwiseTokenizer:
    """A tiny stride-16 tokenizer whose own schedule is square (16×16 latent: 256² images)."""
    from infinity_lit.quantizer import schedule_for_latent

    torch.manual_seed(0)
    cfg = TokenizerConfig(
        codebook_dim=4,
        scale_schedule=schedule_for_latent((16, 16), 5),
        base_channels=4,
        channel_multipliers=[1, 1, 1, 1, 1],
        num_res_blocks=1,
        num_groups=2,
    )
    return BitwiseTokenizer(cfg).eval().requires_grad_(False)


@pytest.mark.parametrize("hw", [(256, 512), (512, 256)])
def test_a_non_square_batch_through_tokenizer_and_generator(hw, render_emoji):
    """A 256×512 (and a 512×256) batch: the tokenizer quantises it on its aspect-ratio schedule, the
    generator (built for the square schedule) takes that schedule per call, KV-cached logits equal the
    teacher-forced ones, and its RoPE positions are the final grid's rows and columns."""
    from infinity_lit.quantizer import schedule_for_latent

    tokenizer = _ar_tokenizer()
    model = tiny_model(schedule=tokenizer.scale_schedule)
    H, W = hw
    schedule = schedule_for_latent((H // 16, W // 16), 5)
    images = render_emoji("😀🍎", size=max(hw)).float() / 127.5 - 1
    images = images[:, :, :H, :W].contiguous()  # (2, 3, H, W)
    with torch.no_grad():
        out = tokenizer.quantize(tokenizer.encode(images), scale_schedule=schedule)
    assert [tuple(c.shape[-2:]) for c in out.codes] == schedule and schedule[-1] == (H // 16, W // 16)
    x = teacher_forcing_inputs(out.codes, schedule)
    text = random_text(B=2, C=8)
    with torch.no_grad():
        full = model(x, text, schedule=schedule)
        state = model.start(text, schedule)
        bounds = scale_bounds(schedule)
        parts = [model.forward_scale(state, None)]
        parts += [model.forward_scale(state, x[:, a - 1 : b - 1]) for a, b in bounds[1:]]
    assert full.shape == (2, bounds[-1][1], 4, 2)
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-5
    tables = model.tables(schedule)
    rows, cols = scale_positions(schedule)
    a, b = bounds[-1]
    h, w = schedule[-1]
    assert torch.equal(rows[a:b], torch.arange(h).repeat_interleave(w).double())
    assert torch.equal(cols[a:b], torch.arange(w).repeat(h).double())
    assert tables.bounds[-1] == (a, b) and model.tables(schedule) is tables  # built once
    # The loss of the aspect-ratio pass trains the same parameters.
    model.train()
    loss = model.loss(model(x, text, schedule=schedule), torch.cat(out.bits, 1))
    loss.backward()
    assert model.scale_embed.weight.grad is not None and model.word_embed.weight.grad.abs().sum() > 0


def test_a_schedule_that_does_not_fit_the_generator():
    model = tiny_model()
    with pytest.raises(ValueError, match="does not fit this model's 3 scales"):
        model.tables([(1, 1), (2, 4)])
    with pytest.raises(ValueError, match="starting at"):
        model.tables([(2, 2), (3, 3), (4, 8)])


def test_sampling_on_an_aspect_ratio_schedule(text_encoder):
    from infinity_lit.quantizer import schedule_for_latent

    tokenizer = _ar_tokenizer()
    model = tiny_model(schedule=tokenizer.scale_schedule, text_dim=text_encoder.dim)
    wide = schedule_for_latent((4, 8), 5)  # 64×128 images at stride 16
    kw = dict(cfg=2.0, seed=3, schedule=wide)
    a = sample(model, tokenizer, text_encoder, PROMPTS[:2], **kw)
    b = sample(model, tokenizer, text_encoder, PROMPTS[:2], use_cache=False, **kw)
    assert a.images.shape == (2, 3, 64, 128)
    assert [t.shape[1] for t in a.bits] == [h * w for h, w in wide]
    assert all(torch.equal(x, y) for x, y in zip(a.bits, b.bits))


@pytest.mark.parametrize("h_div_w", [2.0, 0.5])
def test_template_sized_batches_cached_logits_equal_teacher_forced(h_div_w, render_emoji):
    """A batch of the size of the method's 7-scale template for h/w 2 (352×176) and 1/2 (176×352) at stride
    16: the tokenizer (square 256² schedule of 7 scales) picks that template for the size, quantises on it,
    and the generator's KV-cached logits equal its teacher-forced ones on that schedule."""
    from infinity_lit.quantizer import square_schedule, template_schedule

    torch.manual_seed(0)
    tokenizer = BitwiseTokenizer(
        TokenizerConfig(
            codebook_dim=4,
            scale_schedule=square_schedule(16),  # 7 scales, 256² images
            base_channels=4,
            channel_multipliers=[1, 1, 1, 1, 1],
            num_res_blocks=1,
            num_groups=2,
        )
    ).eval()
    tokenizer.requires_grad_(False)
    assert tokenizer.stride == 16
    template = template_schedule(h_div_w, 7)
    (h, w) = template[-1]
    assert (h, w) == {2.0: (22, 11), 0.5: (11, 22)}[h_div_w]
    H, W = h * 16, w * 16
    schedule = tokenizer.schedule_for(H, W)
    assert schedule == template and schedule != square_schedule(16)
    model = tiny_model(schedule=tokenizer.scale_schedule)
    images = render_emoji("😀🍎", size=max(H, W)).float() / 127.5 - 1
    images = images[:, :, :H, :W].contiguous()  # (2, 3, H, W)
    with torch.no_grad():
        out = tokenizer.quantize(tokenizer.encode(images), scale_schedule=schedule)
    assert [tuple(c.shape[-2:]) for c in out.codes] == template
    x = teacher_forcing_inputs(out.codes, schedule)
    text = random_text(B=2, C=8)
    bounds = scale_bounds(schedule)
    with torch.no_grad():
        full = model(x, text, schedule=schedule)
        state = model.start(text, schedule)
        parts = [model.forward_scale(state, None)]
        parts += [model.forward_scale(state, x[:, a - 1 : b - 1]) for a, b in bounds[1:]]
    assert full.shape == (2, bounds[-1][1], 4, 2) and bounds[-1][1] == 451
    assert full.abs().max() > 0
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-5

"""The residual-step API of ``MultiScaleBSQ``: ``start`` / ``step`` (with a flip hook), ``start_decoding`` /
``add_bits``, ``ResidualState``. Exact comparisons against ``forward`` and an independent re-derivation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from infinity_lit.quantizer import MultiScaleBSQ, ResidualState

SCHEDULE = [(1, 1), (2, 2), (4, 4), (8, 8)]


def _latent(b=3, d=8, hw=(8, 8), seed=0):
    return torch.randn(b, d, *hw, generator=torch.Generator().manual_seed(seed))


def _steps(q, z, flip=None, requantize=True, schedule=None):
    state = q.start(z, schedule)
    steps = [q.step(state, flip, requantize=requantize) for _ in state.schedule]
    return state, steps


@pytest.mark.parametrize("spherical", [True, False])
def test_steps_without_hook_are_forward_exactly(spherical):
    q = MultiScaleBSQ(8, SCHEDULE, spherical=spherical, entropy_weight=0.1).eval()
    z = _latent()
    ref = q(z)
    state, steps = _steps(q, z)
    assert torch.equal(state.quantized, ref.quantized)
    for k, s in enumerate(steps):
        assert s.scale == k
        assert torch.equal(s.output.codes, ref.codes[k]) and torch.equal(s.output.bits, ref.bits[k])
        assert s.codes is s.output.codes and s.bits is s.output.bits  # nothing replaced
    assert torch.equal(torch.stack([s.output.entropy_loss for s in steps]).mean(), ref.entropy_loss)
    # the residual is what the quantized scales left over, F − Σ up(q_k)
    torch.testing.assert_close(state.residual, z - ref.quantized, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="all 4 scales are already accumulated"):
        q.step(state)


def test_a_hook_that_keeps_the_bits_changes_nothing():
    q = MultiScaleBSQ(8, SCHEDULE).eval()
    z = _latent()
    seen = []

    def keep(k, bits):
        seen.append((k, bits))
        return bits.clone()

    state, steps = _steps(q, z, keep)
    ref = q(z)
    assert [k for k, _ in seen] == [0, 1, 2, 3]
    assert all(torch.equal(b, ref.bits[k]) for k, b in seen)  # the hook sees the quantizer's own bits
    assert torch.equal(state.quantized, ref.quantized)
    assert all(torch.equal(s.codes, ref.codes[k]) for k, s in enumerate(steps))
    none_state, _ = _steps(q, z, lambda k, bits: None)
    assert torch.equal(none_state.quantized, ref.quantized)


def test_hook_flipping_known_bits_changes_exactly_those_codes():
    d = 8
    q = MultiScaleBSQ(d, SCHEDULE).eval()
    z = _latent(d=d)
    ref = q(z)
    # flip: scale 1 (2×2), sample 0, cell 3 (row 1, col 1), channels 2 and 5; scale 2, sample 2, cell 0, channel 0
    chosen = {1: [(0, 3, 2), (0, 3, 5)], 2: [(2, 0, 0)]}

    def flip(k, bits):
        if k not in chosen:
            return None
        out = bits.clone()
        for b, cell, c in chosen[k]:
            out[b, cell, c] ^= 1
        return out

    state, steps = _steps(q, z, flip)
    # scale 0 is untouched; scale 1's codes differ from the quantizer's exactly at the chosen bits, negated
    assert torch.equal(steps[0].codes, ref.codes[0])
    s1 = steps[1]
    assert torch.equal(s1.output.codes, ref.codes[1])  # BSQ itself saw the clean residual
    changed = (s1.codes != s1.output.codes).nonzero().tolist()  # (b, c, row, col)
    assert changed == [[0, 2, 1, 1], [0, 5, 1, 1]]
    assert torch.equal(s1.codes[0, [2, 5], 1, 1], -s1.output.codes[0, [2, 5], 1, 1])
    assert (s1.bits != s1.output.bits).sum() == 2
    assert s1.bits[0, 3, 2] == 1 - ref.bits[1][0, 3, 2]
    # later scales are re-quantised against the corrupted reconstruction: re-derive them by hand
    residual = z.clone()
    for k, s in enumerate(steps):
        r = F.interpolate(residual, size=SCHEDULE[k], mode="area")
        bits = (r >= 0).long().permute(0, 2, 3, 1).reshape(3, -1, d)  # sign(u) = sign(r)
        assert torch.equal(s.output.bits, bits), k
        codes = (s.bits.float() * 2 - 1).transpose(1, 2).reshape(3, d, *SCHEDULE[k]) / math.sqrt(d)
        torch.testing.assert_close(s.codes, codes, atol=1e-7, rtol=0)
        residual = residual - F.interpolate(codes, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(state.quantized, z - residual, atol=1e-5, rtol=0)
    assert not torch.equal(steps[3].output.bits, ref.bits[3])  # the flips did change a later target


def test_without_requantisation_the_residual_stays_on_the_clean_chain():
    q = MultiScaleBSQ(8, SCHEDULE).eval()
    z = _latent()
    ref = q(z)

    def flip_all_of_scale_0(k, bits):
        return 1 - bits if k == 0 else None

    state, steps = _steps(q, z, flip_all_of_scale_0, requantize=False)
    assert all(torch.equal(s.output.bits, ref.bits[k]) for k, s in enumerate(steps))  # clean targets
    assert torch.equal(steps[0].codes, -ref.codes[0])
    # F̂ holds the flipped scale 0: it differs from the clean F̂ by exactly −2·up(q_0)
    flipped_sum = ref.quantized - 2 * F.interpolate(ref.codes[0], size=(8, 8), mode="bilinear")
    torch.testing.assert_close(state.quantized, flipped_sum, atol=1e-6, rtol=0)
    _, requant = _steps(q, z, flip_all_of_scale_0, requantize=True)
    assert not torch.equal(requant[1].output.bits, ref.bits[1])


def test_step_errors():
    q = MultiScaleBSQ(8, SCHEDULE)
    z = _latent()
    with pytest.raises(ValueError, match="returned bits of shape"):
        q.step(q.start(z), lambda k, bits: bits[:, :0])
    with pytest.raises(ValueError, match="does not match the last scale"):
        q.start(_latent(hw=(4, 4)))
    with pytest.raises(ValueError, match="no latent to quantize"):
        q.step(q.start_decoding(2))


def test_steps_stay_fp32_under_bf16_autocast_and_pass_gradients():
    q = MultiScaleBSQ(8, SCHEDULE).train()
    z = _latent().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state, steps = _steps(q, z.to(torch.bfloat16))
    assert state.quantized.dtype == torch.float32 and state.residual.dtype == torch.float32
    assert all(s.codes.dtype == torch.float32 for s in steps)
    state.quantized.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_decoding_from_bits_matches_the_quantizer():
    q = MultiScaleBSQ(8, SCHEDULE).eval()
    z = _latent()
    ref = q(z)
    state = q.start_decoding(3)
    assert torch.equal(state.quantized, torch.zeros(3, 8, 8, 8)) and state.quantized.is_contiguous()
    for k, bits in enumerate(ref.bits):
        codes = q.add_bits(state, bits)
        assert torch.equal(codes, q.bits_to_codes(bits, SCHEDULE[k]))
        assert torch.equal(state.quantized, q.bits_to_quantized(ref.bits[: k + 1]))
    torch.testing.assert_close(state.quantized, ref.quantized, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="already accumulated"):
        q.add_bits(state, ref.bits[0])
    with pytest.raises(ValueError, match="do not fit scale"):
        q.add_bits(q.start_decoding(3), ref.bits[1])


def test_empty_state_sums_codes():
    g = torch.Generator().manual_seed(1)
    codes = [torch.randn(2, 4, h, w, generator=g) for h, w in SCHEDULE[:3]]
    state = ResidualState.empty(SCHEDULE[:3], latent_hw=(8, 8))
    assert state.quantized is None and state.residual is None
    for c in codes:
        state.add_codes(c)
    by_hand = sum(F.interpolate(c, size=(8, 8), mode="bilinear", align_corners=False) for c in codes)
    torch.testing.assert_close(state.quantized, by_hand, atol=1e-6, rtol=0)
    assert state.num_done == 3
    with pytest.raises(ValueError, match="do not fit scale 0"):
        ResidualState.empty(SCHEDULE).add_codes(codes[1])

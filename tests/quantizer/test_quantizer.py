"""BSQ / LFQ / multi-scale quantizer: invariants, an independent reference, hand-computed losses."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from infinity_lit.quantizer import (
    BSQ,
    LFQ,
    MultiScaleBSQ,
    aspect_ratio_schedule,
    bits_to_indices,
    downsample,
    indices_to_bits,
    named_schedule,
    num_tokens,
    scale_bounds,
    schedule_for_latent,
    square_schedule,
    upsample,
    validate_schedule,
)


def _latent(b=2, d=16, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, h, w, generator=g)


# ---------------------------------------------------------------- single scale
@pytest.mark.parametrize("d", [1, 4, 16, 32, 64])
def test_bsq_codes_unit_norm_and_magnitude(d):
    out = BSQ(d)(_latent(d=d))
    norms = out.codes.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    torch.testing.assert_close(out.codes.abs(), torch.full_like(out.codes, 1 / math.sqrt(d)))
    assert out.codes.dtype == torch.float32
    assert out.bits.shape == (2, 64, d) and out.bits.dtype == torch.int64
    assert set(out.bits.unique().tolist()) <= {0, 1}


def test_sign_of_zero_is_plus_one_and_zero_vector_is_safe():
    q = BSQ(8)
    z = torch.zeros(1, 8, 2, 2)
    z[0, 3, 0, 0] = -1.0  # one negative channel, the rest exactly zero
    out = q(z)
    assert torch.isfinite(out.codes).all()
    assert (out.codes != 0).all(), "no code may be 0"
    assert out.bits[0, 0].tolist() == [1, 1, 1, 0, 1, 1, 1, 1]
    assert (out.bits[0, 1:] == 1).all()  # all-zero vectors quantize to all +1


def test_lfq_codes_are_plus_minus_one():
    z = _latent(d=6) * 3
    out = LFQ(6)(z)
    assert set(out.codes.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(out.codes, torch.where(z >= 0, 1.0, -1.0))


@pytest.mark.parametrize("d", [1, 5, 16, 63])
def test_round_trips_bits_codes_indices(d):
    q = BSQ(d)
    g = torch.Generator().manual_seed(d)
    bits = torch.randint(0, 2, (3, 7, d), generator=g)
    codes = q.bits_to_codes(bits)
    assert torch.equal(q.codes_to_bits(codes), bits)
    idx = q.bits_to_indices(bits)
    assert idx.dtype == torch.int64 and idx.shape == (3, 7)
    assert torch.equal(q.indices_to_bits(idx), bits)
    # most significant bit first, checked by hand on the first row
    expected = sum(int(b) << (d - 1 - i) for i, b in enumerate(bits[0, 0].tolist()))
    assert idx[0, 0].item() == expected
    torch.testing.assert_close(q.indices_to_codes(idx), codes)


def test_module_level_index_conversion_is_the_bsq_one():
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (4, 9, 12), generator=g)
    idx = bits_to_indices(bits)
    assert torch.equal(idx, BSQ(12).bits_to_indices(bits))
    assert torch.equal(indices_to_bits(idx, 12), bits)
    assert bits_to_indices(torch.tensor([True, False, True, True])).item() == 11  # MSB first, bool accepted
    with pytest.raises(ValueError, match="use bits"):
        indices_to_bits(idx, 64)
    with pytest.raises(ValueError, match="must end in d=12"):
        BSQ(12).bits_to_indices(bits[..., :5])


def test_index_extremes_and_d64_keeps_bits():
    q = BSQ(63)
    ones = torch.ones(1, 63, dtype=torch.int64)
    assert q.bits_to_indices(ones).item() == 2**63 - 1
    q64 = BSQ(64)
    with pytest.raises(ValueError, match="use bits"):
        q64.bits_to_indices(torch.ones(1, 64, dtype=torch.int64))
    out = q64(_latent(d=64))
    assert out.bits.shape[-1] == 64


def test_straight_through_gradient_is_finite_and_nonzero():
    z = _latent(d=16).requires_grad_(True)
    q = BSQ(16)
    w = torch.randn_like(z)
    (q(z).codes * w).sum().backward()
    assert torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0
    # STE: the gradient equals that of the normalisation u = z/|z| alone
    z2 = z.detach().clone().requires_grad_(True)
    (q.normalize(z2) * w).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)


def test_quantization_runs_in_fp32_under_bf16_autocast():
    q = MultiScaleBSQ(16, [(1, 1), (2, 2), (4, 4)], entropy_weight=0.1)
    z = _latent(d=16, h=4, w=4).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    assert out.quantized.dtype == torch.float32
    assert all(c.dtype == torch.float32 for c in out.codes)
    assert out.entropy_loss.dtype == torch.float32


@pytest.mark.parametrize("d", [4, 16])
def test_agrees_with_vector_quantize_pytorch_spherical_lfq(d):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    ref = vqp.LFQ(dim=d, codebook_size=2**d, spherical=True, entropy_loss_weight=0.0, channel_first=True)
    ref.eval()
    z = _latent(d=d, seed=3)
    ref_codes, ref_idx, _ = ref(z)
    ours = BSQ(d).eval()(z)
    torch.testing.assert_close(ours.codes, ref_codes.float(), atol=1e-6, rtol=0)
    ref_bits = ref_codes.permute(0, 2, 3, 1).reshape(z.shape[0], -1, d) > 0
    assert torch.equal(ours.bits.bool(), ref_bits)
    assert torch.equal(BSQ(d).bits_to_indices(ours.bits), ref_idx.reshape(z.shape[0], -1))


# ---------------------------------------------------------------- losses
def test_entropy_and_commit_weight_zero_is_exactly_zero():
    q = BSQ(8, entropy_weight=0.0, commit_weight=0.0).train()
    out = q(_latent(d=8).requires_grad_(True))
    assert out.entropy_loss.item() == 0.0 and out.commit_loss.item() == 0.0


def test_entropy_penalty_matches_hand_computation_and_has_gradient():
    d, T = 4, 0.7
    q = BSQ(
        d, entropy_weight=2.0, commit_weight=0.0, entropy_temperature=T, codebook_entropy_weight=1.0
    ).train()
    z = _latent(b=3, d=d, h=2, w=2, seed=5).requires_grad_(True)
    out = q(z)
    # independent computation in float64 with numpy-style formulas
    u = (z / z.norm(dim=1, keepdim=True)).detach().double().permute(0, 2, 3, 1).reshape(-1, d)
    p = 1 / (1 + torch.exp(-4 * u / (math.sqrt(d) * T)))

    def h(x):
        return -(x * x.log() + (1 - x) * (1 - x).log())

    expected = 2.0 * (h(p).sum(1).mean() - h(p.mean(0)).sum())
    assert out.entropy_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.entropy_loss.item() != 0.0
    out.entropy_loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_entropy_penalty_can_be_negative():
    # Confident, diverse bits: per-sample entropy ~0, codebook entropy ~d·ln2 → negative penalty.
    d = 8
    g = torch.Generator().manual_seed(0)
    z = (torch.randint(0, 2, (4, d, 8, 8), generator=g).float() * 2 - 1) * 50
    out = BSQ(d, entropy_weight=1.0, spherical=False, entropy_temperature=0.01).train()(z)
    assert out.entropy_loss.item() < -0.9 * d * math.log(2)


def test_commitment_loss_value():
    q = BSQ(4, commit_weight=0.25).train()
    z = _latent(d=4, seed=7)
    out = q(z)
    u = z / z.norm(dim=1, keepdim=True)
    expected = 0.25 * ((u - torch.sign(u) / 2) ** 2).mean()
    assert out.commit_loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- multi-scale
def test_multiscale_sum_identity_and_bits_decode():
    schedule = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)]
    q = MultiScaleBSQ(16, schedule)
    z = _latent(d=16, h=8, w=8)
    out = q(z)
    manual = sum(upsample(c, (8, 8)) for c in out.codes)
    torch.testing.assert_close(out.quantized, manual, atol=1e-6, rtol=0)
    torch.testing.assert_close(q.bits_to_quantized(out.bits), out.quantized.detach(), atol=1e-6, rtol=0)
    assert [b.shape for b in out.bits] == [(2, h * w, 16) for h, w in schedule]


def test_multiscale_residual_recursion_by_hand():
    schedule = [(1, 1), (2, 2), (4, 4)]
    q = MultiScaleBSQ(3, schedule)
    z = _latent(b=1, d=3, h=4, w=4, seed=11)
    out = q(z)
    residual = z.clone()
    for k, hw in enumerate(schedule):
        r = torch.nn.functional.adaptive_avg_pool2d(residual, hw)  # area == adaptive average pooling
        code = torch.where(r >= 0, 1.0, -1.0) / math.sqrt(3)  # sign of u equals sign of r
        torch.testing.assert_close(out.codes[k], code)
        residual = residual - torch.nn.functional.interpolate(
            code, size=(4, 4), mode="bilinear", align_corners=False
        )


def test_progressive_decoding_from_first_k_scales():
    schedule = [(1, 1), (2, 2), (4, 4)]
    q = MultiScaleBSQ(8, schedule)
    z = _latent(d=8, h=4, w=4)
    full = q(z)
    for k in (1, 2):
        part = q(z, num_scales=k)
        assert len(part.bits) == k
        torch.testing.assert_close(part.quantized, q.bits_to_quantized(full.bits[:k]))


def test_scale_drop_truncates_about_half_of_batches():
    schedule = [(1, 1), (2, 2), (4, 4), (8, 8)]
    q = MultiScaleBSQ(4, schedule, scale_drop_prob=0.5).train()
    z = _latent(b=1, d=4, h=8, w=8)
    g = torch.Generator().manual_seed(0)
    n = 400
    used = [len(q(z, generator=g).bits) for _ in range(n)]
    dropped = sum(u < 4 for u in used)
    # Binomial(400, 0.5): 4 standard deviations = 40
    assert abs(dropped - n / 2) < 40
    assert set(u for u in used if u < 4) == {1, 2, 3}
    q.eval()
    assert all(len(q(z).bits) == 4 for _ in range(5))


def test_reference_square_schedules_token_counts():
    s256 = square_schedule(16)
    assert s256 == [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16)]
    assert len(s256) == 7 and num_tokens(s256) == 521
    assert len(square_schedule(32)) == 10
    assert len(square_schedule(64)) == 13 and num_tokens(square_schedule(64)) == 10521
    assert named_schedule("square-16") == s256


def test_scale_bounds_tile_the_sequence():
    assert scale_bounds([(1, 1), (2, 2), (4, 4)]) == [(0, 1), (1, 5), (5, 21)]
    schedule = schedule_for_latent((16, 32), 7)
    bounds = scale_bounds(schedule)
    assert bounds[0][0] == 0 and bounds[-1][1] == num_tokens(schedule)
    assert all(b[0] == a[1] for a, b in itertools.pairwise(bounds))
    assert [b - a for a, b in bounds] == [h * w for h, w in schedule]


def test_aspect_ratio_schedule_has_about_square_areas():
    schedule = validate_schedule(aspect_ratio_schedule(0.5, 7))  # h/w = 1/2
    h, w = schedule[-1]
    assert abs(w / h - 2) < 0.1
    areas = [a * b for a, b in schedule]
    square_areas = [a * b for a, b in square_schedule(16)]
    for a, s in zip(areas, square_areas):
        assert 0.5 * s <= a <= 2 * s
    q = MultiScaleBSQ(8, schedule)
    out = q(_latent(d=8, h=h, w=w))
    assert out.quantized.shape == (2, 8, h, w)


def test_schedule_for_non_square_latent():
    schedule = schedule_for_latent((16, 32), 7)
    assert schedule == [(1, 1), (2, 4), (4, 8), (6, 12), (8, 16), (12, 24), (16, 32)]
    assert schedule_for_latent((16, 16)) == square_schedule(16)
    q = MultiScaleBSQ(8, square_schedule(16))
    out = q(_latent(d=8, h=16, w=32), scale_schedule=schedule)
    assert out.quantized.shape == (2, 8, 16, 32)
    torch.testing.assert_close(q.bits_to_quantized(out.bits, schedule), out.quantized)


def test_schedule_validation_errors():
    with pytest.raises(ValueError, match="must equal the latent grid"):
        validate_schedule([(1, 1), (2, 2)], latent_hw=(4, 4))
    with pytest.raises(ValueError, match="must grow"):
        MultiScaleBSQ(4, [(1, 1), (4, 4), (2, 2)])
    with pytest.raises(ValueError, match="must grow"):
        MultiScaleBSQ(4, [(2, 2), (2, 2)])
    with pytest.raises(ValueError, match="codebook_dim"):
        MultiScaleBSQ(65, [(1, 1)])
    with pytest.raises(ValueError, match="codebook_dim"):
        BSQ(0)
    q = MultiScaleBSQ(4, [(1, 1), (2, 2)])
    with pytest.raises(ValueError, match="does not match the last scale"):
        q(_latent(d=4, h=4, w=4))


def test_downsample_is_area_average():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(downsample(x, (2, 2)), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_quantizer_does_not_import_lightning():
    code = (
        "import sys, infinity_lit.quantizer; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# The reference's dynamic-resolution templates (FoundationVision/Infinity, infinity/utils/dynamic_resolution.py),
# written out by hand from its tables: h/w key → last grid (h, w) of the 7-, 10-, 12- and 13-scale schedules.
REFERENCE_LAST_GRIDS = {
    0.333: [(9, 27), (18, 54), (30, 90), (37, 111)],
    0.4: [(10, 25), (20, 50), (32, 80), (40, 100)],
    0.5: [(11, 22), (23, 46), (37, 74), (45, 90)],
    0.571: [(12, 21), (24, 42), (40, 70), (48, 84)],
    0.666: [(14, 21), (26, 39), (42, 63), (52, 78)],
    0.75: [(15, 20), (27, 36), (45, 60), (54, 72)],
    0.8: [(16, 20), (28, 35), (44, 55), (56, 70)],
    1.0: [(16, 16), (32, 32), (48, 48), (64, 64)],
    1.25: [(20, 16), (35, 28), (55, 44), (70, 56)],
    1.333: [(20, 15), (36, 27), (60, 45), (72, 54)],
    1.5: [(21, 14), (39, 26), (63, 42), (78, 52)],
    1.75: [(21, 12), (42, 24), (70, 40), (84, 48)],
    2.0: [(22, 11), (46, 23), (74, 37), (90, 45)],
    2.5: [(25, 10), (50, 20), (80, 32), (100, 40)],
    3.0: [(27, 9), (54, 18), (90, 30), (111, 37)],
}
# Every tall template (h/w ≥ 1) in full, 13 grids (h, w) each, written out by hand from the reference's
# ``ratio2hws`` table in its order; the wide templates (h/w < 1) are these transposed, under the key
# int(1000 / ratio) / 1000 (0.8, 0.75, 0.666, 0.571, 0.5, 0.4, 0.333).
REFERENCE_TALL_TEMPLATES = {
    1.0: [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)],
    1.25: [(1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36), (55, 44), (70, 56)],
    1.333: [(1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36), (60, 45), (72, 54)],
    1.5: [(1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32), (63, 42), (78, 52)],
    1.75: [(1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32), (70, 40), (84, 48)],
    2.0: [(1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30), (74, 37), (90, 45)],
    2.5: [(1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26), (80, 32), (100, 40)],
    3.0: [(1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24), (90, 30), (111, 37)],
}  # fmt: skip
# The wide twin of each tall template (reference key of the transpose).
REFERENCE_WIDE_KEYS = {1.25: 0.8, 1.333: 0.75, 1.5: 0.666, 1.75: 0.571, 2.0: 0.5, 2.5: 0.4, 3.0: 0.333}
# The reference's template order (its dict of all 15 templates: each tall key followed by its wide twin), in
# which ``np.argmin`` breaks an exact tie.
REFERENCE_TEMPLATE_ORDER = (
    1.0,
    1.25,
    0.8,
    1.333,
    0.75,
    1.5,
    0.666,
    1.75,
    0.571,
    2.0,
    0.5,
    2.5,
    0.4,
    3.0,
    0.333,
)


def _reference_full_table() -> dict[float, list[tuple[int, int]]]:
    table = dict(REFERENCE_TALL_TEMPLATES)
    for tall, wide in REFERENCE_WIDE_KEYS.items():
        table[wide] = [(w, h) for h, w in REFERENCE_TALL_TEMPLATES[tall]]
    return table


def test_aspect_ratio_templates_equal_the_reference_tables():
    from infinity_lit.quantizer import (
        ASPECT_RATIO_TEMPLATES,
        ASPECT_RATIOS,
        TEMPLATE_SCALE_COUNTS,
        template_schedule,
    )

    table = _reference_full_table()
    assert ASPECT_RATIOS == tuple(sorted(table)) == tuple(sorted(REFERENCE_LAST_GRIDS)) and len(table) == 15
    assert TEMPLATE_SCALE_COUNTS == (7, 10, 12, 13)
    # The hand-written wide keys are the reference's int(1000 / ratio) / 1000.
    assert all(wide == int(1 / tall * 1000) / 1000 for tall, wide in REFERENCE_WIDE_KEYS.items())
    for ratio, grids in table.items():
        # The whole 13-grid template, grid for grid.
        assert ASPECT_RATIO_TEMPLATES[ratio] == tuple(grids), ratio
        # The reference's per-count schedules (its 0.06M/0.25M/0.60M/1M presets at 7, 10, 12, 13 scales, and
        # the truncation ``scales[:n]`` its trainer applies for fewer scales) are prefixes of the table row
        # (with a time extent t that images ignore): every scale count 1..13 is the row's first n grids.
        for num_scales in range(1, 14):
            schedule = template_schedule(ratio, num_scales)
            assert schedule == grids[:num_scales], (ratio, num_scales)
            validate_schedule(schedule)
        # The preset counts end on the template's aspect ratio (the reference asserts this within 0.01).
        for num_scales, last in zip(TEMPLATE_SCALE_COUNTS, REFERENCE_LAST_GRIDS[ratio]):
            assert grids[num_scales - 1] == last, (ratio, num_scales)
            assert abs(last[0] / last[1] - ratio) < 0.01, (ratio, num_scales)
    # A wide template is its tall twin transposed, in the project's table too.
    for tall, wide in REFERENCE_WIDE_KEYS.items():
        assert ASPECT_RATIO_TEMPLATES[wide] == tuple((w, h) for h, w in ASPECT_RATIO_TEMPLATES[tall])
        assert template_schedule(wide, 13) == [(w, h) for h, w in REFERENCE_TALL_TEMPLATES[tall]]
    # Grids only grow, and at one scale count the token counts stay close to the square schedule's
    # (521 tokens at 7 scales).
    assert all(440 <= num_tokens(template_schedule(r, 7)) <= 670 for r in ASPECT_RATIOS)
    assert template_schedule(4 / 3, 13) == REFERENCE_TALL_TEMPLATES[1.333]


def _reference_nearest(h_div_w: float) -> float:
    # The reference's lookup: templates[np.argmin(np.abs(h_div_w - templates))] over its table order.
    templates = np.array(REFERENCE_TEMPLATE_ORDER)
    return float(templates[np.argmin(np.abs(h_div_w - templates))])


def test_nearest_template_for_an_image_size():
    from infinity_lit.quantizer import nearest_aspect_ratio, template_schedule
    from infinity_lit.quantizer.schedules import TEMPLATE_ORDER

    assert TEMPLATE_ORDER == REFERENCE_TEMPLATE_ORDER
    assert nearest_aspect_ratio(256 / 512) == 0.5
    assert nearest_aspect_ratio(1080 / 1920) == 0.571  # 16:9 video frames
    assert nearest_aspect_ratio(4000 / 6000) == 0.666  # 3:2 photographs
    assert nearest_aspect_ratio(10.0) == 3.0 and nearest_aspect_ratio(0.01) == 0.333
    # Exact ties (equal float64 distances) go to the template listed first in the reference's order, which
    # is the larger ratio below 1 and the smaller one above.
    ties = {
        0.9: 1.0,
        0.45: 0.5,
        0.5355: 0.571,
        0.775: 0.8,
        1.125: 1.0,
        1.625: 1.5,
        1.875: 1.75,
        2.25: 2.0,
        2.75: 2.5,
    }
    for h_div_w, template in ties.items():
        below, above = (
            max(r for r in TEMPLATE_ORDER if r < h_div_w),
            min(r for r in TEMPLATE_ORDER if r > h_div_w),
        )
        assert abs(h_div_w - below) == abs(h_div_w - above), h_div_w  # really a tie in float64
        assert nearest_aspect_ratio(h_div_w) == template == _reference_nearest(h_div_w), h_div_w
    assert template_schedule(0.9, 7)[-1] == (16, 16) and template_schedule(0.45, 7)[-1] == (11, 22)
    # Around every midpoint between neighbouring templates (ties or not), float for float, and over a sweep
    # of image shapes, the lookup is the reference's.
    ordered = sorted(REFERENCE_TEMPLATE_ORDER)
    for lo, hi in itertools.pairwise(ordered):
        x = (lo + hi) / 2
        for _ in range(40):
            x = math.nextafter(x, 0.0)
        for _ in range(80):
            assert nearest_aspect_ratio(x) == _reference_nearest(x), x
            x = math.nextafter(x, math.inf)
    for h in range(16, 1025, 16):
        for w in range(16, 1025, 48):
            assert nearest_aspect_ratio(h / w) == _reference_nearest(h / w), (h, w)
    assert template_schedule(1080 / 1920, 7)[-1] == (12, 21)
    with pytest.raises(ValueError, match="positive"):
        nearest_aspect_ratio(0.0)
    with pytest.raises(ValueError, match="positive"):
        nearest_aspect_ratio(float("nan"))
    with pytest.raises(ValueError, match="num_scales"):
        template_schedule(1.0, 14)
    with pytest.raises(ValueError, match=r"no scale schedule template for h/w = 0.6;.*0.571, 0.666"):
        aspect_ratio_schedule(0.6, 7)


# ---------------------------------------------------------------- finite for every finite input
def _extreme_latents(dtype: torch.dtype, d: int = 8) -> torch.Tensor:
    """(6, d, 2, 2) latents of ``dtype``: the largest finite value, the smallest normal and subnormal ones,
    zeros, mixed signs and magnitudes, and a saturating spread."""
    info = torch.finfo(dtype)
    big, tiny = info.max, info.tiny
    g = torch.Generator().manual_seed(0)
    rows = [
        torch.full((d, 2, 2), big),
        torch.full((d, 2, 2), -big),
        torch.full((d, 2, 2), tiny),
        torch.zeros(d, 2, 2),
        torch.randn(d, 2, 2, generator=g).sign() * big,
        torch.randn(d, 2, 2, generator=g) * torch.logspace(-30, 30, d).view(d, 1, 1),
    ]
    return torch.stack(rows).double().clamp(-big, big).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 1e-3])
def test_bsq_losses_and_gradients_are_finite_for_every_finite_input(dtype, temperature):
    """The entropy penalty (per-sample and codebook terms) and the commitment loss of BSQ, and their
    gradients, stay finite at the extremes of each dtype, also when every bit probability saturates.

    The quantizer computes in fp32 whatever the latent's dtype, so the gradient is checked in fp32, where it
    is computed: cast back to fp16 it can exceed fp16's range (1/ε = 1e8 at an all-zero latent), which is
    what a GradScaler is for."""
    q = BSQ(8, entropy_weight=0.1, commit_weight=0.25, entropy_temperature=temperature).train()
    z = _extreme_latents(dtype).float().requires_grad_(True)
    out = q(z)
    terms = (out.entropy_loss, out.commit_loss, out.per_sample_entropy, out.codebook_entropy)
    assert all(torch.isfinite(t).all() for t in terms), terms
    (out.entropy_loss + out.commit_loss + out.codes.float().sum()).backward()
    assert torch.isfinite(z.grad).all()
    assert torch.isfinite(out.codes).all() and (out.codes.abs() > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_lfq_entropy_penalty_is_finite_when_the_logits_overflow(dtype):
    """LFQ has no normalisation, so a large latent gives an infinite logit; the penalty (bounded by
    d·ln 2 per term) and its gradient stay finite, and saturated bits carry no entropy."""
    q = LFQ(8, entropy_weight=0.1, commit_weight=0.0).train()
    z = _extreme_latents(dtype)[:2].float().requires_grad_(True)  # ±max: every logit saturates
    out = q(z)
    assert torch.isfinite(out.entropy_loss)
    out.entropy_loss.backward()
    assert torch.isfinite(z.grad).all()
    assert out.per_sample_entropy.item() < 1e-12
    assert torch.equal(out.codes.abs(), torch.ones_like(out.codes))  # the straight-through code is exact
    # half the samples at +max, half at −max: the codebook bit marginals are ½ (H = d·ln 2 exactly)
    assert out.codebook_entropy.item() == pytest.approx(8 * math.log(2), rel=1e-6)


def test_stable_entropy_agrees_with_the_textbook_formula():
    """softplus(x) − x·σ(x) equals −p ln p − (1−p) ln(1−p) with p = σ(x) (float64 reference) where both are
    defined, and the clamped codebook entropy differs from the exact one by < 2.5e-6 nats at 0 and 1."""
    from infinity_lit.quantizer.bsq import _binary_entropy, _binary_entropy_of_logits

    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    p = torch.sigmoid(x)
    reference = -(p * p.log() + (1 - p) * (1 - p).log())
    torch.testing.assert_close(_binary_entropy_of_logits(x.float()).double(), reference, atol=2e-6, rtol=1e-5)
    edge = _binary_entropy(torch.tensor([0.0, 1.0, 0.5]))
    assert edge[:2].abs().max().item() < 2.5e-6 and edge[2].item() == pytest.approx(math.log(2), rel=1e-6)

"""Per-shape scale schedules (``TokenizerConfig.aspect_ratio_schedules``): the rules they must follow, and
which schedule a tokenizer picks for a latent grid or an aspect ratio, checked on hand-written cases."""

from __future__ import annotations

import pytest
import torch

from infinity_lit.quantizer import (
    schedule_for_grid,
    schedule_for_ratio,
    shape_schedules,
    template_scale_count,
)
from infinity_lit.tokenizer import BitwiseTokenizer, TokenizerConfig

SQUARE = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)]
#: The method's 5-scale templates for h/w 0.5 and 2 (``ASPECT_RATIO_TEMPLATES``), written out by hand.
WIDE_TEMPLATE = [(1, 1), (2, 2), (2, 4), (3, 6), (5, 10)]
TALL_TEMPLATE = [(1, 1), (2, 2), (4, 2), (6, 3), (10, 5)]
#: A denser start to the same 5×10 grid than the template.
WIDE_DENSE = [(1, 1), (1, 2), (2, 4), (4, 8), (5, 10)]
#: A per-shape schedule for a grid no 5-scale template ends at (h/w 0.5 at 4×8).
WIDE_4x8 = [(1, 1), (1, 2), (2, 4), (3, 6), (4, 8)]


def test_lookup_by_latent_grid_prefers_own_then_configured_then_template() -> None:
    assert schedule_for_grid((8, 8), SQUARE, [WIDE_DENSE]) == SQUARE
    assert schedule_for_grid((5, 10), SQUARE, [WIDE_DENSE]) == WIDE_DENSE
    assert schedule_for_grid((5, 10), SQUARE) == WIDE_TEMPLATE
    # The other shape keeps its template.
    assert schedule_for_grid((10, 5), SQUARE, [WIDE_DENSE]) == TALL_TEMPLATE
    assert schedule_for_grid((4, 8), SQUARE) is None  # the 0.5 template's 5th grid is 5×10
    assert schedule_for_grid((4, 8), SQUARE, [WIDE_4x8]) == WIDE_4x8
    assert schedule_for_grid((7, 7), SQUARE, [WIDE_DENSE]) is None
    # A configured schedule of h/w 0.5 replaces that template: the template's grid has no schedule then.
    assert schedule_for_grid((5, 10), SQUARE, [WIDE_4x8]) is None
    # More scales than the templates have (13): no template to fall back on, and no error.
    fourteen = [(k, k) for k in range(1, 15)]
    assert schedule_for_grid((14, 14), fourteen) == fourteen and schedule_for_grid((7, 14), fourteen) is None


def test_scale_count_whose_template_ends_at_a_grid() -> None:
    assert template_scale_count((5, 10)) == 5 and template_scale_count((10, 5)) == 5
    assert template_scale_count((8, 8)) == 5 and template_scale_count((16, 16)) == 7
    assert template_scale_count((2, 4)) == 3 and template_scale_count((4, 8)) is None
    assert template_scale_count((1, 1)) == 1


def test_lookup_by_aspect_ratio() -> None:
    assert schedule_for_ratio(1, SQUARE, [WIDE_DENSE]) == SQUARE
    assert schedule_for_ratio(0.5, SQUARE, [WIDE_DENSE]) == WIDE_DENSE
    assert schedule_for_ratio(0.5, SQUARE) == WIDE_TEMPLATE
    assert schedule_for_ratio(2.0, SQUARE, [WIDE_DENSE]) == TALL_TEMPLATE
    # A configured grid that is not the template's own (4×8, h/w 0.5) is the 0.5 schedule all the same.
    assert schedule_for_ratio(0.5, SQUARE, [WIDE_4x8]) == WIDE_4x8
    with pytest.raises(ValueError, match=r"no scale schedule template for h/w = 0\.55"):
        schedule_for_ratio(0.55, SQUARE, [WIDE_DENSE])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([[(1, 1), (2, 4), (5, 10)]], r"aspect_ratio_schedules\[0\] \(ending at 5×10\) has 3 scales .* needs 5"),
        ([[(2, 2), (3, 3), (3, 4), (4, 8), (5, 10)]], r"starting at \(2, 2\); it needs 5 scales starting at \(1, 1\)"),
        ([[(1, 1), (2, 2), (2, 2), (4, 8), (5, 10)]], r"aspect_ratio_schedules\[0\]: scale schedule must grow"),
        ([WIDE_DENSE, WIDE_4x8], r"aspect_ratio_schedules\[1\] ends at 4×8.*h/w 0\.5 already has the schedule ending at 5×10"),
        ([[(1, 1), (2, 2), (3, 3), (5, 5), (7, 7)]], r"h/w 1 already has the tokenizer's own scale_schedule"),
    ],
)  # fmt: skip
def test_per_shape_schedules_that_break_a_rule_are_refused(extra, message) -> None:
    with pytest.raises(ValueError, match=message):
        shape_schedules(SQUARE, extra)
    with pytest.raises(ValueError, match=message):  # the same error from the tokenizer's config
        TokenizerConfig(scale_schedule=SQUARE, aspect_ratio_schedules=extra)


def test_the_tokenizer_quantises_and_round_trips_with_its_configured_schedule() -> None:
    torch.manual_seed(0)
    config = TokenizerConfig(
        codebook_dim=4,
        scale_schedule=SQUARE,
        aspect_ratio_schedules=[WIDE_DENSE],
        base_channels=4,
        channel_multipliers=[1, 1, 1, 1],
        num_groups=2,
    )
    assert TokenizerConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["aspect_ratio_schedules"] == [[list(hw) for hw in WIDE_DENSE]]
    assert TokenizerConfig.from_dict({"scale_schedule": SQUARE}).aspect_ratio_schedules == []
    tokenizer = BitwiseTokenizer(config).eval()
    assert tokenizer.schedule_for(40, 80) == WIDE_DENSE and tokenizer.schedule_for(80, 40) == TALL_TEMPLATE
    assert tokenizer.schedule_for_aspect_ratio(0.5) == WIDE_DENSE
    with torch.no_grad():
        recon, out = tokenizer(torch.rand(2, 3, 40, 80) * 2 - 1)
    assert recon.shape == (2, 3, 40, 80) and [tuple(c.shape[-2:]) for c in out.codes] == WIDE_DENSE
    # An image size no schedule ends at names the configured sizes among those that fit.
    with pytest.raises(
        ValueError,
        match=r"own schedule for h/w 0\.5 \(aspect_ratio_schedules\) ends at 5×10; use images of 40×80, or give",
    ):
        tokenizer.schedule_for(32, 64)
    # A configured schedule replaces its aspect ratio's template in training too, not only in sampling.
    config.aspect_ratio_schedules = [WIDE_4x8]
    tokenizer = BitwiseTokenizer(config)
    assert tokenizer.schedule_for(32, 64) == WIDE_4x8 == tokenizer.schedule_for_aspect_ratio(0.5)
    with pytest.raises(
        ValueError, match=r"h/w 0\.5 \(aspect_ratio_schedules\) ends at 4×8; use images of 32×64"
    ):
        tokenizer.schedule_for(40, 80)
    # Another aspect ratio: the sizes that fit, and the scale count whose template ends at the grid.
    with pytest.raises(
        ValueError,
        match=r"use images of 64×64 or 32×64 or 80×40 \(.*train a tokenizer with 4 scales \(the template ends at "
        r"6×3 with 4\), or give the tokenizer a schedule ending at \(6, 3\) \(model\.tokenizer\.aspect_ratio_schedules",
    ):
        tokenizer.schedule_for(48, 24)

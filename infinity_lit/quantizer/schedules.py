"""Scale schedules: the list of latent grid sizes (h_k, w_k) a multi-scale quantizer visits.

A schedule is data: a list of ``(h, w)`` integer pairs, strictly growing, ending at the latent grid.
The reference square schedule of Infinity (arXiv 2412.04431, §3.1 and its released code) uses the grid
sides 1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64: 256² images with stride 16 use the first 7 scales
(16×16 last, 521 tokens), 512² the first 10 and 1024² all 13 (10,521 tokens).

Non-square aspect ratios follow the reference's dynamic-resolution templates (``ASPECT_RATIO_TEMPLATES``:
15 aspect ratios h/w from 1/3 to 3, 13 grids each, with about the token count of the square schedule at
every scale), looked up for an image by the nearest template (``nearest_aspect_ratio``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ScaleSchedule = list[tuple[int, int]]

#: Latent grid sides of the reference square schedule (Infinity, 1024² uses all 13 scales).
REFERENCE_SIDES: tuple[int, ...] = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)

#: Latent grids (h, w) of the reference's dynamic-resolution templates for h/w ≥ 1 (Infinity's released
#: code, ``infinity/utils/dynamic_resolution.py``; stride 16), 13 scales each; the 1.0 template is the square
#: schedule. The h/w < 1 templates are these transposed (``ASPECT_RATIO_TEMPLATES``).
_TALL_TEMPLATES: dict[float, tuple[tuple[int, int], ...]] = {
    1.0: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)),
    1.25: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36), (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36), (60, 45), (72, 54)),
    1.5: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32), (63, 42), (78, 52)),
    1.75: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32), (70, 40), (84, 48)),
    2.0: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30), (74, 37), (90, 45)),
    2.5: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26), (80, 32), (100, 40)),
    3.0: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24), (90, 30), (111, 37)),
}  # fmt: skip


def _template_key(h_div_w: float) -> float:
    # The reference names a transposed template by 1/ratio truncated to 3 decimals (4/3 → 0.75, 3/2 → 0.666).
    return math.floor(h_div_w * 1000 + 1e-9) / 1000


#: Dynamic-resolution templates: aspect ratio h/w (the reference's key: 1.333 for 4/3, 0.666 for 2/3, …) →
#: the 13 latent grids (h, w) of its scale schedule. A schedule of K scales is the first K grids; at the
#: reference's scale counts ``TEMPLATE_SCALE_COUNTS`` the last grid has the template's aspect ratio
#: (within 1 %). 15 aspect ratios: 1/3, 2/5, 1/2, 4/7, 2/3, 3/4, 4/5, 1, 5/4, 4/3, 3/2, 7/4, 2, 5/2, 3.
ASPECT_RATIO_TEMPLATES: dict[float, tuple[tuple[int, int], ...]] = dict(
    sorted(
        {
            **_TALL_TEMPLATES,
            **{
                _template_key(1 / r): tuple((w, h) for h, w in g)
                for r, g in _TALL_TEMPLATES.items()
                if r != 1.0
            },
        }.items()
    )
)

#: The aspect ratios h/w of ``ASPECT_RATIO_TEMPLATES``, ascending.
ASPECT_RATIOS: tuple[float, ...] = tuple(ASPECT_RATIO_TEMPLATES)

#: The template aspect ratios in the reference's table order: each tall template of ``_TALL_TEMPLATES`` (1.0,
#: 1.25, 1.333, …, 3.0) followed by its transpose (0.8 after 1.25, 0.75 after 1.333, …), i.e. 1.0, 1.25, 0.8,
#: 1.333, 0.75, 1.5, 0.666, 1.75, 0.571, 2.0, 0.5, 2.5, 0.4, 3.0, 0.333. ``nearest_aspect_ratio`` breaks an
#: exact tie in favour of the template listed first here, as the reference's ``np.argmin`` over its table does.
TEMPLATE_ORDER: tuple[float, ...] = tuple(
    key for r in _TALL_TEMPLATES for key in ((r,) if r == 1.0 else (r, _template_key(1 / r)))
)

#: Scale counts of the reference's presets (7, 10, 12, 13 scales: about 0.06, 0.25, 0.6 and 1 megapixel at
#: stride 16, i.e. the 256², 512², 768² and 1024² square schedules).
TEMPLATE_SCALE_COUNTS: tuple[int, ...] = (7, 10, 12, 13)


def nearest_aspect_ratio(h_div_w: float) -> float:
    """The template aspect ratio nearest to ``h_div_w``, as the reference assigns an image of height/width
    ``h_div_w`` to a template: smallest ``|h_div_w - template|`` in float64, and on an exact tie the template
    listed first in the reference's table order (``TEMPLATE_ORDER``), which is not always the smaller ratio:
    0.9 (equidistant from 0.8 and 1.0) → 1.0, 0.45 → 0.5, 0.775 → 0.8, 1.125 → 1.0, 2.25 → 2.0.

    Args:
        h_div_w: height / width of the image (any positive finite float).

    Returns:
        One of ``ASPECT_RATIOS`` (the reference's key: 1.333 for 4/3, 0.666 for 2/3, …).

    Raises:
        ValueError: ``h_div_w`` is not a positive finite number.
    """
    if not (math.isfinite(h_div_w) and h_div_w > 0):
        raise ValueError(f"aspect ratio h/w must be a positive number, got {h_div_w}")
    h_div_w = float(h_div_w)
    return min(TEMPLATE_ORDER, key=lambda r: abs(h_div_w - r))  # min keeps the first of equal keys


def template_schedule(h_div_w: float, num_scales: int) -> ScaleSchedule:
    """The first ``num_scales`` grids of the template nearest to ``h_div_w`` (``nearest_aspect_ratio``).

    Example: ``template_schedule(0.5, 7)`` = [(1,1), (2,2), (2,4), (3,6), (5,10), (8,16), (11,22)]
    (a 176×352 image at stride 16, 451 tokens).

    Args:
        h_div_w: height / width of the image (or the template's key).
        num_scales: 1..13; ``TEMPLATE_SCALE_COUNTS`` end on the template's aspect ratio.

    Raises:
        ValueError: ``h_div_w`` not positive, or ``num_scales`` outside 1..13.
    """
    grids = ASPECT_RATIO_TEMPLATES[nearest_aspect_ratio(h_div_w)]
    if not 1 <= num_scales <= len(grids):
        raise ValueError(f"num_scales must be in 1..{len(grids)}, got {num_scales}")
    return [tuple(g) for g in grids[:num_scales]]


def square_schedule(final_side: int) -> ScaleSchedule:
    """Prefix of the reference square schedule that ends at ``final_side``.

    Args:
        final_side: side of the latent grid (image side / stride), e.g. 16 for 256² at stride 16.

    Returns:
        ``[(1,1), (2,2), …, (final_side, final_side)]``; for sides not in the reference list the
        reference sides below ``final_side`` are used and ``final_side`` is appended.

    Raises:
        ValueError: ``final_side`` < 1.
    """
    if final_side < 1:
        raise ValueError(f"final_side must be >= 1, got {final_side}")
    sides = [s for s in REFERENCE_SIDES if s < final_side] + [final_side]
    return [(s, s) for s in sides]


def aspect_ratio_schedule(aspect_ratio: float, num_scales: int) -> ScaleSchedule:
    """The reference's schedule for the template aspect ratio ``h/w`` with ``num_scales`` scales.

    ``aspect_ratio`` must be one of ``ASPECT_RATIOS`` (within 1 %, so 4/3 and 2/3 name the 1.333 and 0.666
    templates); for an image of any shape use ``template_schedule``, which takes the nearest one.

    Raises:
        ValueError: an aspect ratio that is no template (the message names the nearest and lists them all),
            or ``num_scales`` outside 1..13.
    """
    nearest = nearest_aspect_ratio(aspect_ratio)
    if abs(nearest - aspect_ratio) > 0.01 * nearest:
        listed = ", ".join(f"{r:g}" for r in ASPECT_RATIOS)
        raise ValueError(
            f"no scale schedule template for h/w = {aspect_ratio:g}; the nearest is {nearest:g}, the templates "
            f"are {listed} (template_schedule picks the nearest for an image)"
        )
    return template_schedule(nearest, num_scales)


def shape_schedules(
    schedule: Sequence[Sequence[int]], extra: Sequence[Sequence[Sequence[int]]] = ()
) -> list[ScaleSchedule]:
    """Check the per-shape schedules ``extra`` of a tokenizer whose own (square) schedule is ``schedule``.

    A per-shape schedule replaces the method's template for the images whose latent grid is its last scale
    (``schedule_for_grid``), and for sampling at the template aspect ratio nearest to that grid's h/w
    (``schedule_for_ratio``). Rules: each a valid schedule (``validate_schedule``) with as many scales as
    ``schedule`` and the same first scale (the generator's per-scale weights and its start token need that);
    at most one per template aspect ratio, the own schedule being the square one (1.0).

    Example: own [(1,1), (2,2), (4,4), (6,6), (8,8)] and extra [[(1,1), (1,2), (2,4), (3,6), (5,10)]] (a
    denser start than the h/w 0.5 template [(1,1), (2,2), (2,4), (3,6), (5,10)]).

    Returns:
        ``extra`` as lists of int pairs, in the given order.

    Raises:
        ValueError: naming the offending schedule (its index and last grid) and the rule it breaks.
    """
    own = validate_schedule(schedule)
    out: list[ScaleSchedule] = []
    taken: dict[float, tuple[int, int]] = {1.0: own[-1]}
    for i, candidate in enumerate(extra):
        try:
            checked = validate_schedule(candidate)
        except ValueError as err:
            raise ValueError(f"aspect_ratio_schedules[{i}]: {err}") from None
        h, w = checked[-1]
        if len(checked) != len(own) or checked[0] != own[0]:
            raise ValueError(
                f"aspect_ratio_schedules[{i}] (ending at {h}×{w}) has {len(checked)} scales starting at "
                f"{checked[0]}; it needs {len(own)} scales starting at {own[0]}, as the tokenizer's scale_schedule"
            )
        ratio = nearest_aspect_ratio(h / w)
        if ratio in taken:
            th, tw = taken[ratio]
            which = (
                "the tokenizer's own scale_schedule" if ratio == 1.0 else f"the schedule ending at {th}×{tw}"
            )
            raise ValueError(
                f"aspect_ratio_schedules[{i}] ends at {h}×{w}, whose nearest template aspect ratio h/w {ratio:g} "
                f"already has {which}; give at most one schedule per aspect ratio (the square one is "
                "scale_schedule)"
            )
        taken[ratio] = (h, w)
        out.append(checked)
    return out


def shape_schedule_for(aspect_ratio: float, extra: Sequence[Sequence[Sequence[int]]]) -> ScaleSchedule | None:
    """The per-shape schedule of ``extra`` (``shape_schedules``) for the template aspect ratio nearest to
    h/w ``aspect_ratio``: the one whose last grid's h/w has that nearest template; None when ``extra`` has
    none for it."""
    ratio = nearest_aspect_ratio(aspect_ratio)
    for candidate in extra:
        pairs = [(int(h), int(w)) for h, w in candidate]
        if nearest_aspect_ratio(pairs[-1][0] / pairs[-1][1]) == ratio:
            return pairs
    return None


def schedule_for_grid(
    latent_hw: tuple[int, int],
    schedule: Sequence[Sequence[int]],
    extra: Sequence[Sequence[Sequence[int]]] = (),
) -> ScaleSchedule | None:
    """The scale schedule a tokenizer quantises a latent grid with: its own ``schedule`` if it ends at
    ``latent_hw``; else the per-shape schedule of ``extra`` that ends there (``shape_schedules``); else, for an
    aspect ratio ``extra`` has no schedule for, the method's template of that aspect ratio with as many scales
    (``template_schedule``) if it ends there. A per-shape schedule replaces the template of its aspect ratio
    (the nearest template to its last grid's h/w) entirely, as sampling at that aspect ratio uses it
    (``schedule_for_ratio``): a grid of that aspect ratio it does not end at has no schedule.

    Example: own [(1,1), (2,2), (4,4), (6,6), (8,8)], no extra: (5, 10) → [(1,1), (2,2), (2,4), (3,6), (5,10)]
    (a 40×80 image at stride 8); (4, 8) → None (the 0.5 template's 5th grid is 5×10). With the extra
    [(1,1), (1,2), (2,4), (3,6), (4,8)]: (4, 8) → it, and (5, 10) → None.

    Args:
        latent_hw: (h, w) of the latent grid (image size / stride), positive ints.
        schedule: the tokenizer's own schedule (``validate_schedule``'d).
        extra: its per-shape schedules (``shape_schedules``'d).

    Returns:
        the schedule (a list of int pairs), or None when none ends at ``latent_hw`` (also for an own schedule
        of more scales than the templates have, 13).
    """
    latent = (int(latent_hw[0]), int(latent_hw[1]))
    own = [(int(h), int(w)) for h, w in schedule]
    if own[-1] == latent:
        return own
    ratio = nearest_aspect_ratio(latent[0] / latent[1])
    configured = shape_schedule_for(ratio, extra)
    if configured is not None:  # this aspect ratio's schedule, wherever it ends
        return configured if configured[-1] == latent else None
    if len(own) > len(ASPECT_RATIO_TEMPLATES[ratio]):
        return None
    template = template_schedule(ratio, len(own))
    return template if template[-1] == latent else None


def template_scale_count(latent_hw: tuple[int, int]) -> int | None:
    """The number of scales K at which the method's template of the grid's aspect ratio (the nearest to its
    h/w) ends exactly at ``latent_hw``: a tokenizer needs K scales to train on such images with the template.
    Example: (5, 10) → 5 (the 0.5 template's 5th grid), (4, 8) → None (no template grid is 4×8).

    Raises:
        ValueError: sides that are not positive.
    """
    h, w = (int(v) for v in latent_hw)
    if h < 1 or w < 1:
        raise ValueError(f"latent grid must have positive sides, got {latent_hw}")
    grids = ASPECT_RATIO_TEMPLATES[nearest_aspect_ratio(h / w)]
    return next((k for k, grid in enumerate(grids, 1) if tuple(grid) == (h, w)), None)


def schedule_for_ratio(
    aspect_ratio: float,
    schedule: Sequence[Sequence[int]],
    extra: Sequence[Sequence[Sequence[int]]] = (),
) -> ScaleSchedule:
    """The scale schedule a tokenizer samples at the template aspect ratio h/w ``aspect_ratio`` with: its own
    ``schedule`` for 1; the per-shape schedule of ``extra`` whose last grid is nearest to that template;
    else the method's template with as many scales (``aspect_ratio_schedule``).

    Raises:
        ValueError: an aspect ratio that is no template (as ``aspect_ratio_schedule``: the message names the
            nearest and lists them all).
    """
    own = [(int(h), int(w)) for h, w in schedule]
    template = aspect_ratio_schedule(aspect_ratio, len(own))  # raises for a ratio that is no template
    if nearest_aspect_ratio(aspect_ratio) == 1.0:
        return own
    configured = shape_schedule_for(aspect_ratio, extra)
    return template if configured is None else configured


def schedule_for_latent(latent_hw: tuple[int, int], num_scales: int | None = None) -> ScaleSchedule:
    """Schedule ending exactly at a (possibly non-square) latent grid, following the reference sides.

    Scale k is the latent grid shrunk by ``REFERENCE_SIDES[k] / REFERENCE_SIDES[K-1]`` (rounded, at
    least 1), so every scale keeps the aspect ratio of the latent; the first scale is 1×1. For a square
    latent whose side is a reference side this equals ``square_schedule``. Example: latent (16, 32)
    (a 256×512 image at stride 16) with 7 scales gives
    [(1,1), (2,4), (4,8), (6,12), (8,16), (12,24), (16,32)].

    Args:
        latent_hw: (h, w) of the latent grid (image size / stride).
        num_scales: number of reference sides to follow (default: as many as the square schedule of
            the latent's shorter side would have).

    Raises:
        ValueError: non-positive sides or num_scales out of 1..13.
    """
    h, w = (int(v) for v in latent_hw)
    if h < 1 or w < 1:
        raise ValueError(f"latent grid must have positive sides, got {latent_hw}")
    if num_scales is None:
        num_scales = len(square_schedule(min(h, w)))
    if not 1 <= num_scales <= len(REFERENCE_SIDES):
        raise ValueError(f"num_scales must be in 1..{len(REFERENCE_SIDES)}, got {num_scales}")
    top = REFERENCE_SIDES[num_scales - 1]
    schedule: ScaleSchedule = [(1, 1)]
    for side in REFERENCE_SIDES[1:num_scales]:
        hk, wk = max(1, round(h * side / top)), max(1, round(w * side / top))
        ph, pw = schedule[-1]
        hk, wk = max(hk, ph), max(wk, pw)
        if (hk, wk) != (ph, pw):
            schedule.append((hk, wk))
    if schedule[-1] != (h, w):
        schedule.append((h, w))
    return schedule


def named_schedule(name: str) -> ScaleSchedule:
    """A reference schedule by name.

    Names: ``"square-<side>"`` (e.g. ``"square-16"`` for 256² at stride 16) and
    ``"ar-<h>x<w>-<num_scales>"`` (e.g. ``"ar-1x2-7"``: h/w = 1/2 with 7 scales).

    Raises:
        ValueError: unknown name.
    """
    try:
        kind, rest = name.split("-", 1)
        if kind == "square":
            return square_schedule(int(rest))
        if kind == "ar":
            ratio, n = rest.rsplit("-", 1)
            h, w = ratio.split("x")
            return aspect_ratio_schedule(int(h) / int(w), int(n))
    except ValueError as err:
        raise ValueError(f"unknown schedule name {name!r} ({err}); use 'square-16' or 'ar-1x2-7'") from err
    raise ValueError(f"unknown schedule name {name!r}; use 'square-<side>' or 'ar-<h>x<w>-<num_scales>'")


def validate_schedule(
    schedule: Sequence[Sequence[int]], latent_hw: tuple[int, int] | None = None
) -> ScaleSchedule:
    """Check a schedule and return it as a list of int pairs.

    Rules: at least one scale; every entry a pair of positive ints; each scale no smaller than the
    previous one in both sides and strictly larger in at least one; the last scale equal to
    ``latent_hw`` when given.

    Raises:
        ValueError: naming the offending entry.
    """
    out: ScaleSchedule = []
    if len(schedule) == 0:
        raise ValueError("scale schedule is empty; give a list of (h, w) pairs such as [[1,1],[2,2],[4,4]]")
    for k, pair in enumerate(schedule):
        if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
            raise ValueError(
                f"scale {k} of the schedule is {pair!r}; each scale must be a pair of positive ints"
            )
        h, w = int(pair[0]), int(pair[1])
        if out:
            ph, pw = out[-1]
            if h < ph or w < pw or (h, w) == (ph, pw):
                raise ValueError(
                    f"scale schedule must grow: scale {k} {(h, w)} does not exceed scale {k - 1} {(ph, pw)}"
                )
        out.append((h, w))
    if latent_hw is not None and out[-1] != tuple(latent_hw):
        raise ValueError(
            f"the last scale {out[-1]} must equal the latent grid {tuple(latent_hw)} "
            f"(image size / stride); fix the schedule or the image size"
        )
    return out


def num_tokens(schedule: Sequence[Sequence[int]]) -> int:
    """Total number of token positions Σ h_k·w_k over the schedule (521 for square-16)."""
    return sum(int(h) * int(w) for h, w in schedule)


def scale_bounds(schedule: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """Token index range [start, end) of every scale in the sequence of all scales (scale order, row-major).

    Example: [(1,1), (2,2), (4,4)] → [(0, 1), (1, 5), (5, 21)].
    """
    bounds, start = [], 0
    for h, w in schedule:
        bounds.append((start, start + int(h) * int(w)))
        start += int(h) * int(w)
    return bounds

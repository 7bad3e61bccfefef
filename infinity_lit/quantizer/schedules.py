"""Scale schedules: the list of latent grid sizes (h_k, w_k) a multi-scale quantizer visits.

A schedule is data: a list of ``(h, w)`` integer pairs, strictly growing, ending at the latent grid.
The reference square schedule of Infinity (arXiv 2412.04431, §3.1 and its released code) uses the grid
sides 1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64: 256² images with stride 16 use the first 7 scales
(16×16 last, 521 tokens), 512² the first 10 and 1024² all 13 (10,521 tokens).

Non-square aspect ratios have schedules of roughly the same area per scale, so that sequence lengths of
different aspect ratios match. ``aspect_ratio_schedule`` builds them from the square one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ScaleSchedule = list[tuple[int, int]]

#: Latent grid sides of the reference square schedule (Infinity, 1024² uses all 13 scales).
REFERENCE_SIDES: tuple[int, ...] = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)

#: The aspect ratios h/w the reference provides schedules for.
REFERENCE_ASPECT_RATIOS: tuple[float, ...] = (
    1 / 3,
    2 / 5,
    1 / 2,
    4 / 7,
    3 / 5,
    2 / 3,
    3 / 4,
    4 / 5,
    1.0,
    5 / 4,
    4 / 3,
    3 / 2,
    5 / 3,
    7 / 4,
    2.0,
    5 / 2,
    3.0,
)


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
    """Schedule for an aspect ratio ``h/w``, with about the area of the square schedule at each scale.

    Scale k has area ≈ ``REFERENCE_SIDES[k]²`` and shape ratio ≈ ``aspect_ratio``; the first scale is
    always 1×1. Each side grows monotonically.

    Args:
        aspect_ratio: h/w, in [1/3, 3].
        num_scales: number of scales, 1..13.

    Returns:
        list of ``(h, w)`` pairs, strictly growing in area.

    Raises:
        ValueError: aspect ratio or number of scales out of range.
    """
    if not (1 / 3 - 1e-6 <= aspect_ratio <= 3 + 1e-6):
        raise ValueError(f"aspect_ratio must be in [1/3, 3], got {aspect_ratio}")
    if not 1 <= num_scales <= len(REFERENCE_SIDES):
        raise ValueError(f"num_scales must be in 1..{len(REFERENCE_SIDES)}, got {num_scales}")
    schedule: ScaleSchedule = []
    for side in REFERENCE_SIDES[:num_scales]:
        h = max(1, round(side * math.sqrt(aspect_ratio)))
        w = max(1, round(side / math.sqrt(aspect_ratio)))
        if schedule:
            ph, pw = schedule[-1]
            h, w = max(h, ph), max(w, pw)
            if (h, w) == (ph, pw):
                continue
        schedule.append((h, w))
    return schedule


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

"""Reading TensorBoard runs back for reports: event folders, scalar series, per-scale values.

Runs of one study share a parent log folder (``runs/<study>/<arm>/seed_<s>/…``); pointing TensorBoard at
the parent (``tensorboard --logdir runs/<study>``) shows every arm's curves together. The writer side
(hyper-parameters with final metrics for the HParams tab) is ``infinity_lit.training.callbacks``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

#: Scalar tags of per-scale validation metrics: ``val/psnr_scale_3``, ``val/bit_acc_scale_3``.
PER_SCALE_TAG = re.compile(r"^(?P<prefix>.*?)(?P<metric>psnr|bit_acc)_scale_(?P<k>\d+)$")


def event_dirs(root: str | Path) -> list[Path]:
    """Folders under ``root`` (itself included) that hold TensorBoard event files, sorted."""
    root = Path(root)
    return sorted({p.parent for p in root.rglob("events.out.tfevents.*")})


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the event files directly in ``logdir``: tag → [(step, value), ...] by step.

    Uses tensorboard's ``EventAccumulator`` with no down-sampling.
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in acc.Tags().get(SCALARS, []):
        # A resumed run may log a step twice: the last value wins.
        series = {e.step: float(e.value) for e in acc.Scalars(tag)}
        out[tag] = sorted(series.items())
    return out


def per_scale_values(scalars: Mapping[str, list[tuple[int, float]]]) -> dict[str, dict[int, float]]:
    """Last value of each per-scale series, grouped: ``{"val/psnr": {1: 14.2, 2: 16.0, ...}, ...}``."""
    out: dict[str, dict[int, float]] = {}
    for tag, series in scalars.items():
        m = PER_SCALE_TAG.match(tag)
        if m and series:
            out.setdefault(f"{m['prefix']}{m['metric']}", {})[int(m["k"])] = series[-1][1]
    return {name: dict(sorted(v.items())) for name, v in sorted(out.items())}

"""The comparison of a study: statistics over seeds, effects against the baseline arm, and one page.

A study trains and evaluates every arm (one value of the studied variable) with several seeds. This
module takes one plain record per (arm, seed) (``StudyRecord``; no folder walking, so it is testable
without training) and writes one self-contained HTML page (pictures embedded as base64 PNGs) plus a
Markdown twin whose pictures are files under ``OUT/assets/``:

1. per arm and metric: n, mean, standard deviation (n − 1), and a 95 % confidence interval of the mean
   (Student t, cut to the metric's range); a metric with one seed has no interval and no "± 0";
2. the effect of every arm against the baseline arm: difference of means and the p-value of Welch's
   two-sided t-test (``scipy.stats.ttest_ind(equal_var=False)``); "outside seed noise" when p < 0.05;
   a metric whose per-seed values are the baseline's (a shared stage) is marked shared, not tested;
3. one plot per headline metric against the studied variable with 95 % error bars, and per-scale PSNR /
   bit accuracy against the scale index;
4. training curves of all arms overlaid (one colour per arm, one thin line per seed);
5. sample grids side by side, rows paired by prompt text and image seed;
6. every (arm, seed) with its status and error, and the evaluation fingerprint, shown once;
7. with per-aspect-ratio scores (``fid@ar0.5``, ``kid@ar2``, …: ordinary metrics, summarised and tested
   like every other), one table per score of arms × aspect ratios (and pooled), with the effects against
   the baseline, and a plot of each score against the aspect ratio.

Numbers are pooled or compared only when their evaluation fingerprints agree (``check_fingerprints``):
an FID over 500 images at 64² is not comparable with one over 1,000 images at 128².
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import numbers
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infinity_lit.evaluation.images import read_metadata
from infinity_lit.evaluation.report import (
    LEGEND,
    figure_png,
    html_page,
    md_cell,
    pyplot,
    thumbnail_png,
)
from infinity_lit.evaluation.tensorboard import PER_SCALE_TAG, event_dirs, read_scalars
from infinity_lit.runs import STAGE_RUN

# ---------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------

#: Status of an (arm, seed) whose stages all finished / one of whose stages raised.
DONE, FAILED = "done", "failed"

#: Fingerprint fields that are expected to differ between runs and are never compared (matched against the
#: last component of a dotted key, so ``sampling.checkpoint`` is one too): each (arm, seed) evaluates its
#: own checkpoint (named by path, step and weights digest).
PER_RUN_FIELDS: frozenset[str] = frozenset(
    {
        "checkpoint",
        "tokenizer_checkpoint",
        "generator_checkpoint",
        "checkpoint_step",
        "generator_weights_sha256",
        "tokenizer_weights_sha256",
    }
)

#: Metric keys that describe another metric rather than being one; never averaged.
AUXILIARY_METRICS: frozenset[str] = frozenset({"kid_std", "kid_subsets_whole_set"})

#: Metrics plotted against the studied variable (those with numbers).
HEADLINE_METRICS: tuple[str, ...] = (
    "fid",
    "kid",
    "clip_score",
    "tokenizer_psnr",
    "tokenizer_ssim",
    "train_loss",
    "seconds",
)

#: Verdict of a metric whose per-seed values are the baseline's (the arms share the stage behind it).
SHARED_VERDICT = "shared with the baseline: the same value for every seed, no test"

#: Significance level of the Welch test.
ALPHA = 0.05
#: Coverage of the confidence intervals.
CONFIDENCE = 0.95

_RECORD_KEYS = {
    "arm",
    "value",
    "seed",
    "status",
    "error",
    "metrics",
    "fingerprint",
    "run_dirs",
    "samples_dir",
}


@dataclass(frozen=True)
class StudyRecord:
    """What one (arm, seed) of a study produced.

    Attributes:
        arm: arm name, e.g. ``"p30"``; unique together with ``seed``.
        value: the arm's value of the studied variable (e.g. ``0.3`` for ``max_flip_prob``); a number is
            plotted on a numeric axis, anything else (a string, a list such as a scale schedule, None) is
            placed by the arm's name. Equal for every seed of an arm.
        seed: the run seed (training and everything downstream of it).
        status: ``"done"`` (every stage finished) or ``"failed"`` (a stage raised; ``error`` says what).
            Failed records are listed with their error and kept out of every statistic.
        error: the error message of a failed record (None when done).
        metrics: final numbers of the run, keyed by metric name. Values are numbers, strings for metrics
            that were not computed (``"not computed (no CLIP weights)"``, shown as such), or None. Known
            keys: ``fid``, ``kid`` (unbiased MMD², mean over subsets), ``kid_std`` (std over KID subsets),
            ``kid_subsets_whole_set`` (bool: every KID subset was the whole set, so ``kid_std`` means
            nothing), ``clip_score`` (0–100), ``tokenizer_psnr`` (dB), ``tokenizer_ssim`` (≤ 1),
            ``psnr_scale_k`` (dB after decoding the first k scales), ``bit_acc_scale_k`` (in [0, 1]),
            ``train_loss``, ``seconds`` (wall-clock), ``steps``; any other key is summarised the same way.
        fingerprint: the evaluation settings behind the metrics (reference split and its hash, number of
            images, image size and file format of both sets, resize mode into Inception, Inception
            weights hash, cfg, τ, top-p, sampling seed, checkpoint, …), nested mappings allowed. Must
            agree between the records that are compared, except ``PER_RUN_FIELDS``.
        run_dirs: TensorBoard run folders of the run's training stages (searched recursively for event
            files).
        samples_dir: folder of generated samples (PNGs + ``metadata.jsonl`` from
            ``infinity_lit.evaluation.sampling.sample_to_folder``), or None.
    """

    arm: str
    seed: int
    status: str = DONE
    value: Any = None
    error: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    run_dirs: tuple[Path, ...] = ()
    samples_dir: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.arm, str) or not self.arm:
            raise ValueError(f"record arm must be a non-empty string, got {self.arm!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"record {self.arm!r}: seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if self.status not in (DONE, FAILED):
            raise ValueError(
                f"record {self.label}: status must be {DONE!r} or {FAILED!r}, got {self.status!r}"
            )
        if not isinstance(self.metrics, Mapping) or not isinstance(self.fingerprint, Mapping):
            raise ValueError(f"record {self.label}: metrics and fingerprint must be mappings")
        object.__setattr__(self, "run_dirs", tuple(Path(p) for p in self.run_dirs))
        if self.samples_dir is not None:
            object.__setattr__(self, "samples_dir", Path(self.samples_dir))

    @property
    def label(self) -> str:
        """``"<arm>/seed <seed>"``, how the page and error messages name the record."""
        return f"{self.arm}/seed {self.seed}"

    @property
    def done(self) -> bool:
        return self.status == DONE

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyRecord:
        """A record from a plain mapping with the attribute names as keys (``arm`` and ``seed`` required).

        Raises:
            ValueError: an unknown key, a missing ``arm``/``seed``, or an invalid value.
        """
        unknown = sorted(set(data) - _RECORD_KEYS)
        if unknown:
            raise ValueError(
                f"study record has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_RECORD_KEYS))}"
            )
        missing = [k for k in ("arm", "seed") if k not in data]
        if missing:
            raise ValueError(f"study record {dict(data)!r:.80} lacks {', '.join(missing)}")
        return cls(
            arm=data["arm"],
            seed=data["seed"],
            status=data.get("status", DONE),
            value=data.get("value"),
            error=data.get("error"),
            metrics=dict(data.get("metrics") or {}),
            fingerprint=dict(data.get("fingerprint") or {}),
            run_dirs=tuple(data.get("run_dirs") or ()),
            samples_dir=data.get("samples_dir"),
        )


def as_records(records: Iterable[StudyRecord | Mapping[str, Any]]) -> list[StudyRecord]:
    """Records as ``StudyRecord`` (mappings go through ``from_dict``), checked for consistency.

    Raises:
        ValueError: no records, a repeated (arm, seed), or an arm whose seeds disagree on ``value``.
    """
    out = [r if isinstance(r, StudyRecord) else StudyRecord.from_dict(r) for r in records]
    if not out:
        raise ValueError("a comparison needs at least one (arm, seed) record")
    seen: set[tuple[str, int]] = set()
    values: dict[str, Any] = {}
    for r in out:
        if (r.arm, r.seed) in seen:
            raise ValueError(f"(arm, seed) {r.label} appears twice in the records")
        seen.add((r.arm, r.seed))
        if r.arm in values and values[r.arm] != r.value:
            raise ValueError(
                f"arm {r.arm!r} has two values of the studied variable: {values[r.arm]!r} and {r.value!r}"
            )
        values.setdefault(r.arm, r.value)
    return out


# ---------------------------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------------------------

_ABSENT = "(absent)"


def flatten_fingerprint(fingerprint: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings → one level with dotted keys (``{"reference": {"split": "val"}}`` →
    ``{"reference.split": "val"}``); other values (lists included) are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in fingerprint.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_fingerprint(value, f"{name}."))
        else:
            out[name] = value
    return out


def is_per_run_field(key: str, per_run_fields: Iterable[str] = PER_RUN_FIELDS) -> bool:
    """Whether a (dotted) fingerprint key is expected to differ per run: its last component is listed."""
    return key.rsplit(".", 1)[-1] in set(per_run_fields)


def check_fingerprints(
    records: Iterable[StudyRecord | Mapping[str, Any]],
    per_run_fields: Iterable[str] = PER_RUN_FIELDS,
) -> dict[str, Any]:
    """Refuse to pool or compare numbers whose evaluation settings differ.

    Only finished records are checked (a failed record contributes no numbers). Every flattened field
    (``flatten_fingerprint``) except the ``per_run_fields`` must be equal in all of them; a field present
    in one record and absent in another differs.

    Args:
        records: the study's records (``StudyRecord`` or mappings for ``StudyRecord.from_dict``).
        per_run_fields: field names expected to differ between runs (default ``PER_RUN_FIELDS``).

    Returns:
        The shared fingerprint: flattened fields → value, per-run fields left out (empty when no record
        is done).

    Raises:
        ValueError: one line naming the first differing field (sorted order), each of its values with the
            (arm, seed) that have it, and how many other fields differ.
    """
    per_run = frozenset(per_run_fields)
    done = [r for r in as_records(records) if r.done]
    if not done:
        return {}
    flat = [
        {k: v for k, v in flatten_fingerprint(r.fingerprint).items() if not is_per_run_field(k, per_run)}
        for r in done
    ]
    keys = sorted(set().union(*flat))
    differing = [k for k in keys if any(f.get(k, _ABSENT) != flat[0].get(k, _ABSENT) for f in flat)]
    if differing:
        key = differing[0]
        groups: list[tuple[Any, list[str]]] = []
        for r, f in zip(done, flat):
            value = f.get(key, _ABSENT)
            for seen_value, labels in groups:
                if seen_value == value:
                    labels.append(r.label)
                    break
            else:
                groups.append((value, [r.label]))
        listing = "; ".join(
            f"{v if v is _ABSENT else repr(v)} in {', '.join(labels)}" for v, labels in groups
        )
        more = f" (and {len(differing) - 1} more: {', '.join(differing[1:])})" if len(differing) > 1 else ""
        raise ValueError(
            f"evaluation fingerprints differ in field {key!r}: {listing}{more}; refusing to pool or compare "
            "these numbers (evaluate every run with the same settings)"
        )
    return {k: flat[0][k] for k in keys}


# ---------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    """A finite real number, numpy scalars included (bools are not numbers here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class MetricSummary:
    """One metric of one arm over its finished seeds.

    Attributes:
        metric: metric key.
        seeds: seeds whose value is a number, in record order.
        values: those numbers.
        mean: their mean (None when there are none).
        sd: sample standard deviation with n − 1 (None when n < 2).
        ci: 95 % confidence interval of the mean, mean ± t(0.975, n − 1)·sd/√n (None when n < 2).
        notes: the distinct non-numeric values of the other seeds (e.g. "not computed (…)", "nan"), each
            with the seeds that have it.
    """

    metric: str
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    mean: float | None
    sd: float | None
    ci: tuple[float, float] | None
    notes: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return len(self.values)


def summarize(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float | None, tuple[float, float] | None]:
    """(mean, sd with n − 1, Student-t confidence interval of the mean) of a sample.

    Args:
        values: n ≥ 1 finite numbers.
        confidence: coverage of the interval, in (0, 1).

    Returns:
        (mean, sd, (low, high)); sd and the interval are None when n < 2.

    Raises:
        ValueError: no values, a non-finite value, or a confidence outside (0, 1).
    """
    from scipy import stats

    if not values:
        raise ValueError("summarize needs at least one value")
    if not all(is_number(v) for v in values):
        raise ValueError(f"summarize needs finite numbers, got {list(values)!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)
    return mean, sd, (mean - half, mean + half)


def summarize_metric(records: Sequence[StudyRecord], metric: str) -> MetricSummary:
    """``MetricSummary`` of ``metric`` over the finished records given (one arm's)."""
    seeds, values = [], []
    notes: dict[str, list[int]] = {}
    for r in records:
        if not r.done or metric not in r.metrics or r.metrics[metric] is None:
            continue
        value = r.metrics[metric]
        if is_number(value):
            seeds.append(r.seed)
            values.append(float(value))
        else:
            notes.setdefault(str(value), []).append(r.seed)
    mean = sd = ci = None
    if values:
        mean, sd, ci = summarize(values)
    if ci is not None:
        ci = clip_interval(ci, metric)
    note_text = tuple(
        f"{text} (seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))})" if values else text
        for text, s in notes.items()
    )
    return MetricSummary(metric, tuple(seeds), tuple(values), mean, sd, ci, note_text)


def clip_interval(ci: tuple[float, float], metric: str) -> tuple[float, float]:
    """A confidence interval cut to the metric's range (``MetricInfo.low``/``high``): the t interval is
    symmetric, the metric may not be (an FID near 0, a bit accuracy near 1)."""
    info = metric_info(metric)
    low = ci[0] if info.low is None else max(ci[0], info.low)
    high = ci[1] if info.high is None else min(ci[1], info.high)
    return low, high


@dataclass(frozen=True)
class Effect:
    """An arm against the baseline arm on one metric.

    Attributes:
        metric: metric key.
        arm: the arm.
        difference: mean(arm) − mean(baseline), in the metric's unit (None when either has no number).
        p_value: two-sided p-value of Welch's t-test (None when either arm has fewer than 2 seeds or
            neither varies over seeds).
        verdict: "outside seed noise" (p < ``ALPHA``), "within seed noise", or why there is no test.
        better: True / False when the difference goes the better / worse way for a metric with a known
            direction and the effect is outside seed noise; None otherwise.
    """

    metric: str
    arm: str
    difference: float | None
    p_value: float | None
    verdict: str
    better: bool | None = None


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's unequal-variance t-test (``scipy.stats.ttest_ind(equal_var=False)``).

    Returns:
        p in [0, 1]; None when a sample has fewer than 2 values or both have zero variance (no test).
    """
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    if max(a) == min(a) and max(b) == min(b):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly identical samples: precision notice
        p = float(stats.ttest_ind(list(a), list(b), equal_var=False).pvalue)
    return p if math.isfinite(p) else None


def effect(arm: MetricSummary, baseline: MetricSummary, arm_name: str) -> Effect:
    """The ``Effect`` of ``arm`` against ``baseline`` (two summaries of the same metric)."""
    if arm.mean is None or baseline.mean is None:
        if arm.mean is None and baseline.mean is None:
            missing = "either arm"
        else:
            missing = "the baseline" if baseline.mean is None else "this arm"
        return Effect(arm.metric, arm_name, None, None, f"no test: no number for {missing}")
    difference = arm.mean - baseline.mean
    if arm.seeds == baseline.seeds and arm.values == baseline.values and len(set(arm.values)) > 1:
        # Seed for seed the same number, varying over seeds: both arms read one shared stage (e.g. one
        # tokenizer per seed). A constant (a step budget) is no sign of sharing; it has no variance.
        return Effect(arm.metric, arm_name, 0.0, None, SHARED_VERDICT)
    if arm.n < 2 or baseline.n < 2:
        return Effect(arm.metric, arm_name, difference, None, "no test: fewer than 2 seeds")
    p = welch_p_value(arm.values, baseline.values)
    if p is None:
        return Effect(arm.metric, arm_name, difference, None, "no test: no seed variance in either arm")
    if p >= ALPHA:
        return Effect(arm.metric, arm_name, difference, p, "within seed noise")
    direction = metric_info(arm.metric).higher_is_better
    better = None if direction is None or difference == 0 else (difference > 0) == direction
    return Effect(arm.metric, arm_name, difference, p, "outside seed noise", better)


# ---------------------------------------------------------------------------------------------------------
# Metric names, order, formatting
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is named and printed: ``label``, decimals, better direction (None: neither), sort
    position, and the range its values can take (``low``/``high``, None: unbounded), to which confidence
    intervals are clipped (an FID cannot be negative, a bit accuracy cannot exceed 1)."""

    label: str
    digits: int | None  # None: 4 significant digits
    higher_is_better: bool | None
    order: int
    low: float | None = None
    high: float | None = None


_KNOWN_METRICS: dict[str, MetricInfo] = {
    "fid": MetricInfo("FID", 2, False, 0, low=0.0),
    # The unbiased KID estimator can be slightly negative; it has no bound.
    "kid": MetricInfo("KID", 4, False, 1),
    "clip_score": MetricInfo("CLIP score", 2, True, 2, low=0.0, high=100.0),
    "tokenizer_psnr": MetricInfo("tokenizer PSNR (dB)", 2, True, 3, low=0.0),
    "tokenizer_ssim": MetricInfo("tokenizer SSIM", 4, True, 4, low=-1.0, high=1.0),
    "codebook_utilisation": MetricInfo("tokenizer codebook use (fraction)", 4, None, 4, low=0.0, high=1.0),
    "bit_entropy": MetricInfo("tokenizer mean bit entropy (bits)", 4, True, 4, low=0.0, high=1.0),
    "tokens_per_image": MetricInfo("tokens per image", 0, None, 4, low=0.0),
    "val_loss": MetricInfo("final generator validation loss (nats/bit)", 4, False, 7, low=0.0),
    "train_loss": MetricInfo("final generator training loss (nats/bit)", 4, False, 7, low=0.0),
    "tokenizer_train_l1": MetricInfo("final tokenizer training L1", 4, False, 7, low=0.0),
    "sampling_seconds_per_image": MetricInfo("sampling time per image (s)", 3, False, 9, low=0.0),
    "seconds": MetricInfo("wall-clock, all stages (s)", 1, False, 9, low=0.0),
    "steps": MetricInfo("generator steps", 0, None, 10, low=0.0),
}


#: A score of one aspect-ratio bucket: ``<metric>@ar<bucket>`` (``fid@ar0.5``, ``kid@ar2``).
AR_METRIC = re.compile(r"^(?P<metric>\w+)@ar(?P<ratio>\d+(?:\.\d+)?)$")


def aspect_ratio_metric(metric: str) -> tuple[str, str] | None:
    """(the pooled metric, the bucket name) of a per-aspect-ratio metric key (``"fid@ar0.5"`` →
    ``("fid", "0.5")``); None for any other key."""
    m = AR_METRIC.match(metric)
    return (m["metric"], m["ratio"]) if m else None


def metric_info(metric: str) -> MetricInfo:
    """Label, digits, direction and sort position of a metric key (unknown keys: the key itself); a
    per-aspect-ratio key (``fid@ar0.5``) is its metric's, labelled "FID at h/w 0.5"."""
    if metric in _KNOWN_METRICS:
        return _KNOWN_METRICS[metric]
    per_ar = aspect_ratio_metric(metric)
    if per_ar is not None:
        base = metric_info(per_ar[0])
        return MetricInfo(
            f"{base.label} at h/w {per_ar[1]}",
            base.digits,
            base.higher_is_better,
            base.order,
            base.low,
            base.high,
        )
    m = PER_SCALE_TAG.match(metric)
    if m and not m["prefix"]:
        if m["metric"] == "psnr":
            return MetricInfo(f"PSNR after scale {m['k']} (dB)", 2, True, 5, low=0.0)
        return MetricInfo(f"bit accuracy, scale {m['k']}", 4, True, 6, low=0.0, high=1.0)
    return MetricInfo(metric, None, None, 8)


def _metric_sort_key(metric: str) -> tuple:
    # A per-aspect-ratio score follows its pooled metric, by ascending aspect ratio.
    per_ar = aspect_ratio_metric(metric)
    if per_ar is not None:
        return (metric_info(metric).order, 1, float(per_ar[1]), 0, metric)
    m = PER_SCALE_TAG.match(metric)
    k = int(m["k"]) if m and not m["prefix"] else 0
    return (metric_info(metric).order, 0, 0.0, k, metric)


def _decimals(value: float, digits: int | None) -> int:
    """Decimals that show ``value`` with 2 significant digits, at least ``digits`` (capped at 8)."""
    if value == 0 or not math.isfinite(value):
        return digits or 0
    needed = 1 - math.floor(math.log10(abs(value)))
    return max(digits or 0, min(needed, 8))


def format_number(value: float, metric: str, decimals: int | None = None) -> str:
    """A metric value in the metric's precision (unknown metrics: 4 significant digits)."""
    digits = metric_info(metric).digits if decimals is None else decimals
    if digits is None:
        return f"{value:.4g}"
    return f"{value:.{digits}f}"


def format_summary(s: MetricSummary) -> str:
    """``mean ± sd [low, high] (n=…)``; one seed: ``mean (n=1)``; no variation: ``mean (n=…, identical)``.

    Never prints "± 0": the sd gets enough decimals for two significant digits, and a zero sd is said in
    words. Non-numeric values are appended (or shown alone when there are no numbers).
    """
    notes = "; ".join(s.notes)
    if s.mean is None:
        return notes or "–"
    if s.sd is None or s.ci is None:
        text = f"{format_number(s.mean, s.metric)} (n=1)"
    elif s.sd == 0:
        text = f"{format_number(s.mean, s.metric)} (n={s.n}, identical)"
    else:
        decimals = _decimals(s.sd, metric_info(s.metric).digits)
        f = lambda v: f"{v:.{decimals}f}"  # noqa: E731
        text = f"{f(s.mean)} ± {f(s.sd)} [{f(s.ci[0])}, {f(s.ci[1])}] (n={s.n})"
    return f"{text}; {notes}" if notes else text


def format_effect(e: Effect) -> str:
    """``Δ +1.23, p = 0.004: outside seed noise (better)``, or the reason there is no test."""
    if e.difference is None or e.verdict == SHARED_VERDICT:
        return e.verdict
    digits = metric_info(e.metric).digits
    delta = (
        f"{e.difference:+.4g}" if digits is None else f"{e.difference:+.{_decimals(e.difference, digits)}f}"
    )
    if e.p_value is None:
        return f"Δ {delta} ({e.verdict})"
    p = f"{e.p_value:.3f}" if e.p_value >= 0.001 else f"{e.p_value:.1e}"
    direction = {True: " (better)", False: " (worse)", None: ""}[e.better]
    return f"Δ {delta}, p = {p}: {e.verdict}{direction}"


# ---------------------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Everything the page shows, computed from the records.

    Attributes:
        study: study name. variable: name of the studied variable. baseline: the baseline arm.
        arms: arm names in the order of their first record. values: arm → value of the studied variable.
        metrics: metric keys with at least one value, in display order.
        summaries: arm → metric → ``MetricSummary`` (finished seeds only).
        effects: arm (every arm but the baseline) → metric → ``Effect``.
        records: every record. failed: the failed ones.
        fingerprint: the shared evaluation fingerprint (flattened, per-run fields left out).
    """

    study: str
    variable: str
    baseline: str
    arms: list[str]
    values: dict[str, Any]
    metrics: list[str]
    summaries: dict[str, dict[str, MetricSummary]]
    effects: dict[str, dict[str, Effect]]
    records: list[StudyRecord]
    failed: list[StudyRecord]
    fingerprint: dict[str, Any]

    def arm_records(self, arm: str) -> list[StudyRecord]:
        return [r for r in self.records if r.arm == arm]


def compare(
    records: Iterable[StudyRecord | Mapping[str, Any]],
    study: str,
    variable: str,
    baseline: str,
    per_run_fields: Iterable[str] = PER_RUN_FIELDS,
) -> Comparison:
    """Summaries per arm and effects against ``baseline``, after ``check_fingerprints``.

    Args:
        records: one per (arm, seed) (``StudyRecord`` or mappings for ``StudyRecord.from_dict``).
        study: the study's name. variable: the studied variable's name (axis label).
        baseline: name of the arm every other arm is compared with.
        per_run_fields: fingerprint fields expected to differ per run.

    Raises:
        ValueError: no records, inconsistent records (``as_records``), ``baseline`` is not an arm, or the
            fingerprints differ (``check_fingerprints``).
    """
    recs = as_records(records)
    arms = list(dict.fromkeys(r.arm for r in recs))
    if baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} is not among the arms ({', '.join(arms)})")
    fingerprint = check_fingerprints(recs, per_run_fields)
    metrics = sorted(
        {
            k
            for r in recs
            if r.done
            for k, v in r.metrics.items()
            if k not in AUXILIARY_METRICS and v is not None
        },
        key=_metric_sort_key,
    )
    summaries = {
        arm: {m: summarize_metric([r for r in recs if r.arm == arm], m) for m in metrics} for arm in arms
    }
    effects = {
        arm: {m: effect(summaries[arm][m], summaries[baseline][m], arm) for m in metrics}
        for arm in arms
        if arm != baseline
    }
    return Comparison(
        study=study,
        variable=variable,
        baseline=baseline,
        arms=arms,
        values={r.arm: r.value for r in recs},
        metrics=metrics,
        summaries=summaries,
        effects=effects,
        records=recs,
        failed=[r for r in recs if not r.done],
        fingerprint=fingerprint,
    )


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------


def arm_colors(arms: Sequence[str]) -> dict[str, Any]:
    """One matplotlib colour per arm (tab10, then tab20), stable for a given arm order."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    return {arm: cmap(i % cmap.N) for i, arm in enumerate(arms)}


def arm_positions(values: Mapping[str, Any]) -> tuple[dict[str, float], list[float], list[str], bool]:
    """x positions of arms against the studied variable.

    Arms with numeric values sit at their value (arms sharing a value are spread by a small offset);
    the others are placed by name, one step apart, to the right of the numeric ones.

    Returns:
        (arm → x, tick positions, tick labels, whether any arm is placed by name).
    """
    numeric = {a: float(v) for a, v in values.items() if is_number(v)}
    named = [a for a in values if a not in numeric]
    distinct = sorted(set(numeric.values()))
    span = distinct[-1] - distinct[0] if len(distinct) > 1 else 1.0
    step = span / max(len(distinct) - 1, 1)
    pos: dict[str, float] = {}
    for v in distinct:
        same = [a for a in numeric if numeric[a] == v]
        for i, a in enumerate(same):
            pos[a] = v + (i - (len(same) - 1) / 2) * 0.06 * span
    start = (distinct[-1] + step) if distinct else 0.0
    for i, a in enumerate(named):
        pos[a] = start + i * step
    ticks = distinct + [pos[a] for a in named]
    labels = [f"{v:g}" for v in distinct] + named
    return pos, ticks, labels, bool(named)


def metric_figure(comp: Comparison, metrics: Sequence[str]):
    """One panel per metric with numbers: arm means against the studied variable, 95 % CI error bars
    (none for one seed), each point labelled by its arm. Returns a matplotlib Figure, or None."""
    metrics = [
        m
        for m in metrics
        if any(m in comp.summaries[a] and comp.summaries[a][m].mean is not None for a in comp.arms)
    ]
    if not metrics:
        return None
    plt = pyplot()
    pos, ticks, labels, named = arm_positions(comp.values)
    colors = arm_colors(comp.arms)
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.3 * rows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        for arm in comp.arms:
            s = comp.summaries[arm].get(m)
            if s is None or s.mean is None:
                continue
            yerr = None if s.ci is None else [[s.mean - s.ci[0]], [s.ci[1] - s.mean]]
            ax.errorbar(
                [pos[arm]],
                [s.mean],
                yerr=yerr,
                fmt="o" if s.ci is not None else "D",
                color=colors[arm],
                capsize=4,
                markerfacecolor=colors[arm] if s.ci is not None else "white",
            )
            ax.annotate(
                f"{arm}" + ("" if s.ci is not None else " (n=1)"),
                (pos[arm], s.mean),
                xytext=(5, 4),
                textcoords="offset points",
                fontsize=7,
            )
        numeric_x = [pos[a] for a in comp.arms if is_number(comp.values[a])]
        if named and numeric_x:
            # Arms placed by name sit right of this line, off the numeric scale.
            first_named = min(pos[a] for a in comp.arms if not is_number(comp.values[a]))
            ax.axvline((first_named + max(numeric_x)) / 2, color="0.6", linestyle=":", linewidth=1)
        ax.set_xticks(ticks, labels, fontsize=7, rotation=30 if named else 0)
        ax.set_xlabel(comp.variable, fontsize=8)
        info = metric_info(m)
        arrow = {True: " ↑ better", False: " ↓ better", None: ""}[info.higher_is_better]
        ax.set_title(f"{info.label}{arrow}", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def per_scale_figure(comp: Comparison):
    """Per-scale PSNR (dB) and bit accuracy against the scale index k, one line per arm with 95 % CI
    error bars. Returns a matplotlib Figure, or None when no ``psnr_scale_k``/``bit_acc_scale_k``."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for m in comp.metrics:
        match = PER_SCALE_TAG.match(m)
        if match and not match["prefix"]:
            groups.setdefault(match["metric"], []).append((int(match["k"]), m))
    if not groups:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    colors = arm_colors(comp.arms)
    names = sorted(groups, key=lambda g: g != "psnr")
    fig, axes = plt.subplots(1, len(names), figsize=(4.8 * len(names), 3.3), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for arm in comp.arms:
            pts = [(k, comp.summaries[arm][m]) for k, m in sorted(groups[name])]
            pts = [(k, s) for k, s in pts if s.mean is not None]
            if not pts:
                continue
            # A small sideways offset per arm keeps overlapping error bars apart.
            offset = (comp.arms.index(arm) - (len(comp.arms) - 1) / 2) * 0.04
            _line_with_ci(ax, [(k + offset, s) for k, s in pts], colors[arm], arm)
        ax.set_title(
            "PSNR after the first k scales" if name == "psnr" else "bit accuracy per scale", fontsize=9
        )
        ax.set_xlabel("scale k", fontsize=8)
        ax.set_ylabel("PSNR (dB)" if name == "psnr" else "bit accuracy", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _line_with_ci(ax, points: list[tuple[float, Any]], color: Any, label: str) -> None:
    """One arm's means at ``points`` ((x, summary) pairs, each with a mean) as a line on ``ax``, with 95 % CI
    error bars where a summary has an interval (a one-seed point gets no bar rather than a zero-width one)."""
    ax.plot([x for x, _ in points], [s.mean for _, s in points], marker="o", color=color, label=label)
    with_ci = [(x, s) for x, s in points if s.ci is not None]
    if with_ci:
        ax.errorbar(
            [x for x, _ in with_ci],
            [s.mean for _, s in with_ci],
            yerr=[[s.mean - s.ci[0] for _, s in with_ci], [s.ci[1] - s.mean for _, s in with_ci]],
            fmt="none",
            capsize=3,
            ecolor=color,
        )


def aspect_ratio_groups(comp: Comparison) -> dict[str, list[str]]:
    """Pooled metric → the buckets (names, ascending aspect ratio) of its per-aspect-ratio metrics
    (``fid@ar0.5`` …) among the comparison's metrics, in metric order; empty without such metrics."""
    groups: dict[str, list[str]] = {}
    for m in comp.metrics:
        per_ar = aspect_ratio_metric(m)
        if per_ar is not None:
            groups.setdefault(per_ar[0], []).append(per_ar[1])
    return {base: sorted(buckets, key=float) for base, buckets in groups.items()}


def aspect_ratio_figure(comp: Comparison):
    """One panel per score with per-aspect-ratio metrics (``aspect_ratio_groups``): each arm's mean at every
    bucket h/w and pooled, with 95 % CI error bars (none for one seed). Returns a matplotlib Figure, or
    None."""
    groups = aspect_ratio_groups(comp)
    if not groups:
        return None
    plt = pyplot()
    colors = arm_colors(comp.arms)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.3), squeeze=False)
    for ax, (base, buckets) in zip(axes.flat, groups.items()):
        keys = [f"{base}@ar{b}" for b in buckets] + ([base] if base in comp.metrics else [])
        labels = [f"h/w {b}" for b in buckets] + (["pooled"] if base in comp.metrics else [])
        for i, arm in enumerate(comp.arms):
            offset = (i - (len(comp.arms) - 1) / 2) * 0.06
            points = [(x + offset, comp.summaries[arm][k]) for x, k in enumerate(keys)]
            points = [(x, s) for x, s in points if s.mean is not None]
            if not points:
                continue
            _line_with_ci(ax, points, colors[arm], arm)
        info = metric_info(base)
        arrow = {True: " ↑ better", False: " ↓ better", None: ""}[info.higher_is_better]
        ax.set_xticks(range(len(keys)), labels, fontsize=7)
        ax.set_title(f"{info.label} per aspect ratio{arrow}", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _stage_label(run_dir: Path) -> str:
    # A stage's training run is ``OUT/<stage>/run``: the stage's name says more than "run".
    return run_dir.parent.name if run_dir.name == STAGE_RUN else run_dir.name


def curve_series(records: Sequence[StudyRecord]) -> dict[str, dict[str, dict[int, list[tuple[int, float]]]]]:
    """panel → arm → seed → [(step, value)] from the finished records' TensorBoard runs.

    A panel is a scalar tag (``epoch``, ``hp_metric`` and per-scale tags left out); a tag logged by
    two run folders of the same record (e.g. the tokenizer's and the generator's ``train/loss``) becomes
    one panel per folder, ``"<tag> [<stage>]"``.
    """
    out: dict[str, dict[str, dict[int, list[tuple[int, float]]]]] = {}
    for r in records:
        if not r.done:
            continue
        found: list[tuple[Path, str, list[tuple[int, float]]]] = []
        for root in r.run_dirs:
            if not root.is_dir():
                continue
            for d in event_dirs(root):
                for tag, points in read_scalars(d).items():
                    if (
                        tag == "epoch"
                        or tag.startswith("hp_metric")
                        or PER_SCALE_TAG.match(tag)
                        or not points
                    ):
                        continue
                    found.append((root, tag, points))
        tag_roots: dict[str, set[Path]] = {}
        for root, tag, _ in found:
            tag_roots.setdefault(tag, set()).add(root)
        for root, tag, points in found:
            panel = tag if len(tag_roots[tag]) == 1 else f"{tag} [{_stage_label(root)}]"
            out.setdefault(panel, {}).setdefault(r.arm, {})[r.seed] = points
    return out


def curve_figures(comp: Comparison, max_panels: int = 24) -> list[tuple[str, Any]]:
    """Training curves of all arms overlaid: one panel per tag, one colour per arm, one thin line per
    seed; the figure legend names each arm once.

    Returns:
        [(caption, matplotlib Figure)], one figure per group of up to ``max_panels`` panels.
    """
    series = curve_series(comp.records)
    panels = sorted(series)
    if not panels:
        return []
    plt = pyplot()
    from matplotlib.lines import Line2D

    colors = arm_colors(comp.arms)
    figures = []
    for start in range(0, len(panels), max_panels):
        group = panels[start : start + max_panels]
        cols = min(3, len(group))
        rows = math.ceil(len(group) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, group):
            for arm in comp.arms:
                for _seed, points in sorted(series[panel].get(arm, {}).items()):
                    steps, values = zip(*points)
                    ax.plot(steps, values, color=colors[arm], linewidth=0.9, alpha=0.75)
            ax.set_title(panel, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(group) :]:
            ax.axis("off")
        handles = [Line2D([], [], color=colors[a], linewidth=2) for a in comp.arms]
        # Leave about half an inch at the top for the figure legend.
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / (3.0 * rows)))
        fig.legend(
            handles,
            list(comp.arms),
            loc="upper center",
            ncol=min(6, len(comp.arms)),
            fontsize=8,
            bbox_to_anchor=(0.5, 1.0),
            title=f"arm ({comp.variable}); thin lines: seeds",
            title_fontsize=8,
        )
        caption = f"Training curves ({start + 1}–{start + len(group)} of {len(panels)} tags)"
        figures.append((caption, fig))
    return figures


# ---------------------------------------------------------------------------------------------------------
# Sample grids
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleGrid:
    """Samples side by side.

    Attributes:
        columns: (arm, seed) per column, arms in order, seeds ascending.
        rows: (prompt, image seed, one image path or None per column); an image is in a row when its
            metadata has that prompt text and image seed, wherever it is in its folder.
    """

    columns: list[tuple[str, int]]
    rows: list[tuple[str, int | None, list[Path | None]]]


def sample_folders(samples_dir: Path) -> list[Path]:
    """The sample folders of a record: ``samples_dir`` itself when it holds ``metadata.jsonl``, else its
    sub-folders that do (one per aspect-ratio bucket, ``ar0.5``, ``ar1``, …), ordered by aspect ratio."""
    if (samples_dir / "metadata.jsonl").is_file() or not samples_dir.is_dir():
        return [samples_dir]
    subfolders = [p for p in samples_dir.iterdir() if p.is_dir() and (p / "metadata.jsonl").is_file()]

    def ratio(p: Path) -> tuple[float, str]:
        m = re.fullmatch(r"ar(\d+(?:\.\d+)?)", p.name)
        return (float(m[1]) if m else math.inf, p.name)

    return sorted(subfolders, key=ratio) or [samples_dir]


def sample_grid(comp: Comparison, max_rows: int = 8, max_seeds_per_arm: int = 3) -> SampleGrid:
    """Pair the finished records' samples by (prompt text, image seed), never by row number.

    Rows come in the order of the first column that has them; rows present in more columns come first,
    then the first ``max_rows`` are kept. A record whose samples are per-aspect-ratio folders
    (``sample_folders``) gives its buckets' images in turn, so the rows show every aspect ratio.
    """
    columns: list[tuple[str, int]] = []
    entries: list[dict[tuple[str, int | None], Path]] = []
    for arm in comp.arms:
        recs = sorted(
            (r for r in comp.arm_records(arm) if r.done and r.samples_dir is not None),
            key=lambda r: r.seed,
        )
        for r in recs[:max_seeds_per_arm]:
            # A folder of per-aspect-ratio sample folders: their images taken in turn, one of each bucket.
            per_folder: list[list[tuple[tuple[str, int | None], Path]]] = []
            for folder in sample_folders(r.samples_dir):
                images = []
                for rec in read_metadata(folder):
                    path = folder / str(rec.get("file", ""))
                    if path.is_file():
                        images.append(((str(rec.get("prompt", "")), rec.get("image_seed")), path))
                per_folder.append(images)
            found: dict[tuple[str, int | None], Path] = {}
            for i in range(max((len(images) for images in per_folder), default=0)):
                for images in per_folder:
                    if i < len(images):
                        found.setdefault(*images[i])
            if found:
                columns.append((arm, r.seed))
                entries.append(found)
    order: dict[tuple[str, int | None], int] = {}
    for col in entries:
        for key in col:
            order.setdefault(key, len(order))
    keys = sorted(order, key=lambda k: (-sum(k in c for c in entries), order[k]))[:max_rows]
    rows = [(prompt, seed, [c.get((prompt, seed)) for c in entries]) for prompt, seed in keys]
    return SampleGrid(columns, rows)


# ---------------------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------------------

_EXTRA_CSS = """
div.scroll { overflow-x: auto; max-width: 100%; }
td.fail, li.fail { color: #a00; }
td.out { font-weight: 600; }
pre.err { background: #fff4f4; border: 1px solid #e0b4b4; padding: 6px; white-space: pre-wrap; font-size: 0.8em; }
th.arm { text-align: center; }
td.num { white-space: nowrap; }
img.sample { width: var(--thumb); height: auto; image-rendering: pixelated; }
"""

_TEST_STATEMENT = (
    "Effect = mean(arm) − mean(baseline) over finished seeds. Test: Welch's two-sided t-test for unequal "
    "variances (scipy.stats.ttest_ind, equal_var=False) of the arm's per-seed values against the "
    f"baseline's; 'outside seed noise' when p < {ALPHA:g}, else 'within seed noise'. No correction for "
    "testing many metrics and arms: expect about one false 'outside' in twenty tests. No test when an arm "
    "has fewer than 2 seeds or neither arm varies, and none when an arm has the baseline's value for "
    "every seed (both read one shared stage, e.g. the same tokenizer)."
)

_STATS_STATEMENT = (
    "Cells: mean ± standard deviation over seeds (n − 1) [95 % confidence interval of the mean, Student t "
    "with n − 1 degrees of freedom, cut to the metric's range, e.g. FID ≥ 0] (n = seeds with a number). "
    "One seed: the value alone, no interval. "
    "Failed seeds are left out. KID intervals are over seeds; a run's own KID ± subset std is in the runs "
    "table, and left out there when its subsets were the whole set."
)

_ASPECT_RATIO_STATEMENT = (
    "FID / KID / CLIP score per aspect-ratio bucket h/w: the samples of that bucket's held-out captions, drawn "
    "at its aspect ratio, against that bucket's held-out images; pooled: every bucket's samples as one set "
    "against the whole held-out split (each image resized to 299x299 on its own). Tokenizer PSNR / SSIM per "
    "bucket: the reconstructions of that bucket's held-out images at their own size; pooled: the mean over "
    "every bucket's images. Cells as in 'Metrics per arm'; effects against the baseline as in 'Effects' "
    "(Welch's t-test over seeds, no correction for multiple tests). Which buckets each score covers is in the "
    "fingerprint (aspect_ratios)."
)

_RUN_COLUMNS = (
    "fid",
    "kid",
    "clip_score",
    "tokenizer_psnr",
    "tokenizer_ssim",
    "train_loss",
    "seconds",
    "steps",
)


def _run_cell(r: StudyRecord, metric: str) -> str:
    value = r.metrics.get(metric)
    if value is None:
        return "–"
    if not is_number(value):
        return str(value)
    text = format_number(float(value), metric)
    if metric == "kid":
        std = r.metrics.get("kid_std")
        if is_number(std) and not r.metrics.get("kid_subsets_whole_set") and std > 0:
            text += f" ± {std:.{_decimals(std, 4)}f}"
    return text


def _value_text(value: Any) -> str:
    """An arm's value of the studied variable as written in the spec (a text such as "1,2; h/w 2" whole:
    not a path), a list joined by commas, None as "–"."""
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value_text(v) for v in value)
    return str(value)


class _Page:
    """HTML body and Markdown lines built side by side; pictures embedded in one, files in the other."""

    def __init__(self, assets: Path) -> None:
        self.assets = assets
        self.h: list[str] = []
        self.md: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.h.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md += ["#" * level + " " + text, ""]

    def para(self, text: str, cls: str = "") -> None:
        self.h.append(f"<p class='{cls}'>{html.escape(text)}</p>")
        self.md += [text, ""]

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]], classes=None) -> None:
        self.h.append(
            "<div class='scroll'><table><tr>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in header)
            + "</tr>"
        )
        for i, row in enumerate(rows):
            cls = classes[i] if classes else [""] * len(row)
            self.h.append(
                "<tr>" + "".join(f"<td class='{c}'>{html.escape(v)}</td>" for v, c in zip(row, cls)) + "</tr>"
            )
        self.h.append("</table></div>")
        self.md.append("| " + " | ".join(md_cell(c) for c in header) + " |")
        self.md.append("|" + "|".join("---" for _ in header) + "|")
        self.md += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
        self.md.append("")

    def picture(self, caption: str, png: bytes, filename: str) -> None:
        (self.assets / filename).write_bytes(png)
        b64 = base64.b64encode(png).decode("ascii")
        self.h.append(
            f"<h3>{html.escape(caption)}</h3>"
            f"<img class='plot' alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'>"
        )
        self.md += [f"### {caption}", "", f"![{caption}](assets/{filename})", ""]


def write_comparison(
    records: Iterable[StudyRecord | Mapping[str, Any]],
    out_dir: str | Path,
    study: str,
    variable: str,
    baseline: str,
    title: str | None = None,
    headline: Sequence[str] = HEADLINE_METRICS,
    per_run_fields: Iterable[str] = PER_RUN_FIELDS,
    max_sample_rows: int = 8,
    max_seeds_per_arm: int = 3,
    thumbnail_size: int = 96,
) -> tuple[Path, Path]:
    """Write ``OUT/comparison.html`` (self-contained) and ``OUT/comparison.md`` (+ ``OUT/assets/``).

    Args:
        records: one per (arm, seed) (``StudyRecord`` or mappings for ``StudyRecord.from_dict``).
        out_dir: output folder (created).
        study: the study's name. variable: the studied variable's name.
        baseline: the arm every other arm is compared with.
        title: page title (default ``"Study <study>: <variable>"``).
        headline: metrics plotted against the studied variable (those without numbers are skipped).
        per_run_fields: fingerprint fields expected to differ per run.
        max_sample_rows: prompts shown in the sample grid.
        max_seeds_per_arm: sample columns per arm (lowest seeds first).
        thumbnail_size: longest side (pixels) of sample thumbnails.

    Returns:
        (path of the HTML page, path of the Markdown file).

    Raises:
        ValueError: see ``compare`` (no records, inconsistent records, unknown baseline, differing
            fingerprints).
    """
    per_run_fields = frozenset(per_run_fields)
    comp = compare(records, study, variable, baseline, per_run_fields)
    title = title or f"Study {study}: {variable}"
    out = Path(out_dir)
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    page = _Page(assets)
    arm_head = [f"{a} (baseline)" if a == baseline else a for a in comp.arms]

    now = _dt.datetime.now().isoformat(timespec="seconds")
    page.h.append(f"<h1>{html.escape(title)}</h1><p class='small'>generated {now}</p>")
    page.md += [f"# {title}", "", f"generated {now}", ""]
    n_done = sum(r.done for r in comp.records)
    page.para(
        f"Study {study!r}, studied variable {variable!r}, baseline arm {baseline!r}: {len(comp.arms)} arms, "
        f"{len(comp.records)} (arm, seed) runs, {n_done} finished, {len(comp.failed)} failed."
    )
    page.table(
        ["arm", variable, "seeds finished", "seeds failed"],
        [
            [
                head,
                _value_text(comp.values[a]),
                ", ".join(str(r.seed) for r in comp.arm_records(a) if r.done) or "none",
                ", ".join(str(r.seed) for r in comp.arm_records(a) if not r.done) or "–",
            ]
            for a, head in zip(comp.arms, arm_head)
        ],
    )

    # Failures first: a reader must see them before trusting a mean.
    if comp.failed:
        page.heading("Failed runs")
        page.para("These (arm, seed) runs failed; they are left out of every number below.", "warn")
        for r in comp.failed:
            error = r.error or "(no error recorded)"
            page.h.append(
                f"<h3 class='fail'>{html.escape(r.label)}</h3><pre class='err'>{html.escape(error)}</pre>"
            )
            page.md += [f"### {r.label} (failed)", "", "```", error, "```", ""]

    # Per-arm statistics.
    page.heading("Metrics per arm")
    page.para(_STATS_STATEMENT, "small")
    if comp.metrics:
        page.table(
            ["metric", *arm_head],
            [
                [metric_info(m).label] + [format_summary(comp.summaries[a][m]) for a in comp.arms]
                for m in comp.metrics
            ],
            classes=[[""] + ["num"] * len(comp.arms) for _ in comp.metrics],
        )
        legend = {k: v for k, v in LEGEND.items() if k in ("FID", "CLIP", "PSNR", "SSIM")}
        page.h.append(
            "<ul class='small'>"
            + "".join(f"<li><b>{k}</b>: {html.escape(v)}</li>" for k, v in legend.items())
            + "</ul>"
        )
        page.md += [f"- **{k}**: {v}" for k, v in legend.items()] + [""]
    else:
        page.para("No finished run has metrics.")

    # Effects.
    page.heading(f"Effects against the baseline arm {baseline!r}")
    page.para(_TEST_STATEMENT, "small")
    others = [a for a in comp.arms if a != baseline]
    if others and comp.metrics:
        rows, classes = [], []
        for m in comp.metrics:
            effects = [comp.effects[a][m] for a in others]
            rows.append([metric_info(m).label] + [format_effect(e) for e in effects])
            classes.append([""] + ["out" if e.verdict == "outside seed noise" else "" for e in effects])
        page.table(["metric", *others], rows, classes)
    else:
        page.para("Nothing to compare: the study has a single arm or no metrics.")

    # Per aspect ratio: arms × buckets (and pooled) of each score that has them.
    groups = aspect_ratio_groups(comp)
    if groups:
        page.heading("Metrics per aspect ratio")
        page.para(_ASPECT_RATIO_STATEMENT, "small")
        for base, buckets in groups.items():
            keys = [f"{base}@ar{b}" for b in buckets] + ([base] if base in comp.metrics else [])
            header = [*(f"h/w {b}" for b in buckets), *(["pooled"] if base in comp.metrics else [])]
            page.heading(f"{metric_info(base).label} per aspect ratio", 3)
            page.table(
                ["arm", *header],
                [
                    [head] + [format_summary(comp.summaries[a][k]) for k in keys]
                    for a, head in zip(comp.arms, arm_head)
                ],
                classes=[[""] + ["num"] * len(keys) for _ in comp.arms],
            )
            if others:
                rows, classes = [], []
                for a in others:
                    effects = [comp.effects[a][k] for k in keys]
                    rows.append([a] + [format_effect(e) for e in effects])
                    classes.append(
                        [""] + ["out" if e.verdict == "outside seed noise" else "" for e in effects]
                    )
                page.table([f"effect against {baseline!r}", *header], rows, classes)
        fig = aspect_ratio_figure(comp)
        if fig is not None:
            page.picture(
                "Scores per aspect ratio and pooled (95 % CI error bars; n=1: no bar)",
                figure_png(fig),
                "aspect_ratios.png",
            )

    # Plots.
    page.heading(f"Metrics against {variable}")
    fig = metric_figure(comp, headline)
    if fig is not None:
        page.picture(
            f"Headline metrics against {variable} (95 % CI error bars; n=1: no bar)",
            figure_png(fig),
            "metrics.png",
        )
    else:
        page.para("No headline metric has numbers.")
    fig = per_scale_figure(comp)
    if fig is not None:
        page.picture("Per-scale PSNR and bit accuracy (95 % CI error bars)", figure_png(fig), "per_scale.png")

    page.heading("Training curves")
    curves = curve_figures(comp)
    for i, (caption, fig) in enumerate(curves):
        page.picture(caption, figure_png(fig), f"curves_{i}.png")
    if not curves:
        page.para("No TensorBoard scalars found in the records' run folders.")

    # Samples.
    page.heading("Samples")
    grid = sample_grid(comp, max_sample_rows, max_seeds_per_arm)
    if grid.rows:
        page.para("One column per (arm, seed); a row is one prompt and image seed in every column.", "small")
        _sample_table(page, grid, thumbnail_size)
    else:
        page.para("No sample folders (metadata.jsonl + PNGs) in the finished records.")

    # Every run.
    page.heading("Runs")
    per_ar_fid = [m for m in comp.metrics if (aspect_ratio_metric(m) or ("",))[0] == "fid"]
    run_columns = [c for m in _RUN_COLUMNS for c in ([m, *per_ar_fid] if m == "fid" else [m])]
    columns = [m for m in run_columns if any(r.done and is_number(r.metrics.get(m)) for r in comp.records)]
    run_rows, run_classes = [], []
    for r in comp.records:
        row = [r.arm, str(r.seed), r.status] + [_run_cell(r, m) if r.done else "–" for m in columns]
        cls = ["", "", "" if r.done else "fail"] + ["num"] * len(columns)
        if comp.failed:
            row.append("" if r.done else (r.error or "(no error recorded)").strip().splitlines()[-1][:200])
            cls.append("fail")
        run_rows.append(row)
        run_classes.append(cls)
    page.table(
        ["arm", "seed", "status", *(metric_info(m).label for m in columns)]
        + (["error (last line)"] if comp.failed else []),
        run_rows,
        run_classes,
    )

    # Fingerprint, once; then the fields that belong to each run.
    page.heading("Evaluation fingerprint")
    per_run_names = sorted(per_run_fields)
    page.para(
        "Shared by every finished run (checked before anything was pooled). Fields expected to differ per "
        f"run and not compared: {', '.join(per_run_names)}.",
        "small",
    )
    if comp.fingerprint:
        page.table(["field", "value"], [[k, str(v)] for k, v in comp.fingerprint.items()])
    else:
        page.para("No fingerprint recorded.")
    per_run_rows = []
    for r in comp.records:
        for k, v in flatten_fingerprint(r.fingerprint).items():
            if is_per_run_field(k, per_run_names):
                per_run_rows.append([r.arm, str(r.seed), k, str(v)])
    if per_run_rows:
        page.heading("Per-run fields", 3)
        page.table(
            ["arm", "seed", "field", "value"], per_run_rows, [["", "", "", "small"]] * len(per_run_rows)
        )

    doc = html_page(title, page.h, _EXTRA_CSS)
    html_path, md_path = out / "comparison.html", out / "comparison.md"
    html_path.write_text(doc, encoding="utf-8")
    md_path.write_text("\n".join(page.md) + "\n", encoding="utf-8")
    return html_path, md_path


def _sample_table(page: _Page, grid: SampleGrid, size: int) -> None:
    arms = list(dict.fromkeys(a for a, _ in grid.columns))
    spans = [sum(1 for a, _ in grid.columns if a == arm) for arm in arms]
    page.h.append(
        "<div class='scroll'><table><tr><th rowspan='2'>prompt (image seed)</th>"
        + "".join(f"<th class='arm' colspan='{n}'>{html.escape(a)}</th>" for a, n in zip(arms, spans))
        + "</tr><tr>"
        + "".join(f"<th>seed {s}</th>" for _, s in grid.columns)
        + "</tr>"
    )
    header = [f"{a} / seed {s}" for a, s in grid.columns]
    page.md.append("| prompt (image seed) | " + " | ".join(md_cell(c) for c in header) + " |")
    page.md.append("|---|" + "|".join("---" for _ in header) + "|")
    for r, (prompt, seed, paths) in enumerate(grid.rows):
        label = prompt if seed is None else f"{prompt} ({seed})"
        h_cells, md_cells = [], []
        for c, path in enumerate(paths):
            if path is None:
                h_cells.append("<td>–</td>")
                md_cells.append("–")
                continue
            png = thumbnail_png(path, size)
            filename = f"sample_{r}_{c}.png"
            (page.assets / filename).write_bytes(png)
            b64 = base64.b64encode(png).decode("ascii")
            # Small samples are shown enlarged (pixelated) by the browser; the PNG stays as sampled.
            h_cells.append(
                f"<td><img class='sample' style='--thumb: {size}px' alt='{html.escape(path.name)}' "
                f"src='data:image/png;base64,{b64}'></td>"
            )
            md_cells.append(f"![{path.name}](assets/{filename})")
        page.h.append(f"<tr><td class='small'>{html.escape(label)}</td>{''.join(h_cells)}</tr>")
        page.md.append(f"| {md_cell(label)} | " + " | ".join(md_cells) + " |")
    page.h.append("</table></div>")
    page.md.append("")


__all__ = [
    "AR_METRIC",
    "AUXILIARY_METRICS",
    "HEADLINE_METRICS",
    "PER_RUN_FIELDS",
    "Comparison",
    "Effect",
    "MetricSummary",
    "SampleGrid",
    "StudyRecord",
    "as_records",
    "aspect_ratio_figure",
    "aspect_ratio_groups",
    "aspect_ratio_metric",
    "check_fingerprints",
    "compare",
    "curve_figures",
    "effect",
    "format_summary",
    "metric_figure",
    "sample_folders",
    "sample_grid",
    "summarize",
    "summarize_metric",
    "welch_p_value",
    "write_comparison",
]

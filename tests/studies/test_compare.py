"""The study comparison: statistics against hand values, fingerprints, and the page from fake runs."""

from __future__ import annotations

import base64
import math
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infinity_lit.evaluation.images import read_metadata
from infinity_lit.evaluation.sampling import sample_to_folder
from infinity_lit.studies.compare import (
    SHARED_VERDICT,
    StudyRecord,
    check_fingerprints,
    compare,
    curve_figures,
    effect,
    format_effect,
    format_summary,
    sample_grid,
    summarize,
    summarize_metric,
    welch_p_value,
    write_comparison,
)

T_975_DF2 = 4.302652729749464  # Student t quantile 0.975 with 2 degrees of freedom (tables)

#: "± 0", "± 0.0", "± 0.000" — but not "± 0.004".
ZERO_INTERVAL = re.compile(r"±\s*0(?:\.0*)?(?![\d.])")

# ---------------------------------------------------------------------------------------------------------
# Statistics against hand computations
# ---------------------------------------------------------------------------------------------------------


def test_summarize_matches_hand_values():
    mean, sd, ci = summarize([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert sd == pytest.approx(1.0)  # sqrt(((1-2)² + 0 + (3-2)²) / (3 - 1))
    half = T_975_DF2 * 1.0 / math.sqrt(3)
    assert ci == pytest.approx((2.0 - half, 2.0 + half))
    assert ci[1] - ci[0] == pytest.approx(2 * 2.4841, abs=1e-4)


def test_summarize_one_value_has_no_interval_and_bad_input_raises():
    assert summarize([7.5]) == (7.5, None, None)
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="finite"):
        summarize([1.0, float("nan")])


def _student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student t with ``df`` degrees of freedom, by integrating the density written out."""
    from scipy.integrate import quad

    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    value, _ = quad(lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2), t, math.inf)
    return value


def test_welch_p_value_equal_sizes_closed_form():
    # a = [1,2,3], b = [4,5,6]: variances 1 and 1, t = -3/sqrt(2/3), Welch df = 4 exactly.
    t = 3.0 / math.sqrt(2.0 / 3.0)
    # Student t CDF with 4 degrees of freedom in closed form.
    u = t / math.sqrt(1 + t * t / 4)
    cdf = 0.5 + 3 / 8 * u * (1 - t * t / (12 * (1 + t * t / 4)))
    p_hand = 2 * (1 - cdf)
    assert p_hand == pytest.approx(0.021312, abs=1e-6)
    assert welch_p_value([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(p_hand, rel=1e-9)


def test_welch_p_value_unequal_variances_against_welch_satterthwaite():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0, 11.0]
    ma, mb = np.mean(a), np.mean(b)
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = abs(ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert not float(df).is_integer()
    p_hand = 2 * _student_t_sf(t, df)
    assert welch_p_value(a, b) == pytest.approx(p_hand, rel=1e-6)
    # Student's pooled-variance test gives another number: the test really is Welch's.
    from scipy import stats

    assert stats.ttest_ind(a, b).pvalue != pytest.approx(p_hand, rel=1e-3)


def test_intervals_are_cut_to_the_metric_range():
    # FID 0.5, 5.0, 0.6: mean 2.0333, sd 2.5697, t-interval [-4.35, 8.42] → FID cannot be negative.
    fid = summarize_metric(
        [StudyRecord("a", s, metrics={"fid": v}) for s, v in enumerate([0.5, 5.0, 0.6])], "fid"
    )
    half = T_975_DF2 * fid.sd / math.sqrt(3)
    assert fid.ci == pytest.approx((0.0, fid.mean + half)) and fid.mean - half < 0
    acc = summarize_metric(
        [StudyRecord("a", s, metrics={"bit_acc_scale_3": v}) for s, v in enumerate([0.99, 0.90, 0.999])],
        "bit_acc_scale_3",
    )
    assert acc.ci[1] == 1.0 and acc.ci[0] == pytest.approx(acc.mean - T_975_DF2 * acc.sd / math.sqrt(3))
    # KID (unbiased) may be negative: no cut.
    kid = summarize_metric(
        [StudyRecord("a", s, metrics={"kid": v}) for s, v in enumerate([0.0, 0.01])], "kid"
    )
    assert kid.ci[0] < 0


def test_a_shared_stage_gets_no_test_but_equal_values_by_chance_do():
    base = [StudyRecord("p00", s, metrics={"tokenizer_psnr": v}) for s, v in enumerate([20.0, 21.0, 22.0])]
    same = [StudyRecord("p30", s, metrics={"tokenizer_psnr": v}) for s, v in enumerate([20.0, 21.0, 22.0])]
    e = effect(summarize_metric(same, "tokenizer_psnr"), summarize_metric(base, "tokenizer_psnr"), "p30")
    assert e.verdict == SHARED_VERDICT and e.p_value is None and format_effect(e) == SHARED_VERDICT
    # The same numbers under other seeds are not one stage: Welch's test runs (p = 1).
    shuffled = [
        StudyRecord("p30", s, metrics={"tokenizer_psnr": v}) for s, v in enumerate([22.0, 20.0, 21.0])
    ]
    e = effect(summarize_metric(shuffled, "tokenizer_psnr"), summarize_metric(base, "tokenizer_psnr"), "p30")
    assert e.verdict == "within seed noise" and e.p_value == pytest.approx(1.0)
    # A budget that is the same everywhere (steps) is not a shared stage: it has no variance.
    steps = [
        summarize_metric([StudyRecord(a, s, metrics={"steps": 600}) for s in range(3)], "steps") for a in "ab"
    ]
    assert effect(steps[0], steps[1], "a").verdict == "no test: no seed variance in either arm"


def test_welch_p_value_needs_two_seeds_and_some_variance():
    assert welch_p_value([1.0], [2.0, 3.0]) is None
    assert welch_p_value([5.0, 5.0], [5.0, 5.0]) is None


def test_format_summary_never_prints_zero_interval():
    one = summarize_metric([StudyRecord("a", 0, metrics={"fid": 50.0})], "fid")
    assert format_summary(one) == "50.00 (n=1)"
    same = summarize_metric([StudyRecord("a", s, metrics={"steps": 100}) for s in range(3)], "steps")
    assert format_summary(same) == "100 (n=3, identical)"
    # A small sd gets the decimals it needs instead of rounding to "± 0.00".
    tiny = summarize_metric(
        [StudyRecord("a", s, metrics={"fid": v}) for s, v in enumerate([10.0, 10.003])], "fid"
    )
    text = format_summary(tiny)
    assert not ZERO_INTERVAL.search(text) and "± 0.0021" in text, text
    not_computed = summarize_metric(
        [StudyRecord("a", s, metrics={"clip_score": "not computed (no CLIP weights)"}) for s in range(2)],
        "clip_score",
    )
    assert not_computed.mean is None and format_summary(not_computed) == "not computed (no CLIP weights)"


# ---------------------------------------------------------------------------------------------------------
# Records and fingerprints
# ---------------------------------------------------------------------------------------------------------

FINGERPRINT = {
    "reference": {
        "split": "val",
        "hash": "ab12cd34",
        "num_images": 16,
        "image_size": [32, 32],
        "format": "png",
    },
    "generated": {"num_images": 16, "image_size": [32, 32], "format": "png"},
    "resize": "bilinear to 299 inside Inception",
    "inception_weights_sha256": "0f1e2d3c",
    "cfg": 4.0,
    "tau": 1.0,
    "top_p": 1.0,
    "sampling_seed": 10,
}


def _record(arm, seed, value=0.0, **kw) -> dict:
    fp = {**FINGERPRINT, "checkpoint": f"/runs/{arm}/seed_{seed}/generator/run/checkpoints/last.ckpt"}
    return {
        "arm": arm,
        "value": value,
        "seed": seed,
        "status": "done",
        "metrics": {"fid": 1.0},
        "fingerprint": fp,
        **kw,
    }


def test_from_dict_validates():
    r = StudyRecord.from_dict(_record("p0", 1, run_dirs=["/x/y"], samples_dir="/s"))
    assert (
        r.arm == "p0"
        and r.seed == 1
        and r.done
        and r.run_dirs == (Path("/x/y"),)
        and r.samples_dir == Path("/s")
    )
    with pytest.raises(ValueError, match=r"unknown key.*colour"):
        StudyRecord.from_dict({**_record("p0", 1), "colour": "red"})
    with pytest.raises(ValueError, match="status"):
        StudyRecord.from_dict({**_record("p0", 1), "status": "finished"})
    with pytest.raises(ValueError, match="seed"):
        StudyRecord.from_dict({"arm": "p0"})
    with pytest.raises(ValueError, match="appears twice"):
        compare([_record("p0", 1), _record("p0", 1)], "s", "v", "p0")
    with pytest.raises(ValueError, match="two values"):
        compare([_record("p0", 1, value=0.0), _record("p0", 2, value=0.1)], "s", "v", "p0")
    with pytest.raises(ValueError, match="baseline arm 'none'"):
        compare([_record("p0", 1)], "s", "v", "none")


def test_fingerprint_mismatch_names_field_and_runs():
    records = [_record("p0", 0), _record("p0", 1), _record("p30", 0, 0.3), _record("p30", 1, 0.3)]
    shared = check_fingerprints(records)  # only checkpoints differ: they are per-run fields
    assert shared["cfg"] == 4.0 and shared["reference.split"] == "val"
    assert not any(k.endswith("checkpoint") for k in shared)

    records[3]["fingerprint"] = {**records[3]["fingerprint"], "cfg": 3.0}
    with pytest.raises(ValueError, match=r"differ in field 'cfg'") as err:
        check_fingerprints(records)
    msg = str(err.value)
    assert "\n" not in msg
    assert "3.0 in p30/seed 1" in msg and "4.0 in p0/seed 0, p0/seed 1, p30/seed 0" in msg

    records[3]["fingerprint"] = {**FINGERPRINT, "reference": {**FINGERPRINT["reference"], "num_images": 32}}
    with pytest.raises(ValueError, match=r"'reference\.num_images'.*32 in p30/seed 1"):
        compare(records, "s", "v", "p0")

    records[3]["fingerprint"] = {k: v for k, v in FINGERPRINT.items() if k != "tau"}
    with pytest.raises(ValueError, match=r"'tau'.*\(absent\) in p30/seed 1"):
        check_fingerprints(records)

    # A failed run contributes no numbers, so its (partial) fingerprint is not held against the others.
    records[3] = {**records[3], "status": "failed", "error": "boom", "fingerprint": {}}
    assert check_fingerprints(records)["tau"] == 1.0


# ---------------------------------------------------------------------------------------------------------
# A fake study: TensorBoard runs, sample folders, records
# ---------------------------------------------------------------------------------------------------------

PROMPTS = ["a cat", "a dog", "a red car"]


def _colour_sample_fn(prompts: list[str], seeds: list[int]) -> torch.Tensor:
    """Each image a flat colour determined by (prompt, seed) only, in [-1, 1]."""
    out = []
    for p, s in zip(prompts, seeds):
        h = zlib.crc32(f"{p}|{s}".encode())
        rgb = torch.tensor([(h >> 16) & 255, (h >> 8) & 255, h & 255], dtype=torch.float32) / 127.5 - 1
        out.append(rgb.view(3, 1, 1).expand(3, 8, 8))
    return torch.stack(out)


def _tensorboard_run(path: Path, scale: float, steps: int = 6) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(path))
    for step in range(steps):
        w.add_scalar("train/loss", scale * 2.0 / (step + 1), step)
        w.add_scalar("val/psnr", 10 + scale * step, step)
        w.add_scalar("epoch", 0, step)
    w.close()
    return path


#: (arm, value, seed, fid, status)
ARMS = [
    ("p0", 0.0, 0, 110.0),
    ("p0", 0.0, 1, 112.0),
    ("p0", 0.0, 2, 114.0),
    ("p30", 0.3, 0, 90.0),
    ("p30", 0.3, 1, 94.0),
    ("noreq", "no re-quantisation", 0, 101.0),
]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("study")
    records = []
    for i, (arm, value, seed, fid) in enumerate(ARMS):
        run = root / arm / f"seed_{seed}"
        tok = _tensorboard_run(run / "tokenizer" / "run", 1.0 + 0.1 * seed)
        gen = _tensorboard_run(run / "generator" / "run", 0.5 + 0.2 * i)
        samples = run / "samples"
        if arm == "noreq":  # other rows and offsets: pairing must go by (prompt, image seed)
            sample_to_folder(_colour_sample_fn, ["a tree", *PROMPTS], samples, seed=9, progress=False)
        else:
            sample_to_folder(_colour_sample_fn, PROMPTS, samples, seed=10, progress=False)
        metrics = {
            "fid": fid,
            "kid": 0.03 + 0.001 * seed,
            "kid_std": 0.0 if arm == "noreq" else 0.004,
            "kid_subsets_whole_set": arm == "noreq",
            "clip_score": "not computed (no CLIP weights)",
            "tokenizer_psnr": 20.0 + 0.5 * seed,
            "tokenizer_ssim": 0.6 + 0.01 * seed,
            "psnr_scale_1": 12.0 + 0.1 * seed,
            "psnr_scale_2": 15.0 + 0.2 * seed,
            "bit_acc_scale_1": 0.7 + 0.01 * seed,
            "bit_acc_scale_2": 0.65 + 0.01 * seed,
            "train_loss": 0.69 - 0.01 * i,
            "seconds": 30.0 + seed,
            "steps": 100,
        }
        records.append(
            {
                **_record(arm, seed, value),
                "metrics": metrics,
                "run_dirs": [str(tok), str(gen)],
                "samples_dir": str(samples),
            }
        )
    records.append(
        {
            **_record("p30", 2, 0.3),
            "status": "failed",
            "error": "Traceback (most recent call last):\nRuntimeError: loss is NaN at step 40",
            "metrics": {"fid": 9999.0},
            "fingerprint": {},
            "run_dirs": [],
        }
    )
    return records


def test_compare_statistics_and_failed_arm(study):
    comp = compare(study, "bitflip", "max_flip_prob", "p0")
    assert comp.arms == ["p0", "p30", "noreq"]
    fid = comp.summaries["p0"]["fid"]
    assert fid.n == 3 and fid.mean == pytest.approx(112.0) and fid.sd == pytest.approx(2.0)
    half = T_975_DF2 * 2.0 / math.sqrt(3)
    assert fid.ci == pytest.approx((112.0 - half, 112.0 + half))
    # The failed seed (FID 9999) is not in the mean.
    p30 = comp.summaries["p30"]["fid"]
    assert p30.seeds == (0, 1) and p30.mean == pytest.approx(92.0)
    assert [r.label for r in comp.failed] == ["p30/seed 2"]
    e = comp.effects["p30"]["fid"]
    assert e.difference == pytest.approx(-20.0)
    assert e.p_value == pytest.approx(welch_p_value([90.0, 94.0], [110.0, 112.0, 114.0]))
    assert e.verdict == "outside seed noise" and e.better is True
    assert comp.effects["noreq"]["fid"].p_value is None  # one seed: no test
    assert comp.effects["p30"]["steps"].verdict.startswith("no test")
    assert "kid_std" not in comp.metrics and "kid_subsets_whole_set" not in comp.metrics
    assert comp.summaries["p0"]["clip_score"].notes == ("not computed (no CLIP weights)",)


def test_write_comparison_page(study, tmp_path):
    html_path, md_path = write_comparison(study, tmp_path / "cmp", "bitflip", "max_flip_prob", "p0")
    page, md = html_path.read_text(), md_path.read_text()
    page_text = re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,…", page)  # the checks below read the words only
    for text in (page_text, md):
        # Failed run listed with its error; the test stated; one-seed arm without interval.
        assert "p30/seed 2" in text and "RuntimeError: loss is NaN at step 40" in text
        assert "Welch" in text and "equal_var=False" in text
        assert "p &lt; 0.05" in text or "p < 0.05" in text
        assert "outside seed noise" in text
        assert "101.00 (n=1)" in text
        assert "not computed (no CLIP weights)" in text
        assert not ZERO_INTERVAL.search(text), ZERO_INTERVAL.search(text)
        assert "9999" not in text
        assert "inception_weights_sha256" in text and text.count("0f1e2d3c") == 1  # fingerprint shown once
    # Mean ± sd [CI] (n) of the baseline FID, as computed by hand.
    half = T_975_DF2 * 2.0 / math.sqrt(3)
    assert f"112.00 ± 2.00 [{112 - half:.2f}, {112 + half:.2f}] (n=3)" in md
    # The one-seed arm's cells carry no interval at all.
    md_rows = [ln for ln in md.splitlines() if ln.startswith("| FID |")]
    assert md_rows and md_rows[0].split("|")[-2].strip() == "101.00 (n=1)"
    # A run's KID keeps its subset std, unless its subsets were the whole set.
    run_rows = [ln for ln in md.splitlines() if ln.startswith("| noreq | 0 | done")]
    assert run_rows and "0.0300 |" in run_rows[0] and "±" not in run_rows[0]
    assert any(ln.startswith("| p0 | 0 | done") and "0.0300 ± 0.0040" in ln for ln in md.splitlines())

    # HTML: every picture embedded as a PNG; no external image references.
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    n_samples = 3 * 6  # 3 prompts shared by all columns (+ "a tree" only in noreq)
    assert len(embedded) >= 3 + n_samples  # metrics, per-scale, curves + sample thumbnails
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in embedded)
    assert not re.search(r"<img[^>]+src='(?!data:)", page)
    # Markdown: every referenced asset exists.
    refs = re.findall(r"\]\((assets/[^)]+)\)", md)
    assert len(refs) == len(embedded)
    assert all((md_path.parent / ref).is_file() for ref in refs)
    assert {"assets/metrics.png", "assets/per_scale.png", "assets/curves_0.png"} <= set(refs)


def test_curves_overlay_arms_with_one_line_per_seed(study):
    comp = compare(study, "bitflip", "max_flip_prob", "p0")
    figures = curve_figures(comp)
    assert len(figures) == 1
    _, fig = figures[0]
    assert len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["p0", "p30", "noreq"]  # arms, each once; not runs or seeds
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    # The tag logged by both stages gets one panel per stage; "epoch" is left out.
    assert {"train/loss [tokenizer]", "train/loss [generator]", "val/psnr [generator]"} <= set(panels)
    assert not any("epoch" in t for t in panels)
    lines = panels["train/loss [generator]"].get_lines()
    assert len(lines) == 6  # one thin line per finished (arm, seed)
    colours = [tuple(line.get_color()) for line in lines]
    assert len(set(colours[:3])) == 1 and len(set(colours)) == 3  # one colour per arm
    handle_colours = [tuple(h.get_color()) for h in fig.legends[0].legend_handles]
    assert handle_colours == [colours[0], colours[3], colours[5]]


def test_sample_grid_pairs_by_prompt_and_seed_not_row(study):
    comp = compare(study, "bitflip", "max_flip_prob", "p0")
    grid = sample_grid(comp, max_rows=8)
    assert grid.columns == [("p0", 0), ("p0", 1), ("p0", 2), ("p30", 0), ("p30", 1), ("noreq", 0)]
    rows = {(p, s): paths for p, s, paths in grid.rows}
    assert set(rows) == {("a cat", 10), ("a dog", 11), ("a red car", 12), ("a tree", 9)}
    assert [p for p, _, _ in grid.rows][:3] == PROMPTS  # rows every column has come first
    for (prompt, seed), paths in rows.items():
        present = [p for p in paths if p is not None]
        for path in present:
            meta = {m["file"]: m for m in read_metadata(path.parent)}[path.name]
            assert (meta["prompt"], meta["image_seed"]) == (prompt, seed)
        pixels = {np.asarray(Image.open(p)).tobytes() for p in present}
        assert len(pixels) == 1  # the same (prompt, seed) gives the same fake image in every column
    assert rows[("a cat", 10)][-1].name == "000001.png"  # noreq's row 1, paired with the others' row 0
    assert rows[("a tree", 9)][:-1] == [None] * 5


def test_an_arm_value_with_a_slash_is_shown_whole(tmp_path):
    """An arm's value is text of the spec, not a path: "h/w" must not be cut to its last part."""
    records = [_record("method", 0, value="1,2,4"), _record("kept", 0, value="1,2,4; h/w kept from scale 2")]
    _, md_path = write_comparison(records, tmp_path / "cmp", "s", "scale_schedule", "method")
    assert "| kept | 1,2,4; h/w kept from scale 2 | 0 | – |" in md_path.read_text()


def test_numpy_numbers_count_as_numbers():
    recs = [
        StudyRecord("a", np.int64(s), metrics={"fid": np.float64(v)}) for s, v in enumerate([1.0, 2.0, 3.0])
    ]
    assert recs[0].seed == 0 and type(recs[0].seed) is int
    s = summarize_metric(recs, "fid")
    assert s.n == 3 and s.mean == pytest.approx(2.0) and s.notes == ()

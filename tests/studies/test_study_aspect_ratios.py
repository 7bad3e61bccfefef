"""Studies on data with aspect-ratio buckets: spec validation, per-bucket samples and scores, the per-aspect-ratio
comparison (a tiny study end to end on the ``bucketed_shards`` fixture), and stage keys that do not move without
the new settings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

# The tiny recipes of test_study.py (3 scales, stride 8: 32² images, and 16×32 / 32×16 for h/w 0.5 / 2).
from test_study import TINY_GENERATOR, TINY_TOKENIZER

from infinity_lit.studies.spec import (
    DataSettings,
    EvaluationSettings,
    StudyError,
    evaluation_settings,
    load_study,
    stage_key,
)

#: Every bucket of ``bucketed_shards`` is in a generator's training batches within one epoch at batch 4
#: (3 batches of h/w 0.5, 5 square, 2 of h/w 2), so it can be sampled at all three aspect ratios.
GENERATOR_STEPS = 10


@pytest.fixture(scope="module")
def recipes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ar_recipes")
    (folder / "tok.yaml").write_text(yaml.safe_dump(TINY_TOKENIZER))
    generator = {
        **TINY_GENERATOR,
        "trainer": {
            **TINY_GENERATOR["trainer"],
            "max_steps": GENERATOR_STEPS,
            "val_check_interval": GENERATOR_STEPS,
        },
        "model": {
            **TINY_GENERATOR["model"],
            "optimizer": {"warmup_steps": 1, "decay_steps": GENERATOR_STEPS},
        },
    }
    (folder / "gen.yaml").write_text(yaml.safe_dump(generator))
    return folder


def write_spec(folder: Path, **changes) -> Path:
    spec = {
        "name": "tiny_schedule_ar",
        "variable": "scale_schedule",
        "baseline": "method",
        "seeds": [0],
        "data": {"openmoji": {"resolution": 32, "aspect_ratios": [0.5, 1, 2]}},
        "stages": {"tokenizer": {"recipe": "tok.yaml"}, "generator": {"recipe": "gen.yaml"}},
        "evaluation": {"num_images": 3, "aspect_ratios": [0.5, 1, 2]},
        "arms": [
            {"name": "method", "value": "1,2,4"},
            {
                "name": "wide_step",
                "value": "1,3,4",
                "tokenizer": {"model": {"tokenizer": {"scale_schedule": [[1, 1], [3, 3], [4, 4]]}}},
            },
        ],
    }
    spec.update(changes)
    path = folder / f"spec_{len(list(folder.glob('spec_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_one_arm_spec(folder: Path, data: Path, inception_weights: Path) -> Path:
    """A spec of one arm (the 3-scale schedule 1,2,4) on the bucketed shards ``data``, evaluated at h/w 0.5,
    1 and 2 with at most 3 held-out images per bucket."""
    return write_spec(
        folder,
        data={"dir": str(data), "resolution": 32},
        evaluation={
            "num_images": 3,
            "aspect_ratios": [0.5, 1, 2],
            "inception_weights": str(inception_weights),
        },
        arms=[{"name": "method", "value": "1,2,4"}],
    )


# ------------------------------------------------------------------------------------------ the spec


def test_buckets_and_evaluation_aspect_ratios_are_read(recipes, bucketed_shards):
    study = load_study(write_spec(recipes))
    # The stride comes from the tokenizer recipe (channel multipliers [1, 1, 2, 2]: 8).
    assert study.data.aspect_ratios == (0.5, 1.0, 2.0) and study.data.stride == 8
    assert study.evaluation.aspect_ratios == (0.5, 1.0, 2.0)
    # A data.dir built with buckets: its manifest names them; 4/3 is read as its template 1.333.
    data, _ = bucketed_shards
    study = load_study(
        write_spec(recipes, data={"dir": str(data), "resolution": 32}, evaluation={"aspect_ratios": [2, 0.5]})
    )
    assert study.evaluation.aspect_ratios == (2.0, 0.5)
    # The spec as run reads back to an equal study.
    from infinity_lit.studies.spec import resolved_spec

    copy = recipes / "resolved" / "study.yaml"
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(yaml.safe_dump(resolved_spec(load_study(write_spec(recipes)))))
    again = load_study(copy)
    assert again.data == load_study(write_spec(recipes)).data
    assert again.evaluation == load_study(write_spec(recipes)).evaluation


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"data": {"openmoji": {"resolution": 32}}},
            r"spec_\d+\.yaml: evaluation\.aspect_ratios: the OpenMoji data has no aspect-ratio buckets",
        ),
        (
            {"evaluation": {"aspect_ratios": [0.5, 3]}},
            r"evaluation\.aspect_ratios: 3 is not a bucket of the data \(its buckets: 0\.5, 1, 2\)",
        ),
        (
            {"evaluation": {"aspect_ratios": [1.1]}},
            r"evaluation\.aspect_ratios: no scale schedule template for h/w = 1\.1; the nearest is 1, ",
        ),
        ({"evaluation": {"aspect_ratios": []}}, r"evaluation\.aspect_ratios: must be a non-empty list"),
        ({"evaluation": {"aspect_ratios": [2, 2.0]}}, r"evaluation\.aspect_ratios: 2 is given twice"),
        (
            {"data": {"openmoji": {"resolution": 32, "aspect_ratios": [0.5, 1.1]}}},
            r"data\.openmoji\.aspect_ratios: no scale schedule template for h/w = 1\.1",
        ),
        (
            {"data": {"openmoji": {"resolution": 32, "aspect_ratios": [0.5, 1, 2], "stride": 5}}},
            r"data\.openmoji\.stride: aspect-ratio buckets need resolution / stride to be a side",
        ),
        (
            {"data": {"openmoji": {"resolution": 32, "stride": 8}}},
            r"data\.openmoji\.stride: sizes aspect-ratio buckets: give aspect_ratios too",
        ),
        (
            {"data": {"openmoji": {"resolution": 32, "aspect_ratio": [0.5]}}},
            r"data\.openmoji\.aspect_ratio: unknown key",
        ),
        # A tokenizer with fewer scales has no schedule for the non-square buckets, whose sizes are those of
        # the method's 3-scale templates at 32 px and stride 8 (the template of h/w 0.5 ends at 2×4 with 3).
        (
            {
                "arms": [
                    {"name": "method", "value": "1,2,4"},
                    {
                        "name": "two",
                        "value": "1,4",
                        "tokenizer": {"model": {"tokenizer": {"scale_schedule": [[1, 1], [4, 4]]}}},
                    },
                ]
            },
            r"spec_\d+\.yaml: arms\[two\]\.tokenizer: the tokenizer's scale_schedule \[\[1, 1\], \[4, 4\]\] "
            r"\(2 scales, stride 8\) has no schedule for the data's bucket 0\.5 \(16×32 px, latent 2×4\): the "
            r"method's template for h/w 0\.5 ends there with 3 scales",
        ),
    ],
)
def test_spec_errors_name_the_file_and_the_key(recipes, changes, message):
    with pytest.raises(StudyError, match=message) as info:
        load_study(write_spec(recipes, **changes))
    assert "\n" not in str(info.value)


def test_per_shape_schedules_give_an_arm_its_own_schedule_for_a_bucket(recipes):
    """A 2-scale tokenizer has no template for the 3-scale buckets h/w 0.5 and 2; schedules of its own for
    them (``model.tokenizer.aspect_ratio_schedules``) are accepted, and a bucket left without one is named."""

    def arms(extra):
        tokenizer = {"scale_schedule": [[1, 1], [4, 4]], "aspect_ratio_schedules": extra}
        return [{"name": "method", "value": "1,2,4"}, {"name": "two", "value": "1,4", "tokenizer": {"model": {"tokenizer": tokenizer}}}]  # fmt: skip

    wide, tall = [[1, 1], [2, 4]], [[1, 1], [4, 2]]
    study = load_study(write_spec(recipes, arms=arms([wide, tall])))
    assert [a.name for a in study.arms] == ["method", "two"]
    with pytest.raises(
        StudyError,
        match=r"arms\[two\]\.tokenizer: .* no schedule for the data's bucket 2 \(32×16 px, latent 4×2\).*or on a "
        r"schedule of model\.tokenizer\.aspect_ratio_schedules ending at 4×2",
    ):
        load_study(write_spec(recipes, arms=arms([wide])))
    # A schedule of the bucket's aspect ratio that ends at another grid is named as the cause.
    with pytest.raises(
        StudyError,
        match=r"bucket 0\.5 \(16×32 px, latent 2×4\): its model\.tokenizer\.aspect_ratio_schedules entry "
        r"for h/w 0\.5 ends at 1×2",
    ):
        load_study(write_spec(recipes, arms=arms([[[1, 1], [1, 2]], tall])))
    # A per-shape schedule with another scale count parses, but is refused before any fit: when the spec is
    # read on bucketed data, and by the spec check (study check, study run) on square data.
    from infinity_lit.studies.spec import check_deltas

    three = [[1, 1], [2, 2], [2, 4]]
    message = (
        r"arms\[two\]\.tokenizer: model\.tokenizer: aspect_ratio_schedules\[0\] \(ending at 2×4\) has 3 scales "
        r"starting at \(1, 1\); it needs 2 scales"
    )
    with pytest.raises(StudyError, match=message):
        load_study(write_spec(recipes, arms=arms([three, tall])))
    square = {"data": {"openmoji": {"resolution": 32}}, "evaluation": {"num_images": 3}}
    study = load_study(write_spec(recipes, arms=arms([three, tall]), **square))
    with pytest.raises(StudyError, match=message):
        check_deltas(study)


def test_a_dir_without_buckets_refuses_evaluation_aspect_ratios(recipes, openmoji_shards):
    spec = write_spec(recipes, data={"dir": str(openmoji_shards), "resolution": 32})
    with pytest.raises(
        StudyError, match=r"evaluation\.aspect_ratios: the data set in .* has no aspect-ratio"
    ):
        load_study(spec)


def test_without_the_new_settings_the_keys_are_unchanged(recipes):
    """A spec without aspect ratios hashes the payload it hashed before they existed: no new key in the data
    settings or the evaluation settings (so no finished stage of an existing study reads as stale)."""
    assert DataSettings().as_dict() == {"resolution": 64, "openmoji_limit": None, "dir": None}
    assert set(evaluation_settings(EvaluationSettings())) == {
        "split", "num_images", "cfg", "tau", "top_p", "seed", "clip_weights", "inception_weights",
    }  # fmt: skip
    square = load_study(
        write_spec(recipes, data={"openmoji": {"resolution": 32}}, evaluation={"num_images": 3})
    )
    bucketed = load_study(write_spec(recipes))
    arm = square.arms[0]
    # The old payload, written out: the keys of a square study are these hashes.
    import hashlib

    from infinity_lit.precision import training_precision_of
    from infinity_lit.studies.spec import stacked_config

    config = stacked_config(square, arm, "tokenizer")
    payload = {
        "stage": "tokenizer",
        "config": config,
        "seed": 0,
        "data": {"resolution": 32, "openmoji_limit": None, "dir": None},
        "upstream": [],
        "precision": training_precision_of(config.get("trainer")),
    }
    old = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert stage_key(square, arm, 0, "tokenizer") == old
    assert stage_key(bucketed, arm, 0, "tokenizer") != old  # buckets are other data: another key
    from infinity_lit.studies.runner import plan

    square_eval = {t.stage: t.key for t in plan(square) if t.arm == "method"}
    bucketed_eval = {t.stage: t.key for t in plan(bucketed) if t.arm == "method"}
    assert all(square_eval[s] != bucketed_eval[s] for s in ("samples", "score"))


# ------------------------------------------------------------------------------------------ a tiny study


@pytest.fixture(scope="module")
def finished_ar_study(recipes, bucketed_shards, tmp_path_factory, inception_weights):
    """One arm (the 3-scale schedule 1,2,4) × one seed on the bucketed shards, evaluated at h/w 0.5, 1 and 2
    (at most 3 held-out captions each); about 40 s on 2 cores. The comparison of several arms per aspect
    ratio is tested on records below (``test_per_aspect_ratio_metrics_are_summarised_and_tested…``)."""
    from infinity_lit.studies.runner import run_study

    data, _ = bucketed_shards
    spec = write_one_arm_spec(recipes, data, inception_weights)
    out = tmp_path_factory.mktemp("ar_study")
    env = pytest.MonkeyPatch()
    env.setenv("INFINITY_LIT_CACHE", str(tmp_path_factory.mktemp("ar_cache")))  # Inception feature cache
    start = time.perf_counter()
    result = run_study(spec, out=out, check=False)
    yield spec, out, result, time.perf_counter() - start
    env.undo()


def test_per_bucket_samples_scores_and_report(
    finished_ar_study, bucketed_shards, inception_weights, tmp_path
):
    from infinity_lit.cli import eval as eval_cli
    from infinity_lit.data.shards import read_manifest
    from infinity_lit.studies.runner import collect_records

    _, out, result, seconds = finished_ar_study
    print(f"tiny aspect-ratio study: {seconds:.1f} s")
    assert result["failed"] == 0, result["status"]
    data, _ = bucketed_shards
    buckets = read_manifest(data)["buckets"]
    # Each bucket's held-out captions (at most 3), sampled at its aspect ratio: images of the bucket's size.
    for arm in ("method",):
        samples = out / arm / "seed_0" / "samples"
        for name in ("0.5", "1", "2"):
            folder = samples / f"ar{name}"
            pngs = sorted(folder.glob("*.png"))
            assert len(pngs) == min(3, buckets[name]["counts"]["val"])
            height, width = buckets[name]["size"]
            assert {Image.open(p).size for p in pngs} == {(width, height)}
            meta = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
            assert {m["aspect_ratio"] for m in meta} == {float(name)}
            assert all(m["prompt"].startswith("shape ") for m in meta)
        assert not list(samples.glob("*.png"))  # nothing outside the bucket folders

    records = {r["arm"]: r for r in collect_records(out)}
    method = records["method"]
    for name in ("0.5", "1", "2"):
        assert f"fid@ar{name}" in method["metrics"] and f"kid@ar{name}" in method["metrics"]
        bucket_score = json.loads(
            (out / "method" / "seed_0" / "score" / f"ar{name}" / "metrics.json").read_text()
        )
        assert bucket_score["reference"]["bucket"] == name
        assert method["metrics"][f"fid@ar{name}"] == pytest.approx(bucket_score["metrics"]["fid"], rel=1e-12)
        # The fingerprint says which buckets the number covers, and what the reference was.
        covered = method["fingerprint"]["aspect_ratios"][name]
        assert covered["sample_buckets"] == [name] and covered["reference_buckets"] == [name]
        assert covered["reference"]["bucket"] == name and covered["reference"]["max_images"] == 3
        assert covered["reference_sizes"] == ["{}x{}".format(*buckets[name]["size"])]
        assert covered["num_reference_images"] == min(3, buckets[name]["counts"]["val"])
    assert method["fingerprint"]["aspect_ratios"]["pooled"] == {
        "sample_buckets": ["0.5", "1", "2"],
        "reference_buckets": ["0.5", "1", "2"],
    }
    # The pooled FID is `eval score` of the same three folders against the whole held-out split.
    folders = [out / "method" / "seed_0" / "samples" / f"ar{name}" for name in ("0.5", "1", "2")]
    args = ["score", *(a for f in folders for a in ("--generated", str(f))), "--reference", str(data)]
    args += ["--out", str(tmp_path / "pooled.json"), "--inception_weights", str(inception_weights)]
    pooled = eval_cli.main([*args, "--feature_cache", "false"])
    assert pooled["pooled"]["buckets"] == ["0.5", "1", "2"]
    assert pooled["num_reference_images"] == read_manifest(data)["counts"]["val"]
    assert method["metrics"]["fid"] == pytest.approx(pooled["metrics"]["fid"], rel=1e-9)
    assert method["metrics"]["kid"] == pytest.approx(pooled["metrics"]["kid_mean"], rel=1e-9, abs=1e-12)
    assert all(
        abs(method["metrics"]["fid"] - method["metrics"][f"fid@ar{n}"]) > 1e-6 for n in ("0.5", "1", "2")
    )

    # The report: per-AR metrics as metrics of their own, and a table of arms × aspect ratios.
    md = (out / "report" / "comparison.md").read_text()
    html_page = (out / "report" / "comparison.html").read_text()
    assert "| FID at h/w 0.5 |" in md and "| KID at h/w 2 |" in md
    section = md[md.index("## Metrics per aspect ratio") :]
    assert "### FID per aspect ratio" in section
    assert "| arm | h/w 0.5 | h/w 1 | h/w 2 | pooled |" in section
    fid_table = section[section.index("### FID per aspect ratio") :].split("\n\n")[1]
    assert fid_table.splitlines()[2].startswith("| method (baseline) | ") and "(n=1)" in fid_table
    assert "±" not in fid_table  # one seed: the value alone
    assert "Metrics per aspect ratio" in html_page and "aspect_ratios.png" in md
    # The sample grid shows every aspect ratio (its rows are taken from the buckets in turn).
    grid = md[md.index("## Samples") :]
    assert all(f"shape {s} number" in grid for s in (0, 2))


def test_per_aspect_ratio_metrics_are_summarised_and_tested_like_the_others(tmp_path):
    """Synthetic records (2 arms × 3 seeds): fid@ar… get mean ± sd [CI], a Welch test against the baseline,
    their own rows and the per-aspect-ratio tables; one seed never reads ± 0."""
    from infinity_lit.studies.compare import compare, metric_info, write_comparison

    def record(arm: str, seed: int, shift: float) -> dict:
        metrics = {"fid": 100 + shift + seed, "kid": 0.05 + seed / 100}
        metrics.update({f"fid@ar{b}": 90 + i * 10 + shift + seed for i, b in enumerate(("0.5", "1", "2"))})
        return {"arm": arm, "seed": seed, "value": arm, "metrics": metrics, "fingerprint": {"x": 1}}

    records = [record("a", s, 0.0) for s in range(3)] + [record("b", s, 30.0) for s in range(3)]
    comp = compare(records, "s", "scale_schedule", "a")
    assert comp.metrics[:4] == ["fid", "fid@ar0.5", "fid@ar1", "fid@ar2"]
    assert metric_info("fid@ar0.5").label == "FID at h/w 0.5" and metric_info("kid@ar2").digits == 4
    summary = comp.summaries["b"]["fid@ar1"]
    assert (
        summary.mean == pytest.approx(131.0) and summary.sd == pytest.approx(1.0) and summary.ci is not None
    )
    effect = comp.effects["b"]["fid@ar2"]
    assert effect.difference == pytest.approx(30.0) and effect.verdict == "outside seed noise"
    assert effect.better is False  # a higher FID is worse
    _, md_path = write_comparison(records, tmp_path / "report", "s", "scale_schedule", "a")
    md = md_path.read_text()
    section = md[md.index("## Metrics per aspect ratio") :]
    assert "| a (baseline) | 91.00 ± 1.00 [" in section and "(n=3) |" in section
    assert "| b | Δ +30.00, p = " in section and "outside seed noise (worse)" in section
    # The runs table has the per-AR FID columns beside FID.
    assert "| arm | seed | status | FID | FID at h/w 0.5 | FID at h/w 1 | FID at h/w 2 | KID |" in md
    # One seed: no interval and no "± 0" in the per-AR table.
    _, md_path = write_comparison(records[:1] + records[3:4], tmp_path / "one", "s", "scale_schedule", "a")
    one = md_path.read_text()
    section = one[one.index("## Metrics per aspect ratio") :]
    assert "90.00 (n=1)" in section and "±" not in section.split("### ")[1]

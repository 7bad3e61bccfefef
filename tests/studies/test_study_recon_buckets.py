"""The recon stage of a study on bucketed data: the tokenizer's PSNR / SSIM per aspect-ratio bucket become the
comparison metrics ``tokenizer_psnr@ar<bucket>`` / ``tokenizer_ssim@ar<bucket>`` (the recon stage run as the
runner runs it, on the tiny tokenizer checkpoint; the other stages marked done without running)."""

from __future__ import annotations

import json
import shutil

# The spec writer and recipes of the bucketed-study tests (3 scales at stride 8 on the bucketed shards).
from test_study_aspect_ratios import recipes, write_one_arm_spec  # noqa: F401 (recipes is a fixture)

from infinity_lit import runs
from infinity_lit.studies import runner
from infinity_lit.studies.spec import load_study


def test_recon_stage_buckets_become_per_aspect_ratio_metrics(
    recipes,  # noqa: F811
    bucketed_shards,
    tiny_tokenizer_ckpt,
    stand_in_inception,
    tmp_path,
):
    data, _ = bucketed_shards
    spec = write_one_arm_spec(recipes, data, stand_in_inception)
    study = load_study(spec)
    out = tmp_path / "study"
    tasks = runner.plan(study)
    runner._prepare(study, out, tasks)
    task = {t.stage: t for t in tasks}
    # The tokenizer stage: the tiny checkpoint as its last one.
    last = runs.last_checkpoint(out / task["tokenizer"].owner / runs.STAGE_RUN)
    last.parent.mkdir(parents=True)
    shutil.copy(tiny_tokenizer_ckpt, last)
    runs.mark_done(out / task["tokenizer"].owner, {"seconds": 1.0})
    state = runner.execute(str(spec), str(out), task["recon"], str(data))
    assert state["state"] == "done", state
    for stage in ("generator", "samples", "score"):
        runs.mark_done(out / task[stage].owner, {"seconds": 1.0})

    recon = json.loads((out / task["recon"].owner / "metrics.json").read_text())
    per = recon["metrics"]["per_aspect_ratio"]
    assert list(per) == ["0.5", "1", "2"]
    # evaluation.num_images (3) caps each bucket, not the whole split.
    from infinity_lit.data.shards import read_manifest

    counts = {name: b["counts"]["val"] for name, b in read_manifest(data)["buckets"].items()}
    assert {name: v["num_images"] for name, v in per.items()} == {n: min(3, c) for n, c in counts.items()}
    assert state["metrics"]["per_aspect_ratio"] == per  # the done marker holds them

    [record] = runner.collect_records(out, study)
    metrics = record["metrics"]
    for name in ("0.5", "1", "2"):
        assert metrics[f"tokenizer_psnr@ar{name}"] == per[name]["psnr"]
        assert metrics[f"tokenizer_ssim@ar{name}"] == per[name]["ssim"]
    assert metrics["tokenizer_psnr"] == recon["metrics"]["psnr"]
    assert metrics["psnr_scale_3"] == recon["metrics"]["psnr_per_scale"]["3"]
    assert not any(isinstance(v, dict) for v in metrics.values())  # nothing nested reaches the comparison
    assert not any(k.startswith("rfid") or "per_aspect_ratio" in k for k in metrics)

    from infinity_lit.studies.compare import metric_info

    psnr, ssim = metric_info("tokenizer_psnr@ar0.5"), metric_info("tokenizer_ssim@ar2")
    assert psnr.label == "tokenizer PSNR (dB) at h/w 0.5" and psnr.higher_is_better is True
    assert ssim.label == "tokenizer SSIM at h/w 2" and ssim.higher_is_better is True and ssim.high == 1.0

    # The report and the HParams sessions take them: a per-aspect-ratio table of the tokenizer's PSNR.
    _, md_path = runner.write_report(out, study)
    md = md_path.read_text()
    section = md[md.index("## Metrics per aspect ratio") :]
    assert "### tokenizer PSNR (dB) per aspect ratio" in section
    assert "### tokenizer SSIM per aspect ratio" in section
    assert "| arm | h/w 0.5 | h/w 1 | h/w 2 | pooled |" in section
    assert (out / "method" / "seed_0" / runner.HPARAMS_RUN).is_dir()


def test_per_aspect_ratio_metrics_keeps_numbers_only():
    """Only numbers become metrics (a missing PSNR, a bucket's other entries are left out)."""
    from infinity_lit.studies.runner import RECON_BUCKET_METRICS, per_aspect_ratio_metrics

    per = {
        "0.5": {"psnr": 21.5, "ssim": 0.61, "rfid": None, "psnr_per_scale": {"1": 12.0}, "num_images": 3},
        "2": {"psnr": None, "ssim": 0.58, "rfid": 40.0, "num_images": 1},
    }
    assert per_aspect_ratio_metrics(per, RECON_BUCKET_METRICS) == {
        "tokenizer_psnr@ar0.5": 21.5,
        "tokenizer_ssim@ar0.5": 0.61,
        "tokenizer_ssim@ar2": 0.58,
    }
    assert per_aspect_ratio_metrics({}, RECON_BUCKET_METRICS) == {}

"""The quickstart end to end on real OpenMoji shards with a reduced budget, and its resumption."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest

from infinity_lit import cli
from infinity_lit.cli.quickstart import main
from infinity_lit.studies.quickstart import gap_closed, gap_closed_text, headline_rows

REPO = Path(__file__).resolve().parents[2]


def test_gap_closed_formula():
    # The prototype: untrained 267, samples 185, reconstructions 98 → 82 / 169.
    assert gap_closed(267.0, 185.0, 98.0) == pytest.approx(82 / 169)
    assert gap_closed(100.0, 100.0, 50.0) == 0.0
    assert gap_closed(100.0, 50.0, 50.0) == 1.0
    assert math.isnan(gap_closed(50.0, 40.0, 60.0))


def test_gap_closed_is_printed_finite_or_explained():
    assert gap_closed_text(gap_closed(267.0, 185.0, 98.0), 267.0, 98.0) == "0.49 (BELOW)"
    assert gap_closed_text(gap_closed(100.0, 50.0, 50.0), 100.0, 50.0) == "1.00 (meets)"
    # An untrained baseline already at or below the reconstruction ceiling: no gap, said so (was "nan (BELOW)").
    assert gap_closed_text(gap_closed(50.0, 40.0, 60.0), 50.0, 60.0) == (
        "n/a (untrained FID 50.0 ≤ reconstruction-ceiling FID 60.0: no gap to close)"
    )
    assert gap_closed_text(math.nan, math.nan, 60.0) == (
        "n/a (needs a finite untrained FID and reconstruction-ceiling FID)"
    )
    # On a handful of images no verdict: FIDs of N = 2 are noise (a gap of 1.32 "met" the floor).
    assert gap_closed_text(1.32, 318.0, 319.5, num_images=2) == (
        "1.32 (not judged: N = 2 < 50 images, FID is mostly noise)"
    )
    assert gap_closed_text(0.6, 300.0, 100.0, num_images=50) == "0.60 (meets)"
    summary = {
        "num_eval_images": 6,
        "cfg": 4.0,
        "tau": 1.0,
        "seed": 0,
        "metrics": {
            "tokenizer_psnr": 21.0,
            "tokenizer_ssim": 0.7,
            "fid_samples": 40.0,
            "fid_untrained": 50.0,
            "fid_reconstructions": 60.0,
            "fid_gap_closed": gap_closed(50.0, 40.0, 60.0),
            "clip_score": "not computed (no CLIP weights)",
        },
    }
    rows = dict(headline_rows(summary))
    assert rows["FID gap closed (floor 0.5)"].startswith("n/a (untrained FID 50.0 ≤")
    assert not any("nan" in value for value in rows.values())


def readme_evaluation_commands() -> list[list[str]]:
    """The README's commands to run after ``make quickstart`` (the block that starts with that comment),
    each as the argv after ``infinity-lit``."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# After `make quickstart`"))
    commands = []
    for line in lines[start + 1 :]:
        if line.startswith("```"):
            break
        words = shlex.split(line.split(" #", 1)[0])
        assert words[0] == "infinity-lit", line
        commands.append(words[1:])
    return commands


def test_quickstart_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    # The quickstart's default place (runs/quickstart under the working directory), so that the README's
    # commands for after it run as written at the end.
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "quickstart"
    args = [
        "--out", str(out),
        "--openmoji_limit", "160",
        "--tokenizer_max_steps", "2",
        "--generator_max_steps", "2",
        "--num_eval_images", "6",
    ]  # fmt: skip
    summary = main(args)
    m = summary["metrics"]
    for key in ("tokenizer_psnr", "tokenizer_ssim", "fid_samples", "fid_untrained", "fid_reconstructions"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), (key, m[key])
    assert m["clip_score"].startswith("not computed")
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["metrics"]["fid_samples"] == pytest.approx(m["fid_samples"])
    assert summary["num_eval_images"] == 6
    assert len(list((out / "eval" / "samples").glob("*.png"))) == 6
    page = (out / "report" / "report.html").read_text()
    assert f"{m['tokenizer_psnr']:.2f} dB" in page and f"{m['fid_samples']:.1f}" in page
    assert "data:image/png;base64," in page
    assert (out / "tokenizer" / "run" / "checkpoints" / "last.ckpt").is_file()
    assert (out / "generator" / "run" / "checkpoints" / "last.ckpt").is_file()
    printed = capsys.readouterr().out
    assert "tensorboard --logdir" in printed

    # A second run finds every stage done: nothing is retrained or resampled, the numbers are the same.
    stamp = (out / "generator" / "run" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    again = main(args)
    assert (out / "generator" / "run" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp
    assert again["metrics"]["fid_samples"] == pytest.approx(m["fid_samples"])
    assert "tokenizer: done" in capsys.readouterr().out

    # Another generator budget: the generator and the evaluation run again (the earlier ones are set
    # aside, not deleted), the tokenizer is reused; nothing of the old run is reported as the new one.
    changed = main([*args[:-4], "--generator_max_steps", "3", *args[-2:]])
    printed = capsys.readouterr().out
    assert "tokenizer: done" in printed and "generator: max_steps changed; rerunning" in printed
    assert "eval: generator changed; evaluating again" in printed
    assert (out / "generator.stale-1" / "run" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp
    assert (out / "eval.stale-1" / "DONE.json").is_file()
    new_step = json.loads((out / "generator" / "DONE.json").read_text())["global_step"]
    assert new_step == 3 and changed["generator_checkpoint"] == again["generator_checkpoint"]

    # The README's evaluation commands, as written (the full quickstart's data folder is openmoji64; this
    # reduced one is openmoji64-160).
    (out / "data" / "openmoji64").symlink_to("openmoji64-160")
    (tmp_path / "eval").symlink_to(REPO / "eval")  # the commands run from a checkout's root
    commands = readme_evaluation_commands()
    assert [c[:2] for c in commands] == [
        ["eval", "recon"],
        ["eval", "sample"],
        ["eval", "score"],
        ["eval", "report"],
    ]
    for argv in commands:
        cli.main(argv)
    assert json.loads((out / "tokenizer/run/eval/recon/metrics.json").read_text())["metrics"]["psnr"] > 0
    assert json.loads((out / "generator/run/eval/val_cfg4/metrics.json").read_text())["metrics"]["fid"] > 0
    assert (out / "report_eval" / "report.html").is_file()


@pytest.mark.slow
def test_quickstart_recipes_learn_in_a_short_run(tmp_path):
    """The shipped recipes, 100 steps each on 200 emoji (≈ 3 min): the generator's samples are closer to
    the held-out images than an untrained twin's, and the tokenizer reconstructs better from all scales
    than from the first."""
    summary = main(
        [
            "--out", str(tmp_path / "qs"),
            "--openmoji_limit", "200",
            "--tokenizer_max_steps", "100",
            "--generator_max_steps", "100",
            "--num_eval_images", "12",
        ]
    )  # fmt: skip
    m = summary["metrics"]
    assert m["fid_samples"] < m["fid_untrained"]
    per_scale = m["tokenizer_psnr_per_scale"]
    assert per_scale[str(len(per_scale))] > per_scale["1"] + 1.0

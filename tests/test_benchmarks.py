"""Smoke test of the benchmark suite's machinery (benchmarks/suite.py): one tiny GEMM case end to end in its
own process, and the training-step FLOP formula against a direct count of the linear layers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "suite.py"


def _load_suite():
    spec = importlib.util.spec_from_file_location("benchmark_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_suite_quick_gemm_writes_json_and_markdown(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--quick", "--only", "gemm", "--repeats", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[1/1] gemm" in proc.stderr  # progress on stderr
    doc = json.loads((tmp_path / "suite.json").read_text())
    header = doc["header"]
    for key in ("date_utc", "cpu", "cores", "amx_bf16", "avx512_bf16", "python", "torch", "lightning"):
        assert key in header
    assert header["torch_threads"] >= 1
    assert set(doc["summary"]["gemm_peak_GFLOPs"]) == {"fp32", "bf16"}
    (result,) = doc["results"]
    assert result["case"] == "gemm" and len(result["load_before"]) == 3 and len(result["load_after"]) == 3
    assert set(result["paths"]) == {"fp32 256²", "bf16 256²", "fp32 512²", "bf16 512²"}
    for path in result["paths"].values():
        assert len(path["times_s"]) == 1
        assert 0 < path["min_s"] <= path["median_s"] <= path["max_s"]
        assert path["GFLOPs_median"] > 0
        assert path["peak_mem_MB"] > 0
    md = (tmp_path / "suite.md").read_text()
    assert "| gemm | fp32 512² |" in md and "measured on another machine" in md


def test_the_quickstart_tokenizer_step_case_times_both_paths(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(SUITE),
            "--quick",
            "--only",
            "train_tokenizer",
            "--repeats",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads((tmp_path / "suite.json").read_text())["results"]
    assert result["case"] == "train_tokenizer" and set(result["paths"]) == {"fp32", "bf16"}
    for path in result["paths"].values():
        assert len(path["times_s"]) == 2 and path["images_per_s"] == pytest.approx(8 / path["median_s"])
    assert result["config"]["image"] == 32 and result["config"]["params_M"] > 0
    assert "| train tokenizer 32² b8 (quickstart) | bf16 |" in (tmp_path / "suite.md").read_text()


def test_train_flops_linear_part_matches_a_flop_counter():
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    suite = _load_suite()
    spec = {"d": 8, "batch": 2, "model": "tiny", "text_dim": 32, "text_len": 4}
    _model, cfg, schedule, step = suite._train_setup(spec, torch.device("cpu"), 4)
    counter = FlopCounterMode(display=False)
    with counter:
        step(False)()
    flops = suite.train_flops(cfg, schedule, batch=2, text_len=4)
    counted_mm = sum(
        n for op, n in counter.get_flop_counts()["Global"].items() if "mm" in str(op) or "addmm" in str(op)
    )
    # the formula counts the input gradient of the first layers too; within 2 %
    assert flops["linear_flops"] == pytest.approx(counted_mm, rel=0.02)
    assert flops["tokens"] == 21 and flops["attention_flops"] > 0


def test_unknown_case_is_refused(tmp_path, capsys):
    suite = _load_suite()
    with pytest.raises(SystemExit) as exc:
        suite.main(["--only", "nope", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "unknown case" in capsys.readouterr().err

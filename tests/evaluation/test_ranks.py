"""Evaluation on several processes: ``eval sample`` and ``eval score`` under torchrun (2 CPU processes over
gloo) give the one-process folder and numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infinity_lit.evaluation.images import read_image, read_metadata
from infinity_lit.evaluation.ranks import Ranks, ranks
from infinity_lit.evaluation.sampling import merge_rank_metadata, rank_metadata_name

PROMPTS = ["red apple", "cat face", "rocket", "pizza", "sun with face", "red heart", "flag, Japan"]


def _cli(args: list[str], tmp_path: Path, processes: int) -> str:
    """``infinity-lit eval ARGS`` in a fresh interpreter, under torchrun with ``processes`` > 1."""
    launch = [sys.executable, "-m", "infinity_lit.cli"]
    if processes > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
        launch += [str(processes), "-m", "infinity_lit.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INFINITY_LIT_CACHE": str(tmp_path / f"cache{processes}")}
    done = subprocess.run(
        [*launch, "eval", *args], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_one_process_has_no_collectives(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    group = ranks()
    assert group == Ranks(0, 1, 0) and group.main and group.gather(5) == [5] and group.broadcast("x") == "x"
    assert Ranks(1, 3).share(list(range(8))) == [1, 4, 7] and Ranks(1, 2, 1).device("cuda") == "cuda:1"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        ranks()


def test_rank_metadata_left_by_an_interrupted_run_is_merged_once(tmp_path):
    lines = {
        0: [{"file": "000000.png", "index": 0}, {"file": "000002.png", "index": 2}],
        1: [{"file": "000001.png", "index": 1}],
    }
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file": "000000.png", "index": 0}) + "\n")
    for rank, recs in lines.items():
        (tmp_path / rank_metadata_name(rank)).write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert merge_rank_metadata(tmp_path) == 2  # image 0 was already recorded
    assert [r["index"] for r in read_metadata(tmp_path)] == [0, 1, 2]
    assert not list(tmp_path.glob(".metadata.rank*")) and merge_rank_metadata(tmp_path) == 0


def test_sampling_and_scoring_on_two_processes_equal_one(
    tmp_path, tiny_generator_ckpt, inception_weights, openmoji_shards
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    folders = {}
    for n in (1, 2):
        folders[n] = tmp_path / f"samples{n}"
        out = _cli(
            [
                "sample",
                "--checkpoint",
                str(tiny_generator_ckpt),
                "--prompts",
                str(prompts),
                "--out",
                str(folders[n]),
                "--seed",
                "3",
                "--cfg",
                "2",
                "--batch_size",
                "2",
            ],
            tmp_path,
            n,
        )
        assert f"{len(PROMPTS)} written" in out and out.count("written") == 1  # rank 0 alone prints
    one, two = (read_metadata(folders[n]) for n in (1, 2))
    assert [r["index"] for r in two] == list(range(len(PROMPTS)))  # merged in image order
    assert [(r["prompt"], r["image_seed"]) for r in two] == [(r["prompt"], r["image_seed"]) for r in one]
    assert not list(folders[2].glob(".metadata.rank*"))
    for rec in one:
        assert torch.equal(read_image(folders[1] / rec["file"]), read_image(folders[2] / rec["file"])), rec
    # Score the samples against real OpenMoji shards (real Inception features), on 1 and on 2 processes.
    scores = {}
    for n in (1, 2):
        _cli(
            [
                "score",
                "--generated",
                str(folders[2]),
                "--reference",
                str(openmoji_shards),
                "--out",
                str(tmp_path / f"m{n}.json"),
                "--inception_weights",
                str(inception_weights),
                "--batch_size",
                "3",
            ],
            tmp_path,
            n,
        )
        scores[n] = json.loads((tmp_path / f"m{n}.json").read_text())["metrics"]
    # Per-image features, gathered back in image order: the numbers of one process (to the rounding of
    # convolutions over batches of other sizes).
    assert scores[1]["fid"] > 1.0
    assert scores[2]["fid"] == pytest.approx(scores[1]["fid"], rel=1e-5)
    assert scores[2]["kid_mean"] == pytest.approx(scores[1]["kid_mean"], rel=1e-4, abs=1e-7)

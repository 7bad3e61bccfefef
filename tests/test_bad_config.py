"""Bad configuration fails before any training starts, with one line that says what to change (exit status
2, no traceback, no run folder written): an unknown key in a config file, a resolution the tokenizer's
stride does not divide, a scale schedule that does not end at the latent grid, a generator setting that
conflicts with the tokenizer checkpoint, a missing or truncated checkpoint or weights file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_TOKENIZER_ARGS
from test_cli import _fails

from infinity_lit.cli.common import DEBUG_ENV

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_RECIPE = REPO / "experiments" / "tokenizer" / "openmoji64.yaml"
GENERATOR_RECIPE = REPO / "experiments" / "generator" / "openmoji64.yaml"


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the moment of writing (pytest swaps it between phases)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def _no_debug_and_lightning_logs_to_capsys(monkeypatch, capsys):
    """No ``INFINITY_LIT_DEBUG``; the log handlers Lightning's messages reach (made once per process, holding
    the ``sys.stderr`` of that moment) write to this test's captured stderr."""
    monkeypatch.setenv(DEBUG_ENV, "0")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:  # (not pytest's own capture handlers)
                monkeypatch.setattr(handler, "stream", _CurrentStderr())


def _fails_before_training(argv: list[str], runs: Path, capsys) -> str:
    """Run ``infinity-lit ARGV``, expecting a one-line user error and no run folder: that line."""
    # exit status 2 and no traceback (test_cli._fails); Lightning's INFO lines and library progress bars may
    # come first, then one error line, and a "see … --help" hint after a parse error
    lines = [line for line in _fails(argv, capsys) if line.strip()]
    err = "\n".join(lines)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0] or (
        lines[-2] == errors[0] and lines[-1].startswith("see `infinity-lit ")
    ), err
    assert not list(runs.rglob("*.ckpt")), "a checkpoint was written"
    assert not (runs / "bad").exists(), f"the run folder was left: {sorted(runs.rglob('*'))}"
    return errors[0]


def _tokenizer_fit(tmp_path: Path, shards: Path, *more: str) -> list[str]:
    return [
        "tokenizer",
        "fit",
        "-c",
        str(TOKENIZER_RECIPE),
        "--run_name=bad",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--data.init_args.data_dir={shards}",
        "--trainer.max_steps=2",
        "--trainer.max_time=null",
        *TINY_TOKENIZER_ARGS,
        *more,
    ]


def test_an_unknown_key_in_a_config_file(tmp_path, openmoji_shards, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text(yaml.safe_dump({"model": {"tokenizer": {"codebok_dim": 8}}}))
    line = _fails_before_training(
        _tokenizer_fit(tmp_path, openmoji_shards, "-c", str(config)), tmp_path / "runs", capsys
    )
    assert "model.tokenizer.codebok_dim: no such option under model.tokenizer" in line, line
    assert "Subtypes" not in line and "Given value" not in line


def test_a_typo_in_a_nested_option(tmp_path, openmoji_shards, capsys):
    argv = _tokenizer_fit(tmp_path, openmoji_shards, "--model.tokenizer.base_channel=8")
    line = _fails_before_training(argv, tmp_path / "runs", capsys)
    assert line == "error: model.tokenizer.base_channel: no such option under model.tokenizer (a typo?)"


def test_a_resolution_the_stride_does_not_divide(tmp_path, openmoji_shards, capsys):
    line = _fails_before_training(
        _tokenizer_fit(tmp_path, openmoji_shards, "--data.init_args.resolution=36"), tmp_path / "runs", capsys
    )
    assert "not divisible by the tokenizer stride" in line


def test_a_schedule_that_does_not_end_at_the_latent_grid(tmp_path, openmoji_shards, capsys):
    line = _fails_before_training(
        _tokenizer_fit(
            tmp_path,
            openmoji_shards,
            "--data.init_args.resolution=32",
            "--model.tokenizer.scale_schedule=[[1, 1], [2, 2]]",
        ),
        tmp_path / "runs",
        capsys,
    )
    assert "latent grid" in line and "[4, 4]" in line


def _generator_fit(tmp_path: Path, shards: Path, tokenizer: Path, *more: str) -> list[str]:
    return [
        "generator",
        "fit",
        "-c",
        str(GENERATOR_RECIPE),
        "--run_name=bad",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--data.init_args.data_dir={shards}",
        f"--model.tokenizer_checkpoint={tokenizer}",
        "--trainer.max_steps=2",
        "--trainer.max_time=null",
        *more,
    ]


def test_a_codebook_dimension_that_conflicts_with_the_tokenizer(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt, capsys
):
    line = _fails_before_training(
        _generator_fit(tmp_path, openmoji_shards, tiny_tokenizer_ckpt, "--model.transformer.codebook_dim=31"),
        tmp_path / "runs",
        capsys,
    )
    assert "codebook_dim" in line and "31" in line


def test_a_schedule_that_conflicts_with_the_tokenizer(tmp_path, openmoji_shards, tiny_tokenizer_ckpt, capsys):
    line = _fails_before_training(
        _generator_fit(
            tmp_path,
            openmoji_shards,
            tiny_tokenizer_ckpt,
            "--model.transformer.scale_schedule=[[1, 1], [3, 3]]",
        ),
        tmp_path / "runs",
        capsys,
    )
    assert "scale_schedule" in line


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_truncated_tokenizer_checkpoint(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt, damage, capsys
):
    path = tmp_path / "tokenizer.ckpt"
    if damage == "truncated":
        data = tiny_tokenizer_ckpt.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    line = _fails_before_training(_generator_fit(tmp_path, openmoji_shards, path), tmp_path / "runs", capsys)
    assert str(path) in line
    assert ("is truncated or corrupt" if damage == "truncated" else "no tokenizer checkpoint at") in line


@pytest.mark.parametrize("damage", ["missing", "junk"])
def test_a_missing_or_corrupt_weights_file(tmp_path, openmoji_shards, damage, capsys):
    weights = tmp_path / "lpips.pth"
    if damage == "junk":
        weights.write_bytes(b"\x80\x02 not really a state dict")
    line = _fails_before_training(
        _tokenizer_fit(
            tmp_path,
            openmoji_shards,
            "--data.init_args.resolution=64",
            "--model.perceptual_weight=1.0",
            f"--model.lpips_weights={weights}",
        ),
        tmp_path / "runs",
        capsys,
    )
    assert str(weights) in line or weights.name in line


def test_a_generator_resolution_that_does_not_fit_its_tokenizer(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt, capsys
):
    """The tiny tokenizer ends at 4×4 at stride 8 (32²): data at 64² is refused before training, naming the
    option and its value."""
    line = _fails_before_training(
        _generator_fit(tmp_path, openmoji_shards, tiny_tokenizer_ckpt, "--data.init_args.resolution=64"),
        tmp_path / "runs",
        capsys,
    )
    assert "gives a 8×8 latent grid" in line and "set data.resolution to 32" in line


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--model.tokenizer.codebook_dim=0", "tokenizer codebook_dim must be >= 1, got 0"),
        ("--data.init_args.batch_size=0", "batch sizes must be ≥ 1, got 0"),
    ],
)
def test_a_value_a_class_refuses_while_it_is_built(tmp_path, openmoji_shards, capsys, option, message):
    """Refused in a constructor that jsonargparse calls (its error wraps ours): still one line, ours."""
    line = _fails_before_training(
        _tokenizer_fit(tmp_path, openmoji_shards, option), tmp_path / "runs", capsys
    )
    assert message in line and "Given value" not in line


def test_a_transformer_width_the_heads_do_not_divide(tmp_path, openmoji_shards, tiny_tokenizer_ckpt, capsys):
    argv = _generator_fit(
        tmp_path,
        openmoji_shards,
        tiny_tokenizer_ckpt,
        "--model.transformer.width=65",
        "--model.transformer.num_heads=2",
    )
    assert "width 65 is not divisible by num_heads 2" in _fails_before_training(
        argv, tmp_path / "runs", capsys
    )


def test_another_models_checkpoint_as_ckpt_path(tmp_path, openmoji_shards, tiny_tokenizer_ckpt, capsys):
    """A tokenizer checkpoint given to a generator fit's --ckpt_path: named as such, not as options the
    generator does not accept."""
    argv = _generator_fit(
        tmp_path, openmoji_shards, tiny_tokenizer_ckpt, f"--ckpt_path={tiny_tokenizer_ckpt}"
    )
    line = _fails_before_training(argv, tmp_path / "runs", capsys)
    assert "is not a generator checkpoint (it is a tokenizer checkpoint)" in line, line

"""The ``infinity-lit`` entry point as a user meets it: the commands it offers, the names in its usage and
error lines, one-line user errors (``--debug`` for the traceback), the training progress bar and the
Lightning messages it keeps quiet."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_SCHEDULE_ARG, TINY_TOKENIZER_ARGS

from infinity_lit.cli import is_user_error, main
from infinity_lit.cli.common import DEBUG_ENV

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "experiments" / "tokenizer" / "openmoji64.yaml"


def _fails(argv: list[str], capsys) -> list[str]:
    """Run ``infinity-lit ARGV`` expecting a user error: its stderr lines (exit status 2, no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    """Every test starts without ``INFINITY_LIT_DEBUG`` (and ``--debug``'s setting of it is undone)."""
    monkeypatch.setenv(DEBUG_ENV, "0")


# ---------------------------------------------------------------- commands offered, names shown


@pytest.mark.parametrize("model", ["tokenizer", "generator"])
def test_predict_is_not_offered_and_help_points_at_eval_sample(model, capsys):
    lines = _fails([model, "predict"], capsys)
    assert lines == [
        f"error: infinity-lit {model} has no predict; sample images from a generator checkpoint with "
        "`infinity-lit eval sample`",
        "see `infinity-lit eval sample --help`",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main([model, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: infinity-lit {model} [-c CONFIG] {{fit,validate,test}} ...")
    if model == "generator":
        assert "infinity-lit eval sample --help" in " ".join(out.split())


def test_an_unknown_option_is_two_lines_naming_the_real_command(capsys):
    lines = _fails(["tokenizer", "fit", "--trainer.max_stepz", "3"], capsys)
    assert lines == [
        "error: unrecognized arguments: --trainer.max_stepz 3",
        "see `infinity-lit tokenizer fit --help`",
    ]
    lines = _fails(["eval", "sample", "--num_imagez", "3"], capsys)
    assert lines == ["error: unrecognized arguments: --num_imagez 3", "see `infinity-lit eval sample --help`"]
    assert _fails(["bogus"], capsys)[0] == (
        "error: unknown group 'bogus' (choose from data, tokenizer, generator, eval, sample, quickstart, study)"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["tokenizer", "fit", "-c", str(RECIPE), "--trainer.max_step", "3", "--print_config"],
        ["data", "openmoji", "--out", "x", "--resolut", "32"],
    ],
)
def test_an_abbreviated_option_is_an_error(argv, capsys):
    """``--trainer.max_step`` is not taken for ``--trainer.max_steps`` (argparse's abbreviations are off)."""
    option = next(a for a in argv if a in ("--trainer.max_step", "--resolut"))
    assert (
        _fails(argv, capsys)[0] == f"error: unrecognized arguments: {option} {argv[argv.index(option) + 1]}"
    )


def test_a_bad_value_is_one_line_and_the_help_hint(capsys):
    lines = _fails(["data", "openmoji", "--out", "x", "--resolution", "big"], capsys)
    assert lines == [
        "error: Parser key \"resolution\": Expected a <class 'int'>. Got value: big",
        "see `infinity-lit data openmoji --help`",
    ]


# ---------------------------------------------------------------- user errors: one line, status 2


def test_missing_paths_are_one_line(tmp_path, capsys):
    nope = tmp_path / "nope"
    out = str(tmp_path / "out")
    cases = {
        ("data", "folder", "--images", str(nope), "--out", out): f"error: image folder '{nope}' not found",
        ("eval", "sample", "--checkpoint", str(nope), "--prompts", str(nope), "--out", out): (
            f"error: no checkpoint or run folder at '{nope}'"
        ),
        ("eval", "score", "--generated", str(nope), "--reference", str(nope), "--out", out): (
            f"error: '{nope}' is not a directory (expected an image folder or a shard directory)"
        ),
        ("eval", "recon", "--tokenizer", str(nope), "--data", str(nope), "--out", out): (
            f"error: no checkpoint or run folder at '{nope}'"
        ),
        ("eval", "report", str(nope), "--out", out): f"error: run folder '{nope}' does not exist",
        ("study", "check", str(nope)): f"error: no study spec at '{nope}'",
    }
    for argv, first in cases.items():
        lines = _fails(list(argv), capsys)
        assert lines == [first], argv


@pytest.mark.parametrize("num_images", ["0", "-1", "-2"])
def test_eval_sample_num_images_below_one_is_an_error(num_images, tiny_generator_ckpt, tmp_path, capsys):
    """``--num_images -1`` used to sample all prompts but the last (``texts[:-1]``)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\na blue car\n")
    argv = ["eval", "sample", "--checkpoint", str(tiny_generator_ckpt), "--prompts", str(prompts)]
    lines = _fails([*argv, "--out", str(tmp_path / "s"), "--num_images", num_images], capsys)
    assert lines == [
        f"error: num_images must be at least 1, got {num_images}; leave it unset for all prompts"
    ]
    assert not (tmp_path / "s").exists()


def test_a_bad_ckpt_path_is_one_line_before_lightning_reads_it(tmp_path, capsys):
    validate = ["tokenizer", "validate", "-c", str(RECIPE), "--ckpt_path"]
    missing = tmp_path / "missing.ckpt"
    assert _fails([*validate, str(missing)], capsys) == [
        f"error: --ckpt_path checkpoint: no file at '{missing}'; pass a .ckpt file or a run folder (its "
        "checkpoints/last.ckpt)"
    ]
    # Not a zip: torch's legacy reader fails inside the unpickler (Lightning's own read: "KeyError: 101").
    junk = tmp_path / "junk.ckpt"
    junk.write_text("junk\n")
    (line,) = _fails([*validate, str(junk)], capsys)
    assert line.startswith(
        f"error: --ckpt_path checkpoint '{junk}' is truncated or corrupt (not a torch.save file)"
    )
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"hyper_parameters": {}, "state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    for bad in (text, truncated):
        lines = _fails([*validate, str(bad)], capsys)
        assert len(lines) == 1 and lines[0].startswith(f"error: --ckpt_path checkpoint '{bad}' is "), lines


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    argv = ["data", "folder", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]
    with pytest.raises(FileNotFoundError, match=r"image folder .* not found"):
        main(["--debug", *argv])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(FileNotFoundError, match=r"image folder .* not found"):
        main(argv)


def test_output_cut_short_by_its_reader_ends_quietly():
    """``infinity-lit … | head``: a reader that closes the pipe before the command has written ends it with
    status 141 (128 + SIGPIPE, as a shell tool ended by the signal) and nothing on stderr, where Python's
    own flush at exit would print "Exception ignored … BrokenPipeError" and exit with 120."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(DEBUG_ENV, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "infinity_lit.cli", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    proc.stdout.close()  # before the interpreter has even started: every write of the command fails
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=300) == 141, err
    assert err == ""


def test_bugs_are_not_user_errors():
    from infinity_lit import runs
    from infinity_lit.checkpoints import CheckpointError
    from infinity_lit.studies.spec import StudyError

    def raised(fn) -> BaseException:
        try:
            fn()
        except Exception as err:
            return err
        raise AssertionError("nothing raised")

    # This package's own checks, and paths.
    assert is_user_error(raised(lambda: runs.check_run_name("../up")))
    assert is_user_error(CheckpointError("x")) and is_user_error(StudyError("x"))
    assert is_user_error(FileNotFoundError("x")) and is_user_error(runs.RunExistsError("x"))
    # Raised outside this package, or not a value/path problem: a bug, shown with its traceback.
    mismatch = raised(lambda: torch.nn.functional.cross_entropy(torch.zeros(2, 3), torch.zeros(3).long()))
    assert isinstance(mismatch, ValueError) and not is_user_error(mismatch)
    assert not is_user_error(raised(lambda: int("x")))
    assert not is_user_error(raised(lambda: {}["key"]))


# ---------------------------------------------------------------- a real fit: progress bar, quiet warnings


def test_step_bounded_fit_shows_steps_of_max_steps_and_no_noise(openmoji_shards, tmp_path):
    """A fit bounded by max_steps over two epochs (48 training images, batches of 16: 3 per epoch, 4 steps)
    and its resumption to 6 steps: the bar counts 4/4 and 6/6 steps (Lightning's own read "Epoch 1/-2" and
    1/1 batches), and neither the LightningCLI ``args`` warning nor the other messages Lightning gives for how
    this package calls it are shown."""
    argv = [
        "tokenizer",
        "fit",
        "-c",
        str(RECIPE),
        "--run_name=bar",
        f"--data.init_args.data_dir={openmoji_shards}",
        "--data.init_args.resolution=32",
        "--data.init_args.batch_size=16",
        "--trainer.precision=32-true",
        "--trainer.max_time=null",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_model_summary=false",
        "--model.num_log_images=2",
        *TINY_TOKENIZER_ARGS,
        TINY_SCHEDULE_ARG,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8", "COLUMNS": "200"}
    env.pop(DEBUG_ENV, None)

    def fit(*more: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "infinity_lit.cli", *argv, *more],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=600,
        )
        printed = done.stdout + done.stderr
        assert done.returncode == 0, printed[-4000:]
        assert "/-2" not in printed
        for noise in ("args parameter", "LeafSpec", "IterableDataset", "litlogger", "Traceback"):
            assert noise not in printed, noise
        return printed

    printed = fit("--trainer.max_steps=4")
    assert re.search(r"Epoch 1 +━+ 4/4 ", printed), printed[-2000:]
    # Resuming the run (its folder as --ckpt_path) goes on from step 4, without the non-empty folder warning.
    printed = fit("--trainer.max_steps=6", "--ckpt_path=runs/tokenizer/bar")
    assert re.search(r"Epoch 1 +━+ 6/6 ", printed), printed[-2000:]
    assert "exists and is not empty" not in printed

"""A study stopped mid-way (SIGTERM to the runner, a cluster's pre-emption) leaves each arm's stage with its
last.ckpt at the step it reached; running the same stage again resumes from there and ends where an
uninterrupted stage does (a real tiny tokenizer fit)."""

from __future__ import annotations

import json
import signal
import time

import pytest
import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException
from resume_checks import assert_same_state, load, logged_steps
from test_study import TINY_TOKENIZER

from infinity_lit import runs
from infinity_lit.studies import stages
from infinity_lit.training.checkpointing import stop_signal


def test_a_stage_stopped_by_sigterm_resumes_from_its_last_checkpoint(tmp_path, openmoji_shards):
    handler = signal.getsignal(signal.SIGINT)
    recipe = tmp_path / "tok.yaml"
    recipe.write_text(yaml.safe_dump(TINY_TOKENIZER))
    kill = {"class_path": "resume_checks.SignalAtStep", "init_args": {"step": 3, "signum": 15}}
    args = {
        "recipe": recipe,
        "data_dir": openmoji_shards,
        "resolution": 32,
        "max_steps": 6,
        # fires at step 3 only: the resumed fit starts after it
        "overrides": ["--trainer.callbacks+", json.dumps(kill)],
    }
    straight = load(stages.fit_once("tokenizer", tmp_path / "straight", **{**args, "overrides": None}))

    out = tmp_path / "stopped"
    began = time.monotonic()
    with pytest.raises(SIGTERMException):  # not a failed stage: the study stops (``infinity-lit`` exits 143)
        stages.fit_once("tokenizer", out, **args)
    first_attempt = time.monotonic() - began
    assert stop_signal() == signal.SIGTERM
    last = runs.last_checkpoint(out / "tokenizer" / runs.STAGE_RUN)
    assert load(last)["global_step"] == 3 and runs.read_done(out / "tokenizer") is None
    # The checkpoint keeps the training time so far (Lightning's Timer, which every fit has).
    saved = [v for k, v in load(last)["callbacks"].items() if k.startswith("Timer")]
    assert len(saved) == 1 and 0 < saved[0]["time_elapsed"]["train"] < first_attempt

    resumed = stages.fit_once("tokenizer", out, **args)  # the study run again
    done = runs.read_done(out / "tokenizer")
    assert resumed == last and done["global_step"] == 6
    # The stage's time counts the first attempt's training up to its checkpoint, besides this attempt's.
    assert done["earlier_attempts_seconds"] == round(saved[0]["time_elapsed"]["train"], 1)
    assert done["seconds"] >= done["earlier_attempts_seconds"] > 0
    assert runs.read_done(tmp_path / "straight" / "tokenizer")["earlier_attempts_seconds"] == 0
    # Killed after its last checkpoint but before the stage was marked done: the run again trains nothing,
    # and the stage keeps the whole training time (the Timer's, saved at step 6).
    total = next(v for k, v in load(last)["callbacks"].items() if k.startswith("Timer"))["time_elapsed"][
        "train"
    ]
    (out / "tokenizer" / "DONE.json").unlink()
    assert stages.fit_once("tokenizer", out, **args) == last and load(last)["global_step"] == 6
    again = runs.read_done(out / "tokenizer")
    assert again["earlier_attempts_seconds"] == round(total, 1) and total > saved[0]["time_elapsed"]["train"]
    assert_same_state(straight, load(resumed))
    steps = logged_steps(out / "tokenizer" / runs.STAGE_RUN, "train/loss_total")
    assert len(steps) == len(set(steps)) == 6
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's Ctrl+C handler is back

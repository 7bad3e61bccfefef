"""Exact resume: N steps straight equal N/2 steps, a checkpoint, and a resumed fit to N, in the learning
rate, the optimiser moments, the raw and EMA weights, the global step, the method's random streams and
the data position (mid-epoch and across an epoch's end), for the generator and the tokenizer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from resume_checks import assert_same_state as _assert_same_state
from resume_checks import load as _load
from resume_checks import logged_steps as _logged_steps

from infinity_lit.cli import train
from infinity_lit.evaluation.tensorboard import read_scalars


@pytest.fixture(autouse=True)
def _ctrl_c_not_ignored():
    """Ctrl+C as in a terminal (a CI job started in the background inherits SIGINT ignored, and a process
    that ignores Ctrl+C keeps ignoring it); the handler of the session is put back after each test."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


EMA = {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"use_buffers": False}}


def _config(
    tmp_path: Path, name: str, model: str, shards: Path, tokenizer_ckpt: Path, callbacks: list | None = None
) -> Path:
    """A tiny recipe: bf16-free CPU fit, EMA, the method's randomness on (BSC flips and CFG dropout for the
    generator, scale dropping for the tokenizer), one validation at the end of each half."""
    if model == "generator":
        module = {
            "tokenizer_checkpoint": str(tokenizer_ckpt),
            "transformer": {"depth": 1, "width": 32, "num_heads": 2},
            "text_max_length": 16,
            "max_flip_prob": 0.3,
            "cfg_dropout": 0.5,
            "optimizer": {"warmup_steps": 2, "lr_schedule": "cosine", "decay_steps": 20},
            "val_prompts": ["grinning face"],
        }
    else:
        module = {
            "tokenizer": {
                "codebook_dim": 6,
                "scale_schedule": [[1, 1], [2, 2], [4, 4]],
                "base_channels": 8,
                "channel_multipliers": [1, 2, 2, 2],
                "num_res_blocks": 1,
                "num_groups": 4,
                "scale_drop_prob": 0.5,
            },
            "optimizer": {"warmup_steps": 2, "lr_schedule": "cosine", "decay_steps": 20},
            "num_log_images": 0,
        }
    config = {
        "seed_everything": 7,
        "trainer": {
            "val_check_interval": 3,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [EMA, *(callbacks or [])],
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": name, "version": ""},
            },
        },
        "model": module,
        "data": {
            "class_path": "infinity_lit.data.ShardDataModule",
            "init_args": {"data_dir": str(shards), "resolution": 32, "batch_size": 4, "num_workers": 0},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(model: str, config: Path, max_steps: int, ckpt_path: Path | None = None) -> Path:
    args = ["fit", "-c", str(config), "--trainer.max_steps", str(max_steps)]
    if ckpt_path is not None:
        args += ["--ckpt_path", str(ckpt_path)]
    cli = getattr(train, model)(args)
    return Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"


@pytest.mark.parametrize("model", ["generator", "tokenizer"])
@pytest.mark.parametrize("half", [5, 12])  # mid-epoch; at the end of the first epoch (12 batches of 4)
def test_resume_equals_an_uninterrupted_run(tmp_path, openmoji_shards, tiny_tokenizer_ckpt, model, half):
    total = half + 4
    straight = _load(
        _fit(model, _config(tmp_path, "straight", model, openmoji_shards, tiny_tokenizer_ckpt), total)
    )
    config = _config(tmp_path, "resumed", model, openmoji_shards, tiny_tokenizer_ckpt)
    middle = _fit(model, config, half)
    assert _load(middle)["global_step"] == half
    resumed = _load(_fit(model, config, total, ckpt_path=middle))
    assert straight["global_step"] == total
    assert straight["random_streams"]["batches"] == total
    _assert_same_state(straight, resumed)
    # The resumed run's TensorBoard steps go on from where it stopped: no step logged twice.
    steps = _logged_steps(tmp_path / "runs" / "resumed", "train/loss" if model == "generator" else "train/l1")
    assert steps == list(range(total))  # none twice, none left out
    # Each validation is logged once, at the 0-based step of its last training batch, as Lightning logs it
    # (the final metrics of the HParams session are not written a second time at step `total`).
    validations = [k - 1 for k in range(3, total + 1, 3)]
    for run in ("straight", "resumed"):
        val_tags = [tag for tag in read_scalars(tmp_path / "runs" / run) if tag.startswith("val/")]
        assert val_tags
        for tag in val_tags:
            assert _logged_steps(tmp_path / "runs" / run, tag) == validations, (run, tag)
        counted = _logged_steps(tmp_path / "runs" / run, "data/skipped_samples")  # with the train metrics
        assert len(counted) == len(set(counted)), counted


def test_the_streams_follow_the_run_seed(tmp_path, openmoji_shards, tiny_tokenizer_ckpt):
    from infinity_lit.training.seeding import RandomStreams

    config = _config(tmp_path, "seed7", "generator", openmoji_shards, tiny_tokenizer_ckpt)
    other = tmp_path / "seed8.yaml"
    data = yaml.safe_load(config.read_text())
    data["seed_everything"] = 8
    data["trainer"]["logger"]["init_args"]["name"] = "seed8"
    other.write_text(yaml.safe_dump(data))
    a, b = _load(_fit("generator", config, 3)), _load(_fit("generator", other, 3))
    assert a["random_streams"] == {"seed": 7, "batches": 3} and b["random_streams"] == {
        "seed": 8,
        "batches": 3,
    }
    # Same model initialisation is not what differs here: the seed changes the draws of every stream.
    draws = {}
    for seed in (7, 8):
        streams = RandomStreams(("bsc",))
        streams.start(seed)
        streams.next_batch()
        draws[seed] = torch.rand(1000, generator=streams.generator("bsc"))
    assert not torch.equal(draws[7], draws[8])
    raw = "current_model_state"
    assert not torch.equal(a[raw]["transformer.head.weight"], b[raw]["transformer.head.weight"])


def test_random_streams_state_and_errors():
    from infinity_lit.training.seeding import RandomStreams

    streams = RandomStreams(("bsc", "cfg_dropout"))
    with pytest.raises(RuntimeError, match="start"):
        streams.generator("bsc")
    streams.start(3, rank=1)
    streams.next_batch()
    g = streams.generator("bsc")
    first = torch.rand(4, generator=g)
    assert streams.generator("bsc") is g  # one sequence per batch
    with pytest.raises(KeyError, match="unknown random stream 'bcs'"):
        streams.generator("bcs")
    streams.next_batch()
    second = torch.rand(4, generator=streams.generator("bsc"))
    restored = RandomStreams(("bsc", "cfg_dropout"))
    restored.load_state_dict(streams.state_dict())
    restored.start(99, rank=1)  # a resumed run keeps the checkpoint's seed
    restored.next_batch()
    third = torch.rand(4, generator=restored.generator("bsc"))
    streams.next_batch()
    assert torch.equal(third, torch.rand(4, generator=streams.generator("bsc")))
    assert not torch.equal(first, second)
    other_rank = RandomStreams(("bsc",))
    other_rank.start(3, rank=0)
    other_rank.next_batch()
    assert not torch.equal(first, torch.rand(4, generator=other_rank.generator("bsc")))


@pytest.mark.parametrize(
    ("signum", "half"),
    [(signal.SIGTERM, 5), (signal.SIGTERM, 12), (signal.SIGINT, 5)],  # 12: the last batch of an epoch
)
def test_a_signal_saves_the_step_and_the_resume_is_exact(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt, signum, half
):
    """SIGTERM (pre-emption) or a first Ctrl+C stops after the batch in flight with last.ckpt at that step;
    resuming from it equals an uninterrupted run."""
    from infinity_lit.training.checkpointing import stop_signal

    total = half + 4
    straight = _load(
        _fit(
            "generator",
            _config(tmp_path, "straight", "generator", openmoji_shards, tiny_tokenizer_ckpt),
            total,
        )
    )
    kill = {
        "class_path": "resume_checks.SignalAtStep",
        "init_args": {"step": half, "signum": int(signum)},
    }
    config = _config(tmp_path, "stopped", "generator", openmoji_shards, tiny_tokenizer_ckpt, [kill])
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        _fit("generator", config, total)
    assert type(stopped.value).__name__ == "SIGTERMException"
    assert stop_signal() == signum
    assert signal.getsignal(signal.SIGINT) is handler  # the Ctrl+C handler is the caller's again
    last = tmp_path / "runs" / "stopped" / "checkpoints" / "last.ckpt"
    assert _load(last)["global_step"] == half
    plain = _config(tmp_path, "stopped", "generator", openmoji_shards, tiny_tokenizer_ckpt)
    _assert_same_state(straight, _load(_fit("generator", plain, total, ckpt_path=last)))
    steps = _logged_steps(tmp_path / "runs" / "stopped", "train/loss")
    assert len(steps) == len(set(steps)) == total


def test_a_resume_that_asks_for_other_model_settings_is_refused(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt, capsys
):
    """LightningCLI would train on with the checkpoint's settings and drop the command's without a word; a
    resume must ask for the settings it was trained with (another spelling of the same file is the same)."""
    config = _config(tmp_path, "run", "generator", openmoji_shards, tiny_tokenizer_ckpt)
    last = _fit("generator", config, 3)
    args = ["fit", "-c", str(config), "--trainer.max_steps", "6", "--ckpt_path", str(last)]
    with pytest.raises(SystemExit) as refused:
        train.generator([*args, "--model.optimizer.learning_rate", "0.01", "--model.transformer.width", "64"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "model.optimizer.learning_rate 0.01 (checkpoint: 0.0003)" in err, err
    assert "model.transformer.width 64 (checkpoint: 32)" in err
    assert f"--config {tmp_path / 'runs' / 'run' / 'config.yaml'}" in err
    assert _load(last)["global_step"] == 3  # nothing trained, nothing rewritten
    relative = os.path.relpath(tiny_tokenizer_ckpt)
    with pytest.warns(UserWarning, match="resuming with trainer.max_steps 6, the run last ran with 3"):
        resumed = train.generator([*args, "--model.tokenizer_checkpoint", relative])
    assert resumed.trainer.global_step == 6


def test_a_signal_during_validation_runs_that_validation_again_on_resume(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt
):
    """SIGTERM after the first of two validation batches at step 3: last.ckpt holds step 3, and the resumed
    fit runs step 3's validation again in full, so every validation of the uninterrupted run is logged once,
    with its values, and the training state ends the same."""

    def config(name: str, callbacks: list | None = None) -> Path:
        path = _config(tmp_path, name, "generator", openmoji_shards, tiny_tokenizer_ckpt, callbacks)
        data = yaml.safe_load(path.read_text())
        data["trainer"]["limit_val_batches"] = 2
        path.write_text(yaml.safe_dump(data))
        return path

    total = 9
    straight = _load(_fit("generator", config("straight"), total))
    kill = {"class_path": "resume_checks.SignalInValidation", "init_args": {"step": 3, "signum": 15}}
    with pytest.raises(SystemExit):
        _fit("generator", config("stopped", [kill]), total)
    last = tmp_path / "runs" / "stopped" / "checkpoints" / "last.ckpt"
    assert _load(last)["global_step"] == 3
    resumed = _load(_fit("generator", config("stopped"), total, ckpt_path=last))
    _assert_same_state(straight, resumed)  # the EMA and the raw weights were not saved swapped
    expected = read_scalars(tmp_path / "runs" / "straight")["val/loss"]
    logged = read_scalars(tmp_path / "runs" / "stopped")["val/loss"]
    assert [step for step, _ in expected] == [2, 5, 8]
    assert _logged_steps(tmp_path / "runs" / "stopped", "val/loss") == [2, 5, 8]  # repeats included
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=1e-5)


def test_ctrl_c_to_the_process_group_with_loader_workers_saves_the_step(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt, caplog
):
    """A terminal's Ctrl+C reaches the loader workers too: they go on serving batches (they inherit the
    handler, which only the training process acts on), the fit stops after the batch with last.ckpt at
    that step, and Lightning's "Received SIGTERM" line is not shown for it."""
    kill = {"class_path": "resume_checks.SignalAtStep", "init_args": {"step": 5, "signum": 2, "group": True}}
    config = _config(tmp_path, "group", "generator", openmoji_shards, tiny_tokenizer_ckpt, [kill])
    args = ["fit", "-c", str(config), "--trainer.max_steps", "9", "--data.num_workers", "1"]
    with pytest.raises(SystemExit) as stopped, caplog.at_level("INFO"):
        train.generator(args)
    assert type(stopped.value).__name__ == "SIGTERMException"
    assert _load(tmp_path / "runs" / "group" / "checkpoints" / "last.ckpt")["global_step"] == 5
    assert not [r for r in caplog.records if "Received SIGTERM" in r.getMessage()]


def test_a_fit_started_ignoring_ctrl_c_keeps_ignoring_it(tmp_path, openmoji_shards, tiny_tokenizer_ckpt):
    """``nohup`` and background jobs start with SIGINT ignored: the fit does not take Ctrl+C over, so a
    SIGINT mid-run changes nothing and the run ends at max_steps."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    kill = {"class_path": "resume_checks.SignalAtStep", "init_args": {"step": 2, "signum": 2}}
    config = _config(tmp_path, "nohup", "generator", openmoji_shards, tiny_tokenizer_ckpt, [kill])
    last = _fit("generator", config, 4)
    assert _load(last)["global_step"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_cli_fit_stopped_by_sigterm_exits_143(tmp_path, openmoji_shards, tiny_tokenizer_ckpt):
    from infinity_lit.cli import main

    kill = {"class_path": "resume_checks.SignalAtStep", "init_args": {"step": 2, "signum": 15}}
    config = _config(tmp_path, "cli", "generator", openmoji_shards, tiny_tokenizer_ckpt, [kill])
    with pytest.raises(SystemExit) as stopped:
        main(["generator", "fit", "-c", str(config), "--trainer.max_steps", "6"])
    assert stopped.value.code == 128 + signal.SIGTERM
    assert _load(tmp_path / "runs" / "cli" / "checkpoints" / "last.ckpt")["global_step"] == 2


def test_sigkill_loses_at_most_one_interval_and_resumes_exactly(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt
):
    """A real training process is killed with SIGKILL after its first periodic checkpoint; resuming from
    last.ckpt in a new process ends where an uninterrupted run does."""
    total, every = 24, 2
    straight = _load(
        _fit(
            "generator",
            _config(tmp_path, "straight", "generator", openmoji_shards, tiny_tokenizer_ckpt),
            total,
        )
    )
    config = _config(tmp_path, "killed", "generator", openmoji_shards, tiny_tokenizer_ckpt)
    last = tmp_path / "runs" / "killed" / "checkpoints" / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    args = ["fit", "-c", str(config), "--trainer.max_steps", str(total)]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infinity_lit.cli",
            "generator",
            *args,
            "--checkpoint.every_n_train_steps",
            str(every),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert last.exists(), (
            process.stderr.read().decode()[-2000:] if process.poll() is not None else "timeout"
        )
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    killed_at = _load(last)["global_step"]  # a whole file: written by rename, never half
    assert every <= killed_at < total
    resumed = _load(_fit("generator", config, total, ckpt_path=last))
    _assert_same_state(straight, resumed)

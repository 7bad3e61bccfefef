"""Faults under load: a full disk while a checkpoint is written and a data loader worker that dies end the
fit with a clear error and leave the previous ``last.ckpt`` whole and loadable; checkpoints are written on
their own file system (temporary file beside the target, then a rename)."""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import signal
import sys

import lightning.pytorch as pl
import pytest
import torch
from resume_checks import load as _load
from test_exact_resume import _config

from infinity_lit.checkpoints import atomic_save
from infinity_lit.cli import train
from infinity_lit.training.checkpointing import AtomicCheckpointIO, CheckpointWriteError

_real_save = torch.save


class DiskFullFromStep(pl.Callback):
    """From ``step`` on, ``torch.save`` writes half of its bytes and then fails with ENOSPC, as a full disk
    does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            torch.save = _half_then_enospc


def _half_then_enospc(obj, f, *args, **kwargs) -> None:
    buffer = io.BytesIO()
    _real_save(obj, buffer, *args, **kwargs)
    f.write(buffer.getvalue()[: buffer.tell() // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class KillWorkerAtStep(pl.Callback):
    """SIGKILLs this process's data loader workers once ``step`` optimiser steps are done (an OOM kill)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            workers = multiprocessing.active_children()
            assert workers, "the fit should have data loader workers"
            for worker in workers:
                os.kill(worker.pid, signal.SIGKILL)


@pytest.fixture
def restore_torch_save():
    yield
    torch.save = _real_save


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_save({"step": 1}, path)
    monkeypatch.setattr(torch, "save", _half_then_enospc)
    with pytest.raises(OSError) as failed:
        atomic_save({"step": 2, "w": torch.zeros(1000)}, path)
    assert failed.value.errno == errno.ENOSPC
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_a_full_disk_while_saving_is_a_clear_error_and_last_ckpt_stays_whole(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt, restore_torch_save
):
    disk = {"class_path": "test_faults.DiskFullFromStep", "init_args": {"step": 3}}
    config = _config(tmp_path, "full", "generator", openmoji_shards, tiny_tokenizer_ckpt, [disk])
    args = ["fit", "-c", str(config), "--trainer.max_steps", "8", "--checkpoint.every_n_train_steps", "2"]
    with pytest.raises(CheckpointWriteError, match=r"last\.ckpt \(No space left on device\); the previous"):
        train.generator(args)
    folder = tmp_path / "runs" / "full" / "checkpoints"
    torch.save = _real_save
    assert _load(folder / "last.ckpt")["global_step"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]


def test_fits_write_checkpoints_with_the_atomic_io(tmp_path, openmoji_shards, tiny_tokenizer_ckpt):
    config = _config(tmp_path, "io", "generator", openmoji_shards, tiny_tokenizer_ckpt)
    cli = train.generator(["fit", "-c", str(config), "--trainer.max_steps", "1"])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert _load(tmp_path / "runs" / "io" / "checkpoints" / "last.ckpt")["global_step"] == 1


def test_a_dead_data_loader_worker_is_a_clear_error_and_last_ckpt_stays_whole(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt, capsys, monkeypatch
):
    """A loader worker SIGKILLed mid-fit (as the out-of-memory killer does): torch's error in the library, one
    line saying what happened and how to resume from ``infinity-lit``, and last.ckpt whole at its step."""
    from infinity_lit.cli import main
    from infinity_lit.cli.common import DEBUG_ENV

    # torch's SIGCHLD handler raises the worker's death wherever the interpreter is when a child exits; when
    # that is inside a finalizer, Python reports it as unraisable, and a second child's exit can interrupt
    # pytest's own report of it. The fit still fails with torch's error on its next batch (checked below).
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    kill = {"class_path": "test_faults.KillWorkerAtStep", "init_args": {"step": 3}}
    config = _config(tmp_path, "worker", "generator", openmoji_shards, tiny_tokenizer_ckpt, [kill])
    args = ["fit", "-c", str(config), "--trainer.max_steps", "8", "--checkpoint.every_n_train_steps", "2"]
    args += ["--data.num_workers", "1"]
    with pytest.raises(
        RuntimeError, match=r"DataLoader worker \(pid(\(s\))? \d+\) (exited unexpectedly|is killed)"
    ):
        train.generator(args)
    # The failed fit ended its loader workers: torch no longer watches the dead one (it would raise its death
    # again, at whatever runs when the next child process exits).
    from torch.utils.data._utils.signal_handling import _error_if_any_worker_fails

    _error_if_any_worker_fails()
    last = tmp_path / "runs" / "worker" / "checkpoints" / "last.ckpt"
    assert _load(last)["global_step"] == 2

    os.environ.pop(DEBUG_ENV, None)
    config = _config(tmp_path, "worker_cli", "generator", openmoji_shards, tiny_tokenizer_ckpt, [kill])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(["generator", "fit", "-c", str(config), *args[3:]])
    assert stopped.value.code == 1
    _error_if_any_worker_fails()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "a data loader worker process died" in errors[0], errors
    assert "--ckpt_path" in errors[0]
    assert _load(tmp_path / "runs" / "worker_cli" / "checkpoints" / "last.ckpt")["global_step"] == 2


def test_a_requeued_command_resumes_and_a_finished_run_trains_nothing_more(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt
):
    """The requeue-safe command of a cluster job, ``fit … --ckpt_path last``: the first start trains from
    scratch, a rerun after pre-emption resumes where last.ckpt is (equal to an uninterrupted run), and a
    rerun of the finished run trains nothing more and rewrites nothing."""
    from resume_checks import assert_same_state as _assert_same_state
    from resume_checks import logged_steps as _logged_steps
    from test_exact_resume import _fit

    straight = _load(
        _fit(
            "generator", _config(tmp_path, "straight", "generator", openmoji_shards, tiny_tokenizer_ckpt), 10
        )
    )
    config = _config(tmp_path, "requeued", "generator", openmoji_shards, tiny_tokenizer_ckpt)
    command = ["fit", "-c", str(config), "--ckpt_path", "last", "--trainer.max_steps"]
    folder = tmp_path / "runs" / "requeued"
    with pytest.warns(UserWarning, match="no last checkpoint"):  # Lightning: none yet, a fresh start
        train.generator([*command, "4"])  # stands for a job pre-empted at step 4
    assert _load(folder / "checkpoints" / "last.ckpt")["global_step"] == 4
    train.generator([*command, "10"])
    last = folder / "checkpoints" / "last.ckpt"
    _assert_same_state(straight, _load(last))
    written = last.stat().st_mtime_ns
    cli = train.generator([*command, "10"])  # the finished run's command again
    assert cli.trainer.global_step == 10
    assert last.stat().st_mtime_ns == written
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["last.ckpt"]
    steps = _logged_steps(folder, "train/loss")
    assert len(steps) == len(set(steps)) == 10


def test_a_moved_run_folder_resumes_in_place(tmp_path, openmoji_shards, tiny_tokenizer_ckpt):
    """A run folder moved elsewhere resumes where it now is (same config file, which still names the old
    place): checkpoints and TensorBoard steps continue there, nothing is written at the old place."""
    import shutil

    from resume_checks import logged_steps

    config = _config(tmp_path, "first", "generator", openmoji_shards, tiny_tokenizer_ckpt)
    train.generator(["fit", "-c", str(config), "--trainer.max_steps", "4"])
    moved = tmp_path / "moved" / "first"
    shutil.move(tmp_path / "runs" / "first", moved)
    train.generator(["fit", "-c", str(config), "--trainer.max_steps", "6", "--ckpt_path", str(moved)])
    assert not (tmp_path / "runs" / "first").exists()
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == ["last.ckpt"]
    assert _load(moved / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert logged_steps(moved, "train/loss") == list(range(6))  # one per step, none twice

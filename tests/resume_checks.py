"""Checks shared by the resume and fault tests: load a checkpoint, compare two training states to the
tolerances of exact resume, read the logged TensorBoard steps, and a callback that signals this process."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import lightning.pytorch as pl
import torch


class SignalAtStep(pl.Callback):
    """Sends ``signum`` to this process once ``step`` optimiser steps are done, as ``kill`` would; with
    ``group``, to its data loader workers too, as a terminal's Ctrl+C reaches the whole process group."""

    def __init__(self, step: int, signum: int, group: bool = False) -> None:
        self.step, self.signum, self.group = step, signum, group

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            if self.group:
                workers = multiprocessing.active_children()
                assert workers, "the fit should have data loader workers"
                for worker in workers:
                    os.kill(worker.pid, self.signum)
            os.kill(os.getpid(), self.signum)


class SignalInValidation(pl.Callback):
    """Sends ``signum`` to this process after the first batch of the validation that follows optimiser
    step ``step`` (not the sanity check)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        if not trainer.sanity_checking and trainer.global_step == self.step and batch_idx == 0:
            os.kill(os.getpid(), self.signum)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same training state: step, weights (≤ 1e-6), Adam moments (≤ 1e-7), learning
    rates (≤ 1e-12), the method's random streams and the data loader position."""
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state"):  # the raw weights beside EMA ones, when there is EMA
        if key not in a and key not in b:
            continue
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            diff = (a[key][name].double() - b[key][name].double()).abs().max().item()
            assert diff <= 1e-6, f"{key} {name}: max difference {diff:.3g}"
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for (i, sa), sb in zip(opt_a["state"].items(), opt_b["state"].values(), strict=True):
            for moment in ("exp_avg", "exp_avg_sq"):
                diff = (sa[moment].double() - sb[moment].double()).abs().max().item()
                assert diff <= 1e-7, f"{moment} of parameter {i}: max difference {diff:.3g}"
    for sched_a, sched_b in zip(a["lr_schedulers"], b["lr_schedulers"], strict=True):
        for lr_a, lr_b in zip(sched_a["_last_lr"], sched_b["_last_lr"], strict=True):
            assert abs(lr_a - lr_b) <= 1e-12
    assert a["random_streams"] == b["random_streams"]
    loader = lambda c: c["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # noqa: E731
    assert loader(a) == loader(b)


def logged_steps(run: Path, tag: str) -> list[int]:
    """Every step ``tag`` was logged at in ``run``'s event files, in order, repeats included (unlike
    ``evaluation.tensorboard.read_scalars``, which keeps the last value of a step)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={SCALARS: 0})
    acc.Reload()
    return sorted(event.step for event in acc.Scalars(tag))

"""NonFiniteGuard: a NaN/Inf loss or gradient stops training before the step is applied, naming the step and
the loss term, with the last good checkpoint kept; or, with ``action="skip"``, leaves the weights and the
optimiser moments untouched and counts the step. Real fits of the tiny generator and the tokenizer (both GAN
optimisers), with NaNs injected into the network or the data at a chosen step."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from resume_checks import load as _load
from resume_checks import logged_steps as _logged_steps
from test_exact_resume import _config

from infinity_lit.cli import train
from infinity_lit.training.finite import NonFiniteError, NonFiniteGuard, nonfinite_terms

INJECT = "test_finite.NaNAtStep"


class NaNAtStep(pl.Callback):
    """Makes the batch of step ``step`` non-finite: ``where="head"`` multiplies the generator's last linear
    layer's output by NaN (a diverging network), ``where="images"`` fills the tokenizer's images with NaN
    (bad data)."""

    def __init__(self, step: int, where: str = "head") -> None:
        self.step, self.where, self._hook = step, where, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        if self.where == "images":
            batch["image"].fill_(math.nan)
        else:
            head = [m for m in pl_module.transformer.modules() if isinstance(m, torch.nn.Linear)][-1]
            self._hook = head.register_forward_hook(lambda module, args, out: out * math.nan)

    def on_train_batch_end(self, *args) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


class Snapshot(pl.Callback):
    """Records the weights and Adam moments just before and just after the training batch of ``step``."""

    def __init__(self, step: int) -> None:
        self.step, self.before, self.after = step, None, None

    @staticmethod
    def _state(trainer, pl_module) -> dict[str, torch.Tensor]:
        state = {f"w/{k}": v.detach().clone() for k, v in pl_module.state_dict().items()}
        for i, opt in enumerate(trainer.optimizers):
            for j, s in enumerate(opt.state.values()):
                for moment in ("exp_avg", "exp_avg_sq"):
                    state[f"opt{i}/{j}/{moment}"] = s[moment].clone()
        return state

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            self.before = self._state(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if self.before is not None and self.after is None:
            self.after = self._state(trainer, pl_module)


def _run(model: str, config, max_steps: int, *extra: str):
    args = ["fit", "-c", str(config), "--trainer.max_steps", str(max_steps), *extra]
    return getattr(train, model)(args)


def _callbacks(cli, kind):
    return [c for c in cli.trainer.callbacks if isinstance(c, kind)]


def test_nonfinite_terms_names_the_bad_entries():
    terms = {"l1": torch.tensor(0.5), "entropy": torch.tensor([1.0, math.inf]), "gan": math.nan, "n": 3}
    bad = nonfinite_terms(terms)
    assert list(bad) == ["entropy", "gan"] and bad["entropy"] == math.inf and math.isnan(bad["gan"])
    assert nonfinite_terms({"empty": torch.empty(0), "ok": torch.ones(3)}) == {}
    with pytest.raises(ValueError, match="'stop' or 'skip'"):
        NonFiniteGuard(action="ignore")


def test_a_nan_loss_stops_before_the_step_naming_it_and_keeps_last_ckpt(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt
):
    inject = {"class_path": INJECT, "init_args": {"step": 5}}
    config = _config(tmp_path, "nan", "generator", openmoji_shards, tiny_tokenizer_ckpt, [inject])
    with pytest.raises(
        NonFiniteError, match=r"after 5 training steps: loss loss = nan.*non-finite gradients"
    ):
        _run("generator", config, 8, "--checkpoint.every_n_train_steps", "2")
    last = _load(tmp_path / "runs" / "nan" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 4  # the periodic checkpoint before the bad step, not overwritten
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_skip_leaves_weights_and_moments_untouched_and_counts(tmp_path, openmoji_shards, tiny_tokenizer_ckpt):
    inject = {"class_path": INJECT, "init_args": {"step": 5}}
    snap = {"class_path": "test_finite.Snapshot", "init_args": {"step": 5}}
    config = _config(tmp_path, "skip", "generator", openmoji_shards, tiny_tokenizer_ckpt, [inject, snap])
    with pytest.warns(RuntimeWarning, match=r"after 5 training steps.*step skipped \(1 so far\)"):
        cli = _run("generator", config, 8, "--nonfinite.action", "skip")
    (snapshot,) = _callbacks(cli, Snapshot)
    assert snapshot.before.keys() == snapshot.after.keys()
    changed = [k for k in snapshot.before if not torch.equal(snapshot.before[k], snapshot.after[k])]
    assert changed == [], changed  # not one weight, buffer or Adam moment moved
    (guard,) = _callbacks(cli, NonFiniteGuard)
    assert guard.skipped == 1 and cli.trainer.global_step == 8
    last = _load(tmp_path / "runs" / "skip" / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert any(v == {"skipped": 1} for k, v in last["callbacks"].items() if "NonFiniteGuard" in k)
    assert _logged_steps(tmp_path / "runs" / "skip", "train/nonfinite_skipped")  # reaches TensorBoard


@pytest.mark.parametrize("action", ["stop", "skip"])
def test_the_tokenizer_guard_covers_both_gan_optimisers(
    tmp_path, openmoji_shards, tiny_tokenizer_ckpt, action
):
    """NaN images at step 3 with the discriminator on: the tokenizer's step (optimiser 0) stops naming the
    reconstruction loss; skipping drops both that step and the discriminator's, whose loss is NaN too."""
    inject = {"class_path": INJECT, "init_args": {"step": 3, "where": "images"}}
    config = _config(tmp_path, action, "tokenizer", openmoji_shards, tiny_tokenizer_ckpt, [inject])
    gan = ["--model.disc_start_step", "0", "--model.disc_base_channels", "8", "--model.disc_num_layers", "2"]
    args = ["--nonfinite.action", action, *gan]
    if action == "stop":
        with pytest.raises(NonFiniteError, match=r"after 3 training steps \(optimiser 0\): loss l1 = nan"):
            _run("tokenizer", config, 5, *args)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = _run("tokenizer", config, 5, *args)
    messages = [str(w.message) for w in caught if "step skipped" in str(w.message)]
    assert (
        len(messages) == 2
        and "(optimiser 0)" in messages[0]
        and "(optimiser 1): loss disc = nan" in messages[1]
    )
    (guard,) = _callbacks(cli, NonFiniteGuard)
    assert guard.skipped == 2 and cli.trainer.global_step == 5
    last = _load(tmp_path / "runs" / action / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())

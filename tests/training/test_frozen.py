"""``FrozenStages``: frozen sub-modules stay frozen, stay out of every checkpoint and come back on load,
with and without Lightning's ``EMAWeightAveraging``."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from infinity_lit.training.frozen import FrozenStages


class Distil(FrozenStages, pl.LightningModule):
    """A student fitted to a frozen teacher that is rebuilt from a seed (its "reference")."""

    frozen_stages = ("teacher", "critic")

    def __init__(self, teacher_seed: int = 0, with_critic: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        generator = torch.Generator().manual_seed(teacher_seed)
        self.teacher = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
        with torch.no_grad():
            for p in self.teacher.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
        self.critic = nn.Linear(4, 1) if with_critic else None
        self.student = nn.Linear(4, 4)
        self.freeze_stages()
        self.modes: list[tuple[bool, bool]] = []

    def training_step(self, batch, batch_idx):
        self.modes.append((self.teacher.training, self.student.training))
        (x,) = batch
        return (self.student(x) - self.teacher(x)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.1)


def _data() -> DataLoader:
    return DataLoader(
        TensorDataset(torch.randn(16, 4, generator=torch.Generator().manual_seed(1))), batch_size=4
    )


def _trainer(tmp_path, max_steps, callbacks=()):
    return pl.Trainer(
        max_steps=max_steps,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), *callbacks],
    )


def _teacher_state(module: Distil) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.teacher.state_dict().items()}


def test_frozen_in_the_open_and_out_of_state_dict():
    module = Distil(with_critic=True)
    assert set(module.frozen_modules()) == {"teacher", "critic"}
    for sub in (module.teacher, module.critic):
        assert not sub.training and not any(p.requires_grad for p in sub.parameters())
    assert all(p.requires_grad for p in module.student.parameters())
    assert set(module.state_dict()) == {"student.weight", "student.bias"}
    # As a child of another module (the EMA callback's AveragedModel holds a copy under "module.").
    wrapper = nn.ModuleDict({"module": module})
    assert set(wrapper.state_dict()) == {"module.student.weight", "module.student.bias"}
    assert set(module.frozen_state()) == {
        "teacher.0.weight",
        "teacher.0.bias",
        "critic.weight",
        "critic.bias",
    }


def test_a_stage_switched_off_is_skipped():
    module = Distil(with_critic=False)
    assert set(module.frozen_modules()) == {"teacher"}
    assert set(module.state_dict()) == {"student.weight", "student.bias"}


def test_load_state_dict_keeps_the_reference_weights():
    module = Distil(teacher_seed=0)
    teacher = _teacher_state(module)
    other = Distil(teacher_seed=5)
    with torch.no_grad():
        other.student.weight.fill_(3.0)
    full = {**other.state_dict(), **{f"teacher.{k}": v for k, v in _teacher_state(other).items()}}
    module.load_state_dict(other.state_dict())  # strict, without the frozen entries
    assert torch.equal(module.student.weight, other.student.weight)
    module.load_state_dict(full)  # frozen entries in the given state are ignored: the reference wins
    for k, v in module.teacher.state_dict().items():
        assert torch.equal(v, teacher[k])


def test_unknown_stage_name_is_a_clear_error():
    class Broken(FrozenStages, pl.LightningModule):
        frozen_stages = ("missing",)

    with pytest.raises(AttributeError, match=r"Broken\.frozen_stages names 'missing'"):
        Broken().freeze_stages()


def test_stages_stay_in_eval_while_training(tmp_path):
    module = Distil()
    _trainer(tmp_path, max_steps=3).fit(module, _data())
    assert module.modes == [(False, True)] * 3


@pytest.mark.parametrize("ema", [False, True], ids=["plain", "ema"])
def test_checkpoint_round_trip_and_resume(tmp_path, ema):
    module = Distil(teacher_seed=0)
    teacher = _teacher_state(module)
    callbacks = [EMAWeightAveraging(decay=0.5, use_buffers=False)] if ema else []
    _trainer(tmp_path, max_steps=2, callbacks=callbacks).fit(module, _data())
    path = tmp_path / "ckpt" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    keys = ("state_dict", "current_model_state") if ema else ("state_dict",)
    assert ("current_model_state" in ckpt) == ema
    for key in keys:
        assert set(ckpt[key]) == {"student.weight", "student.bias"}, key

    restored = Distil.load_from_checkpoint(path, weights_only=True)
    for k, v in restored.teacher.state_dict().items():
        assert torch.equal(v, teacher[k])  # rebuilt from its reference
    assert torch.equal(restored.student.weight, ckpt["state_dict"]["student.weight"])

    # Resume: Lightning and the EMA callback load the checkpoint, which lacks the teacher.
    seen = []

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            seen.append(pl_module.student.weight.detach().clone())

    resumed = Distil(teacher_seed=0)
    more = [EMAWeightAveraging(decay=0.5, use_buffers=False)] if ema else []
    trainer = _trainer(tmp_path / "resume", max_steps=4, callbacks=[*more, Probe()])
    trainer.fit(resumed, _data(), ckpt_path=path)
    assert trainer.global_step == 4
    raw = ckpt["current_model_state" if ema else "state_dict"]["student.weight"]
    assert torch.equal(seen[0], raw)  # training resumed from the raw weights, not the average
    for k, v in resumed.teacher.state_dict().items():
        assert torch.equal(v, teacher[k])

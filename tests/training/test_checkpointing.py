"""RunCheckpoint: last.ckpt is always the final state; the best checkpoint is a separate file."""

from __future__ import annotations

import shutil

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from infinity_lit.training import RunCheckpoint


class PeaksEarly(pl.LightningModule):
    """A linear model whose logged validation score is best at the first validation, then falls."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.layer(x).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        # 1 / step: decreases with every validation, so the best by "max" is the first one.
        self.log("val/score", 1.0 / self.global_step, batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=2)


def _fit(dirpath, max_steps, ckpt_path=None, **checkpoint_args) -> RunCheckpoint:
    callback = RunCheckpoint(dirpath=dirpath, save_last=True, **checkpoint_args)
    trainer = pl.Trainer(
        max_steps=max_steps,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(PeaksEarly(), _loader(), _loader(), ckpt_path=ckpt_path)
    return callback


def _step(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def test_last_is_the_final_step_and_best_is_separate(tmp_path):
    # Validations at steps 3 and 6 (the best score at 3), training ends at 7, off the validation grid.
    # Lightning's ModelCheckpoint would leave last.ckpt at step 3 here.
    _fit(tmp_path, max_steps=7, monitor="val/score", mode="max")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert _step(tmp_path / "last.ckpt") == 7
    assert _step(tmp_path / "best.ckpt") == 3


def test_without_monitor_only_last_is_kept(tmp_path):
    _fit(tmp_path, max_steps=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert _step(tmp_path / "last.ckpt") == 7


def test_save_top_k_several_names_the_best_by_step(tmp_path):
    _fit(tmp_path, max_steps=7, monitor="val/score", mode="max", save_top_k=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-step=3.ckpt", "best-step=6.ckpt", "last.ckpt"]


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_a_moved_run_folder_resumes_in_place_without_versions(tmp_path):
    first = tmp_path / "first" / "checkpoints"
    _fit(first, max_steps=7, monitor="val/score", mode="max")
    moved = tmp_path / "moved" / "checkpoints"
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    _fit(moved, max_steps=10, ckpt_path=moved / "last.ckpt", monitor="val/score", mode="max")
    assert sorted(p.name for p in moved.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert _step(moved / "last.ckpt") == 10

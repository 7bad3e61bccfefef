"""Multi-device training through Lightning's strategies and the trainer overlays of experiments/trainer/.

DDP over gloo with 2 CPU processes, launched the way a user launches it (``python -m infinity_lit.cli MODEL
fit -c recipe -c experiments/trainer/ddp.yaml --trainer.accelerator cpu --trainer.devices 2``, Lightning
starting the second process), for both models on real OpenMoji shards. ``RankRecord`` (a callback the
subprocesses import from this file) writes what each rank saw. Checked: every training sample once per
epoch across the ranks, the same number of training batches on both ranks, identical weights on both ranks
at the end, and validation metrics equal to a single-process ``validate`` of the same checkpoint on the
same data. The shards are an OpenMoji build of 43 emoji (30 train, 13 val): the training split divides
evenly into 2 ranks × 3 batches of 5, the validation split does not (7 and 6 samples, 3 and 2 batches
of 3), so an uneven split is part of every run.

FSDP needs CUDA (PyTorch's FSDP refuses a CPU-only machine): ``test_fsdp_fit_and_load`` is marked ``gpu``
and skipped without 2 CUDA devices; its CPU-side part, which FSDP is told to leave unsharded, is checked
here without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_TOKENIZER, TINY_TRANSFORMER
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[2]
TRAINER = REPO / "experiments" / "trainer"
#: The real OpenMoji build of these tests (``build_openmoji_shards`` arguments) and the split it gives.
BUILD = {"resolution": 32, "limit": 43, "val_fraction": 0.25, "shard_size": 8}
COUNTS = {"train": 30, "val": 13}
DATA = {"resolution": 32, "batch_size": 5, "val_batch_size": 3, "num_workers": 0}

COMMON_TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
TINY_GENERATOR_MODEL = {
    "transformer": TINY_TRANSFORMER,
    "text_max_length": 8,
    "cfg_dropout": 0.5,
    "val_prompts": ["red apple", "cat face"],
    "optimizer": {"warmup_steps": 1, "decay_steps": 10},
}
TINY_TOKENIZER_MODEL = {
    "tokenizer": TINY_TOKENIZER,
    "perceptual_weight": 0.0,
    # The GAN on from the third step: steps without and with the discriminator, two backward passes each.
    "gan_weight": 0.1,
    "disc_start_step": 2,
    "disc_base_channels": 8,
    "disc_num_layers": 2,
    "num_log_images": 2,
    "optimizer": {"learning_rate": 1.0e-3, "warmup_steps": 1, "lr_schedule": "constant"},
}


class RankRecord(Callback):
    """Writes ``<out_dir>/<stage>_rank<r>.pt`` at teardown: the keys of every training batch (by epoch) and of
    the last validation's batches, the final callback metrics, the global step and the trainable state."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.train: dict[int, list[list[str]]] = {}
        self.val: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.setdefault(trainer.current_epoch, []).append(list(batch["key"]))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.val = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val.append(list(batch["key"]))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "train": self.train,
            "val": self.val,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "state": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
        }
        torch.save(record, self.out_dir / f"{trainer.state.fn.value}_rank{trainer.global_rank}.pt")


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from infinity_lit.data import build_openmoji_shards

    out = tmp_path_factory.mktemp("openmoji43")
    build_openmoji_shards(out, progress=False, **BUILD)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts == COUNTS, f"the build changed ({counts}); pick a limit whose splits divide as described"
    return out


def _keys(shards: Path, split: str) -> list[str]:
    from infinity_lit.data.shards import raw_samples, split_shards

    return [s["__key__"] for s in raw_samples(p for p, _ in split_shards(shards, split))]


def _recipe(folder: Path, model: str, shards: Path, model_args: dict, trainer: dict) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            **COMMON_TRAINER,
            **trainer,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(folder / "runs"), "name": model},
            },
        },
        "model": model_args,
        "data": {
            "class_path": "infinity_lit.data.ShardDataModule",
            "init_args": {"data_dir": str(shards), **DATA},
        },
    }
    path = folder / f"{model}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _record(folder: Path) -> str:
    return json.dumps({"class_path": "test_ddp.RankRecord", "init_args": {"out_dir": str(folder)}})


def _cli(model: str, args: list[str], cwd: Path) -> None:
    """``python -m infinity_lit.cli MODEL ARGS`` in a fresh process (so Lightning can start its workers)."""
    env = {
        **os.environ,
        # This file (RankRecord) and the tests' conftest.py (the tiny architectures it imports).
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
        # One thread per process: the two ranks share the machine.
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "infinity_lit.cli", model, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{model} {args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def _ddp_fit(folder: Path, model: str, recipe: Path) -> list[dict]:
    _cli(
        model,
        [
            "fit",
            "-c",
            str(recipe),
            "-c",
            str(TRAINER / "ddp.yaml"),
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.callbacks+",
            _record(folder / "ddp"),
        ],
        folder,
    )
    return [torch.load(folder / "ddp" / f"fit_rank{r}.pt", weights_only=False) for r in (0, 1)]


def _single_validate(folder: Path, model: str, recipe: Path, ckpt: Path) -> dict:
    """``MODEL validate`` of ``ckpt`` in one process, in this one."""
    from infinity_lit.cli import train

    getattr(train, model)(
        [
            "validate",
            "-c",
            str(recipe),
            "--ckpt_path",
            str(ckpt),
            "--trainer.callbacks+",
            _record(folder / "single"),
        ]
    )
    return torch.load(folder / "single" / "validate_rank0.pt", weights_only=False)


def _last_checkpoint(folder: Path, model: str) -> Path:
    (ckpt,) = (folder / "runs" / model).glob("**/checkpoints/last.ckpt")
    return ckpt


def check_ddp_run(ranks: list[dict], shards: Path, epochs: int, steps_per_epoch: int) -> None:
    """The invariants of a 2-rank DDP fit (see the module docstring)."""
    train, val = _keys(shards, "train"), _keys(shards, "val")
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_step"] for r in ranks] == [epochs * steps_per_epoch] * 2
    for epoch in range(epochs):
        batches = [r["train"][epoch] for r in ranks]
        # both ranks run the same number of batches …
        assert [len(b) for b in batches] == [steps_per_epoch] * 2
        # … and between them see every training sample exactly once in the epoch
        seen = Counter(k for b in batches for batch in b for k in batch)
        assert seen == Counter(train), f"epoch {epoch}: {seen}"
    # the last validation: every sample once across the ranks, split unevenly (7 + 6 samples)
    val_seen = [[k for batch in r["val"] for k in batch] for r in ranks]
    assert Counter(val_seen[0] + val_seen[1]) == Counter(val)
    assert sorted(len(v) for v in val_seen) == [6, 7]
    assert [len(r["val"]) for r in ranks] == [3, 2]  # batches of 3: (3, 3, 1) and (3, 3)
    # identical weights on both ranks, and the synced metrics identical too
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    val_metrics = {k: v for k, v in ranks[0]["metrics"].items() if k.startswith("val/")}
    assert val_metrics
    assert val_metrics == {k: ranks[1]["metrics"][k] for k in val_metrics}


def check_single_process_metrics(ddp: dict, single: dict) -> None:
    """Every ``val/`` metric of the DDP run's last validation equals that of one process on the same
    checkpoint and data."""
    assert single["world_size"] == 1
    assert len(single["val"]) == 5  # batches of 3: 3, 3, 3, 3, 1
    keys = sorted(k for k in single["metrics"] if k.startswith("val/"))
    assert keys == sorted(k for k in ddp["metrics"] if k.startswith("val/"))
    for key in keys:
        # Equal up to the float rounding of summing the same per-sample values in another order.
        assert ddp["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-5, abs=1e-6), key


# ---------------------------------------------------------------- DDP (2 CPU processes over gloo)


def test_ddp_generator_fit(tmp_path, shards, tiny_tokenizer_ckpt):
    model = {"tokenizer_checkpoint": str(tiny_tokenizer_ckpt), **TINY_GENERATOR_MODEL}
    trainer = {"max_epochs": 2, "check_val_every_n_epoch": 1, "gradient_clip_val": 1.0}
    recipe = _recipe(tmp_path, "generator", shards, model, trainer)
    ranks = _ddp_fit(tmp_path, "generator", recipe)
    check_ddp_run(ranks, shards, epochs=2, steps_per_epoch=3)
    # the trainable state is the transformer, and rank 0 wrote it to the checkpoint
    ckpt_path = _last_checkpoint(tmp_path, "generator")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["state_dict"].keys() == ranks[0]["state"].keys()
    assert all(torch.equal(v, ranks[0]["state"][k]) for k, v in ckpt["state_dict"].items())

    single = _single_validate(tmp_path, "generator", recipe, ckpt_path)
    check_single_process_metrics(ranks[0], single)
    assert {"val/loss", "val/bit_acc_scale_3"} <= ranks[0]["metrics"].keys()

    # The sample grid ran on both ranks (through the DDP forward) and rank 0 logged it at each validation.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (tmp_path / "runs" / "generator").glob("events.out.tfevents.*")  # the fit's, not validate/
    logged = EventAccumulator(str(events), size_guidance={"images": 0}).Reload()
    assert len(logged.Images("val/samples")) == 2


def test_ddp_tokenizer_fit_with_the_gan(tmp_path, shards):
    recipe = _recipe(tmp_path, "tokenizer", shards, TINY_TOKENIZER_MODEL, {"max_epochs": 1})
    ranks = _ddp_fit(tmp_path, "tokenizer", recipe)
    check_ddp_run(ranks, shards, epochs=1, steps_per_epoch=3)
    assert any(k.startswith("discriminator.") for k in ranks[0]["state"])
    assert "train/disc" in ranks[0]["metrics"]  # the discriminator trained in the last step

    single = _single_validate(tmp_path, "tokenizer", recipe, _last_checkpoint(tmp_path, "tokenizer"))
    check_single_process_metrics(ranks[0], single)
    assert {"val/psnr", "val/bit_entropy_mean", "val/codebook_utilisation"} <= ranks[0]["metrics"].keys()


# ---------------------------------------------------------------- FSDP


def test_optimiser_groups_survive_a_sharding_wrapper(tiny_tokenizer_ckpt):
    """The weight-decay groups are the same after FSDP-style wrapping: wrapper modules in the parameter
    names and every parameter's data a flat 1-D view (no GPU needed)."""
    from torch import nn

    from infinity_lit.generator.module import GeneratorModule

    class Wrapper(nn.Module):  # names its inner module as FSDP does
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._fsdp_wrapped_module = inner

    module = GeneratorModule(
        str(tiny_tokenizer_ckpt),
        transformer=TINY_GENERATOR_MODEL["transformer"],
        optimizer={"decay_steps": 200},
    )

    def groups() -> list[list[int]]:
        optimizer = module.configure_optimizers()["optimizer"]
        return [[id(p) for p in group["params"]] for group in optimizer.param_groups]

    before = groups()
    assert before[0] and before[1]  # matrices, and vectors without weight decay
    for block in module.transformer.blocks:
        block.attn = Wrapper(block.attn)
    with torch.no_grad():
        for param in module.transformer.parameters():
            param.data = param.data.reshape(-1)
    assert groups() == before
    module.transformer.extra = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match=r"'extra\.weight' did not exist when the module was built"):
        groups()


def test_frozen_stages_stay_out_of_fsdp(tiny_tokenizer_ckpt):
    """What ``FrozenStages.setup`` tells an FSDP strategy before it wraps the model (no GPU needed)."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from infinity_lit.generator.module import GeneratorModule

    module = GeneratorModule(str(tiny_tokenizer_ckpt), transformer=TINY_GENERATOR_MODEL["transformer"])
    strategy = FSDPStrategy(parallel_devices=[torch.device("cpu")])
    module._trainer = SimpleNamespace(strategy=strategy, datamodule=None)
    module.setup("fit")
    module.setup("validate")  # a second call adds nothing
    assert strategy.kwargs["ignored_states"] == [module.tokenizer, module.text_encoder]
    module._trainer = None
    # a strategy given ignored_modules keeps them, with the frozen stages added
    other = torch.nn.Linear(2, 2)
    strategy = FSDPStrategy(parallel_devices=[torch.device("cpu")], ignored_modules=[other])
    module._trainer = SimpleNamespace(strategy=strategy, datamodule=None)
    module.setup("fit")
    assert strategy.kwargs["ignored_modules"] == [other, module.tokenizer, module.text_encoder]
    assert "ignored_states" not in strategy.kwargs
    module._trainer = None


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA device")
def test_fsdp_fit_and_load(tmp_path, shards, tiny_tokenizer_ckpt):
    """A few generator steps with fsdp.yaml on 2 GPUs (1 where only one is lent: FSDP still wraps, shards
    over one rank and gathers); the gathered checkpoint loads with ``load_generator`` and samples."""
    devices = min(2, torch.cuda.device_count())
    from infinity_lit.generator.checkpoint import load_generator
    from infinity_lit.generator.sampling import sample

    model = {"tokenizer_checkpoint": str(tiny_tokenizer_ckpt), **TINY_GENERATOR_MODEL}
    recipe = _recipe(
        tmp_path,
        "generator",
        shards,
        model,
        {"max_steps": 4, "val_check_interval": 2, "check_val_every_n_epoch": None, "gradient_clip_val": 1.0},
    )
    _cli(
        "generator",
        ["fit", "-c", str(recipe), "-c", str(TRAINER / "fsdp.yaml"), "--trainer.devices", str(devices)],
        tmp_path,
    )
    ckpt_path = _last_checkpoint(tmp_path, "generator")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["state_dict"] and all(k.startswith("transformer.") for k in ckpt["state_dict"])
    generator = load_generator(ckpt_path)
    for key, value in generator.model.state_dict().items():
        torch.testing.assert_close(value, ckpt["state_dict"][f"transformer.{key}"])
    out = sample(generator.model, generator.tokenizer, generator.text_encoder, ["red apple"], seed=0)
    assert out.images.shape == (1, 3, 32, 32) and torch.isfinite(out.images).all()

"""GeneratorModule and the CLIs: a few real training steps on OpenMoji shards with a tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from infinity_lit.generator.checkpoint import load_generator
from infinity_lit.generator.module import GENERATOR_OPTIMIZER, GeneratorModule
from infinity_lit.generator.transformer import TransformerConfig
from infinity_lit.training import OptimizerConfig
from infinity_lit.training.schedules import lr_factor

REPO = Path(__file__).resolve().parents[2]


TINY = {"depth": 2, "width": 64, "num_heads": 4}


def test_config_comes_from_the_tokenizer(tiny_tokenizer_ckpt):
    module = GeneratorModule(
        str(tiny_tokenizer_ckpt), transformer=TransformerConfig(**TINY), text_max_length=16
    )
    assert module.transformer.codebook_dim == 6
    assert module.transformer.scale_schedule == [(1, 1), (2, 2), (4, 4)]
    assert module.hparams["transformer"]["codebook_dim"] == 6
    with pytest.raises(ValueError, match=r"codebook_dim=16.*tokenizer checkpoint has 6"):
        GeneratorModule(str(tiny_tokenizer_ckpt), transformer=TransformerConfig(**TINY, codebook_dim=16))
    with pytest.raises(FileNotFoundError, match="tokenizer fit"):
        GeneratorModule(str(tiny_tokenizer_ckpt.parent / "missing.ckpt"))


def test_frozen_stages_are_out_of_state_dict_and_optimiser(tiny_tokenizer_ckpt):
    module = GeneratorModule(
        str(tiny_tokenizer_ckpt),
        transformer=TransformerConfig(**TINY),
        text_max_length=16,
        optimizer={"decay_steps": 200},
    )
    keys = module.state_dict().keys()
    assert keys and all(k.startswith("transformer.") for k in keys)
    for name in ("tokenizer", "text_encoder"):
        sub = getattr(module, name)
        assert not sub.training and not any(p.requires_grad for p in sub.parameters())
    opt = module.configure_optimizers()["optimizer"]  # no trainer: horizon from decay_steps
    in_optimiser = {id(p) for group in opt.param_groups for p in group["params"]}
    assert in_optimiser == {id(p) for p in module.transformer.parameters()}
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert id(module.transformer.head.weight) in decayed and id(module.transformer.head.bias) not in decayed
    # strict round trip of the trainable state
    module.load_state_dict(module.state_dict())


def test_learning_rate_schedule(tiny_tokenizer_ckpt):
    optimizer = OptimizerConfig(learning_rate=1e-3, warmup_steps=10, decay_steps=110, min_lr_ratio=0.1)
    module = GeneratorModule(
        str(tiny_tokenizer_ckpt), transformer=TransformerConfig(**TINY), optimizer=optimizer
    )
    assert module.hparams["optimizer"] == optimizer.to_dict()
    out = module.configure_optimizers()
    assert out["lr_scheduler"]["interval"] == "step"
    sched = out["lr_scheduler"]["scheduler"]
    factors = [sched.lr_lambdas[0](step) for step in (0, 9, 10, 60, 110, 500)]
    assert factors == [lr_factor(s, 10, 110, 0.1) for s in (0, 9, 10, 60, 110, 500)]
    assert factors == pytest.approx([0.1, 1.0, 1.0, 0.55, 0.1, 0.1])
    assert out["optimizer"].defaults["lr"] == 1e-3
    assert [g["weight_decay"] for g in out["optimizer"].param_groups] == [optimizer.weight_decay, 0.0]


def test_optimizer_defaults_and_mapping(tiny_tokenizer_ckpt):
    module = GeneratorModule(
        str(tiny_tokenizer_ckpt), transformer=TransformerConfig(**TINY), optimizer={"decay_steps": 500}
    )
    # A mapping (as load_from_checkpoint passes it) is completed from the generator's own defaults.
    assert module.optimizer_config == OptimizerConfig.from_dict({"decay_steps": 500}, GENERATOR_OPTIMIZER)
    assert module.hparams["optimizer"]["learning_rate"] == GENERATOR_OPTIMIZER.learning_rate == 3e-4
    with pytest.raises(ValueError, match="unknown optimizer config keys"):
        GeneratorModule(
            str(tiny_tokenizer_ckpt), transformer=TransformerConfig(**TINY), optimizer={"lr": 1.0}
        )
    with pytest.raises(ValueError, match=r"cosine schedule needs a horizon.*decay_steps"):
        GeneratorModule(
            str(tiny_tokenizer_ckpt), transformer=TransformerConfig(**TINY)
        ).configure_optimizers()


def _write_config(tmp_path: Path, shards: Path, tokenizer_ckpt: Path, extra: dict | None = None) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": 4,
            "val_check_interval": 4,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "test"},
            },
        },
        "model": {
            "tokenizer_checkpoint": str(tokenizer_ckpt),
            "transformer": TINY,
            "text_max_length": 16,
            "max_flip_prob": 0.3,
            "optimizer": {"warmup_steps": 2},
            "val_prompts": ["grinning face", "red apple"],
        },
        "data": {
            "class_path": "infinity_lit.data.ShardDataModule",
            "init_args": {"data_dir": str(shards), "resolution": 32, "batch_size": 4, "num_workers": 0},
        },
    }
    if extra:
        for key, value in extra.items():
            config[key].update(value) if isinstance(value, dict) else config.__setitem__(key, value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_through_the_cli_then_sample(tmp_path, openmoji_shards, tiny_tokenizer_ckpt):
    from infinity_lit.cli import eval as eval_cli
    from infinity_lit.cli import train

    config = _write_config(tmp_path, openmoji_shards, tiny_tokenizer_ckpt)
    ema = {
        "class_path": "lightning.pytorch.callbacks.EMAWeightAveraging",
        "init_args": {"use_buffers": False},
    }
    run = train.generator(["fit", "-c", str(config), "--trainer.callbacks+", json.dumps(ema)])
    logged = run.trainer.logged_metrics
    assert run.trainer.global_step == 4
    assert torch.isfinite(logged["train/loss"]) and 0 < float(logged["train/loss"]) < 1.0
    assert "val/loss" in logged and "val/bit_acc_scale_3" in logged and "train/flip_prob" in logged

    ckpt_path = Path(run.trainer.checkpoint_callback.last_model_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert all(k.startswith("transformer.") for k in ckpt["state_dict"])
    assert "current_model_state" in ckpt  # the EMA callback kept the raw weights beside the averaged ones
    assert ckpt["hyper_parameters"]["tokenizer_checkpoint"] == str(tiny_tokenizer_ckpt)

    module = GeneratorModule.load_from_checkpoint(ckpt_path, weights_only=True)
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, ckpt["state_dict"][k])

    # resuming (optimizer, EMA state) works although the checkpoint holds no frozen weights
    resume = ["--trainer.max_steps", "6", "--ckpt_path", str(ckpt_path)]
    resumed = train.generator(["fit", "-c", str(config), "--trainer.callbacks+", json.dumps(ema), *resume])
    assert resumed.trainer.global_step == 6

    gen = load_generator(ckpt_path)
    for k, v in gen.model.state_dict().items():
        torch.testing.assert_close(v, ckpt["state_dict"][f"transformer.{k}"])

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("grinning face\n\nred apple\n")
    out = tmp_path / "samples"
    eval_cli.sample(
        [
            "--checkpoint",
            str(ckpt_path),
            "--prompts",
            str(prompts),
            "--out",
            str(tmp_path / "samples"),
            "--seed",
            "5",
        ]
    )
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["grinning face", "red apple"]
    assert [r["image_seed"] for r in records] == [5, 6] and records[0]["cfg"] == 4.0
    with Image.open(out / records[1]["file"]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"


def test_training_steps_keep_frozen_stages_in_eval(tmp_path, openmoji_shards, tiny_tokenizer_ckpt):
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import Callback

    from infinity_lit.data import ShardDataModule

    seen = []

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(
                (
                    pl_module.tokenizer.training,
                    pl_module.text_encoder.training,
                    pl_module.transformer.training,
                )
            )

    module = GeneratorModule(
        str(tiny_tokenizer_ckpt),
        transformer=TransformerConfig(**TINY),
        text_max_length=16,
        optimizer={"warmup_steps": 1},
        val_prompts=[],
    )
    data = ShardDataModule(openmoji_shards, resolution=32, batch_size=4, num_workers=0)
    trainer = Trainer(
        max_steps=3,
        limit_val_batches=1,
        val_check_interval=2,
        num_sanity_val_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Probe()],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)
    assert seen == [(False, False, True)] * 3

"""GeneratorModule and the CLIs: a few real training steps on OpenMoji shards with a tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from infinity_lit.generator.checkpoint import load_generator
from infinity_lit.generator.module import GeneratorModule
from infinity_lit.generator.transformer import TransformerConfig
from infinity_lit.tokenizer import BitwiseTokenizer, TokenizerConfig

REPO = Path(__file__).resolve().parents[2]


def save_tiny_tokenizer(path: Path, codebook_dim: int = 6) -> Path:
    """A randomly initialised 32² tokenizer (stride 4, 8×8 latent) in the TokenizerModule checkpoint layout."""
    torch.manual_seed(0)
    cfg = TokenizerConfig(
        codebook_dim=codebook_dim,
        scale_schedule=[(1, 1), (2, 2), (4, 4), (8, 8)],
        base_channels=8,
        channel_multipliers=[1, 1, 2],
        num_res_blocks=1,
        num_groups=4,
    )
    tok = BitwiseTokenizer(cfg)
    state = {f"tokenizer.{k}": v for k, v in tok.state_dict().items()}
    torch.save({"hyper_parameters": {"tokenizer": cfg.to_dict()}, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def tokenizer_ckpt(tmp_path_factory) -> Path:
    return save_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.ckpt")


TINY = {"depth": 2, "width": 64, "num_heads": 4}


def test_config_comes_from_the_tokenizer(tokenizer_ckpt):
    module = GeneratorModule(str(tokenizer_ckpt), transformer=TransformerConfig(**TINY), text_max_length=16)
    assert module.transformer.codebook_dim == 6
    assert module.transformer.scale_schedule == [(1, 1), (2, 2), (4, 4), (8, 8)]
    assert module.hparams["transformer"]["codebook_dim"] == 6
    with pytest.raises(ValueError, match=r"codebook_dim=16.*tokenizer checkpoint has 6"):
        GeneratorModule(str(tokenizer_ckpt), transformer=TransformerConfig(**TINY, codebook_dim=16))
    with pytest.raises(FileNotFoundError, match="tokenizer fit"):
        GeneratorModule(str(tokenizer_ckpt.parent / "missing.ckpt"))


def test_frozen_stages_are_out_of_state_dict_and_optimiser(tokenizer_ckpt):
    module = GeneratorModule(
        str(tokenizer_ckpt), transformer=TransformerConfig(**TINY), text_max_length=16, decay_steps=10
    )
    keys = module.state_dict().keys()
    assert keys and all(k.startswith("transformer.") for k in keys)
    for name in ("tokenizer", "text_encoder"):
        sub = getattr(module, name)
        assert not sub.training and not any(p.requires_grad for p in sub.parameters())
    opt = module.configure_optimizers()["optimizer"]
    in_optimiser = {id(p) for group in opt.param_groups for p in group["params"]}
    assert in_optimiser == {id(p) for p in module.transformer.parameters()}
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert id(module.transformer.head.weight) in decayed and id(module.transformer.head.bias) not in decayed
    # strict round trip of the trainable state
    module.load_state_dict(module.state_dict())


def test_learning_rate_schedule(tokenizer_ckpt):
    module = GeneratorModule(
        str(tokenizer_ckpt),
        transformer=TransformerConfig(**TINY),
        warmup_steps=10,
        decay_steps=110,
        min_lr_ratio=0.1,
    )
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    factors = [sched.lr_lambdas[0](step) for step in (0, 9, 10, 60, 110, 500)]
    assert factors == pytest.approx([0.1, 1.0, 1.0, 0.55, 0.1, 0.1])


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
            "warmup_steps": 2,
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


def test_fit_through_the_cli_then_sample(tmp_path, openmoji_shards, tokenizer_ckpt):
    from infinity_lit.cli import eval as eval_cli
    from infinity_lit.cli import train

    config = _write_config(tmp_path, openmoji_shards, tokenizer_ckpt)
    ema = {
        "class_path": "lightning.pytorch.callbacks.EMAWeightAveraging",
        "init_args": {"use_buffers": False},
    }
    run = train.generator(["fit", "-c", str(config), "--trainer.callbacks+", json.dumps(ema)])
    logged = run.trainer.logged_metrics
    assert run.trainer.global_step == 4
    assert torch.isfinite(logged["train/loss"]) and 0 < float(logged["train/loss"]) < 1.0
    assert "val/loss" in logged and "val/bit_acc_scale_4" in logged and "train/flip_prob" in logged

    ckpt_path = Path(run.trainer.checkpoint_callback.last_model_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert all(k.startswith("transformer.") for k in ckpt["state_dict"])
    assert "current_model_state" in ckpt  # the EMA callback kept the raw weights beside the averaged ones
    assert ckpt["hyper_parameters"]["tokenizer_checkpoint"] == str(tokenizer_ckpt)

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


def test_training_steps_keep_frozen_stages_in_eval(tmp_path, openmoji_shards, tokenizer_ckpt):
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
        str(tokenizer_ckpt),
        transformer=TransformerConfig(**TINY),
        text_max_length=16,
        warmup_steps=1,
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


def test_recipe_yaml_parses(tmp_path):
    from infinity_lit.cli import train

    recipe = REPO / "experiments" / "generator" / "openmoji64.yaml"
    if not recipe.is_file():
        pytest.skip("recipe not written yet")
    with pytest.raises(SystemExit) as exit_info:
        train.generator(["fit", "-c", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)

"""Bitwise tokenizer: network shapes, size errors, the generator interface, losses, training and the CLI."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from infinity_lit.quantizer import schedule_for_latent, square_schedule
from infinity_lit.tokenizer import (
    BitwiseTokenizer,
    Decoder,
    Encoder,
    PatchDiscriminator,
    TokenizerConfig,
    load_tokenizer,
)
from infinity_lit.tokenizer.losses import LPIPS, LeCamEMA, hinge_d_loss, hinge_g_loss

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "experiments" / "tokenizer" / "openmoji64.yaml"

#: A tokenizer small enough for CPU tests: stride 8, 32² images → 4×4 latent, 3 scales.
TINY = dict(
    base_channels=8,
    num_groups=4,
    channel_multipliers=[1, 2, 2, 2],
    num_res_blocks=1,
    scale_schedule=[[1, 1], [2, 2], [4, 4]],
    codebook_dim=8,
)
TINY_ARGS = [f"--model.tokenizer.{k}={v}" for k, v in TINY.items()]


def _images(b=2, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


def _tiny(**overrides) -> BitwiseTokenizer:
    torch.manual_seed(0)
    return BitwiseTokenizer(TokenizerConfig(**{**TINY, **overrides}))


# ---------------------------------------------------------------- networks


def test_network_modules_do_not_import_lightning():
    code = (
        "import sys, infinity_lit.tokenizer, infinity_lit.tokenizer.losses; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("mults, stride", [([1, 2, 2, 4], 8), ([1, 1, 2, 2, 4], 16)])
def test_encoder_decoder_shapes(mults, stride):
    enc = Encoder(
        12, base_channels=8, channel_multipliers=mults, num_res_blocks=1, num_groups=4, attention=True
    )
    dec = Decoder(
        12, base_channels=8, channel_multipliers=mults, num_res_blocks=1, num_groups=4, attention=True
    )
    assert enc.stride == dec.stride == stride
    x = _images(h=2 * stride, w=3 * stride)
    z = enc(x)
    assert z.shape == (2, 12, 2, 3)
    y = dec(z)
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1


def test_decoder_straight_through_clamp_keeps_gradients():
    dec = Decoder(4, base_channels=8, channel_multipliers=[1, 2], num_res_blocks=1, num_groups=4)
    with torch.no_grad():
        dec.conv_out.bias.fill_(5.0)  # every pixel far above 1 before the clamp
    z = torch.randn(1, 4, 4, 4, requires_grad=True)
    y = dec(z)
    assert torch.equal(y, torch.ones_like(y))
    y.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0, "a hard clamp would stop this gradient"


def test_bad_channel_multipliers_and_groups_are_clear_errors():
    with pytest.raises(ValueError, match="channel_multipliers"):
        Encoder(4, channel_multipliers=[])
    with pytest.raises(ValueError, match="num_groups"):
        Encoder(4, base_channels=10, num_groups=4)


def test_patch_discriminator_shape():
    d = PatchDiscriminator(base_channels=8, num_layers=3)
    assert d(_images(h=64, w=64)).shape == (2, 1, 6, 6)  # 64 → 32 → 16 → 8 → 7 → 6


# ---------------------------------------------------------------- tokenizer interface


def test_tokenizer_attributes():
    t = _tiny()
    assert t.codebook_dim == 8 and t.stride == 8
    assert t.scale_schedule == [(1, 1), (2, 2), (4, 4)]
    assert t.config.image_size == (32, 32)
    assert t.quantizer.codebook_dim == 8


def test_image_size_not_divisible_by_stride_is_a_clear_error():
    t = _tiny()
    with pytest.raises(ValueError, match=r"30×32 is not divisible by the tokenizer stride 8"):
        t(_images(h=30, w=32))
    with pytest.raises(ValueError, match="not divisible"):
        t.encode(_images(h=32, w=36))


def test_image_size_not_matching_schedule_is_a_clear_error():
    t = _tiny()
    with pytest.raises(ValueError, match=r"latent grid 6×6 .* ends at 4×4; use images of 32×32"):
        t(_images(h=48, w=48))
    with pytest.raises(ValueError, match="ends at"):
        t.img_to_bits(_images(h=48, w=48))


def test_non_square_image_with_aspect_ratio_schedule():
    t = _tiny(channel_multipliers=[1, 1, 2, 2, 2], scale_schedule=square_schedule(4)).eval()
    assert t.stride == 16
    schedule = schedule_for_latent((16, 32))
    x = _images(b=1, h=256, w=512)
    recon, out = t(x, scale_schedule=schedule)
    assert recon.shape == (1, 3, 256, 512)
    assert [b.shape[1] for b in out.bits] == [h * w for h, w in schedule]
    bits = t.img_to_bits(x, scale_schedule=schedule)
    assert t.bits_to_img(bits, scale_schedule=schedule).shape == (1, 3, 256, 512)
    with pytest.raises(ValueError, match="ends at"):
        t(x)  # the default square schedule does not fit a 16×32 latent


def test_img_to_bits_and_bits_to_img_match_forward():
    t = _tiny().eval()
    x = _images(b=3)
    with torch.no_grad():
        recon, out = t(x)
    bits = t.img_to_bits(x)
    assert len(bits) == 3
    for b, ref, (h, w) in zip(bits, out.bits, t.scale_schedule):
        assert b.dtype == torch.int64 and b.shape == (3, h * w, 8)
        assert torch.equal(b, ref)
    with torch.no_grad():
        torch.testing.assert_close(t.bits_to_img(bits), recon, atol=1e-4, rtol=0)
        # F̂ from the bits is the sum of the up-sampled ±1/√d codes, which forward's F̂ equals up to rounding.
        torch.testing.assert_close(t.bits_to_quantized(bits), out.quantized, atol=1e-5, rtol=0)


def test_progressive_reconstruction_matches_prefix_of_bits():
    t = _tiny().eval()
    x = _images()
    bits = t.img_to_bits(x)
    with torch.no_grad():
        for k in (1, 2, 3):
            torch.testing.assert_close(
                t.reconstruct(x, num_scales=k), t.bits_to_img(bits[:k]), atol=1e-4, rtol=0
            )
        assert not torch.allclose(t.reconstruct(x, num_scales=1), t.reconstruct(x, num_scales=3))
    with pytest.raises(ValueError, match="num_scales"):
        t.reconstruct(x, num_scales=4)


def test_tokenizer_config_round_trip_and_unknown_keys():
    cfg = TokenizerConfig(**TINY)
    assert TokenizerConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["scale_schedule"] == [[1, 1], [2, 2], [4, 4]]
    with pytest.raises(ValueError, match="unknown tokenizer config keys"):
        TokenizerConfig.from_dict({**cfg.to_dict(), "codebook_size": 4})


# ---------------------------------------------------------------- losses


def test_hinge_losses_hand_values():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x) = 0, 0.5, 2 → mean 5/6
    fake = torch.tensor([-2.0, 0.0])  # relu(1 + x) = 0, 1 → mean 1/2
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (5 / 6 + 0.5)))
    torch.testing.assert_close(hinge_g_loss(fake), torch.tensor(1.0))


def test_lecam_hand_values():
    lecam = LeCamEMA(decay=0.5)
    lecam.update(torch.tensor([1.0, 3.0]), torch.tensor([-2.0]))  # α_R = 0.5·0 + 0.5·2 = 1, α_F = −1
    torch.testing.assert_close(lecam.ema_real, torch.tensor(1.0))
    torch.testing.assert_close(lecam.ema_fake, torch.tensor(-1.0))
    real, fake = torch.tensor([0.0, -2.0]), torch.tensor([0.5, 3.0])
    # relu(real − α_F)² = [1, 0] → 0.5; relu(α_R − fake)² = [0.25, 0] → 0.125
    torch.testing.assert_close(lecam(real, fake), torch.tensor(0.625))


def _reference_lpips(state: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS written out on torchvision's full vgg16, independently of the module under test."""
    from torchvision.models import vgg16

    vgg = vgg16(weights=None).features.eval()
    vgg.load_state_dict(
        {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("net.slice")}, strict=True
    )
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    taps = {3: 0, 8: 1, 15: 2, 22: 3, 29: 4}  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3

    def feats(img):
        out, h = [], (img - shift) / scale
        for i, layer in enumerate(vgg[:30]):
            h = layer(h)
            if i in taps:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = torch.zeros(x.shape[0])
    for n, (a, b) in enumerate(zip(feats(x), feats(y))):
        w = state[f"lin{n}.model.1.weight"]
        total += F.conv2d((a - b) ** 2, w).mean(dim=(1, 2, 3))
    return total


def test_lpips_loads_local_weights_and_matches_reference(tmp_path):
    torch.manual_seed(0)
    source = LPIPS()
    with torch.no_grad():
        for n in range(5):
            getattr(source, f"lin{n}").model[1].weight.uniform_(0, 1)
    state = source.state_dict()
    torch.save(state, tmp_path / "lpips_full.pth")
    model = LPIPS.from_weights(tmp_path / "lpips_full.pth")
    x, y = _images(h=32, w=32, seed=1), _images(h=32, w=32, seed=2)
    with torch.no_grad():
        d = model(x, y)
        torch.testing.assert_close(d, _reference_lpips(state, x, y), rtol=1e-4, atol=1e-6)
        assert (d > 0).all()
        torch.testing.assert_close(model(x, x), torch.zeros(2))
    assert not any(p.requires_grad for p in model.parameters())

    # The lpips package's split layout: linear layers in one file, torchvision vgg16 in another.
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, tmp_path / "lin.pth")
    vgg = {f"features.{k.split('.', 2)[2]}": v for k, v in state.items() if k.startswith("net.slice")}
    torch.save(vgg, tmp_path / "vgg16.pth")
    split = LPIPS.from_weights(tmp_path / "lin.pth", vgg_path=tmp_path / "vgg16.pth")
    with torch.no_grad():
        torch.testing.assert_close(split(x, y), d)
    with pytest.raises(ValueError, match="vgg_path"):
        LPIPS.from_weights(tmp_path / "lin.pth")


def test_lpips_missing_path_is_a_clear_error(tmp_path):
    from infinity_lit.tokenizer.module import TokenizerModule

    with pytest.raises(FileNotFoundError, match=r"no file at .*nothing is downloaded"):
        TokenizerModule(TokenizerConfig(**TINY), lpips_weights=str(tmp_path / "missing.pth"))


def test_lpips_off_is_logged_once(caplog):
    from infinity_lit.tokenizer.module import TokenizerModule

    with caplog.at_level(logging.WARNING, logger="infinity_lit.tokenizer.module"):
        module = TokenizerModule(TokenizerConfig(**TINY), perceptual_weight=1.0, gan_weight=0.0)
    messages = [r.getMessage() for r in caplog.records if "perceptual (LPIPS) loss is off" in r.getMessage()]
    assert len(messages) == 1
    assert module.perceptual is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="infinity_lit.tokenizer.module"):
        TokenizerModule(TokenizerConfig(**TINY), perceptual_weight=0.0, gan_weight=0.0)
    assert not [r for r in caplog.records if "LPIPS" in r.getMessage()], "an explicit 0 weight is silent"


# ---------------------------------------------------------------- training (Lightning)


def _trainer(tmp_path, max_steps, **kwargs):
    import lightning.pytorch as pl

    return pl.Trainer(
        max_steps=max_steps,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _datamodule(shards, batch_size=4, path_type=str):
    from infinity_lit.data import ShardDataModule

    return ShardDataModule(
        path_type(shards), resolution=32, batch_size=batch_size, num_workers=0, shuffle_buffer=16
    )


def test_manual_optimisation_with_discriminator(openmoji_shards, tmp_path):
    from infinity_lit.tokenizer.module import TokenizerModule

    torch.manual_seed(0)
    module = TokenizerModule(
        TokenizerConfig(**TINY),
        perceptual_weight=0.0,
        gan_weight=0.5,
        lecam_weight=0.1,
        disc_start_step=1,
        disc_base_channels=8,
        optimizer={"learning_rate": 1e-3},
        disc_learning_rate=1e-3,
        grad_clip_norm=1.0,
    )
    tok0 = {k: v.clone() for k, v in module.tokenizer.state_dict().items()}
    disc0 = {k: v.clone() for k, v in module.discriminator.state_dict().items()}
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(module, datamodule=_datamodule(openmoji_shards))
    # global_step counts training batches, not the two optimisers' steps.
    assert trainer.global_step == 3
    m = trainer.callback_metrics
    for key in ("train/l1", "train/gan_g", "train/disc", "train/lecam", "train/commit", "train/loss"):
        assert key in m and torch.isfinite(m[key]), key
    assert any(not torch.equal(v, tok0[k]) for k, v in module.tokenizer.state_dict().items())
    assert any(not torch.equal(v, disc0[k]) for k, v in module.discriminator.state_dict().items())
    assert module.lecam.ema_real != 0


def test_discriminator_waits_for_disc_start_step(openmoji_shards, tmp_path):
    from infinity_lit.tokenizer.module import TokenizerModule

    module = TokenizerModule(
        TokenizerConfig(**TINY),
        perceptual_weight=0.0,
        gan_weight=0.5,
        disc_start_step=100,
        disc_base_channels=8,
    )
    disc0 = {k: v.clone() for k, v in module.discriminator.state_dict().items()}
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=_datamodule(openmoji_shards))
    assert all(torch.equal(v, disc0[k]) for k, v in module.discriminator.state_dict().items())
    assert "train/disc" not in trainer.callback_metrics


def test_load_tokenizer_round_trip_with_ema(openmoji_shards, tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

    from infinity_lit.tokenizer.module import TokenizerModule

    torch.manual_seed(0)
    module = TokenizerModule(
        TokenizerConfig(**TINY), perceptual_weight=0.0, gan_weight=0.0, optimizer={"learning_rate": 1e-2}
    )
    callbacks = [
        EMAWeightAveraging(decay=0.5, use_buffers=False),
        ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True),
    ]
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=1, callbacks=callbacks)
    # A Path among the data module's hyper-parameters must not stop load_tokenizer's weights-only load.
    trainer.fit(module, datamodule=_datamodule(openmoji_shards, path_type=Path))
    ckpt = tmp_path / "ckpt" / "last.ckpt"  # written during fit, by a Trainer

    loaded = load_tokenizer(ckpt)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.config == module.config
    x = _images(b=2)
    module.tokenizer.eval()
    with torch.no_grad():
        # After fit the module holds the EMA weights, which are the checkpoint's state_dict.
        assert torch.equal(loaded(x)[0], module.tokenizer(x)[0])
        for a, b in zip(loaded.img_to_bits(x), module.tokenizer.img_to_bits(x)):
            assert torch.equal(a, b)
    raw = load_tokenizer(ckpt, use_ema=False)
    differs = [not torch.equal(a, b) for a, b in zip(raw.state_dict().values(), loaded.state_dict().values())]
    assert any(differs), "the raw weights of a 2-step run with EMA decay 0.5 differ from the average"


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer checkpoint .*infinity-lit tokenizer fit"):
        load_tokenizer(tmp_path / "nope.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"lr": 1.0}}, other)
    with pytest.raises(ValueError, match="not a tokenizer checkpoint"):
        load_tokenizer(other)


# ---------------------------------------------------------------- CLI


def _cli(args):
    from infinity_lit.cli import main

    return main(["tokenizer", *args])


def test_cli_fit_on_real_shards_then_validate(openmoji_shards, tmp_path):
    common = [
        "--data.class_path=infinity_lit.data.ShardDataModule",
        f"--data.init_args.data_dir={openmoji_shards}",
        "--data.init_args.resolution=32",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--model.gan_weight=0.0",
        "--model.perceptual_weight=0.0",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.logger.init_args.name=tiny",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *TINY_ARGS,
    ]
    fit = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1"]
    _cli(["fit", *common, *fit, "--trainer.limit_val_batches=1"])
    run = tmp_path / "tiny"  # runs/<model>/<name>/: no version level
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and (run / "config.yaml").is_file()
    assert torch.load(last, weights_only=True)["global_step"] == 2
    tok = load_tokenizer(last)
    assert tok.codebook_dim == 8 and tok.scale_schedule == [(1, 1), (2, 2), (4, 4)]
    scalars = _scalar_tags(run)
    for tag in (
        "train/l1",
        "val/psnr",
        "val/ssim",
        "val/psnr_scale_1",
        "val/psnr_scale_3",
        "val/bit_entropy_mean",
    ):
        assert tag in scalars, tag
    assert "data/skipped_samples" in scalars

    # HParams tab: one session with the run's hyper-parameters, and no 'hp_metric' experiment summary
    # that would hide the final metrics.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" not in content
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["tokenizer/codebook_dim"].number_value == 8
    assert "hp_metric" not in scalars

    _cli(["validate", *common, f"--ckpt_path={last}", "--trainer.limit_val_batches=1"])
    # validate logs beside the fit, in its own sub-folder, and leaves the fit's config.yaml alone
    assert "val/psnr" in _scalar_tags(tmp_path / "tiny" / "validate")
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"] == 2


def _scalar_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_cli_resolution_that_does_not_fit_the_tokenizer_fails_at_setup(openmoji_shards, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli(
            [
                "fit",
                "-c",
                str(RECIPE),
                f"--data.init_args.data_dir={openmoji_shards}",
                "--data.init_args.resolution=32",
                "--data.init_args.num_workers=0",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
                "--trainer.max_steps=1",
            ]
        )
    # A user error: one line on stderr (after Lightning's set-up lines), no traceback.
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.fullmatch(
        r"error: data resolution 32×32 gives a 4×4 latent grid .* ends at 8×8; .*",
        err.strip().splitlines()[-1],
    )


def test_cli_print_config_of_the_recipe(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli(["fit", "-c", str(RECIPE), "--model.optimizer.learning_rate=0.001", "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: infinity_lit.data.ShardDataModule" in out
    assert "learning_rate: 0.001" in out
    # The recipe names no precision: the machine's default (bf16-mixed where bf16 is fast, else 32-true).
    from infinity_lit.precision import default_training_precision

    assert f"precision: {default_training_precision()}" in out
    import yaml

    config = yaml.safe_load(out)
    assert config["model"]["optimizer"]["learning_rate"] == 0.001
    # The recipe's other optimiser keys, and the tokenizer's own default for the one it leaves out.
    assert (
        config["model"]["optimizer"]["warmup_steps"] == 50
        and config["model"]["optimizer"]["weight_decay"] == 0.0
    )
    assert config["model"]["tokenizer"]["scale_schedule"] == [[1, 1], [2, 2], [4, 4], [6, 6], [8, 8]]
    assert config["model"]["tokenizer"]["codebook_dim"] == 16


def test_cli_stacked_configs(tmp_path, capsys):
    delta = tmp_path / "delta.yaml"
    delta.write_text("model:\n  tokenizer:\n    codebook_dim: 32\n")
    with pytest.raises(SystemExit):
        _cli(["fit", "-c", str(RECIPE), "-c", str(delta), "--print_config"])
    import yaml

    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["tokenizer"]["codebook_dim"] == 32
    recipe = yaml.safe_load(RECIPE.read_text())
    # The delta changes one value and keeps the rest of the base.
    assert config["model"]["tokenizer"]["base_channels"] == recipe["model"]["tokenizer"]["base_channels"]
    assert config["model"]["optimizer"]["learning_rate"] == recipe["model"]["optimizer"]["learning_rate"]


def test_recipe_tokenizer_matches_its_schedule():
    import yaml

    recipe = yaml.safe_load(RECIPE.read_text())
    cfg = TokenizerConfig(**recipe["model"]["tokenizer"])
    assert cfg.stride == 8
    assert cfg.scale_schedule == square_schedule(8)
    assert cfg.image_size == (recipe["data"]["init_args"]["resolution"],) * 2


def test_optimisers_follow_the_optimizer_config():
    from infinity_lit.tokenizer.module import TOKENIZER_OPTIMIZER, TokenizerModule
    from infinity_lit.training.schedules import lr_factor

    module = TokenizerModule(
        TokenizerConfig(**TINY),
        perceptual_weight=0.0,
        gan_weight=0.5,
        disc_base_channels=8,
        optimizer={"learning_rate": 2e-3, "warmup_steps": 10, "lr_schedule": "cosine", "decay_steps": 110},
        disc_learning_rate=5e-4,
    )
    # A mapping is completed from the tokenizer's own defaults, and stored as plain types.
    assert module.hparams["optimizer"] == {
        **TOKENIZER_OPTIMIZER.to_dict(),
        "learning_rate": 2e-3,
        "warmup_steps": 10,
        "lr_schedule": "cosine",
        "decay_steps": 110,
    }
    assert module.hparams["optimizer"]["betas"] == [0.5, 0.9]
    (opt_g, opt_d), (sched_g, sched_d) = module.configure_optimizers()
    assert {id(p) for p in opt_g.param_groups[0]["params"]} == {id(p) for p in module.tokenizer.parameters()}
    assert {id(p) for p in opt_d.param_groups[0]["params"]} == {
        id(p) for p in module.discriminator.parameters()
    }
    assert opt_g.defaults["lr"] == 2e-3 and opt_d.defaults["lr"] == 5e-4
    assert opt_g.defaults["betas"] == opt_d.defaults["betas"] == (0.5, 0.9)
    for sched in (sched_g, sched_d):
        for step in (0, 9, 10, 60, 110, 500):
            assert sched.lr_lambdas[0](step) == lr_factor(step, 10, 110, 0.1)


def test_cosine_schedule_needs_max_steps(openmoji_shards, tmp_path):
    from infinity_lit.tokenizer.module import TokenizerModule

    module = TokenizerModule(
        TokenizerConfig(**TINY), perceptual_weight=0.0, gan_weight=0.0, optimizer={"lr_schedule": "cosine"}
    )
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        max_time="00:00:00:05", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    with pytest.raises(ValueError, match=r"trainer\.max_steps"):
        trainer.fit(module, datamodule=_datamodule(openmoji_shards))


def test_cosine_schedule_decays_over_max_steps(openmoji_shards, tmp_path):
    import lightning.pytorch as pl

    from infinity_lit.tokenizer.module import TokenizerModule

    optimizer = {"learning_rate": 1e-3, "warmup_steps": 1, "lr_schedule": "cosine", "min_lr_ratio": 0.2}
    module = TokenizerModule(
        TokenizerConfig(**TINY), perceptual_weight=0.0, gan_weight=0.0, optimizer=optimizer
    )
    lrs = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(pl_module.optimizers().param_groups[0]["lr"])

    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[Probe()])
    trainer.fit(module, datamodule=_datamodule(openmoji_shards))
    # No decay_steps: the horizon is trainer.max_steps = 3. Steps 0, 1, 2: warm-up 1/1, then progress 1/2.
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3 * (0.2 + 0.8 * 0.5)])
    assert module.lr_schedulers().get_last_lr()[0] == pytest.approx(1e-3 * 0.2)  # at the horizon


def test_lpips_is_saved_by_reference_not_by_value(openmoji_shards, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from infinity_lit.tokenizer.module import TokenizerModule

    weights = tmp_path / "lpips.pth"
    torch.manual_seed(0)
    torch.save(LPIPS().state_dict(), weights)
    module = TokenizerModule(
        TokenizerConfig(**TINY), perceptual_weight=0.5, lpips_weights=str(weights), gan_weight=0.0
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[checkpoint])
    trainer.fit(module, datamodule=_datamodule(openmoji_shards))
    assert "train/perceptual" in trainer.callback_metrics
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if k.startswith("perceptual.")]
    assert ckpt["hyper_parameters"]["lpips_weights"] == str(weights)
    restored = TokenizerModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    for k, v in module.perceptual.state_dict().items():
        assert torch.equal(restored.perceptual.state_dict()[k], v)
    for k, v in module.tokenizer.state_dict().items():
        assert torch.equal(restored.tokenizer.state_dict()[k], v)

"""The inference precisions: the device check, weights cast once and restored, and the bf16 path against the
fp32 reference on a tokenizer and a generator trained here on real OpenMoji images."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from torch import nn

from infinity_lit import precision as prec
from infinity_lit.generator.sampling import sample
from infinity_lit.generator.self_correction import BitwiseSelfCorrection
from infinity_lit.generator.text_encoders import TextFeatures
from infinity_lit.generator.transformer import BitwiseTransformer, TransformerConfig
from infinity_lit.metrics.reconstruction import psnr
from infinity_lit.tokenizer import BitwiseTokenizer, TokenizerConfig


def test_resolve_precision(monkeypatch):
    assert prec.resolve_precision("fp32", "cpu") == (torch.float32, False)
    assert prec.resolve_precision("bf16", "cpu") == (torch.bfloat16, True)
    monkeypatch.setattr(prec, "bf16_is_fast", lambda device: True)
    assert prec.resolve_precision("auto", "cpu") == (torch.bfloat16, True)
    assert prec.describe_precision("auto", "cpu") == "bf16+channels_last"
    monkeypatch.setattr(prec, "bf16_is_fast", lambda device: False)
    assert prec.resolve_precision("auto", "cpu") == (torch.float32, False)  # the plain fp32 path
    assert prec.describe_precision("auto", "cpu") == "fp32"
    assert prec.describe_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        prec.resolve_precision("fp16", "cpu")


def test_bf16_is_fast_follows_the_cpus_amx(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True}, raising=False)
    assert prec.bf16_is_fast("cpu")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": True})
    assert not prec.bf16_is_fast("cpu")


@pytest.mark.parametrize("fast", [True, False])
def test_a_fit_whose_config_names_no_precision_trains_in_the_fast_one(monkeypatch, capsys, fast):
    """The OpenMoji recipes name no trainer.precision: bf16-mixed where bf16 is fast, 32-true elsewhere; a
    precision given on the command line (or in a config) is kept either way."""
    from infinity_lit.cli import main
    from infinity_lit.recipes import recipe_path

    monkeypatch.setattr(prec, "bf16_is_fast", lambda device: fast)
    assert prec.default_training_precision() == ("bf16-mixed" if fast else "32-true")
    recipes = ("tokenizer/openmoji64.yaml", "generator/openmoji64.yaml")
    for model, recipe in zip(("tokenizer", "generator"), recipes, strict=True):
        for extra, expected in (
            ([], "bf16-mixed" if fast else "32-true"),
            (["--trainer.precision", "16-mixed"], "16-mixed"),
        ):
            with pytest.raises(SystemExit):
                main([model, "fit", "-c", str(recipe_path(recipe)), *extra, "--print_config"])
            config = yaml.safe_load(capsys.readouterr().out)
            assert config["trainer"]["precision"] == expected, (model, extra)


def test_weights_are_cast_inside_and_restored_after_also_on_error():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Flatten(), nn.LazyLinear(4))
    net(torch.randn(1, 3, 6, 6))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    objects = {n: p for n, p in net.named_parameters()}
    with prec.inference_precision([net], "bf16") as dtype:
        assert dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        assert net[0].weight.dtype == torch.bfloat16 and net[3].weight.dtype == torch.bfloat16
        assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert net[1].weight.dtype == torch.float32  # norms stay fp32, as under autocast
        assert net(torch.randn(1, 3, 6, 6)).dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match="inside"):
        with prec.inference_precision([net], "bf16"):
            raise RuntimeError("inside")
    assert not torch.is_autocast_enabled("cpu")
    for n, p in net.named_parameters():
        assert (
            p is objects[n] and p.dtype == torch.float32 and torch.equal(p, before[n]) and p.is_contiguous()
        )
    with prec.inference_precision([net], "fp32") as dtype:  # the reference path changes nothing
        assert dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
        assert net[0].weight.is_contiguous() and net[0].weight.dtype == torch.float32


# ---------------------------------------------------------------- trained models

SCHEDULE = [(1, 1), (2, 2), (3, 3), (4, 4)]
D = 8


class _FixedText:
    """Text features from a fixed random table per caption (stands in for the frozen text encoder)."""

    dim = 16

    def __init__(self, captions: list[str]) -> None:
        g = torch.Generator().manual_seed(3)
        self.table = {c: torch.randn(4, self.dim, generator=g) for c in captions}

    def __call__(self, captions: list[str]) -> TextFeatures:
        tokens = torch.stack([self.table[c] for c in captions])
        return TextFeatures(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool), tokens.mean(1))


@pytest.fixture(scope="module")
def trained(render_emoji):
    """A tokenizer and a generator trained briefly here on 16 real OpenMoji emoji at 32² (pure torch)."""
    torch.manual_seed(0)
    chars = "😀😂🍎🍕🚀🌞❤🐱🐶🌲🚗🎈⭐🍩🎸🌈"
    images = render_emoji(chars, size=32).float() / 127.5 - 1.0
    captions = [f"emoji {i}" for i in range(len(chars))]
    tok = BitwiseTokenizer(
        TokenizerConfig(
            codebook_dim=D,
            scale_schedule=[list(hw) for hw in SCHEDULE],
            base_channels=16,
            channel_multipliers=[1, 2, 2, 2],
            num_res_blocks=1,
            num_groups=4,
        )
    )
    opt = torch.optim.Adam(tok.parameters(), lr=2e-3)
    for _ in range(250):
        recon, q = tok(images)
        loss = (recon - images).abs().mean() + q.commit_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval().requires_grad_(False)
    text = _FixedText(captions)
    model = BitwiseTransformer(
        TransformerConfig(depth=2, width=64, num_heads=4).complete(D, SCHEDULE, text.dim)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    with torch.no_grad():
        teacher = BitwiseSelfCorrection(tok.quantizer, 0.0)(tok.encode(images))
    for _ in range(150):
        loss = model.loss(model(teacher.inputs, text(captions)), teacher.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    return tok, model, text, images, captions, loss.item()


def test_bf16_reconstruction_of_a_trained_tokenizer_is_within_0_1_db(trained):
    tok, _, _, images, _, _ = trained
    with torch.no_grad():
        recon32, q32 = tok(images)
        with prec.inference_precision([tok.encoder, tok.decoder], "bf16"):
            recon16, q16 = tok(images)
    assert recon16.dtype == torch.bfloat16
    p32 = float(psnr(recon32.clamp(-1, 1), images))
    p16 = float(psnr(recon16.float().clamp(-1, 1), images))
    assert p32 > 15.0  # it did learn (an untrained one scores ~6 dB)
    assert abs(p16 - p32) <= 0.1, (p16, p32)
    # Bits: the trained encoder's latents are off the sign threshold, so bf16 changes few of them.
    agreement = [float((a == b).float().mean()) for a, b in zip(q32.bits, q16.bits)]
    assert min(agreement) >= 0.97, agreement


def test_bf16_sampling_of_a_trained_generator_agrees_with_fp32(trained):
    tok, model, text, _, captions, final_loss = trained
    assert final_loss < 0.5 * math.log(2)  # well below chance (ln 2 nats per bit): it learned the bits
    kwargs = dict(cfg=2.0, seed=0)
    ref = sample(model, tok, text, captions, precision="fp32", **kwargs)
    auto = sample(model, tok, text, captions, precision="auto", **kwargs)
    fast = sample(model, tok, text, captions, precision="bf16", **kwargs)
    assert ref.images.dtype == fast.images.dtype == torch.float32
    # auto: fp32 here or bf16 on a machine with fast bf16; either way close to the reference
    agreement = [float((a == b).float().mean()) for a, b in zip(ref.bits, fast.bits)]
    assert agreement[0] >= 0.95 and sum(agreement) / len(agreement) >= 0.9, agreement
    for out in (auto, fast):
        # images agree in the mean colour per image (a flipped bit moves a few pixels, not the picture)
        assert (out.images.mean((2, 3)) - ref.images.mean((2, 3))).abs().max() < 0.1
    # and the weights are fp32 again afterwards: a second fp32 call gives the reference bits exactly
    again = sample(model, tok, text, captions, precision="fp32", **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(ref.bits, again.bits))


def test_eval_sample_records_its_precision_and_refuses_to_mix(tmp_path, tiny_generator_ckpt):
    from infinity_lit.evaluation.images import read_metadata
    from infinity_lit.evaluation.sampling import sample_checkpoint

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red apple\ncat face\nrocket\n", encoding="utf-8")
    out = tmp_path / "samples"
    done = sample_checkpoint(tiny_generator_ckpt, out, prompts=prompts, batch_size=2, precision="bf16")
    assert done["written"] == 3
    assert {rec["precision"] for rec in read_metadata(out)} == {"bf16+channels_last"}
    with pytest.raises(ValueError, match="precision"):  # a folder is not finished in other arithmetic
        sample_checkpoint(tiny_generator_ckpt, out, prompts=prompts, num_images=3, precision="fp32")
    ref = tmp_path / "ref"
    sample_checkpoint(tiny_generator_ckpt, ref, prompts=prompts, precision="fp32")
    assert {rec["precision"] for rec in read_metadata(ref)} == {"fp32"}

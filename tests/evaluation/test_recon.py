"""``evaluation.recon``: per-scale PSNR, SSIM and rFID of a tokenizer over a stream of batches."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_SCHEDULE_ARG, TINY_TOKENIZER_ARGS

from infinity_lit.evaluation.recon import evaluate_reconstruction
from infinity_lit.metrics.reconstruction import psnr, ssim

# ------------------------------------------------------------------------------------------------ reconstruction


def tiny_tokenizer():
    from infinity_lit.tokenizer import BitwiseTokenizer, TokenizerConfig

    torch.manual_seed(0)
    cfg = TokenizerConfig(
        codebook_dim=4,
        scale_schedule=[(1, 1), (2, 2), (4, 4)],
        base_channels=8,
        channel_multipliers=[1, 1, 2, 2],
        num_res_blocks=1,
        num_groups=4,
    )
    return BitwiseTokenizer(cfg).eval()


def test_evaluate_reconstruction_per_scale_matches_reconstruct(inception_weights, render_emoji):
    tok = tiny_tokenizer()
    images = render_emoji("😀🐱🍎🚀🌳", size=32).float() / 127.5 - 1
    batches = [images[:3], images[3:]]
    result = evaluate_reconstruction(tok, batches, inception_weights=inception_weights)
    assert result.num_images == 5 and result.num_scales == 3
    assert sorted(result.psnr_per_scale) == [1, 2, 3]
    for k in (1, 2, 3):
        recon = torch.cat([tok.reconstruct(b, num_scales=k) for b in batches]).clamp(-1, 1)
        assert result.psnr_per_scale[k] == pytest.approx(float(psnr(recon, images)), abs=1e-4)
    assert result.psnr == result.psnr_per_scale[3]
    full = torch.cat([tok.reconstruct(b) for b in batches]).clamp(-1, 1)
    expected_ssim = (float(ssim(full[:3], images[:3])) * 3 + float(ssim(full[3:], images[3:])) * 2) / 5
    assert result.ssim == pytest.approx(expected_ssim, abs=1e-5)
    assert result.rfid is not None and result.rfid > 0
    assert any("fewer than the feature dimension" in w for w in result.warnings)

    only = evaluate_reconstruction(tok, batches, scales=[1], compute_rfid=False)
    assert sorted(only.psnr_per_scale) == [1, 3] and only.rfid is None
    with pytest.raises(ValueError, match=r"scales must be in 1\.\.3"):
        evaluate_reconstruction(tok, batches, scales=[4], compute_rfid=False)


def test_tokenizer_test_and_eval_recon_give_the_same_numbers(openmoji_shards, tmp_path, monkeypatch):
    """One implementation per metric: the module's test (under the recipe's bf16-mixed precision) and
    ``eval recon`` score one checkpoint on one split alike."""
    from pathlib import Path

    from infinity_lit import runs
    from infinity_lit.cli import train
    from infinity_lit.evaluation.recon import reconstruction_record

    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).resolve().parents[2] / "experiments" / "tokenizer" / "openmoji64.yaml"
    common = [
        "-c",
        str(recipe),
        "--run_name=tiny",
        f"--data.init_args.data_dir={openmoji_shards}",
        "--data.init_args.resolution=32",
        "--data.init_args.batch_size=4",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *TINY_TOKENIZER_ARGS,
        TINY_SCHEDULE_ARG,
    ]
    fit = ["--trainer.max_steps=6", "--trainer.max_time=null", "--trainer.val_check_interval=3"]
    train.tokenizer(["fit", *common, *fit, "--trainer.limit_val_batches=1", "--model.num_log_images=0"])
    last = runs.last_checkpoint(tmp_path / "runs" / "tokenizer" / "tiny")
    tested = train.tokenizer(["test", *common, "--ckpt_path", str(last)]).trainer.callback_metrics
    record = reconstruction_record(tokenizer=last, data=openmoji_shards, out=tmp_path / "recon", rfid=False)
    metrics = record["metrics"]
    from infinity_lit.data import read_manifest

    assert record["num_images"] == read_manifest(openmoji_shards)["counts"]["val"]  # the whole split
    assert float(tested["test/psnr"]) == pytest.approx(metrics["psnr"], rel=1e-5, abs=1e-5)
    assert float(tested["test/ssim"]) == pytest.approx(metrics["ssim"], rel=1e-5, abs=1e-5)
    for k, value in metrics["psnr_per_scale"].items():
        assert float(tested[f"test/psnr_scale_{k}"]) == pytest.approx(value, rel=1e-5, abs=1e-5)

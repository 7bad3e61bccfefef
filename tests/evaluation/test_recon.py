"""``evaluation.recon``: per-scale PSNR, SSIM and rFID of a tokenizer over a stream of batches."""

from __future__ import annotations

import pytest
import torch

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

"""Evaluation metrics: FID/KID against independent numpy/scipy references and torch-fidelity, the
offline Inception conversion, CLIP score on a tiny random CLIP, PSNR/SSIM range cases, per-scale PSNR."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from infinity_lit.metrics.fid import check_set_sizes, fid_from_features, fid_kid, kid_from_features
from infinity_lit.metrics.inception import (
    CONVERTED_NAME,
    ENV_CACHE,
    ENV_WEIGHTS,
    inception_features,
    inception_weights_path,
    load_inception,
    load_torchscript_inception,
)
from infinity_lit.metrics.reconstruction import (
    PSNR_CAP_DB,
    psnr,
    psnr_per_image,
    ssim,
    to_uint8,
)

# ------------------------------------------------------------------------------------------------ helpers


def scipy_fid(x: np.ndarray, y: np.ndarray) -> float:
    """Independent FID: Gaussian fits and scipy's matrix square root."""
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def numpy_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Independent unbiased MMD² with the kernel (x·y/d + 1)³ over all samples."""
    d = x.shape[1]
    kxx, kyy, kxy = [((a @ b.T) / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y))]
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Converted Inception weights, written by the default path logic into a temporary cache folder."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_CACHE, str(cache))
        mp.delenv(ENV_WEIGHTS, raising=False)
        path = inception_weights_path()
    assert path == cache / CONVERTED_NAME and path.is_file()
    return path


# ------------------------------------------------------------------------------------------------ FID / KID


@pytest.mark.parametrize("n1,n2", [(200, 1000), (1000, 200), (300, 300)])
def test_fid_matches_scipy_on_gaussian_features(n1, n2):
    g = torch.Generator().manual_seed(n1 + n2)
    x = torch.randn(n1, 64, generator=g, dtype=torch.float64)
    # Different mean and a correlated, scaled covariance.
    mix = torch.eye(64, dtype=torch.float64) + 0.3 * torch.randn(64, 64, generator=g, dtype=torch.float64) / 8
    y = torch.randn(n2, 64, generator=g, dtype=torch.float64) @ mix * 1.2 + 0.25
    ours = fid_from_features(x, y)
    ref = scipy_fid(x.numpy(), y.numpy())
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6)
    assert ours > 1.0  # the sets really differ


def test_fid_of_identical_sets_is_zero():
    x = torch.randn(500, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(fid_from_features(x, x)) < 1e-6
    assert (
        abs(fid_from_features(x, x[torch.randperm(500, generator=torch.Generator().manual_seed(2))])) < 1e-6
    )


def test_kid_matches_numpy_when_subset_is_whole_set():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(150, 16, generator=g, dtype=torch.float64)
    y = torch.randn(150, 16, generator=g, dtype=torch.float64) * 1.1 + 0.1
    # With the subset equal to the whole set every subset is a permutation: the unbiased MMD² is invariant.
    mean, std, size = kid_from_features(x, y, subsets=4, subset_size=1000)
    assert size == 150
    assert mean == pytest.approx(numpy_kid(x.numpy(), y.numpy()), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_set_size_checks():
    with pytest.raises(ValueError, match="at least 2 images"):
        check_set_sizes(1, 10)
    with pytest.raises(ValueError, match="at least 2 images"):
        fid_from_features(torch.randn(1, 8), torch.randn(5, 8))
    warns = check_set_sizes(100, 5000)
    assert len(warns) == 1 and "set 1 has 100 images" in warns[0] and "2048" in warns[0]
    assert check_set_sizes(3000, 2048) == []


# ------------------------------------------------------------------------------------------------ Inception


def test_converted_inception_matches_torchscript(inception_weights):
    model = load_inception(inception_weights)
    reference = load_torchscript_inception()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 299, 299), generator=g, dtype=torch.uint8)
    ours = inception_features(model, x)
    with torch.no_grad():
        ref = reference((x.float() - 128) / 128).double()
    assert ours.shape == (3, 2048)
    assert (ours - ref).abs().max() <= 1e-4
    assert ours.abs().max() > 0.1  # real activations, not zeros
    # No logits in the source: the classifier is NaN, so ISC cannot come out as a plausible number.
    assert torch.isnan(model.fc.weight).all()


def test_inception_rejects_float_images(inception_weights):
    model = load_inception(inception_weights)
    with pytest.raises(ValueError, match="uint8"):
        inception_features(model, torch.zeros(1, 3, 299, 299))


def test_inception_weights_path_prefers_explicit_and_env(tmp_path, monkeypatch, inception_weights):
    monkeypatch.setenv(ENV_WEIGHTS, str(inception_weights))
    assert inception_weights_path() == inception_weights
    with pytest.raises(FileNotFoundError):
        inception_weights_path(tmp_path / "missing.pth")


def test_fid_kid_on_images_equals_torch_fidelity(inception_weights, render_emoji):
    """Our image-level FID/KID equal ``torch_fidelity.calculate_metrics`` with the same weights."""
    import torch_fidelity

    gen = render_emoji("😀🐱🍎🚀🌳", size=64)
    ref = render_emoji("😃🐶🍐🛸🌲", size=64)

    class Images(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = torch_fidelity.calculate_metrics(
            input1=Images(gen),
            input2=Images(ref),
            fid=True,
            kid=True,
            kid_subsets=5,
            kid_subset_size=5,
            cuda=False,
            cache=False,
            save_cpu_ram=True,
            verbose=False,
            feature_extractor_weights_path=str(inception_weights),
        )
    ours = fid_kid([gen[:3], gen[3:]], [ref], weights_path=inception_weights, kid_subsets=5)
    assert ours.fid == pytest.approx(expected["frechet_inception_distance"], rel=1e-4)
    assert ours.kid_mean == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-3, abs=1e-6)
    assert ours.fid > 10  # different emoji
    assert ours.num_images_1 == 5 and any("fewer than the feature dimension" in w for w in ours.warnings)


# ------------------------------------------------------------------------------------------------ CLIP


@pytest.fixture(scope="module")
def tiny_clip_path(tmp_path_factory):
    """A tiny randomly initialised CLIP (ViT, 32 px, width 64), saved as a state dict."""
    from infinity_lit.metrics.clip_score import _import_clip

    clip = _import_clip()
    torch.manual_seed(0)
    model = clip.model.CLIP(
        embed_dim=32,
        image_resolution=32,
        vision_layers=1,
        vision_width=64,
        vision_patch_size=16,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=1,
    )
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path


def test_clip_score_formula_by_hand(tiny_clip_path, render_emoji):
    from infinity_lit.metrics.clip_score import _import_clip, clip_scores, load_clip

    clip = _import_clip()
    model, preprocess = load_clip(tiny_clip_path)
    # At the model's input resolution (32) CLIP's resize and crop are the identity, so the preprocessing
    # is exactly ToTensor + normalisation and can be redone by hand.
    images = render_emoji("😀🐱🍎🚀", size=32)
    captions = ["grinning face", "cat face", "red apple", "rocket"]
    result = clip_scores(model, preprocess, images, captions, batch_size=3)

    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    pixels = (images.float() / 255 - mean) / std
    with torch.no_grad():
        img = model.encode_image(pixels).numpy()
        txt = model.encode_text(clip.tokenize(captions)).numpy()
    cos = (img * txt).sum(1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1)
    np.testing.assert_allclose(result.per_image, 100 * np.maximum(cos, 0), rtol=1e-4, atol=1e-4)
    assert result.score == pytest.approx(float(np.mean(100 * np.maximum(cos, 0))), abs=1e-4)

    # Negating the text projection negates every cosine: exactly one of the two scores of a pair is 0
    # and their sum is 100·|cos| (checks the clamp at 0).
    with torch.no_grad():
        model.text_projection.neg_()
    flipped = clip_scores(model, preprocess, images, captions)
    with torch.no_grad():
        model.text_projection.neg_()
    for a, b in zip(result.per_image, flipped.per_image):
        assert min(a, b) == 0.0
    total = np.array(result.per_image) + np.array(flipped.per_image)
    np.testing.assert_allclose(total, 100 * np.abs(cos), rtol=1e-4, atol=1e-4)
    assert 0 < total.max() <= 100


def test_clip_truncates_long_captions_keeping_end_of_text(tiny_clip_path, render_emoji):
    from infinity_lit.metrics.clip_score import _import_clip, clip_scores, load_clip, tokenize

    clip = _import_clip()
    eot = clip.clip._tokenizer.encoder["<|endoftext|>"]
    long_caption = " ".join(["a small red apple on a wooden table"] * 20)  # ~160 tokens
    with pytest.warns(UserWarning, match="truncated"):
        tokens, truncated = tokenize(["short caption", long_caption])
    assert truncated == [1]
    assert tokens.shape == (2, 77)
    assert tokens[1, -1] == eot and tokens[1].argmax() == 76  # the text feature is read at the EOT slot
    body = clip.clip._tokenizer.encode(long_caption)
    assert tokens[1, 1:76].tolist() == body[:75]

    model, preprocess = load_clip(tiny_clip_path)
    with pytest.warns(UserWarning, match="truncated"):
        result = clip_scores(model, preprocess, render_emoji("🍎🍎", size=32), ["apple", long_caption])
    assert result.truncated == [1] and all(0 <= s <= 100 for s in result.per_image)


def test_clip_weights_resolution(tmp_path, monkeypatch):
    from infinity_lit.metrics.clip_score import ENV_CLIP_WEIGHTS, resolve_clip_weights

    monkeypatch.delenv(ENV_CLIP_WEIGHTS, raising=False)
    assert resolve_clip_weights() is None
    monkeypatch.setenv(ENV_CLIP_WEIGHTS, str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_clip_weights()


# ------------------------------------------------------------------------------------------------ PSNR / SSIM


def test_psnr_uses_data_range_two():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(4, 3, 16, 16, generator=g) * 1.8 - 0.9  # in [-0.9, 0.9]
    pred = target + 0.1  # still in [-1, 1]; MSE = 0.01
    expected = 10 * math.log10(4 / 0.01)  # 26.02 dB
    assert expected == pytest.approx(26.0206, abs=1e-4)
    torch.testing.assert_close(psnr_per_image(pred, target), torch.full((4,), expected), atol=1e-3, rtol=0)
    assert float(psnr(pred, target)) == pytest.approx(expected, abs=1e-3)


def test_psnr_of_identical_images_is_capped_not_nan():
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    per = psnr_per_image(x, x)
    assert torch.isinf(per).all() and not torch.isnan(per).any()
    assert float(psnr(x, x)) == PSNR_CAP_DB
    mixed = torch.cat([x[:1], x[1:] + 0.1])
    assert math.isfinite(float(psnr(mixed, torch.cat([x[:1], x[1:]]))))
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(x + 0.2 * torch.randn_like(x), x)) < 0.95


def test_to_uint8_range():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(x)[0, 0, 0].tolist() == [0, 0, 128, 255, 255]

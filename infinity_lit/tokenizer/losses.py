"""Tokenizer training losses (pure torch): hinge GAN loss, LeCam regularisation, LPIPS perceptual loss.

- Hinge GAN loss (Lim & Ye 2017; used by VQGAN / MAGVIT-v2 / Infinity's tokenizer, arXiv 2412.04431
  §3.1): discriminator ``mean(relu(1 − D(x))) + mean(relu(1 + D(x̂)))``, generator ``−mean(D(x̂))``.
- LeCam regulariser (Tseng et al., CVPR 2021, eq. 3): with exponential moving averages α_R, α_F of
  the discriminator's mean logits on real and fake images,
  ``R = mean(relu(D(x) − α_F)²) + mean(relu(α_R − D(x̂))²)``; it keeps the logits of the two sets close to
  each other's running means and stabilises GAN training with little data.
- LPIPS (Zhang et al., CVPR 2018, "vgg" v0.1): channel-normalised VGG16 features at relu1_2, relu2_2,
  relu3_3, relu4_3, relu5_3, squared differences weighted by learned 1×1 convolutions, spatially
  averaged and summed. The network structure matches the ``lpips`` package's ``LPIPS(net="vgg")`` so that
  its state dict loads; nothing is downloaded: the weights come from a local file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infinity_lit.checkpoints import load_file

# ---------------------------------------------------------------------------------------- GAN


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss ``½·(mean(relu(1 − D(x))) + mean(relu(1 + D(x̂))))``, scalar float32.

    Args:
        logits_real: D(x), any shape, unbounded.
        logits_fake: D(x̂), any shape, unbounded.
    """
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator (tokenizer) hinge loss ``−mean(D(x̂))``, scalar float32."""
    return -logits_fake.float().mean()


class LeCamEMA(nn.Module):
    """LeCam regulariser with running means of the real / fake logits (Tseng et al. 2021, eq. 3).

    Args:
        decay: EMA decay of the running means (reference 0.99).

    The running means are buffers (saved in checkpoints) and are updated by ``update`` with detached
    batch means; the regulariser itself is differentiable in the current logits.
    """

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    @torch.no_grad()
    def update(self, logits_real: Tensor, logits_fake: Tensor) -> None:
        """Fold the batch means of D(x) and D(x̂) into the running means (which start at 0).

        A non-finite batch mean (a step that ``training.finite.NonFiniteGuard`` skips) leaves its running
        mean as it was, without a device sync.
        """
        for ema, logits in ((self.ema_real, logits_real), (self.ema_fake, logits_fake)):
            mean = logits.float().mean()
            ema.copy_(torch.where(torch.isfinite(mean), torch.lerp(ema, mean, 1.0 - self.decay), ema))

    def forward(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        """``mean(relu(D(x) − α_F)²) + mean(relu(α_R − D(x̂))²)``, scalar float32 (≥ 0)."""
        real, fake = logits_real.float(), logits_fake.float()
        return F.relu(real - self.ema_fake).pow(2).mean() + F.relu(self.ema_real - fake).pow(2).mean()


# ---------------------------------------------------------------------------------------- LPIPS

# torchvision's vgg16().features indices that end each LPIPS slice (after relu1_2 … relu5_3).
_VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
_VGG_CHANNELS = (64, 128, 256, 512, 512)


class _ScalingLayer(nn.Module):
    """[-1, 1] images → ImageNet-normalised inputs, with the constants of the ``lpips`` package."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class _VGG16Slices(nn.Module):
    """torchvision VGG16 ``features`` cut into the five LPIPS slices (keys ``sliceN.<index>.*``)."""

    def __init__(self) -> None:
        super().__init__()
        # Only VGG16's convolutional part (configuration "D"), with torchvision's layer indices; the
        # classifier (~120M parameters) is never needed.
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["D"], batch_norm=False)
        for n, (start, stop) in enumerate(_VGG_SLICES, start=1):
            part = nn.Sequential()
            for i in range(start, stop):
                part.add_module(str(i), features[i])
            setattr(self, f"slice{n}", part)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for n in range(1, len(_VGG_SLICES) + 1):
            x = getattr(self, f"slice{n}")(x)
            outs.append(x)
        return outs


class _NetLinLayer(nn.Module):
    """Dropout + 1×1 convolution without bias (``lpips``'s ``NetLinLayer``; key ``model.1.weight``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _normalize_channels(x: Tensor, eps: float = 1e-10) -> Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS perceptual distance (VGG16 variant), always frozen and in eval mode.

    Built with random weights; use ``LPIPS.from_weights`` to load real ones. The state-dict layout is that
    of ``lpips.LPIPS(net="vgg")``: ``scaling_layer.*``, ``net.slice{1..5}.<i>.*`` (VGG16 ``features.<i>``)
    and ``lin{0..4}.model.1.weight``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = _ScalingLayer()
        self.net = _VGG16Slices()
        for n, ch in enumerate(_VGG_CHANNELS):
            setattr(self, f"lin{n}", _NetLinLayer(ch))
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:
        # A frozen metric network: dropout stays off even when the owning module trains.
        return super().train(False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-image LPIPS distance.

        Args:
            pred: (B, 3, H, W) float in [-1, 1].
            target: (B, 3, H, W) float in [-1, 1].

        Returns:
            (B,) float, ≥ 0 (0 for identical images).
        """
        feats_p = self.net(self.scaling_layer(pred))
        feats_t = self.net(self.scaling_layer(target))
        total = 0
        for n, (fp, ft) in enumerate(zip(feats_p, feats_t)):
            diff = (_normalize_channels(fp) - _normalize_channels(ft)).pow(2)
            total = total + getattr(self, f"lin{n}")(diff).mean(dim=(2, 3))  # (B, 1)
        return total.flatten()

    @classmethod
    def from_weights(cls, path: str | Path, vgg_path: str | Path | None = None) -> LPIPS:
        """Load LPIPS from local files (never downloads).

        Args:
            path: a state dict (``torch.save``) of the full network in the ``lpips.LPIPS(net="vgg")``
                layout, or only its linear layers (``lin{0..4}.model.1.weight``, the ``lpips`` package's
                ``weights/v0.1/vgg.pth``), in which case ``vgg_path`` must give the backbone.
            vgg_path: a torchvision ``vgg16`` state dict (``features.<i>.weight`` / ``.bias`` keys).

        Raises:
            FileNotFoundError: a given path does not exist.
            ValueError: a truncated or corrupt file (``infinity_lit.checkpoints.CheckpointError``), a file
                without the linear layers, backbone weights missing from both files, or shapes that do not
                match VGG16-LPIPS.
        """
        model = cls()
        state = dict(_load_state(path, "LPIPS weights"))
        state.pop("scaling_layer.shift", None)
        state.pop("scaling_layer.scale", None)
        lin_keys = {f"lin{n}.model.1.weight" for n in range(len(_VGG_CHANNELS))}
        if not lin_keys <= set(state):
            raise ValueError(
                f"{str(path)!r} does not hold the LPIPS linear layers {sorted(lin_keys)}; pass the lpips "
                "package's vgg.pth or a full LPIPS(net='vgg') state dict"
            )
        has_backbone = any(k.startswith("net.") for k in state)
        if vgg_path is not None:
            vgg = _load_state(vgg_path, "VGG16 weights")
            state = {k: v for k, v in state.items() if not k.startswith("net.")}
            state.update(_vgg_features_to_slices(vgg, vgg_path))
        elif not has_backbone:
            raise ValueError(
                f"{str(path)!r} holds only the LPIPS linear layers; also pass vgg_path, a local torchvision "
                "vgg16 state dict (features.<i>.weight keys)"
            )
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise ValueError(f"LPIPS weights do not fit the VGG16-LPIPS network: {err}") from err
        expected = {k for k in model.state_dict() if not k.startswith("scaling_layer.")}
        missing = sorted(expected - set(state))
        if missing:
            raise ValueError(f"LPIPS weights are missing {len(missing)} entries, e.g. {missing[:3]}")
        return model.eval().requires_grad_(False)


def _load_state(path: str | Path, what: str) -> dict[str, Tensor]:
    hint = (
        "give the path of a local state dict (nothing is downloaded), or leave the path unset to train "
        "without the perceptual loss"
    )
    state = load_file(path, what, missing_hint=hint)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{what}: {str(path)!r} does not hold a state dict")
    return state


def _vgg_features_to_slices(vgg: dict[str, Tensor], path: str | Path) -> dict[str, Tensor]:
    out = {}
    for n, (start, stop) in enumerate(_VGG_SLICES, start=1):
        for i in range(start, stop):
            for p in ("weight", "bias"):
                key = f"features.{i}.{p}"
                if key in vgg:
                    out[f"net.slice{n}.{i}.{p}"] = vgg[key]
    if not out:
        raise ValueError(
            f"{str(path)!r} has no 'features.<i>.weight' entries of a torchvision vgg16 state dict"
        )
    return out

"""CLIP score through the ``clip`` package (clip-anytorch), with CLIP weights from a local file.

CLIP score (Hessel et al. 2021, with the ×100 scale torchmetrics uses): for each image/caption pair
100 · max(cos(E_img(image), E_txt(caption)), 0), averaged over the pairs. Range [0, 100]; higher means the
image matches its caption better under that CLIP model (only scores from the same CLIP weights compare).

Images: uint8 (N, 3, H, W) in [0, 255] or PIL images; each goes through CLIP's own preprocessing
(``clip.load``'s transform: bicubic resize of the shorter side to the model's input resolution, centre
crop, RGB, [0, 1], then normalisation with CLIP's mean/std). Captions: ``clip.tokenize`` with the model's
context length (77 for every released CLIP); a caption longer than the context is truncated by
``clip.tokenize(truncate=True)``, which keeps the first 76 tokens (start-of-text included) and overwrites
the last slot with the end-of-text token, so the text feature (read at the end-of-text position, the
arg-max token id) still exists. Truncation warns; it never raises.

No weights are downloaded: ``--clip_weights PATH`` or env ``INFINITY_LIT_CLIP_WEIGHTS`` names either an
OpenAI CLIP file (a TorchScript archive such as ``ViT-B-32.pt``) or a state dict of ``clip.model.CLIP``
(``build_model`` rebuilds the architecture from the shapes). Without weights the score is reported as
``CLIP_NOT_COMPUTED``, never as a number.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

#: Environment variable naming a local CLIP weights file.
ENV_CLIP_WEIGHTS = "INFINITY_LIT_CLIP_WEIGHTS"
#: What metrics.json and reports say instead of a number when no CLIP weights are configured.
CLIP_NOT_COMPUTED = "not computed (no CLIP weights; set --clip_weights PATH or INFINITY_LIT_CLIP_WEIGHTS)"


def _import_clip():
    with warnings.catch_warnings():
        # clip imports pkg_resources (deprecated in setuptools); harmless with the pinned setuptools < 81.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        import clip
    return clip


def resolve_clip_weights(path: str | Path | None = None) -> Path | None:
    """The CLIP weights file to use: ``path``, else ``$INFINITY_LIT_CLIP_WEIGHTS``, else None.

    Raises:
        FileNotFoundError: the named file does not exist.
    """
    chosen = path if path is not None else os.environ.get(ENV_CLIP_WEIGHTS) or None
    if chosen is None:
        return None
    chosen = Path(chosen).expanduser()
    if not chosen.is_file():
        raise FileNotFoundError(
            f"CLIP weights file {chosen} does not exist (from --clip_weights or ${ENV_CLIP_WEIGHTS})"
        )
    return chosen


def load_clip(path: str | Path, device: str | torch.device = "cpu"):
    """Load a CLIP model and its image preprocessing from a local file.

    Args:
        path: an OpenAI CLIP TorchScript archive or a ``clip.model.CLIP`` state-dict file.
        device: where to put the model (fp32 on CPU, fp16 weights on CUDA as ``clip.load`` does).

    Returns:
        (model in eval mode, preprocess: PIL image → float (3, R, R) normalised tensor).
    """
    clip = _import_clip()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights file {path} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation inside clip.load
        model, preprocess = clip.load(str(path), device=str(device), jit=False)
    return model.eval(), preprocess


def tokenize(captions: Sequence[str], context_length: int = 77) -> tuple[Tensor, list[int]]:
    """CLIP token ids of ``captions``, truncating long ones (end-of-text kept) with a warning.

    Returns:
        (long (N, context_length) token ids, indices of the captions that were truncated).
    """
    clip = _import_clip()
    from clip.clip import _tokenizer

    truncated = [i for i, c in enumerate(captions) if len(_tokenizer.encode(c)) + 2 > context_length]
    if truncated:
        warnings.warn(
            f"{len(truncated)} caption(s) longer than CLIP's {context_length}-token context were truncated "
            f"(end-of-text token kept), e.g. caption {truncated[0]}: {captions[truncated[0]][:80]!r}...",
            stacklevel=2,
        )
    return clip.tokenize(list(captions), context_length=context_length, truncate=True), truncated


def _to_pil(image: Image.Image | Tensor) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"CLIP score expects uint8 (3,H,W) images in [0,255] or PIL images, got {image.dtype} "
            f"{tuple(image.shape)}; convert [-1,1] float images with reconstruction.to_uint8"
        )
    return Image.fromarray(image.permute(1, 2, 0).cpu().numpy())


@dataclass
class ClipScoreResult:
    """Mean CLIP score over the pairs, the per-pair scores and which captions were truncated."""

    score: float
    per_image: list[float]
    truncated: list[int] = field(default_factory=list)


class ClipScorer:
    """Streaming CLIP score: ``update`` with batches of image/caption pairs, then ``compute``.

    Args:
        model: a ``clip.model.CLIP`` (from ``load_clip``).
        preprocess: its image transform (from ``load_clip``).
    """

    def __init__(self, model: torch.nn.Module, preprocess) -> None:
        self.model, self.preprocess = model, preprocess
        self.scores: list[float] = []
        self.truncated: list[int] = []

    @torch.no_grad()
    def update(self, images: Sequence[Image.Image | Tensor] | Tensor, captions: Sequence[str]) -> Tensor:
        """Score one batch of pairs.

        Args:
            images: B images: uint8 (B, 3, H, W) in [0, 255], or a sequence of uint8 (3, H, W) / PIL images.
            captions: B captions, caption i belongs to image i.

        Returns:
            float32 (B,) scores 100 · max(cos, 0) of this batch.

        Raises:
            ValueError: counts differ or an image is not uint8 / PIL.
        """
        if len(images) != len(captions):
            raise ValueError(
                f"CLIP score needs one caption per image, got {len(images)} images, {len(captions)} captions"
            )
        device = next(self.model.parameters()).device
        tokens, truncated = tokenize(captions, context_length=self.model.context_length)
        self.truncated += [len(self.scores) + i for i in truncated]
        pixels = torch.stack([self.preprocess(_to_pil(im)) for im in images]).to(device)
        img = self.model.encode_image(pixels).float()  # (B, E)
        txt = self.model.encode_text(tokens.to(device)).float()  # (B, E)
        scores = 100.0 * torch.nn.functional.cosine_similarity(img, txt, dim=-1).clamp_min(0).cpu()
        self.scores += scores.tolist()
        return scores

    def compute(self) -> ClipScoreResult:
        """Mean over every pair seen so far.

        Raises:
            ValueError: no pairs were given.
        """
        if not self.scores:
            raise ValueError("CLIP score needs at least one image/caption pair")
        return ClipScoreResult(sum(self.scores) / len(self.scores), list(self.scores), list(self.truncated))


def clip_scores(
    model: torch.nn.Module,
    preprocess,
    images: Sequence[Image.Image | Tensor] | Tensor,
    captions: Sequence[str],
    batch_size: int = 64,
) -> ClipScoreResult:
    """CLIP score of image/caption pairs: mean of 100 · max(cos(image, text), 0).

    Args:
        model: a ``clip.model.CLIP`` (from ``load_clip``).
        preprocess: its image transform (from ``load_clip``).
        images: N images: uint8 (N, 3, H, W) in [0, 255], or a sequence of uint8 (3, H, W) / PIL images.
        captions: N captions, caption i belongs to image i.
        batch_size: pairs per forward pass.

    Raises:
        ValueError: counts differ, no pairs, or an image is not uint8 / PIL.
    """
    if len(images) != len(captions):
        raise ValueError(
            f"CLIP score needs one caption per image, got {len(images)} images, {len(captions)} captions"
        )
    scorer = ClipScorer(model, preprocess)
    for start in range(0, len(captions), batch_size):
        scorer.update(images[start : start + batch_size], captions[start : start + batch_size])
    return scorer.compute()

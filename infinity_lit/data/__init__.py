"""Data: captioned image shards (webdataset), their builders, and the DataModule that streams them.

- ``build_openmoji_shards`` / ``build_folder_shards``: write ``train-*.tar``, ``val-*.tar`` and
  ``manifest.json`` (CLI: ``infinity-lit data openmoji|folder``).
- ``ShardDataModule``: Lightning batches ``{"image": (B,3,H,W) float in [-1,1], "caption", "key"}``.
- ``iter_samples`` / ``load_split``: a split in order, for evaluation.
- ``infinity_lit.data.images``: the one image loader (``load_rgb``: any file → RGB uint8 under one colour
  policy), the recursive folder listing (``find_images``) and the report of unreadable files.

``ShardDataModule`` is imported on first use, so the builders and their CLI do not import Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infinity_lit.data.captions import caption_from_cldr_alias, emoji_caption
from infinity_lit.data.folder import build_folder_shards
from infinity_lit.data.openmoji import build_openmoji_shards
from infinity_lit.data.shards import DamagedShardError, iter_samples, load_split, read_manifest, split_of

if TYPE_CHECKING:
    from infinity_lit.data.datamodule import ShardDataModule, ShardDataset

__all__ = [
    "DamagedShardError",
    "ShardDataModule",
    "ShardDataset",
    "build_folder_shards",
    "build_openmoji_shards",
    "caption_from_cldr_alias",
    "emoji_caption",
    "iter_samples",
    "load_split",
    "read_manifest",
    "split_of",
]


def __getattr__(name: str) -> Any:
    if name in ("ShardDataModule", "ShardDataset"):
        from infinity_lit.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

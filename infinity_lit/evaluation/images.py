"""Image sets for evaluation: folders of PNG/JPEG files and webdataset shard splits, as uint8 batches.

Every image leaves this module as uint8 (3, H, W) in [0, 255], RGB, transparency composited onto white
(the shard format's convention, ``infinity_lit.data.shards.to_rgb_on_white``). A sample folder written by
``eval sample`` holds ``NNNNNN.png`` files and ``metadata.jsonl`` (one JSON object per image: ``file``,
``index``, ``prompt`` and the sampling settings).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
METADATA = "metadata.jsonl"


def list_images(folder: str | Path) -> list[Path]:
    """Image files (png/jpg/jpeg/webp) directly inside ``folder``, sorted by name; hidden files skipped.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def read_image(path: str | Path) -> Tensor:
    """An image file → uint8 (3, H, W) in [0, 255], RGB, transparency composited onto white."""
    from infinity_lit.data.shards import to_rgb_on_white

    with Image.open(path) as im:
        im.load()
        rgb = to_rgb_on_white(im)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)


def write_png(image: Tensor, path: str | Path) -> None:
    """Write uint8 (3, H, W) in [0, 255] as an RGB PNG, atomically (temp file, then rename)."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"write_png expects uint8 (3,H,W) in [0,255], got {image.dtype} {tuple(image.shape)}"
        )
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(tmp, format="PNG")
    os.replace(tmp, path)


def batched(images: Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """Stack consecutive uint8 (3, H, W) images into (B, 3, H, W) batches of at most ``batch_size``;
    a change of image size starts a new batch."""
    buf: list[Tensor] = []
    for im in images:
        if buf and (len(buf) == batch_size or im.shape != buf[0].shape):
            yield torch.stack(buf)
            buf = []
        buf.append(im)
    if buf:
        yield torch.stack(buf)


def read_metadata(folder: str | Path) -> list[dict]:
    """The records of ``folder/metadata.jsonl`` (empty list when the file is absent)."""
    path = Path(folder) / METADATA
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _fingerprint(parts: Iterable[str]) -> str:
    digest = hashlib.sha1()
    for p in parts:
        digest.update(p.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def _stat_parts(paths: Iterable[Path]) -> Iterator[str]:
    for p in paths:
        st = p.stat()
        yield f"{p.name}:{st.st_size}:{st.st_mtime_ns}"


@dataclass
class ImageSet:
    """A set of images to score: an image folder or one split of a shard directory.

    Attributes:
        kind: "folder" or "shards".
        path: the folder or shard directory.
        split: the shard split ("train" / "val"); None for folders.
        max_images: read at most this many (None: all).
    """

    kind: str
    path: Path
    split: str | None = None
    max_images: int | None = None

    def __len__(self) -> int:
        if self.kind == "folder":
            n = len(list_images(self.path))
        else:
            from infinity_lit.data.shards import split_shards

            n = sum(count for _, count in split_shards(self.path, self.split))
        return n if self.max_images is None else min(n, self.max_images)

    def iter_items(self) -> Iterator[tuple[str, Tensor, str | None]]:
        """``(key, uint8 (3, H, W) in [0, 255], caption or None)`` in a fixed order (file name / shard order).

        Folder captions come from ``metadata.jsonl`` (``prompt``) when present, else None.
        """
        count = 0
        if self.kind == "folder":
            prompts = {r.get("file"): r.get("prompt") for r in read_metadata(self.path)}
            items = ((p.name, read_image(p), prompts.get(p.name)) for p in list_images(self.path))
        else:
            from infinity_lit.data.shards import image_to_uint8, iter_samples

            items = ((k, image_to_uint8(im), c) for k, im, c in iter_samples(self.path, self.split))
        for item in items:
            if self.max_images is not None and count >= self.max_images:
                return
            count += 1
            yield item

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """uint8 (B, 3, H, W) batches in [0, 255]."""
        return batched((im for _, im, _ in self.iter_items()), batch_size)

    def fingerprint(self) -> str:
        """Changes when the files change (names, sizes, modification times) or the selection does."""
        if self.kind == "folder":
            files = list_images(self.path)
        else:
            from infinity_lit.data.shards import split_shards

            files = [p for p, _ in split_shards(self.path, self.split)]
        head = [self.kind, str(self.path.resolve()), str(self.split), str(self.max_images)]
        return _fingerprint([*head, *_stat_parts(files)])

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "split": self.split, "max_images": self.max_images}

    def content(self) -> dict:
        """What the set holds, independent of where it lies (for evaluation fingerprints).

        Returns:
            ``{"sha256": hex digest over every image's key, size and decoded uint8 RGB pixels in set order,
            "images": count, "sizes": sorted distinct "HxW", "format": "PNG files" / "JPEG files" / … for a
            folder (sorted distinct suffixes), "webdataset shards" for shards}``. Equal for a copied or
            moved set; different when one pixel, one key or the selection (split, ``max_images``) differs.
        """
        digest = hashlib.sha256()
        sizes: set[str] = set()
        count = 0
        for key, image, _ in self.iter_items():
            h, w = image.shape[-2:]
            sizes.add(f"{h}x{w}")
            digest.update(f"{key}\0{h}x{w}\0".encode())
            digest.update(image.contiguous().numpy().tobytes())
            count += 1
        if self.kind == "folder":
            files = list_images(self.path)[: self.max_images]
            suffixes = sorted({p.suffix.lower().lstrip(".").replace("jpg", "jpeg").upper() for p in files})
            fmt = " + ".join(suffixes) + " files" if suffixes else "no files"
        else:
            fmt = "webdataset shards"
        return {"sha256": digest.hexdigest(), "images": count, "sizes": sorted(sizes), "format": fmt}


def open_image_set(path: str | Path, split: str = "val", max_images: int | None = None) -> ImageSet:
    """An ``ImageSet`` for ``path``: a shard directory (has ``manifest.json`` or ``*.tar`` shards; ``split``
    is used) or an image folder.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds neither shards nor images.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{str(path)!r} is not a directory (expected an image folder or a shard directory)"
        )
    if (path / "manifest.json").is_file() or any(path.glob("*.tar")):
        return ImageSet("shards", path, split, max_images)
    if not list_images(path):
        raise FileNotFoundError(
            f"{str(path)!r} holds no images ({'/'.join(IMAGE_SUFFIXES)}) and no shards; give a folder of images "
            "or a shard directory built by 'infinity-lit data ...'"
        )
    return ImageSet("folder", path, None, max_images)

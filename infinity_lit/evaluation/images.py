"""Image sets for evaluation: folders of image files and webdataset shard splits, as uint8 batches.

Every image leaves this module as uint8 (3, H, W) in [0, 255], RGB, read by the one loader of the
toolkit, ``infinity_lit.data.images.load_rgb`` (EXIF orientation applied, 16-bit samples scaled to 8 bits,
transparency composited onto white: the shard builders' policy). A folder is read recursively
(``infinity_lit.data.images.find_images``: png, jpg/jpeg, webp, bmp, gif, tif/tiff, sorted by relative
path, hidden files skipped); an image's key is its path relative to the folder (``NNNNNN.png`` in a flat
folder). Files that cannot be read are skipped and reported once per set (one warning naming the first
few, with the count); they are listed in ``ImageSet.unreadable`` and in the records that the scoring and
reconstruction functions write. A sample folder written by ``eval sample`` holds ``NNNNNN.png`` files and
``metadata.jsonl`` (one JSON object per image: ``file``, ``index``, ``prompt`` and the sampling settings).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from infinity_lit.data.images import (
    IMAGE_SUFFIXES,
    UnreadableImageError,
    find_images,
    load_rgb,
    report_unreadable,
    unreadable_summary,
)
from infinity_lit.data.shards import image_to_uint8

METADATA = "metadata.jsonl"


def list_images(folder: str | Path) -> list[Path]:
    """The image files of ``folder`` as evaluation reads them (``infinity_lit.data.images.find_images``:
    recursive, sorted by relative path, hidden files skipped).

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    return find_images(folder)


def read_image(path: str | Path) -> Tensor:
    """An image file → uint8 (3, H, W) in [0, 255], RGB, by ``infinity_lit.data.images.load_rgb``.

    Raises:
        UnreadableImageError: the file cannot be decoded (the reason says why).
    """
    return image_to_uint8(load_rgb(path))


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


def _stat_parts(folder: Path, paths: Iterable[Path]) -> Iterator[str]:
    for p in paths:
        st = p.stat()
        yield f"{p.relative_to(folder).as_posix()}:{st.st_size}:{st.st_mtime_ns}"


#: File format names of ``ImageSet.content`` by suffix (one name per format).
_FORMAT_NAMES = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF"}


@dataclass
class ImageSet:
    """A set of images to score: an image folder (read recursively) or one split of a shard directory.

    Attributes:
        kind: "folder" or "shards".
        path: the folder or shard directory.
        split: the shard split ("train" / "val"); None for folders.
        max_images: read at most this many readable images (None: all).
        bucket: of a shard directory built with aspect-ratio buckets, only this bucket's images (its name,
            e.g. "0.5"; None: all).
        unreadable: the images skipped so far because they cannot be decoded, in reading order: relative
            path (folders) or "SHARD/KEY" (shards) → reason. Complete once the set has been read through
            (e.g. by ``content``).
    """

    kind: str
    path: Path
    split: str | None = None
    max_images: int | None = None
    bucket: str | None = None
    unreadable: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _reported: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        """Images in the set: files (or shard samples) minus those found unreadable so far, capped at
        ``max_images``; exact once the set has been read through."""
        if self.kind == "folder":
            n = len(list_images(self.path))
        else:
            from infinity_lit.data.shards import split_shards

            n = sum(count for _, count in split_shards(self.path, self.split, bucket=self.bucket))
        n -= len(self.unreadable)
        return n if self.max_images is None else min(n, self.max_images)

    def where(self) -> str:
        """The set in words, for messages: the folder, or "DIR (SPLIT split)"."""
        if self.kind == "folder":
            return str(self.path)
        bucket = f", aspect-ratio bucket {self.bucket}" if self.bucket is not None else ""
        return f"{self.path} ({self.split} split{bucket})"

    def _folder_items(self) -> Iterator[tuple[str, Tensor, str | None]]:
        prompts = {r.get("file"): r.get("prompt") for r in read_metadata(self.path)}
        for path in list_images(self.path):
            key = path.relative_to(self.path).as_posix()
            try:
                image = load_rgb(path)
            except UnreadableImageError as exc:
                self.unreadable[key] = exc.reason
                continue
            yield key, image_to_uint8(image), prompts.get(key)

    def _shard_items(self) -> Iterator[tuple[str, Tensor, str | None]]:
        from infinity_lit.data.shards import iter_samples

        for k, im, c in iter_samples(self.path, self.split, unreadable=self.unreadable, bucket=self.bucket):
            yield k, image_to_uint8(im), c

    def iter_items(self) -> Iterator[tuple[str, Tensor, str | None]]:
        """``(key, uint8 (3, H, W) in [0, 255], caption or None)`` in a fixed order (relative path / shard
        order); at most ``max_images``.

        Keys: a folder image's path relative to the folder (``NNNNNN.png``, ``sub/a.jpg``), a shard
        sample's key. Folder captions come from ``metadata.jsonl`` (``prompt`` of the record whose ``file``
        is the key) when present, else None. Unreadable images are skipped and added to ``unreadable``; at
        the end of a pass the ones not reported before are named in one warning.

        Raises:
            ValueError: images were skipped and none could be read.
        """
        count = 0
        if self.max_images is not None and self.max_images <= 0:
            return
        items = self._folder_items() if self.kind == "folder" else self._shard_items()
        for item in items:
            count += 1
            yield item
            if self.max_images is not None and count >= self.max_images:
                break  # before decoding one more image
        new = {k: v for k, v in self.unreadable.items() if k not in self._reported}
        report_unreadable(new if count else self.unreadable, count, self.where(), stacklevel=2)
        self._reported.update(new)

    def unreadable_warning(self) -> str | None:
        """The skipped images in one line (``infinity_lit.data.images.unreadable_summary``), or None."""
        return unreadable_summary(self.unreadable, self.where()) if self.unreadable else None

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """uint8 (B, 3, H, W) batches in [0, 255]."""
        return batched((im for _, im, _ in self.iter_items()), batch_size)

    def fingerprint(self) -> str:
        """Changes when the files change (relative paths, sizes, modification times) or the selection does."""
        if self.kind == "folder":
            files = list_images(self.path)
        else:
            from infinity_lit.data.shards import split_shards

            files = [p for p, _ in split_shards(self.path, self.split, bucket=self.bucket)]
        head = [self.kind, str(self.path.resolve()), str(self.split), str(self.max_images), str(self.bucket)]
        return _fingerprint([*head, *_stat_parts(self.path, files)])

    def describe(self) -> dict:
        out = {"kind": self.kind, "path": str(self.path), "split": self.split, "max_images": self.max_images}
        if self.bucket is not None:
            out["bucket"] = self.bucket
        return out

    def content(self) -> dict:
        """What the set holds, independent of where it lies (for evaluation fingerprints). Reads every
        image, so ``unreadable`` and ``len`` are complete afterwards.

        Returns:
            ``{"sha256": hex digest over every image's key, size and decoded uint8 RGB pixels in set order,
            "images": count of images read, "sizes": sorted distinct "HxW", "format": "PNG files" /
            "JPEG files" / … for a folder (sorted distinct formats of the images read), "webdataset
            shards" for shards}``. Equal for a copied or moved set; different when one pixel, one key or
            the selection (split, ``max_images``) differs.

        Raises:
            ValueError: images were skipped and none could be read.
        """
        digest = hashlib.sha256()
        sizes: set[str] = set()
        formats: set[str] = set()
        count = 0
        for key, image, _ in self.iter_items():
            h, w = image.shape[-2:]
            sizes.add(f"{h}x{w}")
            digest.update(f"{key}\0{h}x{w}\0".encode())
            digest.update(image.contiguous().numpy().tobytes())
            suffix = Path(key).suffix.lower().lstrip(".")
            formats.add(_FORMAT_NAMES.get(suffix, suffix.upper()))
            count += 1
        if self.kind == "folder":
            fmt = " + ".join(sorted(formats)) + " files" if formats else "no files"
        else:
            fmt = "webdataset shards"
        return {"sha256": digest.hexdigest(), "images": count, "sizes": sorted(sizes), "format": fmt}


def open_image_set(
    path: str | Path, split: str = "val", max_images: int | None = None, bucket: str | None = None
) -> ImageSet:
    """An ``ImageSet`` for ``path``: a shard directory (has ``manifest.json`` or ``*.tar`` shards; ``split``
    and ``bucket`` are used) or an image folder.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds neither shards nor images.
        ValueError: ``max_images`` below 1 (leave it unset for all images), a ``bucket`` the shards do not
            have (the message lists theirs), or a ``bucket`` for an image folder.
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}; leave it unset for all images")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{str(path)!r} is not a directory (expected an image folder or a shard directory)"
        )
    if (path / "manifest.json").is_file() or any(path.glob("*.tar")):
        image_set = ImageSet("shards", path, split, max_images, bucket)
        if bucket is not None:
            len(image_set)  # an unknown bucket is refused here, naming those the data set has
        return image_set
    if bucket is not None:
        raise ValueError(f"{str(path)!r} is an image folder; an aspect-ratio bucket selects from shards only")
    if not list_images(path):
        raise FileNotFoundError(
            f"{str(path)!r} holds no images ({'/'.join(sorted(IMAGE_SUFFIXES))}) and no shards; give a "
            "folder of images or a shard directory built by 'infinity-lit data ...'"
        )
    return ImageSet("folder", path, None, max_images)

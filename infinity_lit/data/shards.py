"""The on-disk shard format shared by the builders, the DataModule and evaluation.

A data directory holds webdataset tar shards and a manifest::

    DIR/train-000000.tar, train-000001.tar, ...   samples {key}.png, {key}.txt, {key}.json
    DIR/val-000000.tar, ...
    DIR/manifest.json                               resolution, per-split and per-shard counts,
                                                    skipped samples and why, source, the command
    DIR/ATTRIBUTION.md                              where the source requires it (OpenMoji)

``{key}.png`` is an RGB image (uint8, square, the manifest's resolution), ``{key}.txt`` the UTF-8 caption
(possibly empty), ``{key}.json`` per-sample metadata. Keys contain no dots (webdataset splits a member name
at its first dot). The train/validation split of a sample is a function of its key alone
(``split_of``), so it does not change when the data set grows or is rebuilt.

The manifest is written last, atomically: a directory with a manifest is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from infinity_lit.data.images import UnreadableImageError, load_rgb, to_rgb

if TYPE_CHECKING:
    import torch

__all__ = [
    "MANIFEST",
    "SPLITS",
    "ShardSetWriter",
    "check_resolution",
    "image_to_uint8",
    "iter_samples",
    "load_split",
    "read_manifest",
    "resize_center_crop",
    "reusable_manifest",
    "save_grid",
    "shards_digest",
    "split_of",
    "split_shards",
    "write_manifest",
]

T = TypeVar("T")
SPLITS: tuple[str, str] = ("train", "val")
MANIFEST = "manifest.json"
FORMAT = "infinity-lit webdataset shards"
FORMAT_VERSION = 1
IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")
# Fixed tar member times make a rebuild byte-identical.
_TAR_MTIME = 0.0


def check_resolution(resolution: int) -> int:
    """Return ``resolution`` if it is a positive even integer (pixels), else raise ``ValueError``.

    Whether it also matches a tokenizer's stride is the tokenizer's check, not this one.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0 or resolution % 2:
        raise ValueError(
            f"resolution must be a positive even number of pixels (e.g. 32, 64, 256), got {resolution!r}"
        )
    return resolution


def split_of(key: str, val_fraction: float) -> str:
    """The split ("train" or "val") of a sample, from a stable hash of its key.

    The first 8 bytes of SHA-256(key) read as an integer u in [0, 2^64) put the sample in "val" when
    u / 2^64 < ``val_fraction``. Unlike Python's ``hash()``, this is the same in every process and on every
    machine (no PYTHONHASHSEED dependence).

    Args:
        key: the sample key.
        val_fraction: expected fraction of samples in "val", in [0, 1).

    Raises:
        ValueError: ``val_fraction`` outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return "val" if u < val_fraction * 2.0**64 else "train"


# ---------------------------------------------------------------- images
# Decoding and colour conversion live in ``infinity_lit.data.images`` (``load_rgb``, ``to_rgb``).


def resize_center_crop(im: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is ``resolution`` (antialiased bicubic), then crop the centre square.

    Returns:
        RGB PIL image of ``resolution``×``resolution`` pixels (the input itself if already that size).
    """
    w, h = im.size
    if (w, h) == (resolution, resolution):
        return im
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return im.crop((left, top, left + resolution, top + resolution))


def image_to_uint8(im: Image.Image) -> torch.Tensor:
    """PIL image → uint8 tensor (3, H, W) in [0, 255], RGB (other modes through ``images.to_rgb``).

    Raises:
        UnreadableImageError: a mode ``to_rgb`` refuses.
    """
    import torch  # imported here so that the builders and their CLI start without torch

    return torch.from_numpy(np.array(to_rgb(im), dtype=np.uint8)).permute(2, 0, 1)


def encode_png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def evenly_spaced(items: Sequence[T], n: int) -> list[T]:
    """``n`` items spread evenly over ``items`` (first and last included), or all of them if fewer."""
    if n >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def save_grid(images: list[Image.Image], path: Path, columns: int = 8) -> None:
    """Tile equally sized RGB images row by row into one PNG (white where the last row is short)."""
    if not images:
        raise ValueError("no images to tile")
    w, h = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, ((i % columns) * w, (i // columns) * h))
    grid.save(path)


# ---------------------------------------------------------------- writing


class ShardSetWriter:
    """Writes samples into ``{split}-{index:06d}.tar`` shards of at most ``shard_size`` samples each.

    Use as a context manager; ``shards`` then lists, per split, ``{"name", "count"}`` for every shard
    written, in order.

    Args:
        out: the data directory (created if missing).
        shard_size: maximum number of samples per shard (≥ 1).
    """

    def __init__(self, out: Path, shard_size: int) -> None:
        import webdataset as wds

        if shard_size < 1:
            raise ValueError(f"shard_size must be ≥ 1, got {shard_size}")
        self._wds = wds
        self.out = Path(out)
        self.shard_size = shard_size
        self.shards: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        self._writers: dict[str, Any] = {}

    def __enter__(self) -> ShardSetWriter:
        self.out.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, split: str, key: str, png: bytes, caption: str, meta: dict[str, Any]) -> None:
        """Append one sample: ``png`` (encoded PNG bytes), ``caption`` (text), ``meta`` (JSON-able)."""
        if "." in key or not key:
            raise ValueError(f"sample keys must be non-empty and contain no '.', got {key!r}")
        shards = self.shards[split]
        if split not in self._writers or shards[-1]["count"] >= self.shard_size:
            self._close_split(split)
            name = f"{split}-{len(shards):06d}.tar"
            self._writers[split] = self._wds.TarWriter(str(self.out / name), mtime=_TAR_MTIME)
            shards.append({"name": name, "count": 0})
        self._writers[split].write(
            {
                "__key__": key,
                "png": png,
                "txt": caption.encode("utf-8"),
                "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"),
            }
        )
        shards[-1]["count"] += 1

    def _close_split(self, split: str) -> None:
        writer = self._writers.pop(split, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        for split in list(self._writers):
            self._close_split(split)


def remove_shards(out: Path) -> None:
    """Delete an earlier build's manifest and ``{split}-*.tar`` shards from ``out`` (nothing else)."""
    (out / MANIFEST).unlink(missing_ok=True)
    for split in SPLITS:
        for path in out.glob(f"{split}-*.tar"):
            path.unlink()


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write ``out/manifest.json`` atomically (temporary file, then rename)."""
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)


def make_manifest(
    *,
    source: str,
    resolution: int,
    settings: dict[str, Any],
    shards: dict[str, list[dict[str, Any]]],
    skipped: dict[str, int],
    created_by: str,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble a manifest dict (see the module docstring for the layout it describes)."""
    counts = {s: sum(sh["count"] for sh in shards[s]) for s in SPLITS}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": source,
        "resolution": resolution,
        "counts": counts,
        "skipped": {"count": sum(skipped.values()), "reasons": dict(skipped)},
        "splits": {s: {"count": counts[s], "shards": shards[s]} for s in SPLITS},
        "settings": settings,
        "created_by": created_by,
        **extra,
    }


def reusable_manifest(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest in ``out`` if it was built with exactly ``settings`` and all its shards exist."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("settings") != settings:
        return None
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            if not (Path(out) / shard["name"]).is_file():
                return None
    return manifest


# ---------------------------------------------------------------- reading


def _missing_data_error(data_dir: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} in {str(data_dir)!r}. Build a data set first, e.g. "
        f"`infinity-lit data openmoji --out {data_dir}` (OpenMoji emoji) or "
        f"`infinity-lit data folder --images YOUR_IMAGES --out {data_dir}`."
    )


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """Read ``data_dir/manifest.json``; for shards without a manifest, describe them from the tar files.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist or holds no shards (the message says how to build).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise _missing_data_error(data_dir, "No data directory")
    path = data_dir / MANIFEST
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    shards = {
        s: [{"name": p.name, "count": _count_tar_samples(p)} for p in sorted(data_dir.glob(f"{s}-*.tar"))]
        for s in SPLITS
    }
    if not any(shards.values()):
        raise _missing_data_error(data_dir, "No shards (train-*.tar / val-*.tar) and no manifest.json")
    counts = {s: sum(sh["count"] for sh in shards[s]) for s in SPLITS}
    return {
        "source": "unknown (no manifest.json)",
        "resolution": None,
        "counts": counts,
        "splits": {s: {"count": counts[s], "shards": shards[s]} for s in SPLITS},
    }


def _count_tar_samples(path: Path) -> int:
    from webdataset.tariterators import base_plus_ext

    with tarfile.open(path) as tar:
        keys = {base_plus_ext(m.name)[0] for m in tar if m.isreg()}
    return len(keys - {None})


def split_shards(
    data_dir: str | Path, split: str, manifest: dict[str, Any] | None = None
) -> list[tuple[Path, int]]:
    """The shards of ``split`` as ``(path, sample count)`` pairs, in order.

    Raises:
        ValueError: unknown split. FileNotFoundError: no data / no shards for the split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} (the test split is 'val'), got {split!r}")
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir) if manifest is None else manifest
    shards = [(data_dir / s["name"], int(s["count"])) for s in manifest["splits"][split]["shards"]]
    if not shards:
        raise _missing_data_error(data_dir, f"No {split!r} shards")
    for path, _ in shards:
        if not path.is_file():
            raise _missing_data_error(data_dir, f"Shard {path.name} listed in the manifest is missing")
    return shards


def shards_digest(data_dir: str | Path) -> str:
    """SHA-256 hex digest of what a data directory holds: every split's shards, in order, by name, sample
    count and the bytes of the tar file. Equal for a copied or moved directory; different when one sample,
    one caption or the split changes (the manifest's description of how it was built does not count).

    Raises:
        FileNotFoundError: as ``read_manifest`` (no data directory, no shards, a listed shard missing).
    """
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    digest = hashlib.sha256()
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            path = data_dir / shard["name"]
            if not path.is_file():
                raise _missing_data_error(data_dir, f"Shard {path.name} listed in the manifest is missing")
            digest.update(f"{split}\0{shard['name']}\0{int(shard['count'])}\0".encode())
            with open(path, "rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def raw_samples(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Undecoded samples (``__key__``, ``__url__``, and bytes per extension) of the tar files, in order."""
    import webdataset as wds

    return wds.tarfile_samples(dict(url=str(p)) for p in paths)


def decode_sample(sample: dict[str, Any]) -> tuple[str, Image.Image, str]:
    """``(key, RGB image, caption)`` of a raw sample; the caption is "" when there is no ``.txt``.

    Raises:
        ValueError: the sample has no image member or its image cannot be decoded; the message names the
            key and the shard.
    """
    key, url = sample["__key__"], sample.get("__url__", "?")
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise ValueError(f"sample {key!r} in shard {url}: no image member (.png/.jpg/.webp)")
    try:
        image = load_rgb(sample[ext])
    except UnreadableImageError as exc:
        raise ValueError(f"sample {key!r} in shard {url}: cannot decode its .{ext} image ({exc})") from exc
    caption = sample["txt"].decode("utf-8").strip() if "txt" in sample else ""
    return key, image, caption


def iter_samples(
    data_dir: str | Path,
    split: str,
    *,
    strict: bool = False,
    unreadable: dict[str, str] | None = None,
) -> Iterator[tuple[str, Image.Image, str]]:
    """Iterate a split's samples in shard order, for evaluation: ``(key, PIL RGB image, caption)``.

    Images are as stored (uint8 RGB at the build resolution). A sample that fails to decode is skipped:
    with a warning naming its key and shard, or, when ``unreadable`` is given, recorded there as
    ``"SHARD/KEY" → reason`` for the caller to report (``infinity_lit.data.images.report_unreadable``); with
    ``strict=True`` it raises instead.

    Raises:
        FileNotFoundError: no data (see ``read_manifest``). ValueError: bad sample with ``strict=True``.
    """
    for sample in raw_samples(p for p, _ in split_shards(data_dir, split)):
        try:
            yield decode_sample(sample)
        except ValueError as exc:
            if strict:
                raise
            if unreadable is None:
                warnings.warn(f"skipping {exc}", stacklevel=2)
            else:
                shard = Path(str(sample.get("__url__", "?"))).name
                unreadable[f"{shard}/{sample['__key__']}"] = str(exc.__cause__ or exc)


def load_split(
    data_dir: str | Path, split: str, resolution: int, *, strict: bool = False
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Load a whole split into memory, resized and centre-cropped to ``resolution``.

    Returns:
        ``(images, captions, keys)``: images uint8 (N, 3, resolution, resolution) in [0, 255], in shard
        order; captions and keys are lists of N strings.

    Raises:
        ValueError: bad resolution, or a bad sample with ``strict=True``. FileNotFoundError: no data.
    """
    import torch

    check_resolution(resolution)
    images, captions, keys = [], [], []
    for key, image, caption in iter_samples(data_dir, split, strict=strict):
        images.append(image_to_uint8(resize_center_crop(image, resolution)))
        captions.append(caption)
        keys.append(key)
    if not images:
        raise ValueError(f"split {split!r} of {str(data_dir)!r} has no readable samples")
    return torch.stack(images), captions, keys

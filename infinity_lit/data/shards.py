"""The on-disk shard format shared by the builders, the DataModule and evaluation.

A data directory holds webdataset tar shards and a manifest::

    DIR/train-000000.tar, train-000001.tar, ...   samples {key}.png, {key}.txt, {key}.json
    DIR/val-000000.tar, ...
    DIR/manifest.json                               resolution, per-split and per-shard counts,
                                                    skipped samples and why, source, the command
    DIR/ATTRIBUTION.md                              where the source requires it (OpenMoji)

``{key}.png`` is an RGB image (uint8, square, the manifest's resolution), ``{key}.txt`` the UTF-8 caption
(possibly empty), ``{key}.json`` per-sample metadata.

Aspect-ratio buckets (``data folder --aspect_ratios``): the manifest's ``buckets`` maps a bucket name (the
template aspect ratio h/w as written, e.g. ``"0.5"``) to ``{"aspect_ratio", "size": [h, w] pixels,
"counts": {split: n}}``; every image of a bucket is stored at its size, every shard holds one bucket (its
manifest entry names it, ``"bucket"``) and ``{key}.json`` records ``"bucket"`` too. A data set without
``buckets`` is square. Keys contain no dots (webdataset splits a member name
at its first dot). The train/validation split of a sample is a function of its key alone
(``split_of``), so it does not change when the data set grows or is rebuilt.

The manifest is written last, atomically: a directory with a manifest is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from infinity_lit.data.images import UnreadableImageError, load_rgb, to_rgb

if TYPE_CHECKING:
    import torch

__all__ = [
    "LOST",
    "MANIFEST",
    "SPLITS",
    "DamagedShardError",
    "ShardSetWriter",
    "bucket_manifest",
    "bucket_name",
    "check_resolution",
    "image_to_uint8",
    "iter_samples",
    "load_split",
    "nearest_bucket",
    "read_manifest",
    "rebuild_hint",
    "resize_center_crop",
    "resize_cover_crop",
    "reusable_manifest",
    "save_grid",
    "shards_digest",
    "skipped_name",
    "split_buckets",
    "split_of",
    "split_shards",
    "strict_hint",
    "template_buckets",
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


# ---------------------------------------------------------------- aspect-ratio buckets

#: An aspect-ratio bucket: (h/w, (height, width) in pixels).
Bucket = tuple[float, tuple[int, int]]


def bucket_name(aspect_ratio: float) -> str:
    """The name of a bucket in the manifest and the shards: the aspect ratio h/w as ``%g`` ("0.5", "1.333")."""
    return f"{aspect_ratio:g}"


def nearest_bucket(buckets: Sequence[Bucket], height: int, width: int) -> Bucket:
    """The bucket whose aspect ratio is nearest to ``height / width`` (absolute difference, as the method
    assigns an image to a template; on an exact tie the template listed first in the reference's table,
    ``quantizer.schedules.TEMPLATE_ORDER``, as ``nearest_aspect_ratio`` does: 0.9 between 0.8 and 1 → 1)."""
    from infinity_lit.quantizer.schedules import TEMPLATE_ORDER

    def rank(ratio: float) -> int:
        return TEMPLATE_ORDER.index(ratio) if ratio in TEMPLATE_ORDER else len(TEMPLATE_ORDER)

    return min(buckets, key=lambda b: (abs(b[0] - height / width), rank(b[0]), b[0]))


def template_buckets(aspect_ratios: str | Sequence[float], resolution: int, stride: int) -> list[Bucket]:
    """The buckets of ``build_folder_shards(aspect_ratios=…)``: (template h/w, (height, width) pixels),
    ascending; see its ``aspect_ratios`` argument.

    Raises:
        ValueError: a ratio that is no template (the message lists them), one whose template grid at this
            scale count does not have its shape yet (0.571 at 3 scales is 3×3), a repeated one, an empty list, or
            ``resolution / stride`` that is no side of the method's square schedule (1, 2, 4, 6, 8, 12, 16, …).
    """
    # The templates are the quantizer's (one home); imported here so that square builds start without torch.
    from infinity_lit.quantizer.schedules import (
        ASPECT_RATIO_TEMPLATES,
        ASPECT_RATIOS,
        REFERENCE_SIDES,
        aspect_ratio_schedule,
        nearest_aspect_ratio,
    )

    if stride < 1 or resolution % stride or resolution // stride not in REFERENCE_SIDES:
        raise ValueError(
            f"aspect-ratio buckets need resolution / stride to be a side of the method's square schedule "
            f"{', '.join(map(str, REFERENCE_SIDES))}; got {resolution} / {stride}"
        )
    num_scales = REFERENCE_SIDES.index(resolution // stride) + 1
    if isinstance(aspect_ratios, str):
        text = aspect_ratios.strip()
        if text == "all":
            ratios: list[float] = list(ASPECT_RATIOS)
        else:
            try:
                ratios = [float(v) for v in text.split(",") if v.strip()]
            except ValueError as exc:
                raise ValueError(
                    f"aspect_ratios must be 'all' or numbers such as '0.5,1,2', got {text!r}"
                ) from exc
    else:
        ratios = [float(v) for v in aspect_ratios]
    buckets: dict[float, tuple[int, int]] = {}
    for ratio in ratios:
        h, w = aspect_ratio_schedule(ratio, num_scales)[-1]  # raises for a ratio that is no template
        template = nearest_aspect_ratio(ratio)
        if nearest_aspect_ratio(h / w) != template:
            # With few scales some templates have not reached their shape yet (0.571 at 3 scales is 3×3).
            grids = ASPECT_RATIO_TEMPLATES[template]
            k = next(
                k
                for k in range(num_scales, len(grids) + 1)
                if nearest_aspect_ratio(grids[k - 1][0] / grids[k - 1][1]) == template
            )
            raise ValueError(
                f"aspect ratio {ratio:g} has no bucket of its own shape at resolution {resolution} / stride {stride} "
                f"({num_scales} scales): the method's template ends at {h}×{w} there (h/w {h / w:.3g}); leave it "
                f"out, or use a resolution of {REFERENCE_SIDES[k - 1] * stride} or more at this stride"
            )
        if template in buckets:
            raise ValueError(f"aspect ratio {ratio:g} is given twice (template {template:g})")
        buckets[template] = (h * stride, w * stride)
    if not buckets:
        raise ValueError("aspect_ratios is empty; give 'all' or a list such as '0.5,1,2'")
    return sorted(buckets.items())


def bucket_manifest(buckets: Sequence[Bucket], counts: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``buckets`` entry (module docstring) for ``buckets`` and per-bucket split counters
    (bucket name → {split: n})."""
    return {
        bucket_name(r): {
            "aspect_ratio": r,
            "size": list(size),
            "counts": {split: int(counts[bucket_name(r)][split]) for split in SPLITS},
        }
        for r, size in buckets
    }


def split_buckets(manifest: dict[str, Any], split: str) -> dict[str, dict[str, Any]]:
    """The aspect-ratio buckets of a manifest (``read_manifest``) that hold samples of ``split``, in the
    manifest's order (ascending h/w): bucket name → its manifest entry (``{"aspect_ratio", "size": [h, w],
    "counts": {split: n}}``). Empty for a square data set."""
    return {
        name: bucket
        for name, bucket in (manifest.get("buckets") or {}).items()
        if int(bucket.get("counts", {}).get(split, 0)) > 0
    }


# ---------------------------------------------------------------- images
# Decoding and colour conversion live in ``infinity_lit.data.images`` (``load_rgb``, ``to_rgb``).


def resize_center_crop(im: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is ``resolution`` (antialiased bicubic), then crop the centre square.

    Returns:
        RGB PIL image of ``resolution``×``resolution`` pixels (the input itself if already that size).
    """
    return resize_cover_crop(im, (resolution, resolution))


def resize_cover_crop(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize (antialiased bicubic, aspect ratio kept) to the smallest size covering ``size`` = (height,
    width) pixels, then crop the centre to exactly that size.

    Returns:
        PIL image of ``size`` (the input itself if already that size).
    """
    height, width = int(size[0]), int(size[1])
    w, h = im.size
    if (w, h) == (width, height):
        return im
    scale = max(width / w, height / h)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - width) // 2, (nh - height) // 2
    return im.crop((left, top, left + width, top + height))


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
    """Tile RGB images row by row into one PNG, each centred in a cell of the largest width and height
    (white where the last row is short; grey around images of several sizes, so their shapes show)."""
    if not images:
        raise ValueError("no images to tile")
    w, h = max(im.size[0] for im in images), max(im.size[1] for im in images)
    rows = -(-len(images) // columns)
    background = (255, 255, 255) if len({im.size for im in images}) == 1 else (160, 160, 160)
    grid = Image.new("RGB", (columns * w, rows * h), background)
    for i, im in enumerate(images):
        left, top = (i % columns) * w + (w - im.size[0]) // 2, (i // columns) * h + (h - im.size[1]) // 2
        grid.paste(im, (left, top))
    grid.save(path)


# ---------------------------------------------------------------- writing


class ShardSetWriter:
    """Writes samples into ``{split}-{index:06d}.tar`` shards of at most ``shard_size`` samples each.

    Use as a context manager; ``shards`` then lists, per split, ``{"name", "count"}`` for every shard
    written, in order (with ``"bucket"`` for a shard of an aspect-ratio bucket: each bucket fills its own
    shards, numbered with the split's other shards).

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
        self._writers: dict[tuple[str, str | None], Any] = {}
        self._open: dict[tuple[str, str | None], dict[str, Any]] = {}

    def __enter__(self) -> ShardSetWriter:
        self.out.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(
        self, split: str, key: str, png: bytes, caption: str, meta: dict[str, Any], bucket: str | None = None
    ) -> None:
        """Append one sample: ``png`` (encoded PNG bytes), ``caption`` (text), ``meta`` (JSON-able), in a
        shard of ``bucket`` (an aspect-ratio bucket's name; None for a square data set)."""
        if "." in key or not key:
            raise ValueError(f"sample keys must be non-empty and contain no '.', got {key!r}")
        slot = (split, bucket)
        shards = self.shards[split]
        if slot not in self._writers or self._open[slot]["count"] >= self.shard_size:
            self._close(slot)
            name = f"{split}-{len(shards):06d}.tar"
            self._writers[slot] = self._wds.TarWriter(str(self.out / name), mtime=_TAR_MTIME)
            entry: dict[str, Any] = {"name": name, "count": 0}
            if bucket is not None:
                entry["bucket"] = bucket
            shards.append(entry)
            self._open[slot] = entry
        self._writers[slot].write(
            {
                "__key__": key,
                "png": png,
                "txt": caption.encode("utf-8"),
                "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"),
            }
        )
        self._open[slot]["count"] += 1

    def _close(self, slot: tuple[str, str | None]) -> None:
        writer = self._writers.pop(slot, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        for slot in list(self._writers):
            self._close(slot)


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

    Without a manifest, a shard's count is that of its samples that can be read (a damaged shard is warned
    about, naming it and where it is damaged).

    Raises:
        FileNotFoundError: ``data_dir`` does not exist or holds no shards (the message says how to build).
        ValueError: no manifest, and not one sample of the shards can be read (the message says how to build).
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
    if not any(counts.values()):
        raise ValueError(
            f"no sample of the shards in {str(data_dir)!r} can be read (see the warnings); "
            f"{rebuild_hint(data_dir)}"
        )
    return {
        "source": "unknown (no manifest.json)",
        "resolution": None,
        "counts": counts,
        "splits": {s: {"count": counts[s], "shards": shards[s]} for s in SPLITS},
    }


def _count_tar_samples(path: Path) -> int:
    """Samples of a shard that can be read (``_ShardScan``); warns, naming the shard, if it is damaged."""
    scan = _ShardScan(path)
    try:
        count = sum(1 for group in scan.groups if scan.readable(group))
    finally:
        scan.close()
    if scan.damage:
        warnings.warn(
            f"damaged shard {path}: {scan.damage[0].what}; counting the {count} samples that can be read",
            stacklevel=3,
        )
    return count


def split_shards(
    data_dir: str | Path,
    split: str,
    manifest: dict[str, Any] | None = None,
    bucket: str | None = None,
) -> list[tuple[Path, int]]:
    """The shards of ``split`` as ``(path, sample count)`` pairs, in order; with ``bucket``, only those of
    that aspect-ratio bucket (see the module docstring).

    Raises:
        ValueError: unknown split or bucket. FileNotFoundError: no data / no shards for the split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} (the test split is 'val'), got {split!r}")
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir) if manifest is None else manifest
    entries = manifest["splits"][split]["shards"]
    if bucket is not None:
        buckets = manifest.get("buckets") or {}
        if bucket not in buckets:
            raise ValueError(
                f"the data set in {str(data_dir)!r} has no aspect-ratio bucket {bucket!r} "
                f"(it has {', '.join(buckets) or 'none: it is square'})"
            )
        entries = [s for s in entries if s.get("bucket") == bucket]
        if not entries:
            raise FileNotFoundError(f"bucket {bucket!r} of {str(data_dir)!r} has no {split!r} samples")
    shards = [(data_dir / s["name"], int(s["count"])) for s in entries]
    if not shards:
        others = {s: int(manifest["splits"][s]["count"]) for s in SPLITS if s != split}
        if any(others.values()):
            # The data set exists; its split came out empty (too few images for the validation fraction).
            held = ", ".join(f"{n} {s!r}" for s, n in others.items())
            raise FileNotFoundError(
                f"the data set in {str(data_dir)!r} has no {split!r} samples (it holds {held}): rebuild it "
                "with a larger --val_fraction or with more images"
            )
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


# ---------------------------------------------------------------- damaged shards
#
# webdataset reads a tar shard as a stream and, at a truncated member, raises (``handler`` decides what
# then), but at a corrupt or cut header it just stops as if the archive had ended. ``_shard_samples``
# therefore reads each shard with webdataset, holding back its last sample, and suspects damage when the
# handler was called, when the shard gave fewer samples than its manifest count, or when the last sample
# lacks a member the others have. Only then ``_ShardScan`` walks the file's headers with ``tarfile``
# (``ignore_zeros``, so that reading resumes at the next valid header after a corrupt one) to find where
# it is damaged, which samples are whole, and to read those webdataset did not reach.

#: Key of the placeholder sample that ``raw_samples`` yields for each sample lost in a damaged shard.
LOST = "__lost__"


def rebuild_hint(data_dir: str | Path) -> str:
    """How to build (or rebuild) the shards of ``data_dir``, for error messages."""
    return (
        f"rebuild the shards (`infinity-lit data openmoji --out {data_dir}` or "
        f"`infinity-lit data folder --images YOUR_IMAGES --out {data_dir}`)"
    )


def strict_hint(data_dir: str | Path) -> str:
    """What to do about a damaged shard or an undecodable image met in strict mode."""
    return f"{rebuild_hint(Path(data_dir))}, or pass strict=False to skip such samples"


class DamagedShardError(ValueError):
    """A sample lost because its tar shard is damaged (truncated, a corrupt header, unreadable file).

    Attributes:
        shard: path of the shard.
        key: the sample's key, or "(… at byte offset N)" when its key cannot be read.
        reason: what is wrong with the shard, in words (where reading failed, naming member and key if known).
        first: whether this is the first sample lost at that damage: its message describes them all, the
            others need no warning of their own.
    """

    def __init__(self, message: str, *, shard: str, key: str, reason: str, first: bool = True) -> None:
        super().__init__(message)
        self.shard, self.key, self.reason, self.first = shard, key, reason, first


@dataclass
class _Damage:
    offset: int  # byte offset in the file where reading fails
    what: str  # in words, naming the member and its key where known
    members_before: int  # members of the file before it


@dataclass
class _Group:
    """The members of one sample, consecutive in the tar file."""

    key: str
    members: list[tarfile.TarInfo] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)  # member extensions
    bad: bool = False  # a member truncated or repeated, or the sample split by a damaged place
    edge: bool = False  # next to a damaged place: whole only if it has every kind of member of the shard


def _member_key(name: str) -> tuple[str | None, str]:
    """(key, lower-case extension) of a member as webdataset groups it; key None for members it skips."""
    from webdataset.tariterators import base_plus_ext

    if re.match(r"__[^/]*__($|/)", name):  # webdataset's ``skip_meta``
        return None, ""
    key, ext = base_plus_ext(name)
    return (key, ext.lower()) if key is not None else (None, "")


def _member_text(member: tarfile.TarInfo) -> str:
    return f"member {member.name!r} (key {_member_key(member.name)[0]!r})"


class _ShardScan:
    """Where a tar file is damaged and which of its samples are whole, from its headers (``tarfile``).

    Attributes:
        damage: the damaged places in file order (empty for a sound file).
        groups: the samples found, in file order; ``readable`` says which are whole.
        cut: index of the first group after the first damaged place (``len(groups)`` if none follows).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: list[tarfile.TarInfo] = []
        self.damage: list[_Damage] = []
        self._file: Any = None
        self._tar: tarfile.TarFile | None = None
        try:
            self.size = path.stat().st_size
            self._file = open(path, "rb")  # closed by close()
        except OSError as exc:
            self.size = 0
            self.damage.append(_Damage(0, f"the file cannot be opened ({exc.strerror or exc})", 0))
        else:
            self._walk()
        self.groups, self.cut = self._group()
        self.kinds = set().union(*(g.kinds for g in self.groups)) if self.groups else set()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _zeros(self, start: int, end: int) -> bool:
        self._file.seek(start)
        while start < end:
            chunk = self._file.read(min(end - start, 1 << 20))
            if not chunk:
                return True
            if chunk.strip(b"\0"):
                return False
            start += len(chunk)
        return True

    def _walk(self) -> None:
        block = tarfile.BLOCKSIZE
        pending: str | None = None  # why the header at ``end`` could not be read
        start = 0
        while self._tar is None and start < self.size:
            self._file.seek(start)
            try:
                self._tar = tarfile.TarFile(fileobj=self._file, mode="r", ignore_zeros=True)
            except Exception as exc:  # tarfile raises several kinds on a bad first header
                pending = pending or f"{type(exc).__name__}: {exc}"
                start += block
        end = 0  # where the header after the last member read starts
        tar = self._tar
        while tar is not None:
            try:
                member = tar.next()
            except Exception as exc:  # a header tarfile cannot read at tar.offset: skip a block
                if tar.offset >= self.size:
                    break
                pending = pending or f"{type(exc).__name__}: {exc}"
                tar.offset += block
                continue
            if member is None:
                break
            if member.offset > end and (pending or not self._zeros(end, member.offset)):
                after = f" after {_member_text(self.members[-1])}" if self.members else ""
                self.damage.append(
                    _Damage(
                        end,
                        f"unreadable tar header at byte offset {end}{after}"
                        f"{f' ({pending})' if pending else ''}; reading resumes at byte offset "
                        f"{member.offset}, {_member_text(member)}",
                        len(self.members),
                    )
                )
            pending = None
            self.members.append(member)
            end = tar.offset
        last = self.members[-1] if self.members else None
        if last is not None and last.offset_data + last.size > self.size:
            self.damage.append(
                _Damage(
                    self.size,
                    f"the file ends at byte offset {self.size}, inside {_member_text(last)}: it is truncated",
                    len(self.members) - 1,
                )
            )
        elif last is None:
            self.damage.append(
                _Damage(
                    0, f"no tar header can be read{f' ({pending})' if pending else ''}: not a tar file", 0
                )
            )
        else:
            where = f"after {_member_text(last)}{f' ({pending})' if pending else ''}"
            if end > self.size:
                what = f"the file ends at byte offset {self.size}, in the padding {where}: it is truncated"
            elif not self._zeros(end, self.size):
                what = (
                    f"no tar header can be read from byte offset {end} to the end of the file (byte "
                    f"{self.size}), {where}: it is truncated or corrupt"
                )
            elif self.size - end < 2 * block:
                what = (
                    f"the file ends at byte offset {self.size} without the tar end-of-archive marker, "
                    f"{where}: it is truncated"
                )
            else:
                return
            self.damage.append(_Damage(min(end, self.size), what, len(self.members)))

    def _group(self) -> tuple[list[_Group], int]:
        cuts = {d.members_before for d in self.damage}
        groups: list[_Group] = []
        current: _Group | None = None
        cut: int | None = None
        after_cut = False
        for i in range(len(self.members) + 1):
            if i in cuts:
                if current is not None:
                    current.edge = True
                if cut is None:
                    cut = len(groups)
                after_cut = True
            if i == len(self.members):
                break
            member = self.members[i]
            key, kind = _member_key(member.name)
            if key is None or not member.isreg():
                continue
            if current is not None and key == current.key:
                current.bad |= after_cut or kind in current.kinds
            else:
                current = _Group(key, edge=after_cut)
                groups.append(current)
            after_cut = False
            current.members.append(member)
            current.kinds.add(kind)
            current.bad |= member.offset_data + member.size > self.size
        return groups, len(groups) if cut is None else cut

    def readable(self, group: _Group) -> bool:
        """Whether all of a sample's members could be read: none truncated, none lost to a damaged place."""
        return not group.bad and (not group.edge or group.kinds >= self.kinds)

    def sample(self, group: _Group, url: str) -> dict[str, Any]:
        """The raw sample of a readable group, as webdataset would give it."""
        assert self._tar is not None
        sample: dict[str, Any] = {"__key__": group.key, "__url__": url}
        for member in group.members:
            handle = self._tar.extractfile(member)
            assert handle is not None
            sample[_member_key(member.name)[1]] = handle.read()
        return sample


def _shard_samples(path: Path, expected: int | None, strict: bool) -> Iterator[dict[str, Any]]:
    """One shard's raw samples (see ``raw_samples``)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    url = str(path)
    errors: list[BaseException] = []

    def record(exn: BaseException) -> bool:  # webdataset's handler: note the error, stop reading the shard
        errors.append(exn)
        return False

    done: set[str] = set()
    kinds: set[str] = set()
    held: dict[str, Any] | None = None
    try:
        stream = open(path, "rb")
    except OSError as exc:
        errors.append(exc)
    else:
        with stream:  # webdataset's tarfile_samples without its opener, so that the file gets closed
            files = tar_file_expander([{"url": url, "stream": stream}], handler=record)
            for sample in group_by_keys(files, handler=record):
                if held is not None:
                    done.add(held["__key__"])
                    kinds |= {k for k in held if not k.startswith("__")}
                    yield held
                held = sample
    suspect = (
        errors
        or (expected is not None and len(done) + (held is not None) < expected)
        or (held is not None and not {k for k in held if not k.startswith("__")} >= kinds)
    )
    if not suspect:
        if held is not None:
            yield held
        return
    yield from _salvage(path, url, expected, done, errors, strict)


def _salvage(
    path: Path, url: str, expected: int | None, done: set[str], errors: list[BaseException], strict: bool
) -> Iterator[dict[str, Any]]:
    """The rest of a suspect shard: its whole samples not yielded yet (``done``: keys yielded) and a
    placeholder (``LOST``) for each sample lost."""
    scan = _ShardScan(path)
    try:
        todo = [g for g in scan.groups if g.key not in done]
        readable = [g for g in todo if scan.readable(g)]
        dropped = [g.key for g in todo if not scan.readable(g)]
        found = len(done) + len(readable)
        unknown = max(0, expected - found - len(dropped)) if expected is not None else 0
        if scan.damage:
            first = scan.damage[0]
            what = first.what + (
                f" (and {len(scan.damage) - 1} more damaged places)" if len(scan.damage) > 1 else ""
            )
            offset = first.offset
        elif errors:
            what, offset = f"reading failed ({type(errors[0]).__name__}: {errors[0].args[0]})", 0
        else:
            what, offset = f"it holds {found} samples, its manifest count is {expected}", scan.size
        lost = len(dropped) + unknown
        if lost:
            named = ", ".join(repr(k) for k in dropped[:5]) + (
                f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
            )
            parts = ([f"key{'s' if len(dropped) > 1 else ''} {named}"] if named else []) + (
                [f"{unknown} whose keys cannot be read, at byte offset {offset}"] if unknown else []
            )
            total = f" of its {expected}" if expected is not None else ""
            message = f"damaged shard {path}: {what}; skipping {lost}{total} samples: {' and '.join(parts)}"
        else:
            message = f"damaged shard {path}: {what}; all its {found} samples could be read"
        if strict:
            key = dropped[0] if dropped else f"(at byte offset {offset})"
            raise DamagedShardError(f"{message}; {strict_hint(path.parent)}", shard=url, key=key, reason=what)
        if not lost:
            warnings.warn(message, stacklevel=3)
        first_lost = True

        def placeholder(key: str) -> dict[str, Any]:
            nonlocal first_lost
            lost = {"message": message, "reason": what, "first": first_lost}
            first_lost = False
            return {"__key__": key, "__url__": url, LOST: lost}

        for i, group in enumerate([*scan.groups, None]):
            if i == scan.cut:
                for j in range(unknown):
                    yield placeholder(f"(unknown key {j + 1} of {unknown}, at byte offset {offset})")
            if group is None:
                break
            if group.key in done:
                continue
            yield scan.sample(group, url) if scan.readable(group) else placeholder(group.key)
    finally:
        scan.close()


def raw_samples(
    shards: Iterable[Path | tuple[Path, int]], *, strict: bool = False
) -> Iterator[dict[str, Any]]:
    """Undecoded samples (``__key__``, ``__url__``, and bytes per extension) of the tar files, in order.

    ``shards`` are paths or ``(path, sample count)`` pairs (``split_shards``). A damaged shard (truncated,
    a corrupt tar header, a file that cannot be opened, or fewer samples than its count) still gives every
    sample whose members can all be read, before and after the damaged place; in place of each sample lost
    (the one being read where reading failed, any that cannot be told apart, and, with a count, as many as
    are missing) it gives a placeholder ``{"__key__", "__url__", LOST: …}`` on which ``decode_sample``
    raises ``DamagedShardError``, so that consumers skip and count it like an undecodable image, and the
    stream stays the same from one reading to the next (resuming counts raw samples). A damaged place
    that loses no sample is only warned about.

    Raises:
        DamagedShardError: with ``strict=True``, at the first damaged shard, naming it, where reading
            failed (member and key, or byte offset) and what to do.
    """
    for shard in shards:
        path, expected = (Path(shard[0]), int(shard[1])) if isinstance(shard, tuple) else (Path(shard), None)
        yield from _shard_samples(path, expected, strict)


def decode_sample(sample: dict[str, Any]) -> tuple[str, Image.Image, str]:
    """``(key, RGB image, caption)`` of a raw sample; the caption is "" when there is no ``.txt``.

    Raises:
        DamagedShardError: the sample is a placeholder for one lost in a damaged shard (``raw_samples``).
        ValueError: the sample has no image member or its image cannot be decoded; the message names the
            key and the shard.
    """
    key, url = sample["__key__"], sample.get("__url__", "?")
    lost = sample.get(LOST)
    if lost is not None:
        message = lost["message"] if lost["first"] else f"sample {key} of {lost['message']}"
        raise DamagedShardError(message, shard=url, key=key, reason=lost["reason"], first=lost["first"])
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise ValueError(f"sample {key!r} in shard {url}: no image member (.png/.jpg/.webp)")
    try:
        image = load_rgb(sample[ext])
    except UnreadableImageError as exc:
        raise ValueError(f"sample {key!r} in shard {url}: cannot decode its .{ext} image ({exc})") from exc
    caption = sample["txt"].decode("utf-8").strip() if "txt" in sample else ""
    return key, image, caption


def skipped_name(sample: dict[str, Any], exc: ValueError) -> str:
    """``SHARD/KEY`` of a raw sample that ``decode_sample`` refused with ``exc`` (the shard's file name; for a
    sample lost in a damaged shard, the key ``DamagedShardError`` gives, or where its key could not be read)."""
    if isinstance(exc, DamagedShardError):
        return f"{Path(exc.shard).name}/{exc.key}"
    return f"{Path(str(sample.get('__url__', '?'))).name}/{sample.get('__key__', '?')}"


def iter_samples(
    data_dir: str | Path,
    split: str,
    *,
    strict: bool = False,
    unreadable: dict[str, str] | None = None,
    bucket: str | None = None,
) -> Iterator[tuple[str, Image.Image, str]]:
    """Iterate a split's samples in shard order, for evaluation: ``(key, PIL RGB image, caption)``.

    Images are as stored (uint8 RGB at the build resolution). Skipped: a sample whose image fails to decode
    and every sample lost in a damaged shard (see ``raw_samples``; the readable rest of such a shard is
    still given). Each is warned about, naming key and shard (one warning per damaged shard), or, when
    ``unreadable`` is given, recorded there as ``"SHARD/KEY" → reason`` for the caller to report
    (``infinity_lit.data.images.report_unreadable``). ``bucket``: only that aspect-ratio bucket's samples.

    Raises:
        FileNotFoundError: no data (see ``read_manifest``).
        ValueError: with ``strict=True``, at the first undecodable image or damaged shard
            (``DamagedShardError``), naming shard and key and what to do; without ``unreadable``, when no
            sample of the split can be read (saying how to build data).
    """
    data_dir = Path(data_dir)
    read = skipped = 0
    for sample in raw_samples(split_shards(data_dir, split, bucket=bucket), strict=strict):
        try:
            item = decode_sample(sample)
        except DamagedShardError as exc:
            skipped += 1
            if unreadable is not None:
                unreadable[skipped_name(sample, exc)] = f"damaged shard: {exc.reason}"
            elif exc.first:
                warnings.warn(str(exc), stacklevel=2)
            continue
        except ValueError as exc:
            if strict:
                raise ValueError(f"{exc}; {strict_hint(data_dir)}") from exc
            skipped += 1
            if unreadable is None:
                warnings.warn(f"skipping {exc}", stacklevel=2)
            else:
                unreadable[skipped_name(sample, exc)] = str(exc.__cause__ or exc)
            continue
        read += 1
        yield item
    if not read and unreadable is None:
        raise ValueError(
            f"no sample of the {split!r} split in {str(data_dir)!r} can be read ({skipped} skipped, see the "
            f"warnings); {rebuild_hint(data_dir)}"
        )


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

"""A folder of the user's own images (with captions) to webdataset shards.

Images are found recursively and read to RGB by ``infinity_lit.data.images`` (``find_images``,
``load_rgb``: png, jpg/jpeg, webp, bmp, gif, tif/tiff; EXIF orientation applied, 16-bit samples scaled to
8 bits, transparency composited onto white), resized (shorter side, antialiased bicubic) and centre-cropped
to a square, or, with aspect-ratio buckets, to the size of the bucket nearest to the image's h/w, and stored
as PNG. Captions come from a JSON-lines file of ``{"image": path, "caption": text}``
(paths relative to the image folder, or absolute) or, for images it does not list, from a sidecar
``name.txt`` beside ``name.png``; an image with neither gets an empty caption and is counted. Unreadable
images are skipped, named in one warning, counted and listed in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from infinity_lit.data.images import (
    IMAGE_SUFFIXES,
    UnreadableImageError,
    find_images,
    load_rgb,
    report_unreadable,
)
from infinity_lit.data.shards import (
    ShardSetWriter,
    bucket_manifest,
    bucket_name,
    check_resolution,
    encode_png,
    evenly_spaced,
    make_manifest,
    nearest_bucket,
    remove_shards,
    resize_cover_crop,
    reusable_manifest,
    save_grid,
    split_of,
    template_buckets,
    write_manifest,
)

__all__ = ["build_folder_shards", "read_captions_jsonl"]


def read_captions_jsonl(path: Path, images: Path) -> dict[Path, str]:
    """Read ``{"image": path, "caption": text}`` lines into {resolved image path: caption}.

    Blank lines are ignored; image paths are relative to ``images`` unless absolute.

    Raises:
        FileNotFoundError: no such file. ValueError: a line is not such an object (the message gives the
            line number).
    """
    if not path.is_file():
        raise FileNotFoundError(f"captions file {str(path)!r} not found")
    captions: dict[Path, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            image, caption = record["image"], record["caption"]
            if not isinstance(image, str) or not isinstance(caption, str):
                raise TypeError("'image' and 'caption' must be strings")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f'{path}:{number}: expected a JSON object {{"image": "path", "caption": "text"}}, got {line!r} ({exc})'
            ) from exc
        target = Path(image) if Path(image).is_absolute() else images / image
        captions[target.resolve()] = caption.strip()
    return captions


def _key(rel: Path, taken: set[str]) -> str:
    # webdataset keys end at the first "." of a member name, so the key keeps only letters and digits (of
    # any script, NFC-normalised: "café" from macOS and from Linux is one key), "_" and "-".
    stem = unicodedata.normalize("NFC", rel.with_suffix("").as_posix())
    key = re.sub(r"[^\w-]+", "_", stem).strip("_") or "image"
    if key in taken:
        key = f"{key}-{hashlib.sha1(rel.as_posix().encode()).hexdigest()[:8]}"
    taken.add(key)
    return key


def _fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        st = path.stat()
        h.update(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def build_folder_shards(
    images: str | Path,
    out: str | Path,
    resolution: int = 256,
    *,
    captions: str | Path | None = None,
    val_fraction: float = 0.05,
    shard_size: int = 256,
    progress: bool = True,
    aspect_ratios: str | Sequence[float] | None = None,
    stride: int = 16,
) -> dict[str, Any]:
    """Convert a folder of images (and captions) into webdataset shards in ``out``.

    Writes ``train-*.tar``, ``val-*.tar`` (samples ``{key}.png`` RGB uint8 resolution², ``{key}.txt``,
    ``{key}.json`` with the source path and the size before resizing, as displayed: after EXIF orientation),
    ``manifest.json`` and ``preview.png``. Images are read by ``infinity_lit.data.images.load_rgb`` (see its
    module for the colour policy: bit depths, palettes, transparency onto white, CMYK). The key
    is the image's path relative to ``images`` without its suffix, with characters other than letters,
    digits, "_" and "-" replaced by "_". Idempotent: an existing build with the same settings and unchanged
    input files (sizes and modification times) is returned as is.

    Args:
        images: folder searched recursively for images.
        out: output directory (files under it are not taken as input).
        resolution: image side in pixels (positive, even).
        captions: optional JSON-lines file of ``{"image": path, "caption": text}``; it takes precedence over
            sidecar ``.txt`` files.
        val_fraction: expected fraction of images in the validation split (hash of the key).
        shard_size: maximum samples per shard.
        progress: show a tqdm progress bar.
        aspect_ratios: keep the images' shapes in aspect-ratio buckets: ``"all"`` (the method's 15
            templates, h/w from 1/3 to 3) or a list of template ratios (``"0.5,1,2"``; 4/3 is ``1.333``).
            Each image is resized to cover the size of the bucket nearest its h/w (``nearest_bucket``) and
            centre-cropped to it, in shards of that bucket (``infinity_lit.data.shards``). A bucket's size is
            the last grid of its template's scale schedule (``quantizer.template_schedule``) with as many
            scales as the square schedule of ``resolution / stride`` has, times ``stride``: at 64 px and
            stride 8, 40×80 for h/w = 0.5, 64×64 for 1 and 80×40 for 2. The manifest's ``buckets`` gives
            each bucket's size and counts. None (default): square images of ``resolution``.
        stride: the tokenizer's downsampling factor, for the bucket sizes (ignored without ``aspect_ratios``).

    Returns:
        The manifest dict, with ``skipped`` (reason "unreadable_image"), ``unreadable_images`` (path
        relative to ``images`` → reason, in reading order; also named in one warning), ``uncaptioned``
        (images written with an empty caption), ``upscaled`` (images smaller than ``resolution``) and
        ``captions_without_image`` (caption lines naming no found image), plus ``reused``: whether an
        existing build was returned unchanged.

    Raises:
        FileNotFoundError: ``images`` or ``captions`` missing, or no image files found. ValueError: bad
            resolution, a malformed captions line, no image file could be read, or ``out`` holds ``images``.
    """
    from tqdm.auto import tqdm

    check_resolution(resolution)
    split_of("", val_fraction)
    bucket_list = template_buckets(aspect_ratios, resolution, stride) if aspect_ratios is not None else None
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {str(images)!r} not found")
    if images.resolve().is_relative_to(out.resolve()):
        raise ValueError(
            f"--out {str(out)!r} holds the image folder {str(images)!r}: nothing under --out is read as input "
            "(the shards go there); write the shards to another folder"
        )
    files = find_images(images, exclude=out.resolve())
    if not files:
        raise FileNotFoundError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {str(images)!r}"
        )
    caption_file = Path(captions) if captions is not None else None
    jsonl = read_captions_jsonl(caption_file, images) if caption_file is not None else {}
    sidecars = [p.with_suffix(".txt") for p in files if p.with_suffix(".txt").is_file()]
    inputs = files + sidecars + ([caption_file] if caption_file is not None else [])
    settings = {
        "source": "folder",
        "images": str(images.resolve()),
        "captions": str(caption_file.resolve()) if caption_file is not None else None,
        "resolution": resolution,
        "val_fraction": val_fraction,
        "shard_size": shard_size,
        "inputs_fingerprint": _fingerprint(inputs),
    }
    if bucket_list is not None:
        settings["buckets"] = {bucket_name(r): list(size) for r, size in bucket_list}
    existing = reusable_manifest(out, settings)
    if existing is not None:
        return {**existing, "reused": True}

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    remove_shards(out)
    unreadable: dict[str, str] = {}
    stats: Counter[str] = Counter()
    preview_ids = set(evenly_spaced(files, 64))
    preview: list[Image.Image] = []
    keys: set[str] = set()
    found = {p.resolve() for p in files}
    bucket_counts: dict[str, Counter[str]] = {bucket_name(r): Counter() for r, _ in bucket_list or []}
    with ShardSetWriter(out, shard_size) as writer:
        for path in tqdm(files, desc=f"images to {resolution}px shards", unit="image", disable=not progress):
            rel = path.relative_to(images)
            try:
                image = load_rgb(path)
            except UnreadableImageError as exc:
                unreadable[rel.as_posix()] = exc.reason
                continue
            original_size = list(image.size)
            if bucket_list is None:
                bucket, size = None, (resolution, resolution)
            else:
                ratio, size = nearest_bucket(bucket_list, image.size[1], image.size[0])
                bucket = bucket_name(ratio)
            stats["upscaled"] += image.size[0] < size[1] or image.size[1] < size[0]
            image = resize_cover_crop(image, size)
            resolved = path.resolve()
            if resolved in jsonl:
                caption, caption_source = jsonl[resolved], "jsonl"
            elif path.with_suffix(".txt").is_file():
                caption, caption_source = (
                    path.with_suffix(".txt").read_text(encoding="utf-8").strip(),
                    "sidecar",
                )
            else:
                caption, caption_source = "", "none"
            stats["uncaptioned"] += not caption
            if path in preview_ids:
                preview.append(image)
            key = _key(rel, keys)
            meta = {
                "source": "folder",
                "path": rel.as_posix(),
                "original_size": original_size,
                "caption_source": caption_source,
            }
            split = split_of(key, val_fraction)
            if bucket is not None:
                meta["bucket"] = bucket
                bucket_counts[bucket][split] += 1
            writer.write(split, key, encode_png(image), caption, meta, bucket=bucket)

    report_unreadable(unreadable, len(files) - len(unreadable), images)
    orphans = sorted(set(jsonl) - found)
    if orphans:
        warnings.warn(
            f"{len(orphans)} caption line(s) name no image found under {images}, e.g. {orphans[0]}",
            stacklevel=2,
        )
    if preview:
        save_grid(preview, out / "preview.png")
    command = ["infinity-lit", "data", "folder", "--images", str(images), "--out", str(out)]
    command += ["--resolution", str(resolution)]
    if caption_file is not None:
        command += ["--captions", str(caption_file)]
    if val_fraction != 0.05:
        command += ["--val_fraction", str(val_fraction)]
    if shard_size != 256:
        command += ["--shard_size", str(shard_size)]
    extra: dict[str, Any] = {}
    if bucket_list is not None:
        command += ["--aspect_ratios", ",".join(bucket_name(r) for r, _ in bucket_list)]
        command += ["--stride", str(stride)]
        extra["buckets"] = bucket_manifest(bucket_list, bucket_counts)
    manifest = make_manifest(
        source="folder",
        resolution=resolution,
        settings=settings,
        shards=writer.shards,
        skipped={"unreadable_image": len(unreadable)} if unreadable else {},
        created_by=shlex.join(command),
        preview="preview.png" if preview else None,
        images_found=len(files),
        unreadable_images=dict(unreadable),
        uncaptioned=stats["uncaptioned"],
        upscaled=stats["upscaled"],
        captions_without_image=len(orphans),
        build_seconds=round(time.perf_counter() - start, 2),
        **extra,
    )
    write_manifest(out, manifest)
    return {**manifest, "reused": False}

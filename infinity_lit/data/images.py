"""Reading image files: one folder listing, one loader, one colour policy, one report of what was skipped.

Every image the toolkit reads from disk or from a shard goes through ``load_rgb``: the shard builders,
the shard reader (training and evaluation) and the evaluation image sets. The result is always an RGB
PIL image, 8 bits per channel (uint8 values in [0, 255]), oriented as it is meant to be displayed.

The policy, by Pillow mode of the decoded file:

============================  ==========================================================================
``RGB``                       as is
``L`` (8-bit grey)            grey value copied to R, G and B
``1`` (1-bit)                 0 → black (0, 0, 0), 1 → white (255, 255, 255)
``P`` (palette)               the palette colours
``I;16`` / ``I;16B`` /        16-bit grey, scaled to 8 bits by keeping the high byte (v >> 8, so
``I;16L`` / ``I;16N``         0..65535 → 0..255, 65535 → 255, 32768 → 128), then as ``L``
``I`` (32-bit integer)        as 16-bit grey (a 16-bit file Pillow opens as ``I``); a pixel outside
                              0..65535 makes the file unreadable (its range is not known)
16-bit RGB / RGBA / LA        Pillow opens these as 8-bit ``RGB`` / ``RGBA`` / ``LA`` by keeping each
                              sample's high byte: the same scaling as 16-bit grey
``CMYK``                      Pillow's conversion, R = (255 − C)·(255 − K)/255, likewise G (M), B (Y);
                              colour profiles (ICC) are not applied, pixel values are taken as sRGB
``F`` (32-bit float)          refused (the file is unreadable): its value range is not known
``YCbCr`` and other modes     Pillow's conversion to RGB; a mode Pillow cannot convert makes the file
                              unreadable
============================  ==========================================================================

Transparency (an alpha channel: ``RGBA``, ``LA``, ``PA``; a transparent palette entry; a PNG ``tRNS``
colour, 16-bit grey included) is composited onto white, never black:
out = α·colour + (1 − α)·255 per channel, α in [0, 1]. EXIF orientation is applied first
(``ImageOps.exif_transpose``), so the size is the displayed one. Multi-frame files (GIF, TIFF, WebP
animations) give their first frame.

``find_images`` lists a folder's images recursively in a stable order; a file that fails to decode
(truncated, corrupt, not an image, unsupported mode) raises ``UnreadableImageError`` from ``load_rgb``,
and a caller that reads a whole folder skips it and reports all skipped files at once with
``report_unreadable``: one warning naming the first ``NAMED_UNREADABLE`` with their reasons and giving the
count, or an error when no file at all could be read.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_SUFFIXES",
    "NAMED_UNREADABLE",
    "UnreadableImageError",
    "find_images",
    "load_rgb",
    "report_unreadable",
    "to_rgb",
    "unreadable_summary",
]

#: File suffixes (lower-case) that ``find_images`` lists.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
#: How many unreadable files a warning or an error names (the count always covers all of them).
NAMED_UNREADABLE = 5

_WHITE = (255, 255, 255, 255)
_SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class UnreadableImageError(ValueError):
    """An image file (or encoded image bytes) that cannot be decoded under the loader's policy.

    Attributes:
        reason: what went wrong, in a few words (e.g. Pillow's "image file is truncated ...").
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def find_images(folder: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Path]:
    """The image files under ``folder``, recursively, in a stable order.

    Args:
        folder: the folder to search.
        exclude: a folder whose contents are not listed (e.g. an output folder inside ``folder``).

    Returns:
        Paths (``folder / relative path``) of the regular files whose suffix (any case) is in
        ``IMAGE_SUFFIXES``, sorted by their relative path's parts (so a sub-folder's files stay together,
        the same order on every machine); files and folders whose name starts with "." are skipped.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.suffix.lower() not in IMAGE_SUFFIXES or any(part.startswith(".") for part in rel.parts):
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        if path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _sixteen_bit_grey_to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit grey (or 32-bit integer) image → ``L``, or ``LA`` when a ``tRNS`` grey value is set."""
    values = np.asarray(im).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise UnreadableImageError(
            f"mode {im.mode} pixels range over {values.min()}..{values.max()}, outside 0..65535; "
            "save the image with 8 or 16 bits per sample"
        )
    grey = Image.fromarray((values >> 8).astype(np.uint8), mode="L")  # 0..65535 → 0..255, high byte
    transparent = im.info.get("transparency")
    if isinstance(transparent, int):
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        return Image.merge("LA", (grey, Image.fromarray(alpha, mode="L")))
    return grey


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a decoded PIL image to RGB under the module's policy (see the module docstring).

    Args:
        im: a loaded PIL image of any mode.

    Returns:
        A new RGB PIL image (uint8 values in [0, 255], same size), transparency composited onto white.

    Raises:
        UnreadableImageError: a 32-bit integer image with pixels outside 0..65535, or a mode Pillow cannot
            convert to RGB (e.g. ``F``).
    """
    if im.mode in _SIXTEEN_BIT_GREY:
        im = _sixteen_bit_grey_to_8bit(im)
    elif im.mode == "F":
        raise UnreadableImageError(
            "mode F (32-bit float) pixels have no known range; save the image with 8 or 16 bits per sample"
        )
    try:
        if im.has_transparency_data:
            rgba = im.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
        return im.convert("RGB")
    except ValueError as exc:  # Pillow has no conversion for this mode
        raise UnreadableImageError(f"cannot convert mode {im.mode} to RGB ({exc})") from exc


def load_rgb(source: str | os.PathLike | bytes) -> Image.Image:
    """Decode an image file (or encoded image bytes) to RGB under the module's policy.

    Args:
        source: a file path, or the bytes of an encoded image (e.g. a shard member).

    Returns:
        An RGB PIL image, uint8 values in [0, 255], EXIF orientation applied (size as displayed),
        transparency composited onto white; 16-bit samples scaled to 8 bits (high byte).

    Raises:
        UnreadableImageError: the file is missing, truncated, corrupt, not an image, or of a mode the
            policy refuses; ``reason`` says which.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except UnreadableImageError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise UnreadableImageError(f"{type(exc).__name__}: {exc}") from exc


def unreadable_summary(unreadable: Mapping[str, str], where: str | os.PathLike) -> str:
    """One line about the images skipped in ``where``.

    Args:
        unreadable: name (e.g. the path relative to ``where``) → reason, in reading order.
        where: the folder or set they were read from.

    Returns:
        "skipped N unreadable image(s) in WHERE: name (reason); …" naming the first ``NAMED_UNREADABLE``.
    """
    return f"skipped {len(unreadable)} unreadable image(s) in {where}: {_listing(unreadable)}"


def _listing(unreadable: Mapping[str, str]) -> str:
    shown = "; ".join(f"{name} ({reason})" for name, reason in islice(unreadable.items(), NAMED_UNREADABLE))
    more = f"; and {len(unreadable) - NAMED_UNREADABLE} more" if len(unreadable) > NAMED_UNREADABLE else ""
    return shown + more


def report_unreadable(
    unreadable: Mapping[str, str], readable: int, where: str | os.PathLike, *, stacklevel: int = 2
) -> str | None:
    """Report the images skipped while reading a folder (or set): one warning, or an error if none was read.

    Args:
        unreadable: name → reason of each skipped image, in reading order.
        readable: how many images were read.
        where: the folder or set (named in the message).
        stacklevel: of the warning, as for ``warnings.warn``, counted from the caller.

    Returns:
        The warning's text (``unreadable_summary``), or None when nothing was skipped.

    Raises:
        ValueError: images were skipped and none was read.
    """
    if not unreadable:
        return None
    if readable == 0:
        raise ValueError(
            f"none of the {len(unreadable)} image(s) in {where} could be read ({_listing(unreadable)}); "
            "re-save the files as PNG or JPEG (8 or 16 bits per sample), remove the broken ones, or give "
            "another folder"
        )
    message = unreadable_summary(unreadable, where)
    warnings.warn(message, stacklevel=stacklevel + 1)
    return message

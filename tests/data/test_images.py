"""The one image loader (``infinity_lit.data.images``): bit depths, palettes, transparency, CMYK, EXIF
orientation, unreadable files, and the recursive folder listing, against hand-computed pixel values."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infinity_lit.data.images import (
    NAMED_UNREADABLE,
    UnreadableImageError,
    find_images,
    load_rgb,
    report_unreadable,
    to_rgb,
)

#: 16-bit samples and their 8-bit values under the policy (high byte: v >> 8, computed by hand).
SIXTEEN = [0, 255, 256, 257, 32767, 32768, 65280, 65535]
EIGHT = [0, 0, 1, 1, 127, 128, 255, 255]


def png16(samples: np.ndarray, color_type: int, trns: bytes | None = None) -> bytes:
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit colour): ``samples`` uint16 (H, W)
    for grey (colour type 0) or (H, W, C) for RGB (2), grey + alpha (4), RGBA (6)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = samples.shape[:2]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)  # filter 0 per row
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def pixels(im: Image.Image) -> list:
    assert im.mode == "RGB"
    return np.asarray(im).tolist()


# ---------------------------------------------------------------- bit depths


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "grey16.png"
    Image.fromarray(np.array([SIXTEEN], dtype=np.uint16)).save(path)  # Pillow writes I;16 as 16-bit PNG
    with Image.open(path) as im:
        assert im.mode == "I;16"
        assert np.asarray(im).tolist() == [SIXTEEN]
    assert pixels(load_rgb(path)) == [[[v, v, v] for v in EIGHT]]
    # Pillow's own conversion clips at 255: every non-zero sample comes out white.
    with Image.open(path) as im:
        assert np.asarray(im.convert("RGB"))[0, 1:, 0].tolist() == [255] * (len(SIXTEEN) - 1)


def test_every_sixteen_bit_layout_gives_the_same_pixels() -> None:
    grey = np.array([SIXTEEN], dtype=np.uint16)
    expected = [[[v, v, v] for v in EIGHT]]
    big = Image.frombytes("I;16B", (len(SIXTEEN), 1), grey.astype(">u2").tobytes())
    little = Image.frombytes("I;16L", (len(SIXTEEN), 1), grey.astype("<u2").tobytes())
    as_int32 = Image.fromarray(grey.astype(np.int32))
    assert (big.mode, little.mode, as_int32.mode) == ("I;16B", "I;16L", "I")
    for im in (big, little, as_int32):
        assert pixels(to_rgb(im)) == expected, im.mode
    # 16-bit RGB and RGBA files: Pillow keeps each sample's high byte, the same scaling as grey.
    rgb = np.stack([grey, grey[:, ::-1], np.full_like(grey, 1000)], axis=-1)
    r, g = EIGHT, EIGHT[::-1]
    assert pixels(load_rgb(png16(rgb, 2))) == [[[r[i], g[i], 3] for i in range(len(r))]]
    opaque = np.concatenate([rgb, np.full_like(grey, 65535)[..., None]], axis=-1)
    assert pixels(load_rgb(png16(opaque, 6))) == pixels(load_rgb(png16(rgb, 2)))
    grey_alpha = np.stack([grey, np.full_like(grey, 65535)], axis=-1)  # 16-bit grey + opaque alpha
    assert pixels(load_rgb(png16(grey_alpha, 4))) == expected


def test_integer_pixels_beyond_16_bits_and_float_pixels_are_refused() -> None:
    with pytest.raises(UnreadableImageError, match=r"0\.\.70000, outside 0\.\.65535"):
        to_rgb(Image.fromarray(np.array([[0, 70000]], dtype=np.int32)))
    float_tiff = encoded(Image.fromarray(np.array([[0.5]], dtype=np.float32)), "TIFF")
    with pytest.raises(UnreadableImageError, match="mode F"):
        load_rgb(float_tiff)


# ---------------------------------------------------------------- modes and transparency


def test_transparency_is_composited_onto_white() -> None:
    # RGBA: transparent red → white, opaque blue → blue, half-transparent black → 255·(1 − 128/255).
    rgba = Image.new("RGBA", (3, 1))
    for x, value in enumerate([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)]):
        rgba.putpixel((x, 0), value)
    assert pixels(load_rgb(encoded(rgba, "PNG"))) == [[[255, 255, 255], [0, 0, 255], [127, 127, 127]]]
    # α blending by hand over all alphas: out = c·α + 255·(1 − α), within Pillow's rounding.
    for alpha in range(0, 256, 17):
        out = np.asarray(to_rgb(Image.new("RGBA", (1, 1), (100, 50, 0, alpha))))[0, 0]
        a = alpha / 255
        assert np.abs(out - np.array([100, 50, 0]) * a - 255 * (1 - a)).max() <= 0.5 + 1e-9, alpha
    # LA: grey 0 at alpha 0 / 128 / 255.
    la = Image.merge("LA", [Image.new("L", (3, 1), 0), Image.frombytes("L", (3, 1), bytes([0, 128, 255]))])
    assert pixels(load_rgb(encoded(la, "PNG"))) == [[[255, 255, 255], [127, 127, 127], [0, 0, 0]]]
    # Palette with a transparent entry (PNG and GIF): index 0 (red) transparent, index 1 blue.
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putpixel((1, 0), 1)
    for fmt in ("PNG", "GIF"):
        assert pixels(load_rgb(encoded(palette, fmt, transparency=0))) == [[[255, 255, 255], [0, 0, 255]]]
    assert pixels(load_rgb(encoded(palette, "PNG"))) == [[[255, 0, 0], [0, 0, 255]]]  # no tRNS: colours
    # tRNS colours of grey, RGB and 16-bit grey PNGs.
    grey = Image.frombytes("L", (2, 1), bytes([10, 20]))
    assert pixels(load_rgb(encoded(grey, "PNG", transparency=10))) == [[[255, 255, 255], [20, 20, 20]]]
    rgb = Image.frombytes("RGB", (2, 1), bytes([10, 20, 30, 1, 2, 3]))
    assert pixels(load_rgb(encoded(rgb, "PNG", transparency=(10, 20, 30)))) == [[[255, 255, 255], [1, 2, 3]]]
    grey16 = png16(np.array([[0, 32768]], dtype=np.uint16), 0, trns=struct.pack(">H", 0))
    assert pixels(load_rgb(grey16)) == [[[255, 255, 255], [128, 128, 128]]]


def test_grey_one_bit_and_cmyk() -> None:
    assert pixels(load_rgb(encoded(Image.frombytes("L", (2, 1), bytes([0, 77])), "PNG"))) == [
        [[0, 0, 0], [77, 77, 77]]
    ]
    one_bit = Image.fromarray(np.array([[False, True]]))
    assert one_bit.mode == "1"
    assert pixels(load_rgb(encoded(one_bit, "PNG"))) == [[[0, 0, 0], [255, 255, 255]]]
    # CMYK → RGB: R = (255 − C)(255 − K)/255, likewise G (M), B (Y); TIFF keeps CMYK losslessly.
    cmyk = Image.new("CMYK", (3, 1))
    for x, value in enumerate([(0, 255, 255, 0), (0, 0, 0, 128), (100, 50, 0, 100)]):
        cmyk.putpixel((x, 0), value)
    expected = [[255, 0, 0], [127, 127, 127], [round(155 * 155 / 255), round(205 * 155 / 255), 155]]
    assert pixels(load_rgb(encoded(cmyk, "TIFF"))) == [expected]


def test_exif_orientation_is_applied() -> None:
    stored = np.zeros((2, 4, 3), dtype=np.uint8)  # 4 wide, 2 tall; red top-left
    stored[0, 0] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    shown = load_rgb(encoded(Image.fromarray(stored), "PNG", exif=exif))
    assert shown.size == (2, 4)  # (W, H) as displayed
    red = np.argwhere(np.asarray(shown)[..., 0] == 255).tolist()
    assert red == [[0, 1]]  # stored top-left → displayed top-right


# ---------------------------------------------------------------- unreadable files


def truncated_jpeg(path: Path) -> Path:
    """A valid 64×64 JPEG cut to half its bytes."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise), "JPEG")
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_corrupt_and_missing_files_are_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableImageError, match="truncated") as info:
        load_rgb(truncated_jpeg(tmp_path / "cut.jpg"))
    assert "truncated" in info.value.reason and isinstance(info.value, ValueError)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("junk.png", "empty.jpg", "missing.png"):
        with pytest.raises(UnreadableImageError):
            load_rgb(tmp_path / name)


def test_report_unreadable_names_a_few_and_counts_all() -> None:
    assert report_unreadable({}, 3, "imgs") is None
    many = {f"bad{i}.jpg": "image file is truncated" for i in range(NAMED_UNREADABLE + 2)}
    with pytest.warns(UserWarning) as record:
        message = report_unreadable(many, 10, "imgs")
    assert len(record) == 1 and str(record[0].message) == message
    assert message.startswith(f"skipped {NAMED_UNREADABLE + 2} unreadable image(s) in imgs: ")
    assert all(f"bad{i}.jpg (image file is truncated)" in message for i in range(NAMED_UNREADABLE))
    assert f"bad{NAMED_UNREADABLE}.jpg" not in message and message.endswith("; and 2 more")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"none of the 7 image\(s\) in imgs could be read.*remove"):
            report_unreadable(many, 0, "imgs")


# ---------------------------------------------------------------- listing


def test_find_images_is_recursive_sorted_by_relative_path_and_skips_hidden(tmp_path: Path) -> None:
    for rel in ("a-b.png", "a/b.png", "a/c/d.jpg", "B.PNG", "z.tiff", ".hidden.png", ".cache/x.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "dir.png").mkdir()  # a folder named like an image is not a file
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "made.png").write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path, exclude=tmp_path / "out")]
    # By path parts ("a" < "a-b.png"), not by string ("a-b.png" < "a/b.png"); case-sensitive.
    assert found == ["B.PNG", "a/b.png", "a/c/d.jpg", "a-b.png", "z.tiff"]
    assert "out/made.png" in [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_images(tmp_path / "nowhere")

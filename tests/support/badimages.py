"""A corpus of awkward and broken image files, generated from a real sample photo.

``make_corpus(folder)`` writes the files and returns {file name: expected outcome}:
``"embedded"``, ``"rejected:ingest"`` or ``"rejected:embed"``.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import SAMPLE

PHOTO = SAMPLE / "images" / "000000000471.jpg"  # a bus in a street, 640x427


def png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG whose header declares a huge frame but carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def upright_photo() -> Image.Image:
    return Image.open(PHOTO).convert("RGB")


def exif_rotated_jpeg() -> bytes:
    """Pixels stored rotated 90 degrees counter-clockwise, EXIF orientation 6 says how to show them."""
    stored = upright_photo().rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def make_corpus(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    photo = upright_photo()
    small = photo.resize((320, 214))
    original = PHOTO.read_bytes()
    frames = [small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    sixteen = (np.asarray(small.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    files = {
        "zero-bytes.jpg": (b"", "rejected:ingest"),
        "truncated.jpg": (original[: len(original) * 6 // 10], "rejected:embed"),
        "not-an-image.jpg": (b"<html><body>404 not found</body></html>\n" * 20, "rejected:ingest"),
        "bomb.png": (png_with_declared_size(60000, 60000), "rejected:ingest"),
        "alpha.png": (_save(small.convert("RGBA"), "PNG"), "embedded"),
        "palette.png": (_save(small.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), "embedded"),
        "sixteen-bit.png": (_save(Image.fromarray(sixteen), "PNG"), "embedded"),
        "cmyk.jpg": (_save(small.convert("CMYK"), "JPEG"), "embedded"),
        "grayscale.jpg": (_save(small.convert("L"), "JPEG"), "embedded"),
        "exif-rotated.jpg": (exif_rotated_jpeg(), "embedded"),
        "animated.gif": (_save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100), "embedded"),
        "animated.webp": (_save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100), "embedded"),
        "one-pixel.png": (_save(Image.new("RGB", (1, 1), (90, 120, 30)), "PNG"), "embedded"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: outcome for name, (_, outcome) in files.items()}

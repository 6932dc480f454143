"""Decoding images safely: detect by content, refuse bombs, upright, RGB."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps


class ImageRejected(Exception):
    """The bytes are not an image negset can use; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def probe(data: bytes, max_pixels: int) -> ImageInfo:
    """Identify an image from its bytes (header only); refuse what cannot be used."""
    if not data:
        raise ImageRejected("empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "unknown"
            width, height = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:
                orientation = 1
            if orientation in (5, 6, 7, 8):  # stored sideways: report the upright size
                width, height = height, width
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"decompression bomb: {exc}") from None
    except Exception:
        raise ImageRejected("not an image (content not recognised)") from None
    if width * height > max_pixels:
        raise ImageRejected(f"too large: {width}x{height} pixels is over max_image_pixels={max_pixels}")
    if width < 1 or height < 1:
        raise ImageRejected(f"empty frame: {width}x{height}")
    return ImageInfo(fmt, width, height)


def load_rgb(path: Path | str, reduce_to: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode the first frame, upright (EXIF orientation applied), as RGB.

    ``reduce_to`` lets JPEG decode at a reduced scale (draft mode) when the
    result only needs about that many pixels on its shorter side.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
        if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
            raise ImageRejected(f"too large: {im.size[0]}x{im.size[1]} pixels")
        if reduce_to and im.format == "JPEG":
            w, h = im.size
            scale = max(1, min(w, h) // reduce_to)
            if scale > 1:
                im.draft("RGB", (w // scale, h // scale))
        im.load()
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if im.mode == "I;16" or im.mode == "I":
        return im.point(lambda v: v / 256).convert("L").convert("RGB")
    return im.convert("RGB")

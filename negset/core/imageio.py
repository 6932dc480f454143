"""Decoding images safely: detect by content, refuse bombs, upright, RGB."""

from __future__ import annotations

import contextlib
import io
import threading
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


_PIL_LIMIT = threading.Lock()


@contextlib.contextmanager
def _negset_limit(max_pixels: int | None):
    """PIL's own bomb check (2 x ``Image.MAX_IMAGE_PIXELS``) off while negset applies ``max_pixels`` itself.

    Otherwise PIL refuses first, quoting its limit instead of
    ``ingest.max_image_pixels``, and a limit raised above PIL's is never reached.
    Without ``max_pixels`` PIL's check stays.
    """
    if max_pixels is None:
        yield
        return
    with _PIL_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def probe(data: bytes, max_pixels: int) -> ImageInfo:
    """Identify an image from its bytes (header only); refuse what cannot be used."""
    if not data:
        raise ImageRejected("empty file")
    try:
        with _negset_limit(max_pixels), Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "unknown"
            width, height = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:
                orientation = 1
            if orientation in (5, 6, 7, 8):  # stored sideways: report the upright size
                width, height = height, width
    except Exception:
        raise ImageRejected("not an image (content not recognised)") from None
    if width * height > max_pixels:
        raise ImageRejected(f"too large (a possible decompression bomb): {width}x{height} = {width * height:,} pixels "
                            f"is over ingest.max_image_pixels={max_pixels}")
    if width < 1 or height < 1:
        raise ImageRejected(f"empty frame: {width}x{height}")
    return ImageInfo(fmt, width, height)


def load_rgb(path: Path | str, reduce_to: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode the first frame, upright (EXIF orientation applied), as RGB.

    ``reduce_to``: the caller needs only about that many pixels on the shorter
    side, so the image is reduced by the largest whole factor that keeps at
    least that: JPEG decodes at the reduced scale (draft mode), other formats
    are box-reduced right after decoding, before any conversion or statistic
    copies them. Peak memory per image is then one decoded frame (at most
    ``ingest.max_image_pixels`` pixels) plus a small image, whatever the size:
    a 9000 x 9000 PNG went from 2.5 GB and 10.6 s to about 0.3 GB (README "Speed").
    """
    with warnings.catch_warnings(), _negset_limit(max_pixels):
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
        if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
            raise ImageRejected(f"too large: {im.size[0]}x{im.size[1]} pixels")
        scale = max(1, min(im.size) // reduce_to) if reduce_to else 1
        if scale > 1 and im.format == "JPEG":
            w, h = im.size
            im.draft("RGB", (w // scale, h // scale))
            scale = 1  # (draft picked its own scale, at least the size asked)
        im.load()
    if scale > 1:
        im = _reduced(im, scale)
    ImageOps.exif_transpose(im, in_place=True)  # in place: no copy of the frame when it is upright already
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if im.mode == "I;16" or im.mode == "I":
        return im.point(lambda v: v / 256).convert("L").convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")  # RGB already: this decoded frame, not a copy of it


def _reduced(im: Image.Image, scale: int) -> Image.Image:
    """``im`` box-reduced by ``scale`` (each output pixel the mean of a scale x scale block)."""
    info = dict(im.info)
    exif = im.getexif() if hasattr(im, "getexif") else None
    if im.mode not in ("L", "LA", "RGB", "RGBA", "I", "F", "La", "RGBa"):
        im = im.convert("RGBA" if im.mode in ("P", "PA") and ("transparency" in im.info or im.mode == "PA") else
                        "RGB" if im.mode not in ("I;16", "I;16B", "I;16L") else "I")
    out = im.reduce(scale)
    out.info.update(info)  # keeps "transparency" and the EXIF orientation for the steps after this
    if exif is not None and exif.get(0x0112, 1) != 1:
        out.info["exif"] = exif.tobytes()
    return out

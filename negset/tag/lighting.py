"""Lighting tags: luminance statistics, the camera's EXIF, and the classes they make."""

from __future__ import annotations

import numpy as np
from PIL import Image

from negset.core.config import Lighting
from negset.tag import percentile
from negset.tag.quality import Grey

LIGHTING_CLASSES = ("dark", "dim", "normal", "bright", "high-contrast")


def luminance_stats(image, grey: Grey | None = None) -> dict:
    """Luminance and colour statistics of an RGB image (0-255 scale); ``grey``: its ``Grey``, when the caller
    has it already (the tag step shares one with the quality checks)."""
    grey = grey or Grey.of(image)
    gray_u8, counts = grey.levels, grey.counts
    gray_f = gray_u8.astype(np.float32)
    # what np.percentile(gray_f, [5, 50, 95]) gives, from the grey-level histogram (negset/tag/percentile.py)
    p5, p50, p95 = percentile.from_counts(counts, [5, 50, 95])
    n = gray_u8.size
    rgb = np.asarray(image, dtype=np.float32)
    mean_r = float(rgb[..., 0].mean()) if rgb.ndim == 3 else float(gray_f.mean())
    mean_b = float(rgb[..., 2].mean()) if rgb.ndim == 3 else float(gray_f.mean())
    return dict(
        luma_mean=float(gray_f.mean()),
        luma_p5=float(p5),
        luma_p50=float(p50),
        luma_p95=float(p95),
        luma_std=float(gray_f.std()),
        clipped_dark=float(counts[:6].sum() / n),
        clipped_bright=float(counts[250:].sum() / n),
        contrast=float((p95 - p5) / 255.0),
        rb_ratio=float((mean_r + 1.0) / (mean_b + 1.0)),
    )


EXIF_IFD = 0x8769
EXIF_FIELDS = ("exif_exposure_time", "exif_fnumber", "exif_iso", "exif_ev", "exif_flash", "exif_hour")


def _num(value) -> float | None:
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    try:
        out = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def exif_fields(path) -> dict:
    """Exposure time (s), f-number, ISO, EV at ISO 100, flash fired, hour taken; None where absent."""
    out: dict = dict.fromkeys(EXIF_FIELDS)
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            sub = exif.get_ifd(EXIF_IFD)
    except Exception:
        return out
    t = _num(sub.get(0x829A))  # ExposureTime
    n = _num(sub.get(0x829D))  # FNumber
    iso = _num(sub.get(0x8827))  # ISOSpeedRatings / PhotographicSensitivity
    out["exif_exposure_time"], out["exif_fnumber"], out["exif_iso"] = t, n, iso
    if t and n:
        out["exif_ev"] = float(np.log2(n * n / t) - np.log2((iso or 100.0) / 100.0))
    flash = sub.get(0x9209)
    if isinstance(flash, int):
        out["exif_flash"] = bool(flash & 1)
    stamp = sub.get(0x9003) or exif.get(0x0132)  # DateTimeOriginal, else DateTime
    if isinstance(stamp, bytes):
        stamp = stamp.decode("ascii", "replace")
    if isinstance(stamp, str) and len(stamp) >= 13:
        try:
            hour = int(stamp.strip()[11:13])
            out["exif_hour"] = hour if 0 <= hour <= 23 else None
        except ValueError:
            pass
    return out


def _conf(distance: float, scale: float) -> float:
    """0.5 on a class threshold (a coin flip between two classes), 1 at ``scale`` or more away."""
    return float(0.5 + 0.5 * min(1.0, max(0.0, distance) / scale))


def pixel_lighting(stats: dict, cfg: Lighting) -> tuple[str, float]:
    """(class, confidence) from the luminance median and spread."""
    median, std = stats["luma_p50"], stats["luma_std"]
    clipped = stats.get("clipped_dark", 0.0) >= cfg.clipped_share and stats.get("clipped_bright", 0.0) >= cfg.clipped_share
    if median < cfg.dark_below:
        return "dark", _conf(cfg.dark_below - median, cfg.confidence_scale)
    if median > cfg.bright_above:
        return "bright", _conf(median - cfg.bright_above, cfg.confidence_scale)
    to_range = min(median - cfg.dark_below, cfg.bright_above - median)
    if std >= cfg.high_contrast_std or clipped:
        margin = to_range if clipped else min(to_range, std - cfg.high_contrast_std)
        return "high-contrast", _conf(margin, cfg.confidence_scale)
    to_hc = cfg.high_contrast_std - std
    if median < cfg.dim_below:
        return "dim", _conf(min(cfg.dim_below - median, median - cfg.dark_below, to_hc), cfg.confidence_scale)
    return "normal", _conf(min(median - cfg.dim_below, cfg.bright_above - median, to_hc), cfg.confidence_scale)


def is_night(hour: int | None, cfg) -> bool:
    if hour is None:
        return False
    if cfg.night_from <= cfg.night_until:
        return cfg.night_from <= hour < cfg.night_until
    return hour >= cfg.night_from or hour < cfg.night_until


_DARKNESS = {"dark": 0, "dim": 1}


def lighting_tag(stats: dict, cfg: Lighting) -> tuple[str, float, str]:
    """(class, confidence, basis): pixels, made darker by the EXIF scene light when present.

    A photo is exposed for its scene, so a night or low-light shot can look
    normal in pixels; a low exposure value (EV at ISO 100) or a night-time
    hour says the scene was dark or dim. EXIF never makes a class brighter.
    """
    cls, conf = pixel_lighting(stats, cfg)
    ex = cfg.exif
    if not ex.use:
        return cls, conf, "pixels"
    ev = stats.get("exif_ev")
    exif_cls, exif_conf = None, 0.0
    if ev is not None and ev < ex.dim_ev:
        if ev < ex.dark_ev:
            exif_cls, exif_conf = "dark", _conf(ex.dark_ev - ev, 2.0)
        else:
            exif_cls, exif_conf = "dim", _conf(min(ex.dim_ev - ev, ev - ex.dark_ev), 2.0)
    elif ev is None and is_night(stats.get("exif_hour"), ex):
        exif_cls, exif_conf = ex.night_class, 0.6  # the hour alone: the scene may be lit
    if exif_cls is not None and _DARKNESS[exif_cls] < _DARKNESS.get(cls, 2):
        return exif_cls, exif_conf, "exif"
    return cls, conf, "pixels"


def color_temperature(stats: dict, cfg: Lighting) -> str:
    r = stats["rb_ratio"]
    return "warm" if r > cfg.warm_above else "cool" if r < cfg.cool_below else "neutral"

"""Regenerate docs/lighting/ thumbnails and the table in docs/lighting.md from examples/coco-sample.

Only the licensed sample photos (examples/coco-sample, see its ATTRIBUTION.md) are used.
Run from the repository root: python docs/make_lighting_examples.py
"""

from __future__ import annotations

from pathlib import Path

from negset.core.config import Lighting
from negset.core.imageio import load_rgb
from negset.tag.lighting import LIGHTING_CLASSES, color_temperature, luminance_stats, pixel_lighting

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "coco-sample" / "images"
OUT = ROOT / "docs" / "lighting"
PER_CLASS = 2


def main() -> None:
    cfg = Lighting()
    rows = []
    for path in sorted(SAMPLE.glob("*.jpg")):
        image = load_rgb(path, reduce_to=256)
        st = luminance_stats(image)
        cls, conf = pixel_lighting(st, cfg)
        rows.append((path, image, st, cls, conf))
    OUT.mkdir(parents=True, exist_ok=True)
    lines = ["| class | thumbnail | file | confidence | median | std | clipped black / white | colour |", "|---|---|---|---|---|---|---|---|"]
    for cls in LIGHTING_CLASSES:
        members = sorted((r for r in rows if r[3] == cls), key=lambda r: -r[4])[:PER_CLASS]
        label = cls
        if not members:  # show the nearest sample photo, and which rule took it
            members = sorted(rows, key=lambda r: -r[2]["luma_std"])[:1]
            label = f"{cls}: none in the sample; the highest std is {members[0][3]} (median rule first)"
        for path, image, st, _, conf in members:
            thumb = image.copy()
            thumb.thumbnail((160, 160))
            name = f"{cls}-{path.stem}.jpg" if label == cls else f"nearest-{cls}-{path.stem}.jpg"
            thumb.save(OUT / name, quality=80)
            lines.append(
                f"| {label} | ![{path.name}](lighting/{name}) | {path.name} | {conf:.2f} | {st['luma_p50']:.0f} | "
                f"{st['luma_std']:.0f} | {st['clipped_dark']:.2f} / {st['clipped_bright']:.2f} | "
                f"{color_temperature(st, cfg)} ({st['rb_ratio']:.2f}) |"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()

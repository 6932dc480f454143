"""Issue 18, case 6: a huge image just under ingest.max_image_pixels costs a bounded amount of memory.

Before: a 9000 x 9000 PNG cost the tag step's per-image statistics 2.5 GB and 10.6 s on the
development machine (3.0 GB and 14 s in the issue); now about 0.35 GB and 2.4 s. Every consumer that
needs fewer pixels (tag 256 px, embed 224 px, report thumbnails 160 px) decodes through the same
reduction, so the check runs for each.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

SIDE = 9000  # 81 Mpx, under the default ingest.max_image_pixels (89,478,485)
DECODED_MB = SIDE * SIDE * 3 / 2**20  # one RGB frame: 232 MiB

MEASURE = r"""
import json, sys, time
from negset.core.imageio import load_rgb
from negset.tag import quality
from negset.tag.lighting import exif_fields, luminance_stats
path, reduce_to = sys.argv[1], int(sys.argv[2])
start = time.monotonic()
image = load_rgb(path, reduce_to=reduce_to)
stats = {**luminance_stats(image), **quality.pixel_features(image), **exif_fields(path)} if reduce_to == 256 else {}
# VmHWM: this program's peak resident memory (ru_maxrss would also count the forking parent's pages)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(json.dumps(dict(seconds=time.monotonic() - start, size=image.size, stats=stats, peak_mb=int(hwm) / 1024)))
"""


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    ramp = (np.arange(SIDE) * 255 // SIDE).astype(np.uint8)
    pixels = np.empty((SIDE, SIDE, 3), np.uint8)  # (built in place: the test's own memory stays small too)
    pixels[..., 0] = ramp[None, :]
    pixels[..., 1] = ramp[:, None]
    pixels[..., 2] = 128
    pixels[::7, ::5] = 255 - pixels[::7, ::5]  # some detail
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.fromarray(pixels).save(path, compress_level=1)
    return path


def measure(path, reduce_to: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(reduce_to)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("consumer, reduce_to", [("tag", 256), ("embed", 224), ("report", 160)])
def test_peak_memory_is_one_decoded_frame_not_a_pile_of_copies(huge_png, consumer, reduce_to):
    got = measure(huge_png, reduce_to)
    assert min(got["size"]) >= reduce_to and min(got["size"]) < 2 * reduce_to  # reduced, not below what is asked
    # the decoded frame, the interpreter and numpy/PIL: far from the 2.5 GB of full-size float copies
    assert got["peak_mb"] < DECODED_MB + 400, got


def test_statistics_of_the_reduced_decode_match_those_of_a_reduced_image(huge_png, tmp_path):
    """The tag step sees what it would see in a JPEG's reduced decode: the image at about 256 px."""
    got = measure(huge_png, 256)["stats"]
    small = tmp_path / "small.png"
    with Image.open(huge_png) as im:
        im.reduce(SIDE // 256).save(small)
    want = measure(small, 256)["stats"]
    for key in ("luma_p50", "luma_mean", "luma_std", "q_dark", "q_blurry", "dhash"):
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-6), key

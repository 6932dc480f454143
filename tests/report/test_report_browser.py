"""The demo's report opened in a real headless Chromium (Debian's package, installed here when missing)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

from tests.support.browser import file_url


def test_demo_report_loads_offline_with_images_and_charts(browser, built_project, tmp_path):
    report = built_project / "data" / "negatives" / "report.html"
    url = file_url(report)
    page = browser.open(url)

    assert page.errors == []
    assert [r for r in page.requests if not r.startswith("data:")] == [url]  # the file itself, nothing else
    dom = page.dom
    assert dom["title"] == "negset report"
    assert dom["images"] >= 8 and dom["images_loaded"] == dom["images"]
    assert dom["image_srcs"] == ["data:image/jpeg;base64,"]
    assert dom["svgs"] >= 5 and dom["svg_bars"] >= 20
    assert dom["sections"] == ["strata", "hardness", "thumbs", "hardest", "rejected", "quarantine", "run", "manifest"]

    from PIL import Image, ImageStat

    shot = Image.open(io.BytesIO(page.screenshot))
    assert shot.format == "PNG" and shot.width == 1280 and shot.height > 2000
    assert max(ImageStat.Stat(shot.convert("L")).stddev) > 20  # not a blank page
    out = tmp_path / "report.png"
    out.write_bytes(page.screenshot)
    keep = os.environ.get("NEGSET_TEST_ARTIFACTS")  # CI or a reviewer can keep the screenshot
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, Path(keep) / "report.png")
    assert out.stat().st_size > 50_000


def test_the_checks_catch_requests_and_console_errors(browser, tmp_path):
    """A page that fetches and logs an error is caught, so the report's clean result means something."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><head><title>bad</title></head><body>'
        '<img src="http://127.0.0.1:9/pixel.png"><script>console.error("boom")</script></body></html>'
    )
    page = browser.open(file_url(bad), screenshot=False)
    assert "http://127.0.0.1:9/pixel.png" in page.requests
    assert any("boom" in e for e in page.console_errors)
    assert page.dom["images_loaded"] == 0

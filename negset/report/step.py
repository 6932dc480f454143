"""Step 6, report: what a person looks at to judge the negative set.

Writes ``data/negatives/report.html``, ONE self-contained file that opens
offline: inline CSS, inline SVG charts, thumbnails as base64 JPEG ``data:``
URIs, no script and a Content-Security-Policy that forbids every request
other than ``data:`` images. It shows the strata of positives and negatives
side by side, the hardness histogram (the hardness the bands used, read
from ``data/select/scores.parquet``: object similarity with region
embeddings, else the mean top-k cosine similarity to the positives),
thumbnails per stratum,
the hardest negatives beside their nearest positive, the rejected images
by rule, the quarantine (``data/select/quarantine.csv`` when present) and
the run record (parameters, model, weights hash, seed, source versions).
The thumbnails of the hardest negatives and of the quarantine carry the
detect step's boxes (``negset/detect/store.py``), the target's in red.

It also writes ``data/negatives/plots/strata.csv`` and ``hardness.csv``,
which ``dvc.yaml`` declares as plots (``dvc plots show``).
The output is deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
from collections import Counter, defaultdict
from pathlib import Path

from negset.core import atomic
from negset.core import parquet as pq
from negset.core.config import Params
from negset.core.errors import missing_input
from negset.core.layout import Layout

log = logging.getLogger("negset.report")

THUMB_PX = 160
PER_STRATUM = 6  # thumbnails per role and stratum
MAX_STRATA_SHOWN = 40
HARDEST = 12
EXAMPLES_PER_RULE = 6
MAX_QUARANTINE = 60
MAX_MANIFEST_ROWS = 500
BINS = 20
# scores.parquet statuses the hardness chart leaves out of "pool not chosen"
NOT_IN_POOL_CHART = ("positive", "chosen", "target_label")

POS_COLOR = "#3b6fb6"
NEG_COLOR = "#e07b24"
POOL_COLOR = "#9aa5b1"

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
:root { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #1d2733; background: #f6f7f9; }
body { margin: 0 auto; max-width: 1180px; padding: 24px 28px 60px; line-height: 1.45; }
h1 { margin: 0 0 4px; font-size: 26px; }
h2 { margin: 36px 0 8px; font-size: 20px; border-bottom: 2px solid #dde2e8; padding-bottom: 4px; }
h3 { margin: 18px 0 6px; font-size: 15px; }
p.lead, p.note { color: #4a5868; margin: 4px 0 12px; }
nav a { margin-right: 14px; color: #3b6fb6; text-decoration: none; font-size: 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 16px 0; }
.card { background: #fff; border: 1px solid #dde2e8; border-radius: 8px; padding: 10px 14px; min-width: 120px; }
.card b { display: block; font-size: 22px; }
.card span { color: #5b6877; font-size: 13px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
.chart { background: #fff; border: 1px solid #dde2e8; border-radius: 8px; padding: 8px 10px; }
.chart h3 { margin: 2px 0 4px; }
svg text { font-size: 11px; fill: #33404d; }
.legend { font-size: 13px; color: #4a5868; margin: 4px 0; }
.sw { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin: 0 4px 0 10px; vertical-align: -1px; }
.stratum { background: #fff; border: 1px solid #dde2e8; border-radius: 8px; padding: 8px 12px; margin: 10px 0; }
.stratum h3 { margin: 2px 0 6px; font-size: 14px; }
.row { display: flex; gap: 14px; flex-wrap: wrap; }
.side { flex: 1 1 440px; }
.side .label { font-size: 12px; color: #5b6877; margin-bottom: 3px; }
.thumbs { display: flex; flex-wrap: wrap; gap: 4px; min-height: 24px; }
figure { margin: 0; }
figure img { display: block; max-width: 160px; max-height: 160px; border-radius: 4px; border: 3px solid transparent; }
figure.pos img { border-color: #3b6fb6; }
figure.neg img { border-color: #e07b24; }
figure.rej img { border-color: #b3261e; }
.boxed { position: relative; display: inline-block; }
.boxed svg { position: absolute; top: 3px; left: 3px; width: calc(100% - 6px); height: calc(100% - 6px); pointer-events: none; }
.boxed rect { fill: none; stroke: #ffd400; stroke-width: 2px; vector-effect: non-scaling-stroke; }
.boxed rect.target { stroke: #ff1f1f; stroke-width: 3px; }
.warning { background: #fff4d6; border-left: 4px solid #e0a400; padding: 6px 10px; }
.boxes-legend { font-size: 12px; color: #445; }
figcaption { font-size: 11px; color: #4a5868; max-width: 160px; overflow-wrap: anywhere; }
.pairs { display: grid; grid-template-columns: repeat(auto-fill, minmax(345px, 1fr)); gap: 10px; }
.pair { background: #fff; border: 1px solid #dde2e8; border-radius: 8px; padding: 8px; display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; }
.pair .sim { flex-basis: 100%; font-size: 12px; color: #1d2733; }
.params { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 0 14px; background: #fff; border: 1px solid #dde2e8; border-radius: 8px; padding: 8px 12px; font-size: 12px; }
.params div { border-bottom: 1px dotted #dde2e8; padding: 2px 0; overflow-wrap: anywhere; }
.params code { color: #1d2733; font-weight: 600; }
table { border-collapse: collapse; background: #fff; font-size: 13px; width: 100%; }
th, td { border: 1px solid #dde2e8; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #eef1f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #fff; border: 1px solid #dde2e8; border-radius: 8px; padding: 10px; font-size: 12px; overflow-x: auto; }
.empty { color: #5b6877; font-style: italic; }
code { font-size: 12px; }
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def thumbnail_uri(path: Path, px: int = THUMB_PX) -> str | None:
    """A small JPEG of the image as a ``data:`` URI (None when it cannot be decoded)."""
    from negset.core.imageio import load_rgb

    try:
        im = load_rgb(path, reduce_to=px)
    except Exception:  # a missing or undecodable file gets no thumbnail, not a failed report
        return None
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=72, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------- charts (SVG)


def _fit(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def bar_chart(title: str, rows: list[tuple[str, float, float]], names: tuple[str, str], unit: str = "share",
              label_chars: int = 46) -> str:
    """Horizontal grouped bars: one row per category, two series (e.g. positives, negatives).

    ``rows`` are (category, a, b) with a and b in [0, 1] (shares) or counts.
    """
    colors = (POS_COLOR, NEG_COLOR) if names[0] == "positives" else (POOL_COLOR, NEG_COLOR)
    label_w = min(330, 12 + 6.4 * max([len(_fit(r[0], label_chars)) for r in rows] + [4]))
    bar_w, row_h = 300, 26
    width = int(label_w + bar_w + 60)
    height = 20 + row_h * max(1, len(rows))
    vmax = max([max(a, b) for _, a, b in rows] + [1e-9])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="bars" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{esc(title)}</title>'
    ]
    for i, (cat, a, b) in enumerate(rows):
        y = 10 + i * row_h
        parts.append(f'<text x="{label_w - 6:.0f}" y="{y + 15}" text-anchor="end">{esc(_fit(cat, label_chars))}<title>{esc(cat)}</title></text>')
        for j, (v, c) in enumerate(((a, colors[0]), (b, colors[1]))):
            w = bar_w * v / vmax
            yy = y + 2 + j * 11
            shown = f"{v:.0%}" if unit == "share" else f"{v:g}"
            parts.append(
                f'<rect x="{label_w:.0f}" y="{yy}" width="{max(w, 0.5):.1f}" height="10" fill="{c}">'
                f"<title>{esc(names[j])} {esc(cat)}: {esc(shown)}</title></rect>"
                f'<text x="{label_w + max(w, 0.5) + 4:.1f}" y="{yy + 9}">{esc(shown)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def histogram_svg(edges: list[float], series: list[tuple[str, list[int], str]], title: str, x_label: str) -> str:
    """Side-by-side histogram bars per bin; each series shown as its share of its own total."""
    width, height, left, bottom, top = 640, 260, 44, 36, 12
    plot_w, plot_h = width - left - 12, height - bottom - top
    nb = len(edges) - 1
    shares = [[c / (sum(counts) or 1) for c in counts] for _, counts, _ in series]
    vmax = max([max(s) for s in shares if s] + [1e-9])
    slot = plot_w / max(1, nb)
    bw = slot * 0.8 / max(1, len(series))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="hist" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{esc(title)}</title>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#8795a5"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#8795a5"/>',
    ]
    for frac in (0.5, 1.0):
        y = top + plot_h - plot_h * frac
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{vmax * frac:.0%}</text>')
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e3e7ec"/>')
    for i in range(nb):
        x0 = left + i * slot + slot * 0.1
        for j, (name, counts, color) in enumerate(series):
            h = plot_h * shares[j][i] / vmax
            parts.append(
                f'<rect x="{x0 + j * bw:.1f}" y="{top + plot_h - h:.1f}" width="{bw:.1f}" height="{max(h, 0):.1f}" fill="{color}">'
                f"<title>{esc(name)}: {counts[i]} in [{edges[i]:.3f}, {edges[i + 1]:.3f})</title></rect>"
            )
    step = max(1, nb // 5)
    for i in range(0, nb + 1, step):
        x = left + i * slot
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{edges[i]:.2f}</text>')
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">{esc(x_label)}</text></svg>'
    )
    return "".join(parts)


def histogram(values: list[float], bins: int = BINS, lo: float | None = None, hi: float | None = None):
    """Counts of ``values`` over ``bins`` equal bins between rounded bounds; returns (edges, counts)."""
    if not values:
        if lo is None or hi is None:
            return [0.0, 1.0], [0]
        return [round(lo + (hi - lo) * i / bins, 6) for i in range(bins + 1)], [0] * bins
    lo = math.floor(min(values) * 20) / 20 if lo is None else lo
    hi = math.ceil(max(values) * 20) / 20 if hi is None else hi
    if hi <= lo:
        hi = lo + 0.05
    edges = [round(lo + (hi - lo) * i / bins, 6) for i in range(bins + 1)]
    counts = [0] * bins
    for v in values:
        i = min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))
        counts[i] += 1
    return edges, counts


# ---------------------------------------------------------------- data


def _read(path: Path, what: str) -> list[dict]:
    if not path.exists():
        raise missing_input(path, what)
    return pq.read_table(path).to_pylist()


def _read_optional(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist() if path.exists() else []


def read_quarantine(path: Path) -> list[dict] | None:
    """Rows of ``quarantine.csv`` (any columns), or None when there is none."""
    if not path.exists():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def gather(layout: Layout) -> dict:
    neg = layout.negatives
    manifest = _read(neg / "manifest.parquet", "the manifest")
    metrics = atomic.read_json(neg / "metrics.json") if (neg / "metrics.json").exists() else {}
    run = atomic.read_json(neg / "run.json") if (neg / "run.json").exists() else {}
    images = _read(layout.ingest / "images.parquet", "the image catalog")
    tags = {r["sha256"]: r for r in _read(layout.tags / "tags.parquet", "the tags")}
    strata = _read(layout.select / "strata.parquet", "the strata table")
    axes = (run.get("params", {}).get("select", {}) or {}).get("strata") or ["lighting", "background", "occlusion"]
    scores = {r["sha256"]: r for r in _read(layout.select / "scores.parquet", "the per-image scores")}
    chosen = [scores[r["sha256"]] for r in manifest if r["sha256"] in scores]
    return dict(
        manifest=manifest,
        metrics=metrics,
        run=run,
        images=images,
        by_sha={r["sha256"]: r for r in images},
        tags=tags,
        strata=strata,
        axes=axes,
        # the hardness the bands used (select's scores.parquet): chosen vs candidates without the target label
        hardness_by=next((r["hardness_by"] for r in scores.values()), "image"),
        top_k=(run.get("params", {}).get("select", {}) or {}).get("top_k", 5),
        hardness={s: r["hardness"] for s, r in scores.items()},
        pool_hardness=[r["hardness"] for r in scores.values()
                       if r["status"] not in NOT_IN_POOL_CHART and r["hardness"] is not None],
        neg_hardness=[r["hardness"] for r in chosen if r["hardness"] is not None],
        nearest={r["sha256"]: (r["nearest_positive"], r["nearest_similarity"]) for r in chosen if r["nearest_positive"]},
        rejected=_read_optional(layout.ingest / "rejected.parquet") + _read_optional(layout.select / "rejected.parquet"),
        quarantine=read_quarantine(layout.select / "quarantine.csv"),
        select_warnings=(json.loads((layout.select / "summary.json").read_text()).get("warnings", [])
                         if (layout.select / "summary.json").exists() else []),
        boxes=detections_to_draw(layout, {r["sha256"] for r in manifest}
                                 | {r["sha256"] for r in read_quarantine(layout.select / "quarantine.csv") or [] if r.get("sha256")}),
    )


BOX_MIN_SCORE = 0.3  # detections drawn on thumbnails: these, and each image's target evidence at any score
BOXES_PER_IMAGE = 8


def detections_to_draw(layout: Layout, shas: set[str]) -> dict[str, list[dict]]:
    """sha256 -> the detect step's boxes to draw (``negset/detect/store.py``): the strongest detections and the
    target evidence (marked ``target``); {} when detect has not run."""
    from negset.detect import store

    if not store.has_run(layout):
        return {}
    out = store.boxes_of(layout, shas, BOX_MIN_SCORE, BOXES_PER_IMAGE)
    for r in store.evidence_of(layout, shas):
        if r["target_box"] is not None and r["target_score"]:
            out.setdefault(r["sha256"], []).append(dict(source=r["target_source"], **{"class": r["target_class"]},
                                                        score=float(r["target_score"]), box=list(r["target_box"]), target=True))
    return out


def stratum_of(tag: dict, axes: list[str]) -> str:
    return " | ".join(str(tag.get(a)) for a in axes)


# ---------------------------------------------------------------- HTML sections


class _Thumbs:
    """Thumbnails by sha256, each encoded once, and kept across runs in data/cache/thumbs/<px>/
    (they depend on the pixels alone): a refresh decodes only images it has not shown before."""

    def __init__(self, layout: Layout):
        from negset.core.cache import row_cache

        self.layout = layout
        self.cache: dict[str, str | None] = {}
        self.stored = row_cache(layout.data / "cache" / "thumbs" / str(THUMB_PX))
        self.new: dict[str, dict] = {}

    def uri(self, sha: str) -> str | None:
        if sha not in self.cache:
            row = self.stored.get(sha)
            if row is not None:
                self.cache[sha] = row["uri"]
            else:
                self.cache[sha] = thumbnail_uri(self.layout.object_path(sha))
                if self.cache[sha] is not None:  # an undecodable file is tried again next time
                    self.new[sha] = {"uri": self.cache[sha]}
        return self.cache[sha]

    def save(self) -> None:
        self.stored.add(self.new)
        self.new = {}

    def figure(self, sha: str | None, caption: str, cls: str, title: str = "", path: Path | None = None,
               boxes: list[dict] | None = None, size: tuple[int, int] | None = None) -> str:
        src = self.uri(sha) if sha else (thumbnail_uri(path) if path is not None else None)
        img = (
            f'<img src="{src}" alt="{esc(caption)}" title="{esc(title or caption)}" loading="eager">'
            if src
            else '<div class="empty">(no preview)</div>'
        )
        if src and boxes and size:
            img = f'<div class="boxed">{img}{boxes_svg(boxes, size)}</div>'
        return f'<figure class="{cls}">{img}<figcaption>{esc(caption)}</figcaption></figure>'


def boxes_svg(boxes: list[dict], size: tuple[int, int]) -> str:
    """The detections as rectangles over a thumbnail (an SVG in the image's pixel coordinates, stretched on it);
    the target's in red. Each rectangle's title names the source, class and score."""
    w, h = size
    rects = []
    for b in boxes:
        x0, y0, x1, y1 = b["box"]
        cls = ' class="target"' if b.get("target") else ""
        rects.append(f'<rect{cls} x="{x0:.1f}" y="{y0:.1f}" width="{max(x1 - x0, 1):.1f}" height="{max(y1 - y0, 1):.1f}">'
                     f'<title>{esc(b["source"])}: {esc(b["class"])} {b["score"]:.2f}</title></rect>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" preserveAspectRatio="none" '
            f'aria-hidden="true">{"".join(rects)}</svg>')


def _name(uri: str) -> str:
    return Path(str(uri).rstrip("/")).name or str(uri)


def section_overview(d: dict) -> str:
    m = d["metrics"]
    run = d["run"]
    cards = [
        (m.get("positives", "?"), "positives"),
        (m.get("candidates", "?"), "candidates in the pool"),
        (m.get("negatives", len(d["manifest"])), "negatives chosen"),
        (m.get("negatives_per_positive", "?"), "negatives per positive"),
        (m.get("strata_tv_distance", "?"), "strata TV distance (0 = same mix)"),
        (len(d["rejected"]), "rejected"),
    ]
    if d["quarantine"] is not None:
        cards.append((len(d["quarantine"]), "quarantined"))
    cards[:0] = review_cards(m)
    target = ", ".join((run.get("params", {}).get("ingest", {}) or {}).get("target", []) or [])
    html_cards = "".join(f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for v, k in cards)
    warnings = "".join(f'<p class="warning">select: {esc(w)}</p>' for w in d.get("select_warnings", []))
    return (
        f"<h1>negset report{': ' + esc(target) if target else ''}</h1>"
        f'<p class="lead">Negatives for the target <b>{esc(target or "?")}</b>: images from the same sources as the '
        "positives, without the target, stratified by lighting, background and occlusion like the positives.</p>"
        f'{warnings}<div class="cards">{html_cards}</div>'
        '<nav><a href="#strata">strata</a><a href="#hardness">hardness</a><a href="#thumbs">thumbnails</a>'
        '<a href="#hardest">hardest</a><a href="#rejected">rejected</a><a href="#quarantine">quarantine</a>'
        '<a href="#run">run</a><a href="#manifest">manifest</a></nav>'
    )


def review_cards(m: dict) -> list[tuple[str, str]]:
    """The audited contamination and the quarantine's review progress (metrics.json, from reviews.csv)."""
    a, r = m.get("audit"), m.get("reviews")
    if not a:
        return []
    if a.get("audited"):
        value = f"\u2264 {100 * a['contamination_upper_95']:.1f}%"
        label = f"contamination at 95%: {a['contain_target']} of {a['audited']} audited contain the target"
    else:
        value, label = "?", "contamination: no chosen negative audited yet (negset review)"
    if not a.get("complete"):
        label += f"; audit incomplete, {a.get('unreviewed')} of {a.get('planned')} not reviewed"
    out = [(value, label)]
    if r:
        out.append((f"{r['quarantine_reviewed']} / {r['quarantined']}", "quarantine reviewed / quarantined"))
    return out


def strata_rows(d: dict) -> list[dict]:
    """One row per stratum with positives and negatives (counts and shares), largest first."""
    rows = [r for r in d["strata"] if r["positives"] or r["chosen"]]
    tp = sum(r["positives"] for r in rows) or 1
    tn = sum(r["chosen"] for r in rows) or 1
    out = [
        dict(stratum=r["stratum"], positives=int(r["positives"]), negatives=int(r["chosen"]),
             positive_share=round(r["positives"] / tp, 4), negative_share=round(r["chosen"] / tn, 4),
             available=int(r["available"]))
        for r in rows
    ]
    out.sort(key=lambda r: (-r["positives"], -r["negatives"], r["stratum"]))
    return out


def axis_shares(d: dict, axis: str) -> list[tuple[str, float, float]]:
    pos = Counter(d["tags"][r["sha256"]][axis] for r in d["images"] if r["role"] == "positive" and r["sha256"] in d["tags"])
    neg = Counter(r.get(axis) for r in d["manifest"])
    tp, tn = sum(pos.values()) or 1, sum(neg.values()) or 1
    keys = sorted(set(pos) | set(neg), key=lambda k: (-(pos[k] / tp + neg[k] / tn), str(k)))
    return [(str(k), pos[k] / tp, neg[k] / tn) for k in keys]


def section_strata(d: dict) -> str:
    legend = (
        f'<div class="legend"><span class="sw" style="background:{POS_COLOR}"></span>positives'
        f'<span class="sw" style="background:{NEG_COLOR}"></span>negatives (share of each set)</div>'
    )
    charts = []
    for axis in d["axes"]:
        charts.append(f'<div class="chart"><h3>{esc(axis)}</h3>{bar_chart(axis, axis_shares(d, axis), ("positives", "negatives"), label_chars=38)}</div>')
    rows = strata_rows(d)
    shown = rows[:MAX_STRATA_SHOWN]
    more = f'<p class="note">{len(rows) - len(shown)} smaller strata not drawn.</p>' if len(rows) > len(shown) else ""
    full = bar_chart(
        "strata", [(r["stratum"], r["positive_share"], r["negative_share"]) for r in shown], ("positives", "negatives"), label_chars=52
    )
    return (
        '<h2 id="strata">Strata: positives and negatives side by side</h2>'
        '<p class="note">Each bar is the share of its set in that stratum; matching bars mean the negatives '
        "look like the positives' context. Hover a bar for its value.</p>"
        f'{legend}<div class="charts">{"".join(charts)}</div>'
        f'<h3>Strata ({" | ".join(esc(a) for a in d["axes"])})</h3><div class="chart">{full}</div>{more}'
    )


def hardness_bins(d: dict) -> tuple[list[float], list[int], list[int]]:
    values = d["neg_hardness"] + d["pool_hardness"]
    edges, _ = histogram(values)
    _, neg = histogram(d["neg_hardness"], lo=edges[0], hi=edges[-1])
    _, pool = histogram(d["pool_hardness"], lo=edges[0], hi=edges[-1])
    return edges, neg, pool


def hardness_meaning(d: dict) -> str:
    """What the hardness the bands used is, in words (select's ``hardness_by``)."""
    if d["hardness_by"] == "regions":
        return "object similarity: the best cosine similarity between the image or one of its crops and a target object of the positives"
    if d["hardness_by"] == "evidence":
        return "detection evidence: a weak target score relative to its calibrated threshold, or a confuser's score (detect step)"
    if d["hardness_by"].startswith("combined:"):
        return (f"combined: the mean percentile rank of the {d['hardness_by'].split(':', 1)[1]} similarity and the detection "
                "evidence (a weak target score relative to its threshold, or a confuser's score)")
    return f"scene similarity: the mean of the top-{d['top_k']} cosine similarities to the positives"


def section_hardness(d: dict) -> str:
    edges, neg, pool = hardness_bins(d)
    svg = histogram_svg(edges, [("negatives", neg, NEG_COLOR), ("pool not chosen", pool, POOL_COLOR)], "hardness histogram",
                        "hardness: " + hardness_meaning(d).split(":")[0])
    vals = sorted(d["neg_hardness"])
    stats = ""
    if vals:
        med = vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
        stats = f"negatives: min {vals[0]:.3f}, median {med:.3f}, max {vals[-1]:.3f}. "
    return (
        '<h2 id="hardness">Hardness</h2>'
        f'<p class="note">Hardness, as the selection\'s bands used it, = {esc(hardness_meaning(d))} '
        "(embedding of the run's model; data/select/scores.parquet). Harder negatives sit further right: they look like the positives "
        f"without containing the target. {esc(stats)}Bars are shares of each set.</p>"
        f'<div class="legend"><span class="sw" style="background:{NEG_COLOR}"></span>negatives chosen'
        f'<span class="sw" style="background:{POOL_COLOR}"></span>candidates not chosen (all but those labelled with the target)</div>'
        f'<div class="chart">{svg}</div>'
    )


def section_thumbs(d: dict, th: _Thumbs) -> str:
    pos_by = defaultdict(list)
    for r in d["images"]:
        if r["role"] == "positive" and r["sha256"] in d["tags"]:
            pos_by[stratum_of(d["tags"][r["sha256"]], d["axes"])].append(r)
    neg_by = defaultdict(list)
    for r in d["manifest"]:
        neg_by[r["stratum"]].append(r)
    rows = strata_rows(d)[:MAX_STRATA_SHOWN]
    parts = [
        '<h2 id="thumbs">Thumbnails per stratum</h2>',
        f'<p class="note">Up to {PER_STRATUM} images per set and stratum; '
        '<span style="color:#3b6fb6">blue</span> = positive, <span style="color:#e07b24">orange</span> = negative.</p>',
    ]
    for r in rows:
        s = r["stratum"]
        pos = sorted(pos_by.get(s, []), key=lambda x: x["uri"])[:PER_STRATUM]
        neg = neg_by.get(s, [])[:PER_STRATUM]
        pos_html = "".join(th.figure(x["sha256"], _name(x["uri"]), "pos", x["uri"]) for x in pos) or '<span class="empty">none</span>'
        neg_html = "".join(
            th.figure(x["sha256"], f"{_name(x['uri'])} ({d['hardness'][x['sha256']]:.2f})", "neg", x["reason"]) for x in neg
        ) or '<span class="empty">none</span>'
        parts.append(
            f'<div class="stratum"><h3>{esc(s)}</h3><div class="row">'
            f'<div class="side"><div class="label">positives: {r["positives"]}</div><div class="thumbs">{pos_html}</div></div>'
            f'<div class="side"><div class="label">negatives: {r["negatives"]} (available {r["available"]})</div>'
            f'<div class="thumbs">{neg_html}</div></div></div></div>'
        )
    return "".join(parts)


def hardest(d: dict) -> list[dict]:
    rows = []
    for r in d["manifest"]:
        near = d["nearest"].get(r["sha256"])
        if near:
            rows.append(dict(r, nearest_sha=near[0], nearest_similarity=near[1]))
    rows.sort(key=lambda r: (-r["nearest_similarity"], r["sha256"]))
    return rows[:HARDEST]


def section_hardest(d: dict, th: _Thumbs) -> str:
    rows = hardest(d)
    if not rows:
        return '<h2 id="hardest">Hardest negatives</h2><p class="empty">No negatives.</p>'
    parts = [
        '<h2 id="hardest">Hardest negatives, each beside its nearest positive</h2>',
        '<p class="note">Sorted by cosine similarity to the nearest positive. Check that none of them contains the target. '
        + BOX_LEGEND + '</p>',
        '<div class="pairs">',
    ]
    for r in rows:
        p = d["by_sha"].get(r["nearest_sha"], {})
        parts.append(
            '<div class="pair">'
            + th.figure(r["sha256"], f"negative: {_name(r['uri'])}", "neg", r["uri"], boxes=d["boxes"].get(r["sha256"]),
                        size=_size(d, r["sha256"]))
            + th.figure(r["nearest_sha"], f"positive: {_name(p.get('uri', r['nearest_sha']))}", "pos", p.get("uri", ""))
            + f'<div class="sim">cosine to the nearest positive <b>{r["nearest_similarity"]:.3f}</b>, '
            f'hardness {d["hardness"][r["sha256"]]:.3f} ({esc(d["hardness_by"])}), scene similarity {r["pos_similarity"]:.3f}'
            f'<br>{esc(r["stratum"])}</div></div>'
        )
    parts.append("</div>")
    return "".join(parts)


BOX_LEGEND = (f'<span class="boxes-legend">Boxes: the detect step\'s detections scoring {BOX_MIN_SCORE} or more (yellow) and '
              'the strongest detection of the target at any score (red); hover a box for its source, class and score.</span>')


def _size(d: dict, sha: str) -> tuple[int, int] | None:
    im = d["by_sha"].get(sha)
    return (int(im["width"]), int(im["height"])) if im and im.get("width") and im.get("height") else None


def section_rejected(d: dict, th: _Thumbs) -> str:
    parts = ['<h2 id="rejected">Rejected, by rule</h2>']
    rej = d["rejected"]
    if not rej:
        parts.append('<p class="empty">Nothing was rejected: every source object was a usable image and no candidate was labelled with the target.</p>')
        return "".join(parts)
    groups = defaultdict(list)
    for r in rej:
        groups[(r.get("step") or "?", r.get("rule") or "?")].append(r)
    parts.append("<table><tr><th>step</th><th>rule</th><th>count</th><th>first reason</th></tr>")
    for (step, rule), rows in sorted(groups.items()):
        parts.append(
            f'<tr><td>{esc(step)}</td><td>{esc(rule)}</td><td class="num">{len(rows)}</td><td>{esc(rows[0].get("reason"))}</td></tr>'
        )
    parts.append("</table>")
    for (step, rule), rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda r: str(r.get("uri")))
        figs = []
        for r in rows[:EXAMPLES_PER_RULE]:
            sha = r.get("sha256")
            caption = f"{_name(r.get('uri', ''))}: {r.get('reason', '')}"
            if sha:
                figs.append(th.figure(sha, caption, "rej", r.get("uri", "")))
            else:  # not an image: no thumbnail, just what it was and why
                figs.append(f'<figure class="rej"><div class="empty">(not an image)</div><figcaption>{esc(caption)}</figcaption></figure>')
        parts.append(f'<h3>{esc(step)} / {esc(rule)}: {len(rows)}</h3><div class="thumbs">{"".join(figs)}</div>')
    return "".join(parts)


def section_quarantine(d: dict, th: _Thumbs, layout: Layout) -> str:
    q = d["quarantine"]
    head = '<h2 id="quarantine">Quarantine</h2>'
    if q is None:
        return head + '<p class="empty">No quarantine file (data/select/quarantine.csv) in this build.</p>'
    if not q:
        return head + '<p class="empty">The quarantine is empty.</p>'
    cols = list(q[0].keys())
    parts = [head, f'<p class="note">{len(q)} suspected unlabelled positives held back from the set; showing up to {MAX_QUARANTINE}. '
             f'{BOX_LEGEND}</p><table><tr><th>image</th>']
    parts += [f"<th>{esc(c)}</th>" for c in cols]
    parts.append("</tr>")
    for r in q[:MAX_QUARANTINE]:
        sha = r.get("sha256")
        path = None
        if not (sha and layout.object_path(sha).exists()):
            sha = None
            uri = r.get("uri") or r.get("path")
            if uri:
                path = layout.resolve_uri(uri)
        fig = th.figure(sha, "", "rej", r.get("uri", ""), path=path, boxes=d["boxes"].get(sha) if sha else None,
                        size=_size(d, sha) if sha else None)
        cells = "".join(
            f'<td title="{esc(r.get(c))}">{esc(str(r.get(c))[:12])}</td>' if c == "sha256" else f"<td>{esc(r.get(c))}</td>"
            for c in cols
        )
        parts.append(f"<tr><td>{fig}</td>{cells}</tr>")
    parts.append("</table>")
    return "".join(parts)


def section_run(d: dict) -> str:
    run = d["run"]
    model = run.get("model", {}) or {}
    versions = Counter((r.get("source"), r.get("version") or "(pinned by sha256)") for r in d["manifest"])
    facts = [
        ("negset version", run.get("negset")),
        ("model", f"{model.get('model')} ({model.get('arch')}, {model.get('dim')}-d, {model.get('image_size')} px)"),
        ("weights file", model.get("weights_file")),
        ("weights sha256", model.get("weights_sha256")),
        ("selection seed", run.get("seed")),
        ("ingest manifest sha256", run.get("ingest_manifest_sha256")),
        ("sources", ", ".join(map(str, (run.get("ingest", {}) or {}).get("sources", []) or []))),
    ]
    rows = "".join(f"<tr><th>{esc(k)}</th><td><code>{esc(v)}</code></td></tr>" for k, v in facts)
    vrows = "".join(
        f'<tr><td>{esc(s)}</td><td><code>{esc(v)}</code></td><td class="num">{n}</td></tr>' for (s, v), n in sorted(versions.items(), key=str)
    )
    params = "".join(
        f"<div>{esc(k)} = <code>{esc(json.dumps(v))}</code></div>" for k, v in flatten(run.get("params", {}) or {})
    )
    return (
        '<h2 id="run">Run</h2><table>' + rows + "</table>"
        "<h3>Source versions of the negatives</h3><table><tr><th>source</th><th>version</th><th>images</th></tr>"
        + vrows + "</table>"
        f'<h3>Parameters (params.yaml as run)</h3><div class="params">{params}</div>'
    )


def flatten(obj: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested parameters as (dotted.key, value) pairs, sorted."""
    out = []
    for k in sorted(obj):
        v = obj[k]
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def section_manifest(d: dict) -> str:
    cols = ["uri", "sha256", "version", "stratum", "pos_similarity", "hardness", "rule", "reason"]
    heads = {"pos_similarity": "scene similarity", "hardness": f"hardness ({d['hardness_by']})"}
    rows = []
    for r in d["manifest"][:MAX_MANIFEST_ROWS]:
        cells = []
        for c in cols:
            v = d["hardness"].get(r["sha256"]) if c == "hardness" else r.get(c)
            if c == "sha256":
                v = str(v)[:12]
            if c == "version" and not v:
                v = "(local file)"
            if c in heads and v is not None:
                cells.append(f'<td class="num">{v:.3f}</td>')
                continue
            cells.append(f"<td>{esc(v)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{esc(heads.get(c, c))}</th>" for c in cols)
    n = len(d["manifest"])
    shown = f" The first {MAX_MANIFEST_ROWS} of {n} rows." if n > MAX_MANIFEST_ROWS else ""
    return (
        '<h2 id="manifest">Manifest</h2><p class="note">data/negatives/manifest.parquet (and manifest.csv): '
        f"one row per negative.{shown}</p><table><tr>{head}</tr>{''.join(rows)}</table>"
    )


def render(layout: Layout, d: dict | None = None) -> str:
    d = d if d is not None else gather(layout)
    th = _Thumbs(layout)
    body = "".join(
        [
            section_overview(d),
            section_strata(d),
            section_hardness(d),
            section_thumbs(d, th),
            section_hardest(d, th),
            section_rejected(d, th),
            section_quarantine(d, th, layout),
            section_run(d),
            section_manifest(d),
        ]
    )
    th.save()
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>negset report</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


# ---------------------------------------------------------------- DVC plots


def write_plots(layout: Layout, d: dict) -> dict[str, Path]:
    folder = layout.negatives / "plots"
    strata = strata_rows(d)
    edges, neg, pool = hardness_bins(d)
    out = {}

    def write_csv(name: str, header: list[str], rows: list[list]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        atomic.write_text(folder / name, buf.getvalue())
        out[name] = folder / name

    write_csv(
        "strata.csv",
        ["stratum", "set", "count", "share"],
        [[r["stratum"], "positives", r["positives"], r["positive_share"]] for r in strata]
        + [[r["stratum"], "negatives", r["negatives"], r["negative_share"]] for r in strata],
    )
    tn, tp = sum(neg) or 1, sum(pool) or 1
    centres = [round((edges[i] + edges[i + 1]) / 2, 4) for i in range(len(neg))]
    write_csv(
        "hardness.csv",
        ["hardness", "set", "count", "share"],
        [[c, "negatives", n, round(n / tn, 4)] for c, n in zip(centres, neg)]
        + [[c, "pool not chosen", n, round(n / tp, 4)] for c, n in zip(centres, pool)],
    )
    return out


def run(params: Params, layout: Layout) -> dict:
    d = gather(layout)
    page = render(layout, d)
    atomic.write_text(layout.negatives / "report.html", page)
    plots = write_plots(layout, d)
    summary = dict(
        report=layout.uri(layout.negatives / "report.html"),
        bytes=len(page.encode("utf-8")),
        negatives=len(d["manifest"]),
        strata=len(strata_rows(d)),
        rejected=len(d["rejected"]),
        quarantined=None if d["quarantine"] is None else len(d["quarantine"]),
        plots=sorted(layout.uri(p) for p in plots.values()),
    )
    log.info("report: %s (%d KiB)", layout.negatives / "report.html", summary["bytes"] // 1024)
    return summary

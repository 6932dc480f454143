"""``negset check-tags``: how well the tags agree with ground truth on a labelled project.

Run after ``negset tag`` on a project whose images have COCO panoptic labels
(for example one built over COCO128). Three checks, each printed as a table
and written to ``data/tags/agreement.json``:

- background: the *computed* clusters (``background_cluster``, never the
  annotation-sourced tag, which would be circular) against the panoptic
  stuff labels. Indoor/outdoor accuracy with each cluster mapped to its
  majority label (in sample, and leave-one-out: each image's cluster label
  decided without that image), beside the always-the-majority baseline;
  cluster purity and adjusted mutual information against the dominant stuff
  class.
- lighting: the *computed* class (``lighting_computed``) against a CSV of
  labels made by looking at the photos (``file,lighting,note``).
- occlusion: the tag from box labels against occlusion measured from the
  panoptic masks: per object, its mask touching the frame border, or other
  objects' pixels covering its mask's bounding box; the same share rule
  turns these into none/partial/heavy. The masks are a different annotation
  (pixels, not rectangles) of the same objects: the "cut by the frame" half
  is nearly the same geometry, only the "covered" half is a different
  measurement; see README "Tags".
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from negset.core import atomic
from negset.core.config import Occlusion, Params
from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.tag.sources import file_name, load_panoptic

DEFAULT_LIGHTING_LABELS = Path(__file__).resolve().parents[2] / "examples" / "lighting-labels-coco128.csv"


# ------------------------------------------------------------------ metrics


def contingency(a: list, b: list) -> np.ndarray:
    ua = {v: i for i, v in enumerate(sorted(set(a), key=str))}
    ub = {v: i for i, v in enumerate(sorted(set(b), key=str))}
    m = np.zeros((len(ua), len(ub)), dtype=np.int64)
    for x, y in zip(a, b):
        m[ua[x], ub[y]] += 1
    return m


def _entropy(counts: np.ndarray) -> float:
    n = counts.sum()
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def mutual_information(m: np.ndarray) -> float:
    n = m.sum()
    a, b = m.sum(axis=1), m.sum(axis=0)
    nz = m > 0
    outer = np.outer(a, b)
    return float((m[nz] / n * np.log(n * m[nz] / outer[nz])).sum())


def expected_mutual_information(m: np.ndarray) -> float:
    """E[MI] of two labelings with the row and column sums of ``m`` under random permutation (hypergeometric)."""
    n = int(m.sum())
    a, b = m.sum(axis=1).astype(int), m.sum(axis=0).astype(int)
    lg = [math.lgamma(k + 1) for k in range(n + 1)]  # log k!
    emi = 0.0
    for ai in a:
        for bj in b:
            lo, hi = max(1, ai + bj - n), min(ai, bj)
            for nij in range(lo, hi + 1):
                term = nij / n * math.log(n * nij / (ai * bj))
                logp = (lg[ai] + lg[bj] + lg[n - ai] + lg[n - bj]
                        - lg[n] - lg[nij] - lg[ai - nij] - lg[bj - nij] - lg[n - ai - bj + nij])
                emi += term * math.exp(logp)
    return emi


def adjusted_mutual_information(a: list, b: list) -> float:
    """AMI with the arithmetic mean of the entropies (1: identical partitions, ~0: independent)."""
    m = contingency(a, b)
    if m.shape[0] == m.shape[1] == 1 or m.sum() == 0:
        return 1.0
    mi = mutual_information(m)
    emi = expected_mutual_information(m)
    h = (_entropy(m.sum(axis=1)) + _entropy(m.sum(axis=0))) / 2
    denom = h - emi
    if abs(denom) < 1e-12:
        return 0.0
    return float((mi - emi) / denom)


def purity(clusters: list, truth: list) -> float:
    m = contingency(clusters, truth)
    return float(m.max(axis=1).sum() / m.sum()) if m.size else 0.0


def majority_map(clusters: list, truth: list) -> dict:
    by: dict = defaultdict(Counter)
    for c, t in zip(clusters, truth):
        by[c][t] += 1
    return {c: sorted(cnt.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0] for c, cnt in by.items()}


def majority_accuracy(clusters: list, truth: list) -> tuple[float, float]:
    """(in-sample, leave-one-out) accuracy of predicting each image's label by its cluster's majority."""
    if not truth:
        return 0.0, 0.0
    mapping = majority_map(clusters, truth)
    ins = sum(mapping[c] == t for c, t in zip(clusters, truth)) / len(truth)
    overall = sorted(Counter(truth).items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0]
    by: dict = defaultdict(Counter)
    for c, t in zip(clusters, truth):
        by[c][t] += 1
    hits = 0
    for c, t in zip(clusters, truth):
        rest = by[c].copy()
        rest[t] -= 1
        rest = {k: v for k, v in rest.items() if v > 0}
        guess = sorted(rest.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0] if rest else overall
        hits += guess == t
    return float(ins), float(hits / len(truth))


def leave_one_out_guesses(clusters: list, truth: list) -> list:
    """Each image's label guessed by the majority of the OTHER images of its cluster (overall majority when alone)."""
    overall = sorted(Counter(truth).items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0] if truth else None
    by: dict = defaultdict(Counter)
    for c, t in zip(clusters, truth):
        by[c][t] += 1
    out = []
    for c, t in zip(clusters, truth):
        rest = by[c].copy()
        rest[t] -= 1
        rest = {k: v for k, v in rest.items() if v > 0}
        out.append(sorted(rest.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0] if rest else overall)
    return out


def scene_agreement(rows: list[tuple[str | None, str | None, int]], truth: list[str]) -> dict:
    """Indoor/outdoor from detected objects vs ground truth; rows: (detected side, cluster name, cluster id).

    Three readings: the detected side where it speaks (coverage beside it); that,
    else the cluster's leave-one-out majority (every image); the side of the
    cluster's scene name ("bg2: street" -> outdoor) where the cluster has one.
    """
    from negset.tag.scene import SCENES

    said = [(p, t) for (p, _, _), t in zip(rows, truth) if p]
    loo = leave_one_out_guesses([c for _, _, c in rows], truth)
    combined = [p if p else g for (p, _, _), g in zip(rows, loo)]
    named = [(SCENES[n.split(": ", 1)[1]][0], t) for (_, n, _), t in zip(rows, truth)
             if n and ": " in n and n.split(": ", 1)[1] in SCENES]
    return dict(
        detected_images=len(said), coverage=len(said) / len(truth) if truth else 0.0,
        detected_accuracy=sum(p == t for p, t in said) / len(said) if said else 0.0,
        detected_else_clusters_loo=sum(p == t for p, t in zip(combined, truth)) / len(truth) if truth else 0.0,
        scene_named_images=len(named),
        scene_named_accuracy=sum(p == t for p, t in named) / len(named) if named else 0.0,
    )


def confusion(truth: list, pred: list, classes: list[str]) -> dict:
    """{truth: {pred: count}} over ``classes`` (rows: ground truth)."""
    out = {t: {p: 0 for p in classes} for t in classes}
    for t, p in zip(truth, pred):
        out.setdefault(t, {q: 0 for q in classes}).setdefault(p, 0)
        out[t][p] += 1
    return out


def cohen_kappa(truth: list, pred: list) -> float:
    n = len(truth)
    if not n:
        return 0.0
    po = sum(t == p for t, p in zip(truth, pred)) / n
    ct, cp = Counter(truth), Counter(pred)
    pe = sum(ct[k] * cp.get(k, 0) for k in ct) / (n * n)
    return float((po - pe) / (1 - pe)) if pe < 1 else 1.0


# ------------------------------------------------------------ occlusion from masks


def panoptic_ids(png: np.ndarray) -> np.ndarray:
    png = png.astype(np.int64)
    return png[..., 0] + 256 * png[..., 1] + 256 * 256 * png[..., 2]


def mask_occlusion(ids: np.ndarray, segments: list[dict], cats: dict, cfg: Occlusion) -> tuple[str, float, int, int]:
    """(class, share, objects cut by the frame, objects covered) from a panoptic segment-id image."""
    h, w = ids.shape
    mx, my = max(1, int(round(cfg.edge_margin * w))), max(1, int(round(cfg.edge_margin * h)))
    things = [s for s in segments if cats[int(s["category_id"])].get("isthing") and not s.get("iscrowd")]
    if not things:
        return "none", 0.0, 0, 0
    thing_ids = np.isin(ids, [int(s["id"]) for s in segments if cats[int(s["category_id"])].get("isthing")])
    cut = covered = occluded = seen = 0
    for s in things:
        mask = ids == int(s["id"])
        if not mask.any():
            continue
        seen += 1
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        is_cut = y0 < my or x0 < mx or y1 > h - my or x1 > w - mx
        box = thing_ids[y0:y1, x0:x1] & ~mask[y0:y1, x0:x1]
        is_covered = box.mean() >= cfg.overlap
        cut += bool(is_cut)
        covered += bool(is_covered)
        occluded += bool(is_cut or is_covered)
    share = occluded / max(seen, 1)
    if share == 0:
        return "none", 0.0, cut, covered
    return ("heavy" if share >= cfg.heavy_share else "partial"), share, cut, covered


# --------------------------------------------------------------------- the check


def _read_lighting_labels(path: Path) -> dict[str, tuple[str, str]]:
    from negset.tag.lighting import LIGHTING_CLASSES

    if not path.is_file():
        raise NegsetError(f"{path}: lighting labels file not found", hint="pass --lighting-labels FILE (columns file,lighting,note)")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for n, row in enumerate(rows, start=2):
        if not row.get("file") or row.get("lighting") not in LIGHTING_CLASSES:
            raise NegsetError(f"{path}: row {n}: expected a file name and a lighting class, got {row!r}",
                              hint=f"lighting is one of {', '.join(LIGHTING_CLASSES)}")
        out[row["file"].strip()] = (row["lighting"], row.get("note") or "")
    if not out:
        raise NegsetError(f"{path}: no lighting labels in the file", hint="one row per image, columns file,lighting,note")
    return out


def _examples(names, n: int = 3) -> str:
    first = sorted(names)[:n]
    return ", ".join(first) + (", ..." if len(names) > n else "")


def _match_lighting_labels(path: Path, labels: dict[str, tuple[str, str]], unique: dict[str, str]) -> list[tuple[str, str]]:
    """(file name, hand label) of the labels that name an image of this project; an error when none does
    (accuracy over no image would read as a tag that is always wrong)."""
    matched = [(name, lab) for name, (lab, _) in sorted(labels.items()) if name in unique]
    if not matched:
        raise NegsetError(
            f"{path}: none of its {len(labels)} lighting labels names an image of this project "
            f"(labels name {_examples(labels)}; the {len(unique)} images here are {_examples(unique) or 'none'})",
            hint="the file column holds image file names as ingested (the last part of their uri); "
                 "pass --lighting-labels with labels of this project's images",
        )
    return matched


def _lighting_agreement(path: Path, labels: dict, hand: list[tuple[str, str]], tag_of: dict[str, dict]) -> dict:
    """The computed lighting class against the hand labels ``hand`` (file name, label) read from ``path``."""
    from negset.tag.lighting import LIGHTING_CLASSES

    pairs = [(name, lab, tag_of[name].get("lighting_computed") or tag_of[name]["lighting"]) for name, lab in hand]
    truth = [p[1] for p in pairs]
    pred = [p[2] for p in pairs]
    return dict(
        labels_file=str(path),
        labels=len(labels),
        images=len(pairs),
        missing=sorted(set(labels) - set(tag_of)),
        accuracy=(sum(t == p for t, p in zip(truth, pred)) / len(pairs)) if pairs else 0.0,
        majority_baseline=(Counter(truth).most_common(1)[0][1] / len(truth)) if truth else 0.0,
        confusion=confusion(truth, pred, list(LIGHTING_CLASSES)),
        disagreements=[dict(file=n, label=t, tag=p) for n, t, p in pairs if t != p],
    )


# Long: one comparison per tag source (panoptic background, indoor/outdoor, hand lighting labels, masks),
# each optional, all written to one agreement.json.
def check(params: Params, layout: Layout, panoptic: str | None = None, masks: str | None = None,
          lighting_labels: str | None = None) -> dict:
    """Background, lighting and occlusion agreement, written to ``data/tags/agreement.json``.

    One block per check, in the order of the file (long for that reason); the
    tags and the lighting labels are checked before the panoptic labels are read.
    """
    tags_path = layout.tags / "tags.parquet"
    if not tags_path.exists():
        raise NegsetError(f"{tags_path}: missing; the 'tag' step has not run", hint="run `negset tag` first")
    tags = {r["sha256"]: r for r in pq.read_table(tags_path).to_pylist()}
    images = [im for im in pq.read_table(layout.ingest / "images.parquet").to_pylist() if im["sha256"] in tags]
    by_name: dict[str, list[str]] = defaultdict(list)
    for im in images:
        by_name[file_name(im["uri"])].append(im["sha256"])
    unique = {name: shas[0] for name, shas in by_name.items() if len(shas) == 1}
    pan_cfg = params.tag.background.panoptic
    pan_path = Path(panoptic) if panoptic else (layout.root / pan_cfg.json_path if pan_cfg else None)
    mask_dir = Path(masks) if masks else (layout.root / pan_cfg.masks if pan_cfg and pan_cfg.masks else None)
    if pan_path is None:
        raise NegsetError("check-tags needs COCO panoptic labels",
                          hint="set tag.background.panoptic.json in params.yaml or pass --panoptic FILE")
    labels_path = Path(lighting_labels) if lighting_labels else DEFAULT_LIGHTING_LABELS
    labels = _read_lighting_labels(labels_path)
    hand = _match_lighting_labels(labels_path, labels, unique)
    entries, cats = load_panoptic(pan_path)
    matched = [(unique[name], e) for name, e in sorted(entries.items()) if name in unique]
    result: dict = dict(images=len(tags), panoptic_file=str(pan_path), panoptic_images=len(matched))

    # background
    with_scene = [(sha, e) for sha, e in matched if e.scene != "unknown"]
    clusters = [tags[sha]["background_cluster"] for sha, _ in with_scene]
    scenes = [e.scene for _, e in with_scene]
    ins, loo = majority_accuracy(clusters, scenes)
    majority = Counter(scenes).most_common(1)[0] if scenes else ("-", 0)
    with_stuff = [(sha, e) for sha, e in matched if e.stuff]
    sc = [tags[sha]["background_cluster"] for sha, _ in with_stuff]
    stuff = [e.stuff for _, e in with_stuff]
    result["background"] = dict(
        images=len(with_scene),
        clusters=len(set(tags[s]["background_cluster"] for s in tags)),
        scene_counts=dict(Counter(scenes)),
        indoor_outdoor_accuracy=ins,
        indoor_outdoor_accuracy_loo=loo,
        majority_baseline=(majority[1] / len(scenes)) if scenes else 0.0,
        majority_class=majority[0],
        cluster_to_scene={str(k): v for k, v in sorted(majority_map(clusters, scenes).items())},
        stuff_images=len(with_stuff),
        stuff_classes=len(set(stuff)),
        stuff_purity=purity(sc, stuff),
        stuff_purity_baseline=(Counter(stuff).most_common(1)[0][1] / len(stuff)) if stuff else 0.0,
        stuff_ami=adjusted_mutual_information(sc, stuff) if stuff else 0.0,
        scene_ami=adjusted_mutual_information(clusters, scenes) if scenes else 0.0,
        from_objects=scene_agreement([(tags[sha].get("indoor_outdoor"), tags[sha].get("background_computed"),
                                       tags[sha]["background_cluster"]) for sha, _ in with_scene], scenes),
    )

    result["lighting"] = _lighting_agreement(labels_path, labels, hand, {n: tags[s] for n, s in unique.items()})

    # occlusion
    if mask_dir is not None:
        from PIL import Image

        occ_cfg = params.tag.occlusion
        truth, pred, rows = [], [], []
        for sha, e in matched:
            tag = tags[sha]
            if tag["occlusion_source"] != "annotation":
                continue  # only images whose tag came from box labels
            png = mask_dir / e.png
            if not png.is_file():
                raise NegsetError(f"{png}: panoptic mask not found", hint="check tag.background.panoptic.masks or --masks")
            ids = panoptic_ids(np.asarray(Image.open(png).convert("RGB")))
            cls, share, cut, covered = mask_occlusion(ids, e.segments, cats, occ_cfg)
            truth.append(cls)
            pred.append(tag["occlusion"])
            rows.append(dict(file=e.file_name, masks=cls, boxes=tag["occlusion"], cut=cut, covered=covered))
        classes = ["none", "partial", "heavy"]
        result["occlusion"] = dict(
            images=len(truth),
            agreement=(sum(t == p for t, p in zip(truth, pred)) / len(truth)) if truth else 0.0,
            kappa=cohen_kappa(truth, pred),
            confusion=confusion(truth, pred, classes),
            disagreements=[r for r in rows if r["masks"] != r["boxes"]],
        )
    else:
        result["occlusion"] = dict(skipped="no panoptic masks folder (tag.background.panoptic.masks or --masks)")
    atomic.write_json(layout.tags / "agreement.json", result)
    return result


# ------------------------------------------------------------------- printing


def _table(title: str, conf: dict, classes: list[str]) -> list[str]:
    width = max(len(c) for c in classes + [title]) + 1
    lines = [title.ljust(width) + "".join(c[:8].rjust(9) for c in classes)]
    for t in classes:
        lines.append(t.ljust(width) + "".join(str(conf.get(t, {}).get(p, 0)).rjust(9) for p in classes))
    return lines


def _from_objects_lines(fo: dict | None) -> list[str]:
    if not fo or not fo["detected_images"]:
        return ["    from detected objects: none (run `negset detect`; tag.background.scene_score)"]
    return [
        f"    detected objects -> indoor/outdoor     {fo['detected_accuracy']:.3f}  on {fo['detected_images']} images "
        f"(coverage {fo['coverage']:.2f})",
        f"    detected, else clusters leave-one-out  {fo['detected_else_clusters_loo']:.3f}",
        f"    cluster scene names -> indoor/outdoor  {fo['scene_named_accuracy']:.3f}  on {fo['scene_named_images']} images",
    ]


def report(result: dict) -> str:
    from negset.tag.lighting import LIGHTING_CLASSES

    bg, li, oc = result["background"], result["lighting"], result["occlusion"]
    out = [
        f"tags of {result['images']} images; {result['panoptic_images']} with panoptic labels ({result['panoptic_file']})",
        "",
        f"background (computed clusters: {bg['clusters']}) vs panoptic stuff labels",
        f"  indoor/outdoor over {bg['images']} images {bg['scene_counts']}",
        f"    accuracy, clusters -> majority label   {bg['indoor_outdoor_accuracy']:.3f}",
        f"    accuracy, leave-one-out                {bg['indoor_outdoor_accuracy_loo']:.3f}",
        f"    {'baseline: always ' + repr(bg['majority_class']):<39}{bg['majority_baseline']:.3f}",
        f"    adjusted mutual information            {bg['scene_ami']:.3f}",
        *_from_objects_lines(bg.get("from_objects")),
        f"  dominant stuff class over {bg['stuff_images']} images ({bg['stuff_classes']} classes)",
        f"    cluster purity                         {bg['stuff_purity']:.3f}  (one cluster: {bg['stuff_purity_baseline']:.3f})",
        f"    adjusted mutual information            {bg['stuff_ami']:.3f}  (0 = chance, 1 = same partition)",
        "",
        f"lighting (computed) vs {li['images']} hand labels ({li['labels_file']})",
        f"  accuracy {li['accuracy']:.3f}  (baseline, always the commonest label: {li['majority_baseline']:.3f})",
    ]
    if li["missing"]:
        out.append(f"  {len(li['missing'])} of the file's {li['labels']} labels name no image here (or several): "
                   f"{_examples(li['missing'])}")
    out.append("  rows: hand label, columns: tag")
    out += ["  " + line for line in _table("label \\ tag", li["confusion"], list(LIGHTING_CLASSES))]
    out.append("")
    if "skipped" in oc:
        out.append(f"occlusion: skipped ({oc['skipped']})")
    else:
        out += [
            f"occlusion (from boxes) vs occlusion from panoptic masks, {oc['images']} images",
            f"  agreement {oc['agreement']:.3f}  Cohen's kappa {oc['kappa']:.3f}",
            "  rows: masks, columns: boxes",
        ]
        out += ["  " + line for line in _table("masks \\ boxes", oc["confusion"], ["none", "partial", "heavy"])]
    out.append("")
    out.append("written: data/tags/agreement.json")
    return "\n".join(out)

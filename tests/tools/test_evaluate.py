"""`negset evaluate`: default confusers for every COCO class, the oracle and reference sets, the proxies' report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from negset.cli import main
from negset.select.pool import Pool
from negset.tools import probes
from negset.tools.confusers import COCO_CLASSES, CROSS, SUPERCATEGORIES, default_confusers
from negset.tools.evaluate import SETS, oracle_set, reference_set
from tests.conftest import copy_project, tag_project, write_params

COCO80 = Path(__file__).resolve().parents[2] / "negset" / "detect" / "models" / "coco80_classes.txt"


def test_default_confusers_cover_every_coco_class_and_exclude_the_target():
    coco80 = [n for n in COCO80.read_text().splitlines() if n.strip()]
    assert sorted(COCO_CLASSES) == sorted(coco80) and len(set(COCO_CLASSES)) == 80
    for target in coco80:
        got = default_confusers(target)
        assert got, target
        assert target not in got, target
        assert len(got) == len(set(got)) and set(got) <= set(coco80), target
    assert set(CROSS) <= set(coco80) and all(set(v) <= set(coco80) for v in CROSS.values())
    # the supercategory peers come first, then the cross-category confusers
    assert default_confusers("car")[:7] == ["bicycle", "motorcycle", "airplane", "bus", "train", "truck", "boat"]
    assert "teddy bear" in default_confusers("person") and "teddy bear" in default_confusers("dog")
    assert "microwave" in default_confusers("tv") and "Person".lower() not in default_confusers("Person")
    assert default_confusers("sample bag") is None  # outside COCO: no default
    assert sum(len(v) for v in SUPERCATEGORIES.values()) == 80


def _pool(n: int) -> Pool:
    rng = np.random.default_rng(1)
    sha = np.asarray([f"{rng.integers(1 << 62):016x}" + "0" * 48 for _ in range(n)], dtype=object)
    return Pool(sha256=sha, vectors=np.eye(n, 4, dtype=np.float32), positive=np.zeros(n, bool),
                has_target=np.zeros(n, bool), stratum=np.zeros(n, np.int32), stratum_names=["s"])


def test_the_oracle_set_is_only_confuser_images_when_enough_exist():
    pool = _pool(30)
    cand = np.arange(30)
    is_conf = np.zeros(30, bool)
    is_conf[[3, 7, 11, 12, 20, 25, 28]] = True
    for seed in range(5):
        got = oracle_set(pool, cand, is_conf, 5, seed)
        assert len(got) == 5 and len(set(got)) == 5 and is_conf[got].all()
    assert len({tuple(oracle_set(pool, cand, is_conf, 5, s)) for s in range(5)}) > 1  # seeded: the seeds differ
    assert (oracle_set(pool, cand, is_conf, 5, 2) == oracle_set(pool, cand, is_conf, 5, 2)).all()
    more = oracle_set(pool, cand, is_conf, 10, 0)  # 7 confusers: all of them, then 3 others
    assert is_conf[more[:7]].all() and not is_conf[more[7:]].any() and len(set(more)) == 10
    only = oracle_set(pool, cand[~is_conf[cand]], is_conf, 4, 0)  # none in the pool: random others
    assert len(only) == 4 and not is_conf[only].any()


def test_the_reference_skips_the_most_similar_tenth():
    sim = np.linspace(1.0, 0.0, 20).astype(np.float32)  # row 0 most similar
    got = reference_set(sim, np.arange(20)[::-1].copy(), 5)
    assert list(got) == [2, 3, 4, 5, 6]  # 10% of 20 = the two most similar left out


def test_fpr_at_recall_and_probe_separate_what_they_are_trained_on():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(1, 0.3, (20, 8)), rng.normal(-1, 0.3, (20, 8))])
    y = np.r_[np.ones(20), np.zeros(20)]
    score = probes.fit_probe(X, y)
    assert probes.fpr_at_recall(score(X[:20]), score(X[20:]), 0.95) == 0.0
    wide = probes.fit_probe(np.hstack([X, rng.normal(0, 0.01, (40, 100))]), y)  # more dims than rows: the dual path
    assert (wide(np.hstack([X, np.zeros((40, 100))]))[:20] > 0).all()
    assert probes.fpr_at_recall(np.array([3.0, 2.0, 1.0, 0.0]), np.array([0.5, 1.5, 2.5]), 0.5) == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The sample (target person) through ingest, embed with 3 x 3 region crops, and tag."""
    root = copy_project(tmp_path_factory.mktemp("evaluate") / "proj")
    write_params(root, embed={"regions": 3}, detect={"sources": []})
    tag_project(root)
    return root


def test_evaluate_reports_every_set_per_proxy_and_records_the_seeds(sample, capsys):
    confusers = "handbag,tie,knife,motorcycle,truck,clock"
    code = main(["--params", str(sample / "params.yaml"), "evaluate", "--target", "person", "--confusers", confusers,
                 "--seeds", "4", "--count", "4"])
    out = capsys.readouterr().out
    assert code == 0
    for proxy in ("regions", "image"):
        for s in SETS:
            assert any(line.split()[:2] == [proxy, s] for line in out.splitlines()), (proxy, s, out)
    assert "detector" not in out.split("hardness")[0]  # no detect run: no detector proxy
    assert out.count("proxy sees the benefit") + out.count("CANNOT see the benefit") == 2
    record = json.loads((sample / "data" / "evaluate" / "person.json").read_text())
    assert record["seeds"] == [0, 1, 2, 3] and record["count"] == 4 and record["confusers"] == confusers.split(",")
    assert record["select"]["bands"]["mix"] and record["proxies"] == ["regions", "image"]
    for seed in record["per_seed"]:
        # the oracle takes every confuser image of the pool, up to its size, before any other image
        n = seed["negatives"]
        assert round(seed["oracle_confuser_share"] * n) == min(n, seed["pool_confusers"]) > 0
        assert seed["oracle_leaks"] == 0 and seed["chosen_leaks"] == 0
        assert all(0.0 <= seed[f"{p}:{s}_fpr"] <= 1.0 for p in ("regions", "image") for s in SETS)
    assert np.mean([s["random_confuser_share"] for s in record["per_seed"]]) < 1.0


def test_evaluate_unknown_target_is_a_one_line_error(sample, capsys):
    code = main(["--params", str(sample / "params.yaml"), "evaluate", "--target", "unicorn", "--seeds", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "no image is labelled 'unicorn'" in err and "Traceback" not in err


def test_detect_confusers_default_to_the_coco_lists_the_detector_knows():
    from negset.detect.step import confuser_classes

    coco = {c.lower() for c in COCO_CLASSES}
    got = confuser_classes(None, {"dog"}, coco)
    assert got == set(default_confusers("dog")) and "dog" not in got and "teddy bear" in got
    # a detector without those classes has no default confusers; an explicit list wins; [] = none
    assert confuser_classes(None, {"dog"}, {"dog", "widget"}) == set()
    assert confuser_classes(["Cat", "dog"], {"dog"}, coco) == {"cat"}
    assert confuser_classes([], {"dog"}, coco) == set()
    # the target and a class target_map maps to it: the union of both lists, neither itself
    both = confuser_classes(None, {"handbag", "backpack"}, coco)
    assert {"umbrella", "suitcase", "tie"} <= both and not both & {"handbag", "backpack"}
    assert confuser_classes(None, {"sample bag"}, coco) == set()  # outside COCO: none


def test_evaluate_rebuilds_the_evidence_for_the_evaluated_target_calibrated_on_the_train_positives():
    from types import SimpleNamespace

    from negset.core.config import Detect
    from negset.tools.evaluate import TargetEvidence, split_detections

    params = SimpleNamespace(detect=Detect.model_validate({"calibration": {"recall": 1.0, "floor": 0.05, "ceiling": 0.9}}))
    box = (0.0, 0.0, 9.0, 9.0)
    te = TargetEvidence(sources=["yolox"], target={"yolox": {0: (0.6, "dog", box), 1: (0.3, "dog", box), 4: (0.2, "dog", box)}},
                        confuser={"yolox": {3: (0.45, "cat", box)}}, confusers=["cat"])
    d = split_detections(te, params, train_pos=np.array([0, 1]), rows=np.array([2, 3, 4]))
    # the threshold keeps every train positive (recall 1.0): the lower of 0.6 and 0.3
    assert np.allclose(d.threshold, 0.3) and not d.detected.any()
    assert d.confuser_class[1] == "cat" and d.confuser_score[1] == pytest.approx(0.45)
    assert d.confuser_threshold[1] == pytest.approx(0.3) and d.target_score[2] == pytest.approx(0.2)
    # the cat (1.5 x the threshold) is distractor evidence; the weak dog (a target detection) is not
    assert np.allclose(d.distractor_evidence(), [0.0, 1.5, 0.0])

"""Select as a pipeline of named units: the rules (name, reads, judge, explain), the first-rule ledger,
the README's rules table, and the per-image scores file the report reads."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from negset.core.config import Select
from negset.core.layout import Layout
from negset.embed.store import read_embeddings
from negset.select import rules
from negset.select.ledger import Ledger, Verdict
from negset.select.picks import Pick
from negset.select.pool import Pool
from negset.select.step import choose
from negset.tag import quality
from tests.conftest import REPO


def _unit(rng, n, d=16):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def readme_rules() -> list[str]:
    """The first cell of each row of README's rules table (section "Choosing good negatives")."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Choosing good negatives") :]
    section = section[: section.index("\n## ")]
    table = section[section.index("| rule |") :].split("\n\n")[0].splitlines()[2:]
    return [row.split("|")[1].strip() for row in table]


def test_readme_rules_table_follows_the_pipeline():
    """One README row per rule unit, in precedence order; what each rule reads exists in select's parameters."""
    cells = readme_rules()
    names = [re.match(r"`([^`]+)`", c).group(1) for c in cells]
    expected = []
    for rule in rules.PIPELINE:
        unit = "quality:<check>" if isinstance(rule, rules.QualityCheck) else rule.name
        if unit not in expected:
            expected.append(unit)
    assert names == expected
    quality_row = cells[names.index("quality:<check>")]
    assert re.findall(r"`(\w+)`", quality_row) == list(quality.CHECKS)  # every check, in order
    assert rules.RULES == tuple(r.name for r in rules.PIPELINE) and len(set(rules.RULES)) == len(rules.RULES)
    cfg = Select(count=1)
    for rule in rules.PIPELINE:
        for key in rule.reads:
            obj = cfg
            for part in key.split("."):
                assert hasattr(obj, part), f"{rule.name} reads select.{key}, which does not exist"
                obj = getattr(obj, part)


def test_ledger_keeps_the_first_rule_each_image_broke():
    cand = np.array([True, True, True, True, False])
    led = Ledger(cand, ("a", "b", "c"))
    new = led.record("a", Verdict(np.array([1, 1, 0, 0, 1], bool), np.array([0.1, 0.2, 0.3, 0.4, 0.5]), {1: "from a"}))
    assert new.tolist() == [True, True, False, False, False]  # a positive (row 4) is never left out
    new = led.record("b", Verdict(np.array([0, 1, 1, 0, 0], bool), 7.0, {1: "from b", 2: "b2"}, facts={"t": 1}))
    assert new.tolist() == [False, False, True, False, False]
    assert led.status().tolist() == ["a", "a", "b", "", ""]
    assert led.score[:3].tolist() == [0.1, 0.2, 7.0] and np.isnan(led.score[3])
    assert led.detail == {1: "from a", 2: "b2"}  # b's detail for row 1 is dropped: row 1 broke a first
    assert led.live().tolist() == [False, False, False, True, False]
    assert led.counts() == {"a": 2, "b": 1} and led.facts["b"] == {"t": 1}
    names = np.array(["z", "y", "x", "w", "v"], dtype=object)
    assert led.left_out(names).tolist() == [1, 0, 2]  # by precedence, then by uri


@pytest.fixture
def toy_pool():
    """4 positives and 8 candidates: copies of positives, a dark one, target-labelled ones, ordinary ones."""
    rng = np.random.default_rng(4)
    pos = _unit(rng, 4)
    cand = _unit(rng, 8)
    cand[0] = pos[1]  # a copy of positive 1, also labelled with the target and dark: target_label comes first
    cand[1] = pos[2] + 0.01 * rng.standard_normal(16).astype(np.float32)  # a copy of positive 2, also dark
    cand[1] /= np.linalg.norm(cand[1])
    V = np.vstack([pos, cand])
    n = len(V)
    dark = np.full(n, 0.9)
    dark[[4, 5, 6]] = 0.01
    dhash = rng.integers(0, 2**62, n, dtype=np.int64)
    dhash[7] = dhash[3] ^ 0b101  # 2 bits from positive 3's hash, far in the embedding
    dhash[8] = dhash[0]  # identical to positive 0's hash
    has_target = np.zeros(n, bool)
    has_target[4] = True
    return Pool(
        sha256=np.asarray([f"{i:02d}" + "ab" * 31 for i in range(n)], dtype=object), vectors=V.astype(np.float16),
        positive=np.arange(n) < 4, has_target=has_target, stratum=np.zeros(n, np.int32), stratum_names=["all"],
        background=np.zeros(n, np.int64), scores={"q_dark": dark},
        uri=np.asarray([f"img/{i:02d}.jpg" for i in range(n)], dtype=object), labelled=np.ones(n, bool), dhash=dhash,
    )


def _reason(choice, row):
    led = choice.ledger
    rule = led.rule_of(row)
    return rules.BY_NAME[rule].explain(row, float(led.score[row]), led.detail.get(row), choice.evidence, led.facts.get(rule, {}))


def test_rules_judge_in_precedence_and_explain_from_the_ledger(toy_pool):
    cfg = Select(count=3, context={"irrelevant_below_percentile": 0})
    choice = choose(toy_pool, cfg, 3)
    led = choice.ledger
    status = led.status()
    assert status[4] == "target_label" and led.score[4] == 1.0  # also a copy and dark: the first rule wins
    assert status[5] == "near_duplicate" and led.score[5] < 0.01  # also dark
    assert _reason(choice, 5).startswith("cosine distance") and "img/02.jpg" in _reason(choice, 5)
    assert status[6] == "quality:dark" and led.score[6] == pytest.approx(0.01)
    assert _reason(choice, 6) == f"dark score 0.010 is under {cfg.quality.dark}"
    # difference hash hits name the positive whose hash matched (not the nearest in the embedding)
    assert status[7] == status[8] == "near_duplicate"
    assert _reason(choice, 7).startswith("difference hash within 2 bits of positive img/03.jpg (cosine distance ")
    assert "img/00.jpg" in _reason(choice, 8)
    assert set(status[9:]) == {""} and set(choice.rows.tolist()) == {9, 10, 11}
    assert all(isinstance(p, Pick) and p.rule == "quota" for p in choice.picks)
    assert choice.strata[0]["chosen"] == 3 and choice.fill == 0


def test_identical_hashes_on_large_pools_name_the_matching_positive(toy_pool, monkeypatch):
    monkeypatch.setattr(rules, "HASH_PAIRS_MAX", 0)  # as for pools over 5e7 candidate x positive pairs
    choice = choose(toy_pool, Select(count=3, context={"irrelevant_below_percentile": 0}), 3)
    status = choice.ledger.status()
    assert status[8] == "near_duplicate" and _reason(choice, 8).startswith("difference hash identical to positive img/00.jpg")
    assert status[7] == ""  # 2 bits apart: only identical hashes count here


def test_a_rule_that_is_off_leaves_nothing_and_no_facts(toy_pool):
    choice = choose(toy_pool, Select(count=3, quality={"dark": None}, quarantine={"enabled": False}), 3)
    assert "quality:dark" not in set(choice.ledger.status()) and "quarantine" not in choice.ledger.facts


def test_scores_file_records_what_select_measured(built_project):
    """scores.parquet: one row per image; the chosen rows carry selection.parquet's values; the nearest
    positive is the most similar positive; the status agrees with selection and rejected."""
    select_dir = built_project / "data" / "select"
    scores = {r["sha256"]: r for r in pq.read_table(select_dir / "scores.parquet").to_pylist()}
    images = pq.read_table(built_project / "data" / "ingest" / "images.parquet").to_pylist()
    assert set(scores) == {r["sha256"] for r in images}
    selection = pq.read_table(select_dir / "selection.parquet").to_pylist()
    rejected = pq.read_table(select_dir / "rejected.parquet").to_pylist()
    for r in selection:
        s = scores[r["sha256"]]
        assert s["status"] == "chosen" and s["band"] == r["band"]
        assert (s["hardness"], s["pos_similarity"], s["nearest_similarity"]) == (r["hardness"], r["pos_similarity"], r["nearest_similarity"])
    for r in rejected:
        assert scores[r["sha256"]]["status"] == r["rule"]
    roles = {r["sha256"]: r["role"] for r in images}
    assert {s for s, r in scores.items() if r["status"] == "positive"} == {s for s, role in roles.items() if role == "positive"}
    shas, vectors = read_embeddings(Layout.at(built_project))
    index = {s: i for i, s in enumerate(shas)}
    pos = [index[s] for s, role in roles.items() if role == "positive"]
    for sha, r in scores.items():
        if r["status"] == "positive":
            assert r["nearest_positive"] is None and r["hardness"] is None
            continue
        sims = vectors[pos] @ vectors[index[sha]]
        assert roles[r["nearest_positive"]] == "positive"
        assert r["nearest_similarity"] == pytest.approx(float(sims.max()), abs=1e-5)
    summary = json.loads((select_dir / "summary.json").read_text())
    assert {r["hardness_by"] for r in scores.values()} == {summary["hardness"]}
    assert sum(r["status"] in ("chosen", "eligible") for r in scores.values()) == summary["eligible"]

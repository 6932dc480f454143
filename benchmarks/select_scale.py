"""Selection at scale: 1,000,000 candidates, 10,000 positives, 1,280 dimensions.

    PYTHONPATH=. python benchmarks/select_scale.py            # full size
    PYTHONPATH=. python benchmarks/select_scale.py --candidates 100000 --positives 2000 --count 2000

Synthetic unit vectors (clusters plus noise, stored as a float16 memmap in a
temporary folder) stand in for embeddings; 72 strata, labels, quality scores
and planted near-duplicates of positives (resized-copy-like: positive + small
noise) make every rule of ``negset.select.step.choose`` work. Each part runs in
its own process so its peak memory (ru_maxrss) is its own:

1. generate the data (not timed);
2. ``choose``: the real selection code path, timed (wall and CPU seconds),
   with its peak memory. At this size the scene similarity is approximate (an
   inverted-file index over the positives, ``negset.core.similarity``): the
   run prints the recall of its top-k against exact float32 on a random
   sample of rows, the largest error of the top-k mean there, the margins
   around the near-duplicate and quarantine thresholds inside which rows
   were re-scored exactly, how many were, and the planted copies rejected;
3. the naive baseline measured in the same run: the previous numpy float32
   top-k similarity (all vectors loaded as float32) on a slice of the pool,
   extrapolated linearly to the full pool (running it whole takes minutes);
4. with ``--verify``: ``choose`` again with the exact float32 similarity for
   every row (minutes at full size), and the decisions of both compared.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(folder: Path, n_cand: int, n_pos: int, dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = n_pos + n_cand
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    V = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    cluster = np.empty(n, np.int32)
    # positives come from 40 of the clusters, candidates from all 200
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        rows = np.arange(start, start + m)
        c = np.where(rows < n_pos, rng.integers(0, 40, m), rng.integers(0, 200, m))
        x = centres[c] + 0.9 * rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim) * 1.2
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        V[start : start + m] = x.astype(np.float16)
        cluster[start : start + m] = c
    # planted leaks: 1,000 candidates are near-copies of positives
    leaks = rng.choice(np.arange(n_pos, n), size=min(1000, n_cand), replace=False)
    src = rng.integers(0, n_pos, len(leaks))
    x = V[src].astype(np.float32) + 0.15 * rng.standard_normal((len(leaks), dim), dtype=np.float32) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    V[leaks] = x.astype(np.float16)
    V.flush()
    np.save(folder / "cluster.npy", cluster)
    np.save(folder / "leaks.npy", leaks)


def load_pool(folder: Path, n_pos: int):
    from negset.select.pool import Pool

    V = np.load(folder / "vectors.npy", mmap_mode="r")
    n = len(V)
    rng = np.random.default_rng(1)
    cluster = np.load(folder / "cluster.npy")
    positive = np.zeros(n, bool)
    positive[:n_pos] = True
    has_target = ~positive & (rng.random(n) < 0.01)
    background = (cluster % 8).astype(np.int64)
    stratum = (rng.integers(0, 3, n) * 24 + background * 3 + rng.integers(0, 3, n)).astype(np.int32)
    names = [f"l{s // 24} | bg{(s // 3) % 8} | o{s % 3}" for s in range(72)]
    scores = {f"q_{c}": np.clip(rng.normal(0.8, 0.12, n), 0, 1) for c in ("dark", "light", "low_information", "blurry")}
    sha = np.asarray([f"{i:064x}" for i in rng.permutation(n).astype(np.uint64) * np.uint64(2654435761)], dtype=object)
    return Pool(
        sha256=sha, vectors=V, positive=positive, has_target=has_target, stratum=stratum,
        stratum_names=names, background=background, scores=scores, area=None, uri=None,
        labelled=rng.random(n) < 0.5,
        dhash=rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64),  # random: the identical-hash path runs
    )


def run_choose(folder: Path, n_pos: int, count: int, exact: bool = False) -> dict:
    from negset.core.config import Select
    from negset.select.step import choose

    pool = load_pool(folder, n_pos)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    choice = choose(pool, Select(count=count), count, **(dict(approx_above=float("inf")) if exact else {}))
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    leaks = np.load(folder / "leaks.npy")
    status = choice.status
    np.save(folder / f"status_{'exact' if exact else 'approx'}.npy", status.astype("U32"))
    np.save(folder / f"picks_{'exact' if exact else 'approx'}.npy", choice.rows)
    rules: dict[str, int] = {}
    for s in status[status != ""]:
        rules[s] = rules.get(s, 0) + 1
    return dict(
        wall_s=round(wall, 2),
        cpu_s=round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
        peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        chosen=len(choice.rows),
        planted_leaks=len(leaks),
        planted_leaks_rejected=int((status[leaks] != "").sum()),
        planted_leaks_near_duplicate=int((status[leaks] == "near_duplicate").sum()),
        planted_leaks_target_label=int((status[leaks] == "target_label").sum()),
        planted_leaks_chosen=len(set(choice.rows.tolist()) & set(leaks.tolist())),
        rejected_by_rule=rules,
        chosen_by_band={b: sum(p.band == b for p in choice.picks) for b in {p.band for p in choice.picks}},
        timings=choice.timings,
        similarity=choice.evidence.similarity_report(),
    )


def compare(folder: Path) -> dict:
    """Decisions of the approximate run against the exact one: rows each rule took in one run and not the other."""
    a, e = np.load(folder / "status_approx.npy"), np.load(folder / "status_exact.npy")
    out = {}
    for rule in ("near_duplicate", "quarantine"):
        ra, re_ = a == rule, e == rule
        out[rule] = dict(exact=int(re_.sum()), approximate=int(ra.sum()), only_exact=int((re_ & ~ra).sum()),
                         only_approximate=int((ra & ~re_).sum()))
    pa, pe = np.load(folder / "picks_approx.npy"), np.load(folder / "picks_exact.npy")
    out["picks_in_both"] = len(set(pa.tolist()) & set(pe.tolist()))
    out["picks"] = len(pe)
    return out


def run_naive(folder: Path, n_pos: int, rows: int, k: int = 5) -> dict:
    V = np.load(folder / "vectors.npy", mmap_mode="r")
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    P = np.asarray(V[:n_pos], np.float32)
    C = np.asarray(V[n_pos : n_pos + rows], np.float32)  # the naive path holds every vector as float32
    out = np.empty(len(C), np.float32)
    for start in range(0, len(C), 4096):
        sims = C[start : start + 4096] @ P.T
        out[start : start + 4096] = -np.partition(-sims, k - 1, axis=1)[:, :k].mean(axis=1)
    picks = np.random.default_rng(0).permutation(len(C))[:1000]
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return dict(rows=rows, wall_s=round(wall, 2), picks=len(picks),
                cpu_s=round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
                peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))


def child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", type=int, default=1_000_000)
    p.add_argument("--positives", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--naive-rows", type=int, default=20_000)
    p.add_argument("--verify", action="store_true", help="also choose with exact similarities and compare (slow)")
    p.add_argument("--data", help="keep the generated data in this folder and reuse it when there (else a temporary one)")
    p.add_argument("--part", choices=["generate", "choose", "exact", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.part:
        folder = Path(a.folder)
        if a.part == "generate":
            generate(folder, a.candidates, a.positives, a.dim)
            out = {}
        elif a.part in ("choose", "exact"):
            out = run_choose(folder, a.positives, a.count, exact=a.part == "exact")
        else:
            out = run_naive(folder, a.positives, min(a.naive_rows, a.candidates))
        print(json.dumps(out))
        return
    common = ["--candidates", str(a.candidates), "--positives", str(a.positives), "--dim", str(a.dim),
              "--count", str(a.count), "--naive-rows", str(a.naive_rows)]
    with tempfile.TemporaryDirectory(prefix="negset-bench-") as tmp:
        if a.data:
            tmp = a.data
            Path(tmp).mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if not (Path(tmp) / "leaks.npy").exists():
            child(common + ["--part", "generate", "--folder", tmp])
        print(f"data: {a.candidates:,} candidates + {a.positives:,} positives x {a.dim} (float16 memmap), "
              f"ready in {time.perf_counter() - t0:.0f} s")
        res = child(common + ["--part", "choose", "--folder", tmp])
        naive = child(common + ["--part", "naive", "--folder", tmp])
        if a.verify:
            ex = child(common + ["--part", "exact", "--folder", tmp])
            diff = compare(Path(tmp))
    scale = a.candidates / naive["rows"]
    naive_s = naive["wall_s"] * scale
    simr = res["similarity"]
    print(f"negset choose : {res['wall_s']:.1f} s wall ({res['cpu_s']:.1f} CPU s), peak RSS {res['peak_rss_gb']:.2f} GB, "
          f"{res['chosen']:,} negatives chosen")
    print(f"  scene similarity: {simr['method']}")
    if not simr["exact"]:
        print(f"  approximate top-5 vs exact float32 on {simr['sample']:,} random rows: recall {simr['recall']:.3f}, "
              f"largest error of the top-k mean {simr['max_error_topk']:.4f}, of the nearest similarity "
              f"{simr['max_error_best']:.4f}")
        for cause, m in simr["margins"].items():
            print(f"  {cause}: threshold {m['threshold']:.4f}, rows estimated within {m['below']:.4f} under it "
                  f"(or {m['above']:.5f} over) re-scored exactly")
        print(f"  re-scored exactly (float32, all dimensions, all positives): {simr['rescored']}; "
              f"{simr['exact_rows']:,} of {simr['candidates']:,} candidates exact in the end")
    print(f"  planted near-copies of positives: {res['planted_leaks']}, rejected {res['planted_leaks_rejected']} / "
          f"{res['planted_leaks']} (near_duplicate {res['planted_leaks_near_duplicate']}, target_label first "
          f"{res['planted_leaks_target_label']}), chosen {res['planted_leaks_chosen']}")
    print(f"  rejected by rule: {res['rejected_by_rule']}")
    print(f"  chosen by band: {res['chosen_by_band']}")
    print(f"  seconds by phase: {res['timings']}")
    print(f"naive baseline: numpy float32 top-k similarity only, {naive['rows']:,} candidates in "
          f"{naive['wall_s']:.1f} s ({naive['cpu_s']:.1f} CPU s, peak RSS {naive['peak_rss_gb']:.2f} GB) -> about "
          f"{naive_s:.0f} s ({naive['cpu_s'] * scale:.0f} CPU s) and "
          f"{(a.candidates + a.positives) * a.dim * 4 / 2**30:.1f} GB of float32 vectors for {a.candidates:,}")
    print(f"speed-up over the naive similarity alone: {naive_s / res['wall_s']:.1f}x wall-clock, "
          f"{naive['cpu_s'] * scale / res['cpu_s']:.1f}x CPU time")
    if a.verify:
        print(f"exact float32 choose: {ex['wall_s']:.1f} s wall ({ex['cpu_s']:.1f} CPU s), peak RSS {ex['peak_rss_gb']:.2f} GB")
        for rule in ("near_duplicate", "quarantine"):
            d = diff[rule]
            print(f"  {rule}: exact {d['exact']:,}, approximate {d['approximate']:,}; only in exact {d['only_exact']}, "
                  f"only in approximate {d['only_approximate']}")
        print(f"  picks in both runs: {diff['picks_in_both']:,} of {diff['picks']:,}")


if __name__ == "__main__":
    main()

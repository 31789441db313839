"""Builds a synthetic N-item catalog from a real build, for `bench --scale`: reads the real
build's catalog, embeddings, maps, clusters, categories and colours; writes a complete
artifacts folder (thumbnails and models linked, not copied).

Item i copies a random real item j (its label, split, photo and thumbnail); its vector is
drawn around j's class centroid (the centroid plus j's own offset from it, scaled by a random
factor, plus noise, then normalised), its map position is j's plus a small jitter, and its
cluster, predicted category and colour are j's. So the pages see N distinct items with the
real catalog's classes, map shape and photos.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import artifacts
from pipelines.config import EXTRACTORS, Config, embeddings_key
from pipelines.data.catalog import content_hash
from pipelines.errors import LookalikeError

# vectors in memory.
CHUNK = 50_000
# Map jitter, as a share of the map's spread: enough to separate copies of one item, small
# enough to keep the map's shape.
MAP_JITTER = 0.01
# Vector noise per dimension, before normalising (the real vectors' per-dimension spread
# around a class centroid is ~0.01-0.02 for 2048-d unit vectors).
VECTOR_NOISE = 0.004
# Pages timed, in this order (the router's paths).


def build_scaled(
    source: Config,
    out_dir: Path,
    n: int,
    seed: int = 0,
    dtype: str = "float32",
    extractors: list[str] | None = None,
    models: bool = True,
) -> Config:
    """Write a synthetic N-item build into `out_dir` from the real build `source`.

    Parameters
    ----------
    source : a finished build (catalog, embeddings, maps, clusters; categories, colours,
        metrics and models when it has them).
    out_dir : the scratch artifacts folder (created; what was there is replaced).
    n : number of synthetic items.
    seed : the draw of items and noise.
    dtype : "float32" or "float16" vectors (float16 halves the file; the engine must read it).
    extractors : which extractors to write (default: every one `source` has).
    models : link the source's models (the Upload page needs them; False keeps a test from
        loading InceptionV3).

    Returns
    -------
    The Config of the new build (artifacts_dir = out_dir).
    """
    if n < 1:
        raise LookalikeError(f"--scale must be at least 1 item, got {n}")
    if dtype not in ("float32", "float16"):
        raise LookalikeError(f"dtype must be float32 or float16, got {dtype!r}")
    if not source.catalog_path.exists():
        raise LookalikeError(
            f"no catalog at {source.catalog_path} to scale from — pass --artifacts of a finished "
            f"build (python -m pipelines run)"
        )
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    cfg = Config(artifacts_dir=out_dir)
    rng = np.random.default_rng(seed)
    real = pd.read_parquet(source.catalog_path)
    real["item_id"] = real["item_id"].astype(str)
    pick = rng.integers(len(real), size=n)
    ids = np.array([f"{i:016x}" for i in range(n)], dtype=object)

    # Thumbnails and models are the real ones (links, nothing copied).
    (out_dir / "thumbs").symlink_to(source.thumbs_dir.resolve(), target_is_directory=True)
    if models and source.models_dir.exists():
        (out_dir / "models").symlink_to(source.models_dir.resolve(), target_is_directory=True)
    catalog = real.iloc[pick].reset_index(drop=True)
    catalog["item_id"] = ids
    artifacts.write_parquet(catalog, cfg.catalog_path)
    # The content hash is this catalog's own (the source's, kept by _copy_manifest_params,
    # would make every artifact below look built from another catalog).
    content = content_hash(catalog)
    artifacts.write_manifest(
        cfg.catalog_path,
        "catalog",
        {"synthetic_from": str(source.artifacts_dir), "n": n},
        {},
        extra={"content": content, "rows": n},
    )
    _copy_manifest_params(source.catalog_path, cfg.catalog_path)
    inputs = {"catalog": content}

    for path in (source.metrics_path, source.per_class_path):
        if path.exists():
            # The source build's evaluation, said so: its inputs are the source's artifacts,
            # not this catalog's (consistency.build_stamp would call it another build's).
            shutil.copy(path, out_dir / path.name)
            manifest = artifacts.read_manifest(path) or {}
            manifest = {**manifest, "inputs": {}, "copied_from": str(source.artifacts_dir)}
            artifacts.write_json(manifest, artifacts.manifest_path(out_dir / path.name))
    if source.categories_path.exists():
        table = pd.read_parquet(source.categories_path).iloc[pick].reset_index(drop=True)
        table["item_id"] = ids
        artifacts.write_parquet(table, cfg.categories_path)
        artifacts.write_manifest(cfg.categories_path, "classify", {}, inputs)
    if source.colours_path.exists():
        table = pd.read_parquet(source.colours_path)
        by_id = dict(zip(table["item_id"].astype(str), table["colour"], strict=True))
        colours = pd.Series(real["item_id"].map(by_id).fillna("none").to_numpy()[pick])
        artifacts.write_parquet(pd.DataFrame({"item_id": ids, "colour": colours}), cfg.colours_path)
        artifacts.write_manifest(cfg.colours_path, "colours", {}, inputs)

    names = extractors or [e for e in EXTRACTORS if source.embeddings_path(e).exists()]
    labels = real["label"].fillna("(none)").astype(str).to_numpy()
    for name in names:
        _scaled_extractor(source, cfg, name, pick, ids, labels, rng, dtype, inputs)
    return cfg


def _copy_manifest_params(src: Path, dest: Path) -> None:
    """Keep the source manifest's params and extra keys (image size, weights) on `dest`'s."""
    old = artifacts.read_manifest(src) or {}
    new = artifacts.read_manifest(dest) or {}
    keep = {k: v for k, v in old.items() if k not in new or k == "params"}
    artifacts.write_json({**new, **keep}, artifacts.manifest_path(dest))


def _scaled_extractor(
    source: Config,
    cfg: Config,
    name: str,
    pick: np.ndarray,
    ids: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    dtype: str,
    inputs: dict[str, str],
) -> None:
    """Vectors, map, clusters and centroids of one extractor for the synthetic items."""
    real = np.load(source.embeddings_path(name), mmap_mode="r")
    real = np.asarray(real, dtype=np.float32)
    n, d = len(pick), real.shape[1]
    classes, codes = np.unique(labels, return_inverse=True)
    centroids = np.stack([real[codes == c].mean(axis=0) for c in range(len(classes))])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    offsets = real - centroids[codes]
    path = cfg.embeddings_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=(n, d))
    for start in range(0, n, CHUNK):
        rows = pick[start : start + CHUNK]
        scale = rng.uniform(0.8, 1.2, size=(len(rows), 1)).astype(np.float32)
        noise = rng.standard_normal((len(rows), d), dtype=np.float32) * VECTOR_NOISE
        block = centroids[codes[rows]] + scale * offsets[rows] + noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(rows)] = block
    out.flush()
    del out
    vec_manifest = artifacts.write_manifest(path, "embed", {"synthetic": True}, inputs)
    _copy_manifest_params(source.embeddings_path(name), path)
    vec_inputs = {**inputs, embeddings_key(name): vec_manifest["sha256"]}

    points = pd.read_parquet(source.map_path(name))
    points["item_id"] = points["item_id"].astype(str)
    real_ids = pd.read_parquet(source.catalog_path)["item_id"].astype(str)
    xy = points.set_index("item_id").loc[real_ids, ["x", "y"]].to_numpy(np.float32)
    spread = float(np.std(xy)) or 1.0
    jitter = rng.normal(scale=MAP_JITTER * spread, size=(n, 2)).astype(np.float32)
    coords = xy[pick] + jitter
    table = pd.DataFrame({"item_id": ids, "x": coords[:, 0], "y": coords[:, 1]})
    artifacts.write_parquet(table, cfg.map_path(name))
    trust = (artifacts.read_manifest(source.map_path(name)) or {}).get("trustworthiness")
    artifacts.write_manifest(cfg.map_path(name), "maps", {}, vec_inputs, {"trustworthiness": trust})

    if source.clusters_path(name).exists():
        from pipelines.explore.clusters import cluster_summary

        clusters = pd.read_parquet(source.clusters_path(name))["cluster"].to_numpy()[pick]
        table = pd.DataFrame({"item_id": ids, "cluster": clusters.astype(np.int32)})
        artifacts.write_parquet(table, cfg.clusters_path(name))
        shutil.copy(source.centroids_path(name), cfg.centroids_path(name))
        catalog_labels = labels[pick]
        summary = cluster_summary(clusters, catalog_labels)
        artifacts.write_parquet(summary, cfg.cluster_summary_path(name))
        for artifact in (cfg.clusters_path(name), cfg.centroids_path(name)):
            artifacts.write_manifest(artifact, "clusters", {}, vec_inputs)
        artifacts.write_manifest(cfg.cluster_summary_path(name), "clusters", {}, vec_inputs)

"""Embedding stage: streams catalog images through an extractor into embeddings/<name>.npy."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipelines import artifacts
from pipelines.catalog import catalog_hash, load_catalog
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.extractors import CustomCNNExtractor, get_extractor
from pipelines.images import ImageError, load_array
from pipelines.sources import BBOX_COLUMNS

STAGE = "embed"


def _pixel_stream(catalog: pd.DataFrame, rows: np.ndarray, size: int, config: Config):  # noqa: ANN202
    """A tf.data pipeline over `rows`: parallel decode + crop + resize, batching, prefetch.

    Yields (row indices, (b, size, size, 3) uint8) batches in catalog order. Decoding goes
    through `load_array`, the same function the live path uses, inside tf.numpy_function so
    several images decode at once on TF's thread pool while the model runs.
    """
    import tensorflow as tf

    paths = catalog["path"].to_numpy(dtype=str)
    if all(c in catalog.columns for c in BBOX_COLUMNS):
        boxes = catalog[BBOX_COLUMNS].astype("Int64").fillna(-1).to_numpy(dtype=np.int64)
    else:
        boxes = np.full((len(catalog), 4), -1, np.int64)
    failures: list[str] = []

    def load(index: np.int64) -> np.ndarray:
        i = int(index)
        box = tuple(int(v) for v in boxes[i])
        try:
            return load_array(
                paths[i], size, bbox=None if box[0] < 0 else box, max_pixels=config.max_pixels
            )
        except ImageError as err:
            failures.append(f"{paths[i]}: {err.reason}")
            return np.zeros((size, size, 3), np.uint8)

    def tf_load(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.numpy_function(load, [index], tf.uint8, stateful=False)
        pixels.set_shape((size, size, 3))
        return index, pixels

    # A fixed number of decoders (one per core) on tf.data's own small thread pool, with
    # autotuning off: on 2 cores, AUTOTUNE's extra threads and tuning work took CPU from the
    # model (stream/in-memory throughput ~0.88 against ~1.0 fixed, measured side by side).
    cores = os.cpu_count() or 2
    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = cores
    options.threading.max_intra_op_parallelism = 1
    dataset = (
        tf.data.Dataset.from_tensor_slices(rows.astype(np.int64))
        .map(tf_load, num_parallel_calls=cores, deterministic=True)
        .batch(config.batch_size)
        .prefetch(2)
        .with_options(options)
    )
    for index, pixels in dataset.as_numpy_iterator():
        if failures:
            raise LookalikeError(
                f"{len(failures)} catalog file(s) changed or vanished since the catalog was built "
                f"(first: {failures[0]}) — run `python -m pipelines catalog` again, then embed"
            )
        yield index, pixels


def run_embed(
    config: Config, extractor: str, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Embed every catalog row with one extractor; resumable chunk by chunk.

    Writes `config.embeddings_path(extractor)` ((n, d) float32, unit rows, row i = catalog row
    i) and its manifest; for the custom CNN also `categories.parquet` (predicted category per
    item). Finished chunks live in a hidden parts folder keyed on the inputs, so a killed run
    resumes from the last complete chunk; the parts are removed once the array is written.
    """
    start = time.perf_counter()
    ext = get_extractor(extractor, config)
    catalog = load_catalog(config)
    out = config.embeddings_path(extractor)
    params = {"extractor": extractor, **ext.describe()}
    inputs = {"catalog": catalog_hash(config), "weights": ext.weights_id()}
    wants_categories = isinstance(ext, CustomCNNExtractor) and bool(ext.class_names)
    fresh = artifacts.is_fresh(out, STAGE, params, inputs) and (
        not wants_categories or config.categories_path.exists()
    )
    if fresh and not force:
        print(f"embed {extractor}: up to date ({len(catalog)} rows); nothing to do.")
        return {"skipped": True, "rows": len(catalog), "seconds": time.perf_counter() - start}

    key = artifacts.stage_key(STAGE, params, inputs)[:16]
    parts_root = out.parent / f".{extractor}.parts"
    parts = parts_root / key
    for stale in parts_root.glob("*"):
        if stale != parts or force:
            shutil.rmtree(stale)  # from other inputs or a forced rebuild: never mixed in
    parts.mkdir(parents=True, exist_ok=True)

    n, size = len(catalog), ext.input_size
    bounds = [(s, min(s + config.chunk_size, n)) for s in range(0, n, config.chunk_size)]
    done = [i for i in range(len(bounds)) if (parts / f"{i:05d}.npy").exists()]
    todo = [i for i in range(len(bounds)) if i not in set(done)]
    if done:
        print(f"embed {extractor}: resuming, {len(done)} of {len(bounds)} chunks already done")
    rows = np.concatenate([np.arange(*bounds[i]) for i in todo]) if todo else np.zeros(0, int)

    forward_s = 0.0
    buffer_emb: list[np.ndarray] = []
    buffer_prob: list[np.ndarray] = []
    chunk_iter = iter(todo)
    current = next(chunk_iter, None)
    bar = tqdm(
        total=n, initial=n - len(rows), desc=f"embed {extractor}", unit="img", disable=not progress
    )
    with bar:
        for _index, pixels in _pixel_stream(catalog, rows, size, config):
            t0 = time.perf_counter()
            if wants_categories:
                emb, probs = ext.embed_and_classify(pixels)  # type: ignore[attr-defined]
                buffer_prob.append(probs)
            else:
                emb = ext.embed_arrays(pixels)
            forward_s += time.perf_counter() - t0
            buffer_emb.append(emb)
            bar.update(len(pixels))
            # Flush every chunk the buffer now covers (a batch may straddle a boundary).
            while current is not None:
                lo, hi = bounds[current]
                have = sum(len(b) for b in buffer_emb)
                if have < hi - lo:
                    break
                emb_all = np.concatenate(buffer_emb)
                artifacts.write_npy(emb_all[: hi - lo], parts / f"{current:05d}.npy")
                buffer_emb = [emb_all[hi - lo :]]
                if wants_categories:
                    prob_all = np.concatenate(buffer_prob)
                    artifacts.write_npy(prob_all[: hi - lo], parts / f"{current:05d}.probs.npy")
                    buffer_prob = [prob_all[hi - lo :]]
                current = next(chunk_iter, None)

    embeddings = np.concatenate([np.load(parts / f"{i:05d}.npy") for i in range(len(bounds))])
    if embeddings.shape != (n, ext.dim):
        raise LookalikeError(
            f"embedding chunks in {parts} add up to {embeddings.shape}, expected {(n, ext.dim)}; "
            f"run `python -m pipelines embed --extractor {extractor} --force`"
        )
    artifacts.write_npy(embeddings.astype(np.float32), out)
    if wants_categories:
        probs = np.concatenate([np.load(parts / f"{i:05d}.probs.npy") for i in range(len(bounds))])
        classes = np.asarray(ext.class_names)  # type: ignore[attr-defined]
        table = pd.DataFrame(
            {
                "item_id": catalog["item_id"].to_numpy(),
                "predicted": classes[probs.argmax(axis=1)],
                "confidence": probs.max(axis=1).astype(np.float32),
            }
        )
        artifacts.write_parquet(table, config.categories_path)
        artifacts.write_manifest(config.categories_path, STAGE, params, inputs)
    seconds = time.perf_counter() - start
    embedded = len(rows)
    summary = {
        "skipped": False,
        "rows": n,
        "embedded": embedded,
        "seconds": round(seconds, 2),
        "images_per_s": round(embedded / seconds, 2) if embedded else None,
        "forward_share": round(forward_s / seconds, 3) if embedded else None,
    }
    artifacts.write_manifest(out, STAGE, params, inputs, extra={"run": summary, "dim": ext.dim})
    shutil.rmtree(parts_root, ignore_errors=True)
    rate = f"{summary['images_per_s']} img/s" if embedded else "all chunks were done"
    print(f"embed {extractor}: {n} rows x {ext.dim} dims, {rate}, {seconds:.1f} s")
    return summary


def load_embeddings(config: Config, extractor: str) -> np.ndarray:
    """The stored (n, d) embeddings, or an error naming the command that makes them."""
    path = config.embeddings_path(extractor)
    if not path.exists():
        raise LookalikeError(
            f"{path} is missing — run `python -m pipelines embed --extractor {extractor}`"
        )
    return np.load(path)

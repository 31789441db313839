"""Embedding stage: streams catalog images through an extractor into embeddings/<name>.npy."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipelines import artifacts, commands
from pipelines.config import ENGINES, Config
from pipelines.data import pixel_cache
from pipelines.data.catalog import catalog_hash, load_catalog
from pipelines.data.images import ImageError, load_array
from pipelines.data.sources import BBOX_COLUMNS
from pipelines.embedding import reuse
from pipelines.errors import LookalikeError
from pipelines.models.extractors import Extractor, get_extractor, model_step, wants_categories
from pipelines.stage import StageResult

STAGE = "embed"


def pixel_stream(catalog: pd.DataFrame, rows: np.ndarray, size: int, config: Config):  # noqa: ANN202
    """A tf.data pipeline over `rows`: parallel decode + crop + resize, batching, prefetch.

    Yields (row indices, (b, size, size, 3) uint8) batches in catalog order. Decoding goes
    through `load_array`, the same function the live path uses, inside tf.numpy_function so
    several images decode at once on TF's thread pool while the model runs. When a pixel
    cache of the catalog at `size` matches (`pipelines.data.pixel_cache`; the train stage fills
    it), batches come from it instead and nothing is decoded.
    """
    cached = pixel_cache.open_cache(config, catalog, size)
    if cached is not None:
        yield from pixel_cache.stream(cached, rows, config.batch_size)
        return
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
                f"(first: {failures[0]}) — run `{commands.CATALOG}` again, then embed"
            )
        yield index, pixels


class ChunkWriter:
    """Writes embeddings (and class probabilities) in fixed chunks of catalog rows, so a
    killed run resumes from the last complete chunk.

    Chunks live in a hidden parts folder keyed on the stage's inputs; parts of other inputs
    (or all, with `force`) are removed first, so they are never mixed in.
    """

    def __init__(self, out: Path, key: str, n: int, chunk_size: int, force: bool) -> None:
        self.parts_root = out.parent / f".{out.stem}.parts"
        self.parts = self.parts_root / key
        for stale in self.parts_root.glob("*"):
            if stale != self.parts or force:
                shutil.rmtree(stale)
        self.parts.mkdir(parents=True, exist_ok=True)
        self.bounds = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
        self.done = [i for i in range(len(self.bounds)) if self._file(i).exists()]
        self.todo = [i for i in range(len(self.bounds)) if i not in set(self.done)]
        self._pending = iter(self.todo)
        self._current = next(self._pending, None)
        self._emb: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []

    def _file(self, chunk: int, kind: str = "") -> Path:
        return self.parts / f"{chunk:05d}{kind}.npy"

    def rows_todo(self) -> np.ndarray:
        """Catalog rows of the chunks still to embed, in order."""
        if not self.todo:
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(*self.bounds[i]) for i in self.todo])

    def add(self, emb: np.ndarray, probs: np.ndarray | None) -> None:
        """Buffer one batch; write every chunk the buffer now covers (a batch may straddle
        a chunk boundary)."""
        self._emb.append(emb)
        if probs is not None:
            self._probs.append(probs)
        while self._current is not None:
            lo, hi = self.bounds[self._current]
            if sum(len(b) for b in self._emb) < hi - lo:
                return
            self._emb = self._flush(self._emb, hi - lo, "")
            if self._probs:
                self._probs = self._flush(self._probs, hi - lo, ".probs")
            self._current = next(self._pending, None)

    def _flush(self, buffer: list[np.ndarray], size: int, kind: str) -> list[np.ndarray]:
        whole = np.concatenate(buffer)
        artifacts.write_npy(whole[:size], self._file(self._current, kind))  # type: ignore[arg-type]
        return [whole[size:]]

    def assemble(self, kind: str = "") -> np.ndarray:
        """Every chunk of `kind` ("" embeddings, ".probs" probabilities) in row order."""
        return np.concatenate([np.load(self._file(i, kind)) for i in range(len(self.bounds))])

    def remove(self) -> None:
        shutil.rmtree(self.parts_root, ignore_errors=True)


# The extractors whose network the live path runs as a LiteRT export (the head runs
# InceptionV3's, then numpy).
LIVE_EXPORTS = ("inception_v3", "custom_cnn")


def run_embed(
    config: Config,
    extractor: str,
    force: bool = False,
    progress: bool = True,
    engine: str = "local",
    address: str | None = None,
) -> StageResult:
    """Embed every catalog row with one extractor (`embed_catalog`), then make sure the live
    path's export of its network (`pipelines.models.lite`) is current: exported here once,
    so a server's start reads it instead of importing TensorFlow."""
    result = embed_catalog(config, extractor, force, progress, engine, address)
    if extractor in LIVE_EXPORTS:
        start = time.perf_counter()
        path = config.lite_model_path(extractor)
        _ = get_extractor(extractor, config, live=True).model  # read, or exported when stale
        seconds = time.perf_counter() - start
        print(f"embed {extractor}: live model (LiteRT) ready in {seconds:.1f}s -> {path}")
        result.details["live_model"] = str(path)
    return result


def embed_catalog(
    config: Config,
    extractor: str,
    force: bool = False,
    progress: bool = True,
    engine: str = "local",
    address: str | None = None,
) -> StageResult:
    """Embed every catalog row with one extractor; resumable chunk by chunk.

    Writes `config.embeddings_path(extractor)` ((n, d) float32, unit rows, row i = catalog row
    i) and its manifest; for the custom CNN also `categories.parquet` (predicted category per
    item). Reading (`pixel_stream`), the model step and writing (`ChunkWriter`) are separate
    parts; the parts folder is removed once the array is written.

    `engine` "local" (default) reads and embeds in this process; "ray" reads, decodes and
    embeds on Ray Data (`pipelines.embedding.embed_ray`), joining the cluster at `address` or
    starting Ray on this machine. Both write the same chunks and manifest key, so either one resumes
    the other's run and their embeddings are interchangeable.
    """
    if engine not in ENGINES:
        raise LookalikeError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    start = time.perf_counter()
    ext = get_extractor(extractor, config)
    if hasattr(ext, "embed_catalog"):  # a head on another extractor's stored vectors
        return ext.embed_catalog(force=force)
    catalog = load_catalog(config)
    out = config.embeddings_path(extractor)
    params = {"extractor": extractor, **ext.describe()}
    inputs = {"catalog": catalog_hash(config), "weights": ext.weights_id()}
    categories = wants_categories(ext)
    fresh = artifacts.is_fresh(out, STAGE, params, inputs) and (
        not categories or config.categories_path.exists()
    )
    if fresh and not force:
        print(f"embed {extractor}: up to date ({len(catalog)} rows); nothing to do.")
        return StageResult(
            STAGE,
            rows=len(catalog),
            seconds=time.perf_counter() - start,
            skipped=True,
            details={"extractor": extractor},
        )

    n = len(catalog)
    item_ids = catalog["item_id"].astype(str).to_numpy()
    previous = (
        None
        if force
        else reuse.previous_rows(config, extractor, params, inputs["weights"], item_ids)
    )
    if previous is not None:
        kept = _kept_categories(config, item_ids, previous) if categories else None
        if not categories or kept is not None:
            return _embed_update(
                config, ext, catalog, previous, kept, params, inputs, start, progress
            )
    key = artifacts.stage_key(STAGE, params, inputs)[:16]
    writer = ChunkWriter(out, key, n, config.chunk_size, force)
    if writer.done:
        done, total = len(writer.done), len(writer.bounds)
        print(f"embed {extractor}: resuming, {done} of {total} chunks already done")
    rows = writer.rows_todo()
    bar = tqdm(
        total=n, initial=n - len(rows), desc=f"embed {extractor}", unit="img", disable=not progress
    )
    with bar:
        if engine == "ray":
            forward_s, engine_stats = _embed_on_ray(
                config, extractor, catalog, rows, categories, address, writer, bar
            )
        else:
            step = model_step(ext, categories)
            forward_s, engine_stats = _embed_locally(config, ext, catalog, rows, step, writer, bar)

    embeddings = writer.assemble()
    if embeddings.shape != (n, ext.dim):
        raise LookalikeError(
            f"embedding chunks in {writer.parts} add up to {embeddings.shape}, expected "
            f"{(n, ext.dim)}; run `{commands.embed(extractor, force=True)}`"
        )
    wrote = [out]
    if categories:
        _write_categories(config, catalog, writer.assemble(".probs"), ext, params, inputs)
        wrote.append(config.categories_path)
    seconds = time.perf_counter() - start
    summary = _run_summary(n, len(rows), seconds, forward_s, engine, engine_stats)
    reuse.write_embeddings(
        config, extractor, embeddings, item_ids, STAGE, params, inputs,
        extra={"run": summary, "dim": ext.dim},
    )  # fmt: skip
    writer.remove()
    rate = f"{summary['images_per_s']} img/s" if len(rows) else "all chunks were done"
    print(f"embed {extractor}: {n} rows x {ext.dim} dims, {rate}, {seconds:.1f} s")
    return StageResult(
        STAGE,
        wrote=tuple(wrote),
        rows=n,
        seconds=seconds,
        note=rate,
        details={"extractor": extractor, **summary},
    )


def _kept_categories(
    config: Config, item_ids: np.ndarray, previous: reuse.Previous
) -> pd.DataFrame | None:
    """The previous categories.parquet rows of the kept items (in current row order), or None
    when it lacks any of them (then everything is embedded again)."""
    try:
        table = pd.read_parquet(
            config.categories_path, columns=["item_id", "predicted", "confidence"]
        )
    except Exception:  # noqa: BLE001 - missing or unreadable: embed everything
        return None
    table = table.drop_duplicates("item_id").set_index("item_id")
    kept = item_ids[previous.source >= 0]
    if not pd.Index(kept).isin(table.index).all():
        return None
    return table.loc[kept].reset_index()


def _embed_update(
    config: Config,
    ext: Extractor,
    catalog: pd.DataFrame,
    previous: reuse.Previous,
    kept_categories: pd.DataFrame | None,
    params: dict[str, Any],
    inputs: dict[str, str],
    start: float,
    progress: bool,
) -> StageResult:
    """An update: embed only the catalog's new items with the model as it is; copy every kept
    row from the previous file (bit for bit); removed items' rows are left out."""
    extractor = ext.name
    rows = previous.new_rows
    emb_parts: list[np.ndarray] = []
    prob_parts: list[np.ndarray] = []
    forward_s = 0.0
    if len(rows):
        step = model_step(ext, kept_categories is not None)
        bar = tqdm(
            total=len(rows), desc=f"embed {extractor} (new)", unit="img", disable=not progress
        )
        with bar:
            for _index, pixels in pixel_stream(catalog, rows, ext.input_size, config):
                t0 = time.perf_counter()
                emb, probs = step(pixels)
                forward_s += time.perf_counter() - t0
                emb_parts.append(emb)
                if probs is not None:
                    prob_parts.append(probs)
                bar.update(len(pixels))
    new = np.concatenate(emb_parts) if emb_parts else np.zeros((0, ext.dim), np.float32)
    embeddings = previous.assemble(new)
    item_ids = catalog["item_id"].astype(str).to_numpy()
    wrote = [config.embeddings_path(extractor)]
    if kept_categories is not None:
        classes = np.asarray(ext.class_names)  # type: ignore[attr-defined]
        probs = np.concatenate(prob_parts) if prob_parts else np.zeros((0, len(classes)))
        fresh = pd.DataFrame(
            {
                "item_id": item_ids[rows],
                "predicted": classes[probs.argmax(axis=1)] if len(probs) else [],
                "confidence": probs.max(axis=1).astype(np.float32) if len(probs) else [],
            }
        )
        table = (
            pd.concat([kept_categories, fresh], ignore_index=True)
            .set_index("item_id")
            .loc[item_ids]
            .reset_index()
        )
        artifacts.write_parquet(table, config.categories_path)
        artifacts.write_manifest(config.categories_path, STAGE, params, inputs)
        wrote.append(config.categories_path)
    seconds = time.perf_counter() - start
    summary = _run_summary(len(catalog), len(rows), seconds, forward_s, "local", {})
    summary["kept"] = previous.kept
    reuse.write_embeddings(
        config, extractor, embeddings, item_ids, STAGE, params, inputs,
        extra={"run": summary, "dim": ext.dim},
    )  # fmt: skip
    removed = len(previous.vectors) - previous.kept
    note = f"update: {len(rows)} new embedded, {previous.kept} kept, {removed} removed"
    print(f"embed {extractor}: {note}, {seconds:.1f} s")
    return StageResult(
        STAGE,
        wrote=tuple(wrote),
        rows=len(catalog),
        seconds=seconds,
        note=note,
        details={"extractor": extractor, **summary},
    )


def _embed_locally(
    config: Config,
    ext: Extractor,
    catalog: pd.DataFrame,
    rows: np.ndarray,
    step: Any,
    writer: ChunkWriter,
    bar: tqdm,
) -> tuple[float, dict[str, Any]]:
    """The local engine: `pixel_stream` -> model step -> writer. Returns (seconds in the model
    step, engine facts for the manifest)."""
    forward_s = 0.0
    for _index, pixels in pixel_stream(catalog, rows, ext.input_size, config):
        t0 = time.perf_counter()
        emb, probs = step(pixels)
        forward_s += time.perf_counter() - t0
        writer.add(emb, probs)
        bar.update(len(pixels))
    return forward_s, {}


def _embed_on_ray(
    config: Config,
    extractor: str,
    catalog: pd.DataFrame,
    rows: np.ndarray,
    categories: bool,
    address: str | None,
    writer: ChunkWriter,
    bar: tqdm,
) -> tuple[float, dict[str, Any]]:
    """The Ray engine (`pipelines.embedding.embed_ray`) feeding the same writer. Returns (mean busy
    seconds per actor, the engine's stats for the manifest)."""
    from pipelines.embedding.embed_ray import RayStats, embedded_batches

    stats = RayStats()
    batches = embedded_batches(config, extractor, catalog, rows, categories, address, stats)
    # closing: a failed write stops Ray's actors now, not when the generator is freed.
    with contextlib.closing(batches):
        for emb, probs in batches:
            writer.add(emb, probs)
            bar.update(len(emb))
    return sum(stats.busy_s_per_actor.values()) / max(stats.actors, 1), stats.summary()


def _run_summary(
    n: int, embedded: int, seconds: float, forward_s: float, engine: str, stats: dict[str, Any]
) -> dict[str, Any]:
    """The embed run's record in the manifest: rows, throughput, model share, engine."""
    return {
        "skipped": False,
        "rows": n,
        "embedded": embedded,
        "seconds": round(seconds, 2),
        "images_per_s": round(embedded / seconds, 2) if embedded else None,
        "forward_share": round(forward_s / seconds, 3) if embedded else None,
        "engine": engine,
        **stats,
    }


def _write_categories(
    config: Config,
    catalog: pd.DataFrame,
    probs: np.ndarray,
    ext: Extractor,
    params: dict[str, Any],
    inputs: dict[str, str],
) -> None:
    """categories.parquet: the classifier head's top class and its probability per item."""
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

"""Ray engine of the embed stage: reads catalog rows, decodes in Ray tasks, embeds in an actor
pool, and yields the vectors in catalog order to `pipelines.embedding.embed`'s ChunkWriter.

`run_embed(..., engine="ray")` calls `embedded_batches`; everything around it (freshness,
manifest key, resumable chunks, the final array) is the local engine's, so the two engines'
outputs are interchangeable. Ray is imported only here, and only when this engine runs.

On a cluster (`--address`), every node must see the catalog photos and the artifacts folder at
the same paths (a shared filesystem) and have this repo's requirements installed; the
`pipelines` package itself is shipped to the workers with the job.
"""

from __future__ import annotations

import heapq
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines import commands
from pipelines.config import Config
from pipelines.data.images import ImageError, load_array
from pipelines.data.sources import BBOX_COLUMNS
from pipelines.embedding.ray_session import ray_session
from pipelines.errors import LookalikeError


@dataclass
class RayStats:
    """What the Ray engine measured, filled in while `embedded_batches` runs.

    actors : actors in the embedding pool.
    gpus_per_actor : GPUs each actor asked Ray for (0 on CPU).
    batch_size : images per forward pass in each actor.
    rows_per_actor : rows each actor embedded, by actor process id.
    busy_s_per_actor : seconds each actor spent in the model step.
    start_s : seconds from the call to the Ray cluster being ready (0 when it was up already).
    """

    actors: int = 0
    gpus_per_actor: float = 0.0
    batch_size: int = 0
    rows_per_actor: dict[str, int] = field(default_factory=dict)
    busy_s_per_actor: dict[str, float] = field(default_factory=dict)
    start_s: float = 0.0

    def per_actor_rate(self) -> float | None:
        """Mean images/s of one actor while it runs the model (rows / busy seconds)."""
        rates = [self.rows_per_actor[a] / s for a, s in self.busy_s_per_actor.items() if s > 0]
        return round(float(np.mean(rates)), 2) if rates else None

    def summary(self) -> dict[str, Any]:
        """Numbers for the embeddings manifest's `run` record."""
        return {
            "actors": self.actors,
            "gpus_per_actor": self.gpus_per_actor,
            "actor_batch_size": self.batch_size,
            "ray_start_s": round(self.start_s, 2),
            "per_actor_images_per_s": self.per_actor_rate(),
        }


def decode_batch(batch: dict[str, np.ndarray], size: int, max_pixels: int) -> dict[str, np.ndarray]:
    """A Ray task: catalog rows (row, path, bbox) -> (b, size, size, 3) uint8 pixels.

    Decodes through `pipelines.data.images.load_array`, the loader of the local engine and of
    uploads. A file that fails becomes a zero image with its reason in `error`; the driver
    turns any error into the local engine's LookalikeError.
    """
    paths = batch["path"]
    boxes = batch["bbox"]
    pixels = np.zeros((len(paths), size, size, 3), np.uint8)
    errors = np.full(len(paths), "", dtype=object)
    for i, (path, box) in enumerate(zip(paths, boxes, strict=True)):
        bbox = None if box[0] < 0 else tuple(int(v) for v in box)
        try:
            pixels[i] = load_array(str(path), size, bbox=bbox, max_pixels=max_pixels)
        except ImageError as err:
            errors[i] = f"{path}: {err.reason}"
    return {"row": batch["row"], "pixels": pixels, "error": errors}


class EmbedActor:
    """A Ray actor of the pool: builds the extractor's model once, then embeds batches.

    Called with {"row", "pixels", "error"} batches; returns {"row", "emb", ["probs"], "error",
    "actor", "busy_s"} where busy_s is this batch's model time (spread over its rows).
    """

    def __init__(self, config: Config, extractor: str, threads: int, categories: bool) -> None:
        import tensorflow as tf

        # As many TF threads as CPUs the actor asked Ray for: on a shared node, more would
        # take cores Ray gave to other actors and to the decode tasks.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        # Ray shows the actor only its own GPUs (CUDA_VISIBLE_DEVICES); growing memory on
        # demand lets actors that share one (ray_actor_gpus < 1) fit side by side.
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
        from pipelines.models.extractors import get_extractor, model_step

        ext = get_extractor(extractor, config)
        _ = ext.model  # build and load once per actor, not on the first batch
        self.step = model_step(ext, categories)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        emb, probs = self.step(np.ascontiguousarray(batch["pixels"]))
        busy = time.perf_counter() - start
        n = len(emb)
        out = {
            "row": batch["row"],
            "emb": np.asarray(emb, np.float32),
            "error": batch["error"],
            "actor": np.full(n, self.name, dtype=object),
            "busy_s": np.full(n, busy / max(n, 1), np.float64),
        }
        if probs is not None:
            out["probs"] = np.asarray(probs, np.float32)
        return out


def _rows_table(catalog: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """One line per row to embed: its catalog index, path and crop box (-1s for none)."""
    if all(c in catalog.columns for c in BBOX_COLUMNS):
        boxes = catalog[BBOX_COLUMNS].astype("Int64").fillna(-1).to_numpy(dtype=np.int64)
    else:
        boxes = np.full((len(catalog), 4), -1, np.int64)
    paths = catalog["path"].to_numpy(dtype=str)
    return pd.DataFrame({"row": rows, "path": paths[rows], "bbox": list(boxes[rows])})


def _pool_size(config: Config, cluster: dict[str, float], gpus_per_actor: float) -> int:
    """Actors in the pool: the setting, or (0) as many as the cluster holds — one per
    `ray_actor_gpus` GPUs, else one per `ray_actor_cpus` CPUs with one CPU left for decoding.
    A pool the cluster cannot hold is an error, not a hang."""
    cpus = float(cluster.get("CPU", 0))
    if config.ray_actors:
        actors = config.ray_actors
    elif gpus_per_actor:
        actors = max(1, int(cluster.get("GPU", 0) // gpus_per_actor))
    else:
        actors = max(1, int((cpus - 1) // config.ray_actor_cpus))
    need = actors * config.ray_actor_cpus + 1
    if need > cpus:
        raise LookalikeError(
            f"ray_actors={actors} x ray_actor_cpus={config.ray_actor_cpus} plus one CPU for "
            f"decoding needs {need} CPUs, the Ray cluster has {cpus:g} — lower them with "
            f"--set ray_actors=N --set ray_actor_cpus=N, or add nodes"
        )
    return actors


def embedded_batches(
    config: Config,
    extractor: str,
    catalog: pd.DataFrame,
    rows: np.ndarray,
    categories: bool,
    address: str | None = None,
    stats: RayStats | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Embed catalog `rows` on Ray; yields (unit embeddings, class probabilities or None)
    batches whose rows follow `rows` in order, ready for `ChunkWriter.add`.

    Rows are read into a Ray dataset, decoded in CPU tasks (`decode_batch`), and embedded by
    a pool of `EmbedActor`s (`map_batches` with a callable class). Where the cluster has GPUs
    (locally: where TensorFlow sees one), each actor asks for `ray_actor_gpus` of them and
    takes batches of `ray_gpu_batch_size`. `stats`, when given, is filled with what was
    measured. A Ray this call starts is shut down when the generator ends.
    """
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return
    stats = stats if stats is not None else RayStats()
    from pipelines.models.extractors import get_extractor

    size = get_extractor(extractor, config).input_size
    start = time.perf_counter()
    with ray_session(config, address) as ray:
        stats.start_s = time.perf_counter() - start
        cluster = ray.cluster_resources()
        gpus = config.ray_actor_gpus if cluster.get("GPU", 0) >= config.ray_actor_gpus else 0.0
        stats.actors = _pool_size(config, cluster, gpus)
        stats.gpus_per_actor = gpus
        stats.batch_size = config.ray_gpu_batch_size if gpus else config.batch_size
        table = _rows_table(catalog, rows)
        # Blocks of a few batches: small enough to stream, few enough (<= ~4k) to schedule.
        block = max(config.batch_size, -(-len(rows) // 4096))
        frames = [table.iloc[lo : lo + block] for lo in range(0, len(table), block)]
        ds = (
            ray.data.from_pandas(frames)
            .map_batches(
                decode_batch,
                batch_size=config.batch_size,
                batch_format="numpy",
                fn_kwargs={"size": size, "max_pixels": config.max_pixels},
                num_cpus=1,
                # Memory a decode worker holds: ~120 MB of Python and libraries (measured),
                # plus its batch and Pillow's buffers. Its remote arguments then differ from
                # the actors', which also keeps Ray from fusing decoding into the actors: on
                # their own, tasks decode while actors embed.
                memory=160 * 2**20 + 4 * config.batch_size * size * size * 3,
            )
            .map_batches(
                EmbedActor,
                batch_size=stats.batch_size,
                batch_format="numpy",
                fn_constructor_kwargs={
                    "config": config,
                    "extractor": extractor,
                    "threads": config.ray_actor_cpus,
                    "categories": categories,
                },
                compute=ray.data.ActorPoolStrategy(size=stats.actors),
                num_cpus=config.ray_actor_cpus,
                num_gpus=gpus or None,
            )
        )
        try:
            yield from _in_order(
                ds.iter_batches(batch_size=None, batch_format="numpy"), rows, stats
            )
        except (ray.exceptions.RayError, ray.data.exceptions.UserCodeException) as err:
            raise _worker_error(err) from err


def _worker_error(err: Exception) -> LookalikeError:
    """A failure inside a Ray task or actor as one actionable line: our own LookalikeError
    with its message, anything else with its error line and where to look.

    Ray hands the driver a wrapper (RayTaskError, Ray Data's UserCodeException) whose cause
    may not survive the trip between processes, so the worker's traceback text is read too.
    """
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = getattr(current, "cause", None) or current.__cause__
    for link in chain:
        if isinstance(link, LookalikeError):
            return LookalikeError(str(link))
    first = ""
    for line in str(err).splitlines():
        name, sep, text = line.strip().partition(": ")
        kind = name.rsplit(".", 1)[-1]  # "pipelines.errors.LookalikeError" -> the class
        if sep and name.replace(".", "").replace("_", "").isalnum() and kind[:1].isupper():
            first = first or line.strip()  # the worker's own error comes before Ray's
            if name.endswith(("LookalikeError", "ImageError")):
                return LookalikeError(text)
    return LookalikeError(
        f"a Ray worker failed ({(first or type(chain[-1]).__name__)[:300]}) — check that every "
        f"node has this repo's requirements and sees the catalog photos and the artifacts "
        f"folder at the same paths; finished chunks are kept, so run the command again, or "
        f"use the local engine"
    )


def _in_order(
    batches: Iterator[dict[str, np.ndarray]], rows: np.ndarray, stats: RayStats
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Batches released strictly in the order of `rows` (sorted), whatever order Ray returns
    them in; a lost or repeated row is an error, never a silent shift of the catalog."""
    waiting: list[tuple[int, int, dict[str, np.ndarray]]] = []
    position = 0
    for seq, batch in enumerate(batches):
        if not len(batch["row"]):
            continue
        bad = [str(e) for e in batch["error"] if e]
        if bad:
            raise LookalikeError(
                f"{len(bad)} catalog file(s) changed or vanished since the catalog was built "
                f"(first: {bad[0]}) — run `{commands.CATALOG}` again, then embed"
            )
        for actor, n, busy in _per_actor(batch):
            stats.rows_per_actor[actor] = stats.rows_per_actor.get(actor, 0) + n
            stats.busy_s_per_actor[actor] = stats.busy_s_per_actor.get(actor, 0.0) + busy
        first = int(np.searchsorted(rows, batch["row"][0]))
        heapq.heappush(waiting, (first, seq, batch))
        while waiting and waiting[0][0] == position:
            _first, _seq, ready = heapq.heappop(waiting)
            expected = rows[position : position + len(ready["row"])]
            if not np.array_equal(ready["row"], expected):
                raise LookalikeError(
                    f"the Ray engine returned rows out of sequence at catalog row {expected[0]} "
                    f"— run `{commands.embed(force=True)}`, or the local engine"
                )
            position += len(expected)
            yield ready["emb"], ready.get("probs")
    if position != len(rows) or waiting:
        raise LookalikeError(
            f"the Ray engine returned {position} of {len(rows)} rows in sequence — run the "
            f"command again (finished chunks are kept)"
        )


def _per_actor(batch: dict[str, np.ndarray]) -> Iterator[tuple[str, int, float]]:
    """(actor, rows, busy seconds) of one output batch (it may merge several actors' batches)."""
    actors = batch["actor"].astype(str)
    for actor in np.unique(actors):
        mine = actors == actor
        yield str(actor), int(mine.sum()), float(batch["busy_s"][mine].sum())

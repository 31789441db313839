"""Embedding benchmark: images/s through the embed stage's reader and model step against the
same model on batches held in memory; and the local engine against the Ray engine
(`python -m pipelines.bench.embedding`). Reads the catalog and models; may fill the pixel cache
(the engine comparison writes the embeddings artifact)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipelines import commands
from pipelines.bench.common import TARGETS, interleaved
from pipelines.config import ENGINES, EXTRACTORS, Config, parse_overrides
from pipelines.data import pixel_cache


def bench_embedding(config: Config, quick: bool) -> dict[str, Any]:
    """Stream / in-memory images/s per extractor, same batch size, same process."""
    if not config.catalog_path.exists():
        return {"skipped": f"no catalog at {config.catalog_path} — run `{commands.CATALOG}`"}
    rows = []
    for name in EXTRACTORS:
        if name == "custom_cnn" and not config.custom_cnn_path.exists():
            missing = f"{config.custom_cnn_path} is missing — run `{commands.TRAIN}`"
            rows.append({"extractor": name, "skipped": missing})
            continue
        try:
            rows.append(embedding_throughput(config, name, batches=1 if quick else 16))
        except Exception as err:  # a broken model is a result, not a crash of the bench
            rows.append({"extractor": name, "skipped": f"failed: {type(err).__name__}: {err}"})
    return {
        "rows": rows,
        "method": "stream = pipelines.embedding.embed.pixel_stream (the pixel cache, memory-mapped,"
        " when one matches the catalog at the model's size; else tf.data decode+resize with "
        "prefetch) + the stage's model step; memory = the same step on the same uint8 batches "
        "held in RAM; memory and stream passes alternate (2-7 rounds, by speed) and the ratio "
        "is of the median rates",
    }


def _fill_cache(config: Config, catalog: Any, size: int) -> dict[str, Any]:
    """Make sure the custom CNN's pixel cache exists (the train stage normally fills it)."""
    t0 = time.perf_counter()
    found = pixel_cache.open_cache(config, catalog, size)
    if found is not None:
        return {"reader": "pixel cache"}
    pixel_cache.build_cache(config, catalog, size)
    return {"reader": "pixel cache", "cache_filled_by_bench_s": round(time.perf_counter() - t0, 1)}


def embedding_throughput(config: Config, name: str, batches: int) -> dict[str, Any]:
    """One extractor's row: stream vs in-memory images/s over `batches` batches."""
    from pipelines.data.catalog import load_catalog
    from pipelines.embedding.embed import pixel_stream
    from pipelines.models.extractors import (
        CustomCNNExtractor,
        get_extractor,
        model_step,
        wants_categories,
    )

    ext = get_extractor(name, config)
    catalog = load_catalog(config)
    n = min(len(catalog), batches * config.batch_size)
    rows = np.arange(n)
    t0 = time.perf_counter()
    _ = ext.model
    load_s = time.perf_counter() - t0
    step = model_step(ext, wants_categories(ext))  # exactly what run_embed calls per batch
    reader = {"reader": "decode (tf.data)"}
    if isinstance(ext, CustomCNNExtractor):
        reader = _fill_cache(config, catalog, ext.input_size)

    def embed(pixels: np.ndarray) -> np.ndarray:
        return step(pixels)[0]

    # Warm-up pass: fills the file cache, traces the model, and keeps the batches.
    t0 = time.perf_counter()
    held = [pixels for _i, pixels in pixel_stream(catalog, rows, ext.input_size, config)]
    for pixels in held:
        embed(pixels)
    warm_s = time.perf_counter() - t0

    def memory_pass() -> None:
        for pixels in held:
            embed(pixels)

    def stream_pass() -> None:
        for _index, pixels in pixel_stream(catalog, rows, ext.input_size, config):
            embed(pixels)

    # Memory and stream passes alternate; a fast model gets more rounds (about 30 s in all),
    # because on shared cores one pass of a few seconds is mostly noise.
    rounds = max(2, min(7, int(30 / max(warm_s, 1e-3))))
    times = interleaved({"memory": memory_pass, "stream": stream_pass}, rounds, warmup=0)
    rates = {k: [n / t for t in v] for k, v in times.items()}
    memory, stream = float(np.median(rates["memory"])), float(np.median(rates["stream"]))
    ratio = stream / memory
    return {
        "extractor": name,
        **reader,
        "images": n,
        "batch_size": config.batch_size,
        "model_load_s": round(load_s, 2),
        "stream_img_s": round(stream, 2),
        "memory_img_s": round(memory, 2),
        "rounds": rounds,
        "memory_img_s_spread": [round(min(rates["memory"]), 2), round(max(rates["memory"]), 2)],
        "stream_img_s_spread": [round(min(rates["stream"]), 2), round(max(rates["stream"]), 2)],
        "ratio": round(ratio, 3),
        "target": f">= {TARGETS['embedding_ratio']}",
        "met": bool(ratio >= TARGETS["embedding_ratio"]),
    }


def compare_engines(config: Config, extractor: str = "inception_v3") -> dict[str, Any]:
    """Embed the catalog with the local engine, then the Ray engine, in one process.

    Returns per engine: images/s end to end (start-up included), and images/s while the model
    runs (rows / model seconds: the local engine's one model with all cores, one Ray actor
    with `ray_actor_cpus`); the Ray/local ratio of the end-to-end rates; Ray's start-up and
    actor count. Writes the embeddings artifact twice (`force`), identical both times.
    """
    from pipelines.embedding.embed import run_embed

    results: dict[str, Any] = {}
    rows = 0
    for engine in ENGINES:
        details = run_embed(config, extractor, force=True, engine=engine).details
        rows = int(details["embedded"])
        model_s = details["forward_share"] * details["seconds"]
        results[engine] = {
            "images_per_s": details["images_per_s"],
            "seconds": details["seconds"],
            "model_images_per_s": round(rows / model_s, 2) if model_s else None,
        }
        if engine == "ray":
            results[engine].update(
                actors=details["actors"],
                actor_cpus=config.ray_actor_cpus,
                ray_start_s=details["ray_start_s"],
                model_images_per_s=details["per_actor_images_per_s"],
            )
    results["rows"] = rows
    results["ratio_ray_to_local"] = round(
        results["ray"]["images_per_s"] / results["local"]["images_per_s"], 3
    )
    return results


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.bench.embedding [--artifacts DIR] [--set NAME=VALUE] [--extractor
    NAME]`: the local engine against the Ray engine on DIR's catalog, as JSON."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.bench.embedding",
        description="local engine vs Ray engine on the catalog in --artifacts, one run",
    )
    parser.add_argument("--artifacts", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--extractor", default="inception_v3")
    args = parser.parse_args(argv)
    changes = parse_overrides(args.overrides)
    if args.artifacts is not None:
        changes["artifacts_dir"] = args.artifacts
    print(json.dumps(compare_engines(Config().replace(**changes), args.extractor), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

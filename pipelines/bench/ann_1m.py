"""Search at 1M x 2048 (InceptionV3's width): build, save and load times, recall@10, single-query
p95 and RSS of a process serving the catalog from memory-mapped vectors. Reads embeddings (to
draw the vectors); writes the vectors and the saved index in this run's folder under
`vectors_disk.scratch_dir` (`scratch.run_scratch`: removed afterwards).

Each measurement runs in a child process, so one's peak memory never includes another's:
"build" builds the IVF index from the memory-mapped float32 file and saves it as
`ann_store` does; "serve" opens the vectors memory-mapped, loads the saved index, builds the
`Index` the app and the service use (item ids included) and answers single queries, re-ranking
from the float32 file and then from a float16 copy, so the cost of half precision is measured
on the same candidates.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bench.common import TARGETS, K, cycler, interleaved, ms, peak_rss_mb, run_child
from pipelines.bench.report import loadavg
from pipelines.bench.scratch import run_scratch
from pipelines.bench.vectors import vector_spec
from pipelines.bench.vectors_disk import chunk_rows, scratch_dir, write_vectors
from pipelines.config import Config

TARGET = {"recall@10": 0.95, "p95_ms": 20.0, "rss_gb": 6.0}
QUERIES = 200


def bench_ann_1m(config: Config, quick: bool) -> dict[str, Any]:
    """Rows: the build child, then one serve row per re-rank precision (and the narrow
    extractors' width, 128-d, in the same serving process). Its vectors and indexes (13 GB
    at 1M) live in a scratch folder of this run, removed however the run ends."""
    with run_scratch(scratch_dir(config), "bench ann_1m") as folder:
        return _bench_ann_1m(config, quick, folder)


def _bench_ann_1m(config: Config, quick: bool, folder: Path) -> dict[str, Any]:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return {"skipped": "faiss-cpu is not installed (pip install faiss-cpu==1.15.1)"}
    n = 20_000 if quick else 1_000_000
    spec = vector_spec(config, n, 2048, seed=7)
    narrow = vector_spec(config, n, 128, seed=8)
    files = _files(folder, spec, narrow)
    t0 = time.perf_counter()
    for key, (part, dtype) in {
        "f32": (spec, "float32"),
        "f16": (spec, "float16"),
        "narrow": (narrow, "float32"),
    }.items():
        write_vectors(part, files[key], dtype)
    write_s = round(time.perf_counter() - t0, 1)
    queries = chunk_rows(spec, n, n + QUERIES)
    truth = _exact_truth(files["f32"], queries)
    np.save(files["queries"], queries)
    np.save(files["truth"], truth)
    params = {key: str(path) for key, path in files.items()}
    build = run_child("ann_1m_build", params, timeout=3600)
    serve = run_child("ann_1m_serve", {**params, "quick": quick}, timeout=3600)
    rows = [{"step": "build (child)", **build}]
    for row in serve.pop("rows", []):
        rows.append({"step": "serve (child)", **row})
    met = [
        r["recall@10"] >= TARGET["recall@10"] and r["single_p95_ms"] <= TARGET["p95_ms"]
        for r in rows
        if r.get("rerank_from") == "float32 file" and r.get("d") == 2048
    ]
    return {
        "rows": rows,
        "serve": serve,
        "n": n,
        "data": spec["kind"],
        "vectors_written_s": write_s,
        "targets": {**TARGET, "ann_p95_ms (bench ann, 1M x 128)": TARGETS["ann_p95_ms"]},
        "target_met": bool(met) and all(met) and serve.get("rss_after_queries_mb", 1e9) < 6144,
        "notes": "truth = exact top-10 by cosine over the float32 file (streamed); queries are "
        "held-out rows of the same distribution; p95 over 1000 single queries; RSS from "
        "/proc/self/status in the serving child (RssFile = file pages mapped into it)",
    }


def _files(folder: Path, spec: dict[str, Any], narrow: dict[str, Any]) -> dict[str, Path]:
    tag = f"{spec['kind']}_{spec['n']}_s{spec['seed']}"
    return {
        "f32": folder / f"vectors_{tag}_2048_f32.npy",
        "f16": folder / f"vectors_{tag}_2048_f16.npy",
        "narrow": folder / f"vectors_{narrow['kind']}_{narrow['n']}_s8_128_f32.npy",
        "queries": folder / f"queries_{tag}.npy",
        "truth": folder / f"truth_{tag}.npy",
        "saved": folder / f"ann_{tag}.npz",
        "saved_narrow": folder / f"ann_{tag}_narrow.npz",
    }


def _exact_truth(path: Path, queries: np.ndarray) -> np.ndarray:
    """(m, K) exact top-K rows of each query over the .npy at `path`, one chunked pass."""
    own = np.full(len(queries), -1, dtype=np.int64)
    return _exact_excluding(np.load(path, mmap_mode="r"), queries, own)


def _status() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile and VmHWM of this process, MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = round(int(line.split()[1]) / 1024, 1)
    return out


def child_build(f32: str, saved: str, narrow: str, saved_narrow: str, **_: Any) -> dict[str, Any]:
    """(child) Build the IVF index from the memory-mapped file and save it, as `ann_store`."""
    from pipelines.search.approximate import AnnIndex

    out: dict[str, Any] = {"loadavg_before": loadavg()}
    for label, source, target in (("2048", f32, saved), ("128", narrow, saved_narrow)):
        vectors = np.load(source, mmap_mode="r")
        index = AnnIndex.build(vectors)
        t0 = time.perf_counter()
        np.savez(target, **index.to_arrays())
        out[f"build_{label}_s"] = round(index.build_seconds, 1)
        out[f"save_{label}_s"] = round(time.perf_counter() - t0, 1)
        out[f"saved_{label}_mb"] = round(os.path.getsize(target) / 2**20, 1)
        out[f"rss_after_build_{label}"] = _status()
        del index
    out["loadavg_after"] = loadavg()
    return out


def child_serve(
    f32: str,
    f16: str,
    narrow: str,
    saved: str,
    saved_narrow: str,
    queries: str,
    truth: str,
    quick: bool = False,
    **_: Any,
) -> dict[str, Any]:
    """(child) Serve the catalog as the app does: memory-mapped vectors, the saved indexes,
    an `Index` per width with its item ids; then single queries. Reports RSS after each."""
    from pipelines.bench.ann import recall
    from pipelines.search.approximate import AnnIndex
    from pipelines.search.index import Index

    out: dict[str, Any] = {"rss_start": _status(), "loadavg_before": loadavg()}
    t0 = time.perf_counter()
    wide = np.load(f32, mmap_mode="r")
    ids = np.array([f"{i:016x}" for i in range(len(wide))], dtype=object)
    with np.load(saved, allow_pickle=False) as arrays:
        ann_wide = AnnIndex.from_arrays(arrays, wide)
    # ann_min_items=0: the approximate path at any size (the quick run is below the threshold).
    index = Index(wide, ids, name="inception_v3", ann_index=ann_wide, ann_min_items=0)
    out["load_2048_s"] = round(time.perf_counter() - t0, 2)
    out["rss_after_load_2048"] = _status()
    t0 = time.perf_counter()
    thin = np.load(narrow, mmap_mode="r")
    with np.load(saved_narrow, allow_pickle=False) as arrays:
        ann_thin = AnnIndex.from_arrays(arrays, thin)
    index_thin = Index(thin, ids, name="custom_cnn", ann_index=ann_thin, ann_min_items=0)
    out["load_128_s"] = round(time.perf_counter() - t0, 2)
    out["rss_after_load_both"] = _status()

    q = np.load(queries)
    true_rows = np.load(truth)
    half = np.load(f16, mmap_mode="r")
    with np.load(saved, allow_pickle=False) as arrays:
        ann_half = AnnIndex.from_arrays(arrays, half)  # same index, float16 re-rank rows
    repeats = 200 if quick else 1000
    cases = {
        ("float32 file", 2048): lambda v: index.search_rows(v, K),
        ("float16 file", 2048): lambda v: ann_half.search(v, K),
    }
    rows = []
    found = {key: fn(q)[0] for key, fn in cases.items()}
    times = interleaved({key: cycler(fn, q) for key, fn in cases.items()}, repeats)
    for source, d in cases:
        stats = ms(times[(source, d)])
        rows.append(
            {
                "d": d,
                "rerank_from": source,
                "recall@10": round(recall(found[(source, d)], true_rows), 4),
                "single_median_ms": stats["median_ms"],
                "single_p95_ms": stats["p95_ms"],
                "nprobe": ann_wide.nprobe,
                "pca_dims": ann_wide.reduced_dim,
                "loadavg": loadavg(),
            }
        )
    # How often half precision changes the top 10 itself (same candidates, other rounding).
    full, halved = found.values()
    out["float16_vs_float32_top10_overlap"] = round(recall(halved, full), 4)
    # The narrow width: queries are the rows' own vectors (excluded), truth is exact search.
    probe = np.asarray(thin[:: max(1, len(thin) // QUERIES)][:QUERIES], dtype=np.float32)
    rows_of = np.arange(0, len(thin), max(1, len(thin) // QUERIES))[:QUERIES]
    exact_thin = _exact_excluding(thin, probe, rows_of)
    got = index_thin.search_rows(probe, K, exclude_rows=rows_of)[0]
    stats = ms(
        interleaved({"n": cycler(lambda v: index_thin.search_rows(v, K), probe)}, repeats)["n"]
    )
    rows.append(
        {
            "d": 128,
            "rerank_from": "- (no PCA)",
            "recall@10": round(recall(got, exact_thin), 4),
            "single_median_ms": stats["median_ms"],
            "single_p95_ms": stats["p95_ms"],
            "nprobe": ann_thin.nprobe,
            "loadavg": loadavg(),
        }
    )
    out["rows"] = rows
    out["rss_after_queries"] = _status()
    out["rss_after_queries_mb"] = out["rss_after_queries"]["VmRSS"]
    out["peak_rss_mb_child"] = round(peak_rss_mb(), 1)
    return out


def _exact_excluding(vectors: np.ndarray, queries: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Exact top-K of each query over `vectors` in chunks, leaving out row `own[i]`."""
    from pipelines.search.approximate import iter_chunks

    best_sims = np.full((len(queries), K), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), K), dtype=np.int64)
    start = 0
    for chunk in iter_chunks(vectors):
        sims = queries @ chunk.T
        inside = (own >= start) & (own < start + len(chunk))
        sims[np.flatnonzero(inside), own[inside] - start] = -np.inf
        rows = np.broadcast_to(np.arange(start, start + len(chunk)), sims.shape)
        all_sims, all_rows = np.hstack([best_sims, sims]), np.hstack([best_rows, rows])
        top = np.argpartition(-all_sims, K - 1, axis=1)[:, :K]
        best_sims = np.take_along_axis(all_sims, top, axis=1)
        best_rows = np.take_along_axis(all_rows, top, axis=1)
        start += len(chunk)
    return best_rows


def child_load_index(artifacts_dir: str, queries: int = 200) -> dict[str, Any]:
    """(child) Serve a real large artifacts folder (a `bench --scale` build or a real catalog)
    as the app and the service do: `readers.load_index` for every extractor it has, then
    single queries by catalog item on each; RSS after loading and after the queries.

    Run it alone with
    `python -c "from pipelines.bench.common import run_child; print(run_child('ann_1m_load_index',
    {'artifacts_dir': 'DIR'}, 3600))"`.
    """
    from pipelines.readers import load_index

    config = Config(artifacts_dir=Path(artifacts_dir))
    out: dict[str, Any] = {"rss_start": _status(), "loadavg_before": loadavg()}
    indexes = {}
    for name in config.extractors_built():
        t0 = time.perf_counter()
        indexes[name] = load_index(config, name)
        index = indexes[name]
        out[f"{name}_load_s"] = round(time.perf_counter() - t0, 2)
        out[f"{name}_saved_index_used"] = index._ann is not None
        out[f"{name}_memory_mapped"] = isinstance(index.vectors, np.memmap)
    out["rss_after_load"] = _status()
    for name, index in indexes.items():
        rows = np.random.default_rng(0).choice(index.size, queries, replace=False)
        one = cycler(
            lambda r, index=index: index.search_rows(index.row_vectors(r), K, exclude_rows=[r]),
            rows,
        )
        t0 = time.perf_counter()
        stats = ms(interleaved({"q": one}, queries)["q"])
        out[f"{name}_first_and_{queries}_queries_s"] = round(time.perf_counter() - t0, 2)
        out[f"{name}_single_p95_ms"] = stats["p95_ms"]
        out[f"{name}_single_median_ms"] = stats["median_ms"]
    out["rss_after_queries"] = _status()
    out["loadavg_after"] = loadavg()
    return out

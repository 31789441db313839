"""Reads the catalog and each extractor's index; writes retrieval metrics (JSON + per class):
category metrics (precision, recall, mAP), likeness metrics (copy-retrieval R@1, colour
agreement@10) and latency."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipelines import commands
from pipelines.artifacts import (
    artifact_hash,
    atomic_path,
    is_fresh,
    read_manifest,
    sha256_file,
    write_json,
    write_manifest,
    write_parquet,
)
from pipelines.config import EXTRACTORS, STRATEGIES, Config, embeddings_key
from pipelines.errors import LookalikeError
from pipelines.quality.likeness import colour_agreement, copy_recall_at_1
from pipelines.quality.metrics import (
    MAP_K,
    PER_CLASS_K,
    average_precision,
    latency_stats,
    per_class_precision,
    precision_at,
    recall_at,
)
from pipelines.readers import load_index, model_id, read_catalog
from pipelines.search.index import Index
from pipelines.stage import StageResult

STAGE = "evaluate"
# Single queries timed per extractor x strategy: enough for a stable p95, about a second.
LATENCY_QUERIES = 100
# The k the latency is measured at (the app's default page of neighbours).
LATENCY_K = 10
# Colour agreement is measured over this many neighbours.
COLOUR_K = 10
# Changes whenever the copy-retrieval alteration or the colour metric changes.
# likeness-2: each copy's alteration is seeded by its item id, not its position.
LIKENESS_VERSION = "likeness-2"


def no_labels_message(config: Config) -> str:
    """What to tell a user whose catalog has no labels."""
    return (
        f"metrics need labels: {config.catalog_path} has no labels — use a catalog with a "
        f"label per image (class folders or a 'label' column) to measure retrieval; search, "
        f"maps and clusters work without them"
    )


# --- protocol ---
@dataclass(frozen=True)
class Protocol:
    """Which catalog rows are queries and which form the gallery they are searched in."""

    queries: np.ndarray  # (m,) catalog rows with a label
    gallery: np.ndarray  # (g,) catalog rows searched
    leave_one_out: bool  # queries are gallery items too, each excluded from its own results
    description: str


def make_protocol(catalog: pd.DataFrame) -> Protocol | None:
    """Test split as queries and the rest of the catalog as gallery; leave-one-out over all
    items when there is no test split (or no labelled test item). None without labels."""
    labels = catalog["label"] if "label" in catalog.columns else pd.Series(pd.NA, catalog.index)
    labelled = labels.notna().to_numpy()
    if not labelled.any():
        return None
    split = catalog["split"] if "split" in catalog.columns else pd.Series(pd.NA, catalog.index)
    is_test = (split == "test").fillna(False).to_numpy(dtype=bool)
    queries = np.flatnonzero(is_test & labelled)
    gallery = np.flatnonzero(~is_test)
    if len(queries) and len(gallery):
        return Protocol(
            queries,
            gallery,
            False,
            f"{len(queries)} test queries against {len(gallery)} train+validation items",
        )
    everything = np.arange(len(catalog))
    return Protocol(
        np.flatnonzero(labelled),
        everything,
        True,
        f"leave-one-out: {int(labelled.sum())} labelled queries against the other "
        f"{len(catalog) - 1} items (no test split)",
    )


def evaluate_index(
    index: Index,
    labels: Sequence[object] | np.ndarray,
    protocol: Protocol,
    strategy: str,
    ks: Sequence[int],
    latency_queries: int = LATENCY_QUERIES,
    colours: np.ndarray | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Retrieval quality and speed of one strategy on a full-catalog index.

    Parameters
    ----------
    index : the whole catalog (row i = catalog row i).
    labels : (n,) catalog labels (None/NA when unknown); relevant = same label.
    protocol : from `make_protocol`.
    strategy : one of STRATEGIES.
    ks : cut-offs for precision and recall; those above the gallery size are left out.
    latency_queries : single queries timed (evenly spread over the query set).
    colours : (n,) dominant colour of each catalog item; adds "colour@10", the share of the
        first 10 results whose colour is the query's (queries without a colour left out).

    Returns
    -------
    metrics : {"p@k", "r@k" for each k, "map@10", "latency_ms_median", "latency_ms_p95",
        "n_queries", "n_gallery"}; queries whose label has no other gallery item are dropped.
    per_class : DataFrame label, n_queries, p@10.
    """
    codes, _ = pd.factorize(pd.Series(np.asarray(labels, dtype=object)), use_na_sentinel=True)
    loo = protocol.leave_one_out
    gallery = index if loo else index.subset(protocol.gallery)
    gallery_codes = codes if loo else codes[protocol.gallery]
    query_rows = protocol.queries
    query_codes = codes[query_rows]

    # Relevant items per query: gallery items with its label, minus itself in leave-one-out.
    class_sizes = np.bincount(gallery_codes[gallery_codes >= 0], minlength=codes.max() + 1)
    n_relevant = class_sizes[query_codes] - (1 if loo else 0)
    answerable = n_relevant > 0
    query_rows, query_codes, n_relevant = (
        query_rows[answerable],
        query_codes[answerable],
        n_relevant[answerable],
    )

    # Enough results for every cut-off, mAP@10 and P@10 per class, as far as the gallery allows.
    top = min(max(*ks, MAP_K, PER_CLASS_K), gallery.size - (1 if loo else 0))
    if len(query_rows) == 0 or top < 1:
        reason = "no query has another gallery item with its label"
        return {"skipped": reason}, pd.DataFrame(columns=["label", "n_queries", f"p@{PER_CLASS_K}"])
    ks = [k for k in ks if k <= top]
    vectors = index.row_vectors(query_rows)
    exclude = query_rows if loo else None
    categories = None
    if strategy == "category" and index.categories is not None:
        # The categories each query searches (widened while the classifier is unsure).
        pools = index.categories if index.category_queries is None else index.category_queries
        categories = pools[query_rows]

    # The whole query set in one call: a few matrix products, no per-query Python work.
    found, _ = gallery.search_rows(
        vectors, top, strategy, exclude_rows=exclude, query_categories=categories
    )
    relevant = (found >= 0) & (gallery_codes[np.maximum(found, 0)] == query_codes[:, None])

    metrics: dict[str, Any] = {}
    for k in ks:
        metrics[f"p@{k}"] = float(precision_at(relevant, k).mean())
    for k in ks:
        metrics[f"r@{k}"] = float(recall_at(relevant, n_relevant, k).mean())
    metrics[f"map@{MAP_K}"] = float(average_precision(relevant, n_relevant, MAP_K).mean())
    if colours is not None and top >= COLOUR_K:
        metrics.update(_colour_metric(found, query_rows, colours, protocol))

    spread = np.linspace(0, len(query_rows) - 1, min(latency_queries, len(query_rows)))
    sample = np.unique(spread.astype(np.int64))
    metrics.update(
        _latency(gallery, vectors, sample, min(LATENCY_K, top), strategy, exclude, categories)
    )
    metrics["n_queries"] = int(len(query_rows))
    metrics["n_gallery"] = int(gallery.size)

    # Beyond a tiny gallery's size the missing results count as misses.
    per_class = per_class_precision(
        relevant, np.asarray(labels, dtype=object)[query_rows], PER_CLASS_K
    )
    return metrics, per_class


def _colour_metric(
    found: np.ndarray, query_rows: np.ndarray, colours: np.ndarray, protocol: Protocol
) -> dict[str, float]:
    """{"colour@10": share of the first 10 results whose colour is the query's}, over the
    queries that have a colour; empty when none has one."""
    gallery_colours = colours if protocol.leave_one_out else colours[protocol.gallery]
    query_colours = colours[query_rows]
    known = np.array([c is not None and not pd.isna(c) for c in query_colours], dtype=bool)
    if not known.any():
        return {}
    share = colour_agreement(found[known], query_colours[known], gallery_colours, COLOUR_K)
    return {f"colour@{COLOUR_K}": float(share.mean())}


def _latency(
    gallery: Index,
    vectors: np.ndarray,
    sample: np.ndarray,
    k: int,
    strategy: str,
    exclude: np.ndarray | None,
    categories: np.ndarray | None,
) -> dict[str, float]:
    """Latency as the app sees it: the `sample` queries one per call, results as objects; the
    first two calls are warm-up, not counted."""
    seconds = []
    for i in [*sample[:2], *sample]:
        start = time.perf_counter()
        gallery.search(
            vectors[i],
            k,
            strategy,
            exclude_rows=None if exclude is None else exclude[i : i + 1],
            query_categories=None if categories is None else categories[i : i + 1],
        )
        seconds.append(time.perf_counter() - start)
    return latency_stats(seconds[min(2, len(sample)) :])


def latency_context() -> dict[str, Any]:
    """What the latencies depend on besides the code: BLAS threads and machine load.

    On a busy machine a multi-threaded BLAS can make one matrix-vector product many times
    slower (its threads wait for each other), so latencies are only comparable with these.
    """
    from threadpoolctl import threadpool_info  # installed with scikit-learn

    threads = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "blas_threads": max(threads, default=None),
        "load_avg_1m": None if load is None else round(load, 2),
        "cpus": os.cpu_count(),
    }


# --- stage ---
def _input_hashes(config: Config, catalog_hash: str, extractors: Sequence[str]) -> dict[str, str]:
    """Content hashes of everything the metrics depend on (absent optional inputs included)."""
    inputs = {"catalog": catalog_hash}
    for name in extractors:
        path = config.embeddings_path(name)
        inputs[embeddings_key(name)] = artifact_hash(path, commands.embed(name))
        for key, path in (
            (f"clusters/{name}", config.clusters_path(name)),
            (f"centroids/{name}", config.centroids_path(name)),
        ):
            inputs[key] = (read_manifest(path) or {}).get("sha256") or "absent"
    for key, path in (("categories", config.categories_path), ("colours", config.colours_path)):
        manifest = read_manifest(path) or {}
        inputs[key] = manifest.get("sha256") or (sha256_file(path) if path.exists() else "absent")
    return inputs


def copy_retrieval(
    config: Config, catalog: pd.DataFrame, protocol: Protocol, extractors: Sequence[str]
) -> dict[str, Any]:
    """{extractor: {"copy_r@1", "n_queries"}} or {"skipped": reason}: up to
    `eval_copy_queries` query photos (evenly spread), altered with a fixed seed
    (`likeness.alter`), each searched against the gallery plus its own original."""
    from pipelines.data.images import ImageError
    from pipelines.quality.likeness import altered_vectors
    from pipelines.readers import read_embeddings

    n = min(config.eval_copy_queries, len(protocol.queries))
    if n == 0:
        return {"skipped": "eval_copy_queries is 0"}
    pick = np.unique(np.linspace(0, len(protocol.queries) - 1, n).astype(np.int64))
    rows = protocol.queries[pick]
    try:
        altered = _cached_copies(config, catalog, rows, extractors, altered_vectors)
    except (ImageError, LookalikeError, OSError) as err:
        return {"skipped": f"copy retrieval could not run: {err}"}
    position = {row: i for i, row in enumerate(protocol.gallery)}
    exclude = np.array([position.get(int(r), -1) for r in rows]) if protocol.leave_one_out else None
    out: dict[str, Any] = {}
    for name in extractors:
        vectors, _ = read_embeddings(config, name, n_rows=len(catalog))
        value = copy_recall_at_1(altered[name], vectors[rows], vectors[protocol.gallery], exclude)
        out[name] = {"copy_r@1": value, "n_queries": int(len(rows))}
    return out


def copies_path(config: Config, extractor: str) -> Path:
    """evaluate/copies_<extractor>.npz: the vectors of the altered query copies, kept so an
    update embeds only copies of photos it has not seen (a copy's alteration depends on its
    item id, `likeness.item_key`)."""
    return config.artifacts_dir / "evaluate" / f"copies_{extractor}.npz"


def _cached_copies(
    config: Config,
    catalog: pd.DataFrame,
    rows: np.ndarray,
    extractors: Sequence[str],
    embed: Callable[[Config, pd.DataFrame, np.ndarray, Sequence[str]], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """{extractor: vectors of the altered copies of `rows`}, from the cache where the same
    model (`readers.model_id`) already embedded a row's copy, else `embed`ded now (then cached)."""
    ids = catalog["item_id"].astype(str).to_numpy()[rows]
    params = {"likeness": LIKENESS_VERSION, "seed": config.seed, "max_pixels": config.max_pixels}
    known: dict[str, dict[str, np.ndarray]] = {}
    inputs: dict[str, dict[str, str]] = {}
    for name in extractors:
        path = copies_path(config, name)
        inputs[name] = {"model": model_id(config, name)}
        known[name] = {}
        if is_fresh(path, "evaluate copies", params, inputs[name]):
            with np.load(path, allow_pickle=False) as data:
                known[name] = dict(zip(data["ids"].astype(str), data["vectors"], strict=True))
    missing = np.array(
        [i for i, item in enumerate(ids) if any(item not in known[n] for n in extractors)],
        dtype=np.int64,
    )
    fresh = embed(config, catalog, rows[missing], extractors) if len(missing) else {}
    out: dict[str, np.ndarray] = {}
    for name in extractors:
        vectors = [known[name].get(item) for item in ids]
        for j, i in enumerate(missing):
            vectors[i] = fresh[name][j]
        out[name] = np.stack(vectors).astype(np.float32)
        if len(missing):
            path = copies_path(config, name)
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, ids=ids.astype("S"), vectors=out[name])
            write_manifest(path, "evaluate copies", params, inputs[name])
    return out


def run_evaluate(
    config: Config,
    extractors: Sequence[str] | None = None,
    strategies: Sequence[str] = STRATEGIES,
    force: bool = False,
) -> StageResult:
    """Stage: precision, recall, mAP and latency per extractor x strategy.

    Writes `config.metrics_path` (JSON, see below) and `metrics_per_class.parquet` (extractor,
    strategy, label, n_queries, p@10), each with a manifest. A strategy without its inputs
    (no clusters, no categories file) is recorded as {"skipped": reason}. A catalog without
    labels gets a metrics file that says so instead of numbers. Skipped when nothing changed,
    unless `force`.

    Returns
    -------
    StageResult whose details are the metrics: {"labels": bool, "protocol": str,
    "ks": [...], "message": str (no labels),
    "results": {extractor: {strategy: {"p@1", ..., "r@1", ..., "map@10",
    "latency_ms_median", "latency_ms_p95", "n_queries", "n_gallery"} or {"skipped": reason}}}}
    """
    start = time.perf_counter()
    # Default: every extractor this catalog has (the head only where it was trained).
    extractors = list(
        dict.fromkeys(config.extractors_built() if extractors is None else extractors)
    )
    strategies = list(dict.fromkeys(strategies))
    _check_names(extractors, strategies)
    catalog, catalog_hash = read_catalog(config)
    inputs = _input_hashes(config, catalog_hash, extractors)
    params = _params(config, extractors, strategies)
    table_path = config.per_class_path
    if (
        not force
        and is_fresh(config.metrics_path, STAGE, params, inputs)
        and is_fresh(table_path, STAGE, params, inputs)
    ):
        print(f"evaluate: up to date, skipped ({config.metrics_path})")
        metrics = json.loads(config.metrics_path.read_text())
        return StageResult(
            STAGE,
            rows=len(catalog),
            seconds=time.perf_counter() - start,
            skipped=True,
            note=_best_note(metrics),
            details=metrics,
        )

    protocol = make_protocol(catalog)
    metrics: dict[str, Any] = {"ks": list(config.eval_ks), "results": {}}
    tables: list[pd.DataFrame] = []
    if protocol is None:
        message = no_labels_message(config)
        metrics.update({"labels": False, "protocol": None, "message": message})
        print(f"evaluate: {message}")
    else:
        tables = _measure(config, catalog, protocol, extractors, strategies, metrics)

    columns = ["extractor", "strategy", "label", "n_queries", f"p@{PER_CLASS_K}"]
    table = pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame()
    table = table.reindex(columns=columns)
    write_parquet(table, table_path)
    write_manifest(table_path, STAGE, params, inputs, {"rows": len(table)})
    write_json(metrics, config.metrics_path)
    write_manifest(config.metrics_path, STAGE, params, inputs)

    if protocol is not None:
        print(
            f"evaluate: {len(extractors)} extractor(s) x {len(strategies)} strategies, "
            f"{protocol.description}; {_best_note(metrics)}; "
            f"{time.perf_counter() - start:.1f}s -> {config.metrics_path}"
        )
    return StageResult(
        STAGE,
        wrote=(config.metrics_path, table_path),
        rows=len(catalog),
        seconds=time.perf_counter() - start,
        note=_best_note(metrics),
        details=metrics,
    )


def _check_names(extractors: Sequence[str], strategies: Sequence[str]) -> None:
    """Raise a LookalikeError naming the first unknown extractor or strategy and the valid ones."""
    checks = ((extractors, EXTRACTORS, "extractor"), (strategies, STRATEGIES, "strategy"))
    for names, valid, what in checks:
        unknown = [name for name in names if name not in valid]
        if unknown:
            raise LookalikeError(f"unknown {what} {unknown[0]!r}; valid: {', '.join(valid)}")


def _params(config: Config, extractors: list[str], strategies: list[str]) -> dict[str, Any]:
    """The settings the metrics depend on (a change re-runs the stage)."""
    return {
        "extractors": extractors,
        "strategies": strategies,
        "ks": list(config.eval_ks),
        "map_k": MAP_K,
        "latency_queries": LATENCY_QUERIES,
        "latency_k": LATENCY_K,
        "likeness": LIKENESS_VERSION,
        "copy_queries": config.eval_copy_queries,
        "cluster_search_width": config.cluster_search_width,
        "seed": config.seed,
    }


def _measure(
    config: Config,
    catalog: pd.DataFrame,
    protocol: Protocol,
    extractors: Sequence[str],
    strategies: Sequence[str],
    metrics: dict[str, Any],
) -> list[pd.DataFrame]:
    """Fill `metrics` for a labelled catalog: every extractor x strategy (or why it was
    skipped), latency context, colour note and copy retrieval; returns the per-class tables."""
    from pipelines.data.colour import read_colours

    metrics.update(
        {"labels": True, "protocol": protocol.description, "latency_context": latency_context()}
    )
    labels = catalog["label"].to_numpy(dtype=object)
    colours = read_colours(config, catalog["item_id"].to_numpy())
    if colours is None:
        metrics["colour_note"] = f"{config.colours_path} is missing or stale: no colour@10"
    tables = []
    indexes = {}
    combos = [(e, s) for e in extractors for s in strategies]
    for name, strategy in tqdm(combos, desc="evaluate", disable=None):
        if name not in indexes:
            indexes[name] = load_index(config, name)
        index = indexes[name]
        results = metrics["results"].setdefault(name, {})
        if strategy not in index.strategies:
            results[strategy] = {
                "skipped": index.unavailable.get(strategy, f"no data for {strategy}")
            }
            continue
        results[strategy], per_class = evaluate_index(
            index, labels, protocol, strategy, config.eval_ks, colours=colours
        )
        tables.append(per_class.assign(extractor=name, strategy=strategy))
    copies = copy_retrieval(config, catalog, protocol, extractors)
    metrics["copy_retrieval"] = copies
    for name in extractors:
        if name in copies and "exact" in metrics["results"].get(name, {}):
            metrics["results"][name]["exact"]["copy_r@1"] = copies[name]["copy_r@1"]
    return tables


def _best_note(metrics: dict[str, Any]) -> str:
    """ "best P@10 0.795 (inception_v3/category)", or why there is none."""
    if not metrics.get("labels", True):
        return "no labels: not evaluated"
    scored = [
        (values[f"p@{MAP_K}"], f"{name}/{strategy}")
        for name, by_strategy in (metrics.get("results") or {}).items()
        for strategy, values in by_strategy.items()
        if f"p@{MAP_K}" in values
    ]
    best = max(scored, default=None)
    return f"best P@10 {best[0]:.3f} ({best[1]})" if best else "nothing evaluated"


def format_report(metrics: dict[str, Any]) -> str:
    """A small text table of P@10 by extractor (rows) x strategy (columns), with skip reasons."""
    if not metrics.get("labels", False):
        return str(metrics.get("message", "metrics need labels"))
    results = metrics.get("results", {})
    strategies = [s for s in STRATEGIES if any(s in r for r in results.values())]
    width = max([len("extractor"), *(len(name) for name in results)])
    lines = [
        f"P@10 — {metrics.get('protocol', '')}",
        "  ".join([f"{'extractor':<{width}}", *(f"{s:>9}" for s in strategies)]),
    ]
    notes = []
    for name, by_strategy in results.items():
        cells = []
        for strategy in strategies:
            values = by_strategy.get(strategy, {})
            if "p@10" in values:
                cells.append(f"{values['p@10']:>9.3f}")
            else:
                cells.append(f"{'—':>9}")
                if "skipped" in values:
                    notes.append(f"{name}/{strategy} skipped: {values['skipped']}")
        lines.append("  ".join([f"{name:<{width}}", *cells]))
    likeness = []
    for name, by_strategy in results.items():
        exact = by_strategy.get("exact", {})
        parts = [
            f"{label} {exact[key]:.3f}"
            for key, label in (("copy_r@1", "copy R@1"), (f"colour@{COLOUR_K}", "colour@10"))
            if key in exact
        ]
        if parts:
            likeness.append(f"{name}: " + ", ".join(parts) + " (exact)")
    copies = metrics.get("copy_retrieval") or {}
    if "skipped" in copies:
        notes.append(f"copy retrieval skipped: {copies['skipped']}")
    return "\n".join(lines + likeness + notes)

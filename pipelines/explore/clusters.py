"""Reads the catalog and embeddings; writes k-means clusters, centroids and summaries, fitted
anew or updated in place (new items join their nearest centroid, kept ones keep their cluster)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyarrow import ArrowException
from sklearn.cluster import KMeans, MiniBatchKMeans

from pipelines.artifacts import (
    is_fresh,
    read_manifest,
    sha256_file,
    sha256_json,
    write_manifest,
    write_npy,
    write_parquet,
)
from pipelines.config import Config, embeddings_key
from pipelines.data.item_ids import match_rows
from pipelines.readers import model_id, read_catalog, read_embeddings
from pipelines.search import approximate
from pipelines.stage import StageResult, note_of, per_extractor, written

STAGE = "clusters"
# k-means restarts: a few suffice on unit vectors and keep 2 cores busy for seconds, not minutes.
N_INIT = 3
# Rows per mini-batch above `Config.kmeans_full_max_items` (sklearn's default is 1024; larger
# batches steady the centroids of 2048-d vectors at little cost).
MINIBATCH_ROWS = 4096
SUMMARY_COLUMNS = ["cluster", "size", "n_labelled", "top_label", "purity", "composition"]
# A catalog update assigns its new items to the nearest of the existing centroids and refits
# k-means only once the items assigned since the fit exceed this share of the catalog. The
# centroids do not follow the items that join them, so drift (a kind of item the fit never
# saw) is split among the nearest clusters instead of getting its own. Measured on
# clothing-small's InceptionV3 vectors (k = 10, fitted on the rest, the held-out share
# assigned, one draw each): purity 0.736 fully fitted, 0.738 with 10 % assigned, 0.736 with
# 20 %, 0.697 with 30 %, 0.687 with 50 %. The same share as the maps' REFIT_PLACED_SHARE, so
# an update refits both together.
REFIT_ASSIGNED_SHARE = 0.2
# Where the assignments file keeps the state of its fit (pandas stores DataFrame.attrs in the
# parquet file): the file written last carries it, so a run killed before its manifest leaves
# a state the next update still reads right.
STATE_KEY = "lookalike_clusters"


def summary_path(config: Config, extractor: str) -> Path:
    """The per-cluster summary table beside the assignments (its own manifest, so no dots)."""
    return config.clusters_path(extractor).with_name(f"{extractor}_summary.parquet")


def kmeans(
    vectors: np.ndarray,
    n_clusters: int,
    seed: int,
    *,
    full_max_items: int | None = None,
    sample: int = 100_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical-style k-means: sklearn k-means on unit rows, then cosine assignment.

    Parameters
    ----------
    vectors : (n, d) unit rows (float32 or float16, in memory or memory-mapped); on unit
        vectors Euclidean k-means approximates cosine k-means.
    n_clusters : wanted clusters, clipped to n.
    seed : fixes the initialisation, so the same inputs give the same clusters.
    full_max_items : up to this many rows (default: any number), full-batch `KMeans` with
        N_INIT restarts, as on the default catalog. Above it, `MiniBatchKMeans` on a random
        sample of `sample` rows: Lloyd's k-means reads every row every iteration, which at
        1M x 2048 is 8 GB a pass.
    sample : rows the mini-batch k-means learns from above `full_max_items`.

    Returns
    -------
    labels : (n,) int32 cluster of each row, each row assigned to its most similar unit
        centroid — the same rule the search applies to a new query, so a catalog item and a
        query identical to it land in the same cluster. Clusters are numbered by size,
        largest first.
    centroids : (c, d) float32 unit-length centroids, c = min(n_clusters, n).
    """
    n = len(vectors)
    if n == 0:
        raise ValueError("k-means needs at least one vector")
    clusters = max(1, min(int(n_clusters), n))
    if full_max_items is None or n <= full_max_items:
        data = np.asarray(vectors, dtype=np.float32)
        model = KMeans(n_clusters=clusters, n_init=N_INIT, random_state=seed).fit(data)
    else:
        data = _sample(vectors, sample, seed)
        model = MiniBatchKMeans(
            n_clusters=clusters,
            n_init=N_INIT,
            random_state=seed,
            batch_size=MINIBATCH_ROWS,
        ).fit(data)
    centroids = model.cluster_centers_.astype(np.float32)
    lengths = np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids /= np.where(lengths > 0, lengths, 1.0)
    labels = assign(vectors, centroids)
    # Largest cluster first makes the app's cluster list read naturally.
    order = np.argsort(-np.bincount(labels, minlength=clusters), kind="stable")
    rank = np.empty(clusters, dtype=np.int32)
    rank[order] = np.arange(clusters, dtype=np.int32)
    return rank[labels].astype(np.int32), np.ascontiguousarray(centroids[order])


def assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n,) index of each row's most similar centroid, computed in chunks of rows."""
    parts = [np.argmax(chunk @ centroids.T, axis=1) for chunk in approximate.iter_chunks(vectors)]
    return np.concatenate(parts).astype(np.int64)


def _sample(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` random rows of `vectors` (all when there are no more), float32."""
    n = len(vectors)
    if size >= n:
        return np.concatenate(list(approximate.iter_chunks(vectors)))
    rows = np.random.default_rng(seed).choice(n, size, replace=False)
    return approximate.take_rows(vectors, rows)


def cluster_summary(
    cluster_ids: np.ndarray, labels: Sequence[object] | np.ndarray | None = None
) -> pd.DataFrame:
    """One row per non-empty cluster: size and, where labels exist, how pure it is.

    Parameters
    ----------
    cluster_ids : (n,) int cluster of each item.
    labels : (n,) true label of each item (None/NA when unknown), or None for an unlabelled
        catalog.

    Returns
    -------
    DataFrame with columns cluster, size, n_labelled, top_label (most common label, None
    without labels), purity (top label's share of the labelled members, NaN without labels),
    composition (JSON object {label: count}, most common first; "{}" without labels).
    """
    cluster_ids = np.asarray(cluster_ids)
    frame = pd.DataFrame(
        {
            "cluster": cluster_ids.astype(np.int64),
            "label": pd.Series(
                [None] * len(cluster_ids) if labels is None else list(labels), dtype=object
            ),
        }
    )
    rows = []
    for cluster, members in frame.groupby("cluster", sort=True):
        counts = members["label"].dropna().astype(str).value_counts(sort=True)
        counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
        labelled = int(counts.sum())
        rows.append(
            {
                "cluster": int(cluster),
                "size": len(members),
                "n_labelled": labelled,
                "top_label": str(counts.index[0]) if labelled else None,
                "purity": float(counts.iloc[0] / labelled) if labelled else float("nan"),
                "composition": json.dumps({str(k): int(v) for k, v in counts.items()}),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def overall_purity(summary: pd.DataFrame) -> float | None:
    """Share of labelled items that carry their cluster's top label (None without labels)."""
    labelled = summary["n_labelled"].sum()
    if labelled == 0:
        return None
    return float((summary["purity"].fillna(0) * summary["n_labelled"]).sum() / labelled)


def run_clusters(
    config: Config, extractors: Sequence[str] | None = None, force: bool = False
) -> StageResult:
    """Stage: k-means per extractor.

    Writes, each with a manifest: `config.clusters_path(name)` (item_id, cluster int32, in
    catalog order), `clusters/<name>_summary.parquet` (see `cluster_summary`) and
    `clusters/<name>_centroids.npy` ((c, d) float32 unit rows, read by the search index).
    Skipped when parameters and inputs are unchanged, unless `force`. When stale, clusters
    made by the same model with the same settings are updated in place: kept items keep their
    cluster, removed ones leave, new ones join their most similar centroid (`assign`), the
    centroids stay, and the summary is recomputed from the catalog's current labels; k-means
    is fitted anew once more than REFIT_ASSIGNED_SHARE of the catalog was assigned since the
    fit, when the model or settings changed, or with `force`.

    Returns
    -------
    StageResult; its details are {extractor: {"path", "summary_path", "centroids_path",
    "skipped", "n_clusters", "purity", "refit" (why k-means was fitted, None for an update or
    a skip), "kept", "assigned", "removed" (this run's rows)}}.
    """
    began = time.perf_counter()
    # Default: every extractor this catalog has (the head only where it was trained).
    extractors = config.extractors_built() if extractors is None else extractors
    catalog, catalog_hash = read_catalog(config)
    labels = catalog["label"] if "label" in catalog.columns else None
    if labels is not None and labels.isna().all():
        labels = None
    item_ids = catalog["item_id"].to_numpy()
    results = {
        name: _cluster_one(config, name, item_ids, labels, catalog_hash, force)
        for name in dict.fromkeys(extractors)
    }
    wrote, note = written(results, _PATHS), note_of(results, "purity")
    seconds = time.perf_counter() - began
    return per_extractor(STAGE, results, len(item_ids), seconds, wrote, note)


_PATHS = ("path", "summary_path", "centroids_path")


def _params(config: Config, rows: int) -> dict[str, Any]:
    """The clusters' settings as their manifests record them, for a catalog of `rows` items."""
    params = {
        "n_clusters": min(config.n_clusters, rows),
        "n_init": N_INIT,
        "seed": config.seed,
        "assign": "cosine",
    }
    if rows > config.kmeans_full_max_items:
        # Only large catalogs record these, so a small catalog's clusters stay fresh.
        params.update(method="minibatch", sample=config.kmeans_sample, batch=MINIBATCH_ROWS)
    return params


def read_previous(paths: dict[str, Path]) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """(the fit state the assignments file carries, its table) — see `_cluster_one` — or None
    for a missing or unreadable file, one written before clusters carried their state, or one
    whose item ids repeat."""
    try:
        table = pd.read_parquet(paths["path"])
    except (OSError, ValueError, ArrowException):
        return None
    state = table.attrs.get(STATE_KEY)
    if not isinstance(state, dict) or not isinstance(state.get("fit"), dict):
        return None
    if not table["item_id"].is_unique:
        return None
    return state, table


def _refit_reason(
    config: Config,
    previous: dict[str, Any] | None,
    model: str,
    centroids_path: Path,
    assigned_share: float,
    rows: int,
) -> str | None:
    """Why k-means must be fitted anew rather than the clusters updated (None: update)."""
    if previous is None:
        return "no previous clusters to update"
    fit = previous["fit"]
    if previous.get("model") != model:
        return "the embeddings come from another model"
    # Same settings, save the row count's part (a catalog that crosses kmeans_full_max_items
    # keeps its full k-means and assigns its new items).
    if fit.get("params") != _params(config, int(fit.get("rows", 0))):
        return "the clusters' settings changed"
    if fit.get("n_clusters") != min(config.n_clusters, rows):
        return "the catalog's size changes the number of clusters"
    # The centroids are written first: after a kill they may be another fit's.
    if not centroids_path.is_file() or sha256_file(centroids_path) != fit.get("centroids_sha256"):
        return "the centroids are not the ones of the fit"
    if assigned_share > REFIT_ASSIGNED_SHARE:
        return (
            f"{assigned_share:.0%} of the catalog assigned since the fit "
            f"(> {REFIT_ASSIGNED_SHARE:.0%})"
        )
    return None


def _fit_date(artifact: Path, fit_id: str | None) -> str | None:
    """When the fit `fit_id` was made, as the artifact's manifest recorded it; None when the
    manifest is gone or records another fit (a refit killed before its manifest: the update
    then dates the fit to itself, the nearest time known)."""
    fit = (read_manifest(artifact) or {}).get("fit") or {}
    return fit.get("date") if fit_id is not None and fit.get("id") == fit_id else None


def _cluster_one(
    config: Config,
    name: str,
    item_ids: np.ndarray,
    labels: pd.Series | None,
    catalog_hash: str,
    force: bool,
) -> dict[str, Any]:
    """k-means for one extractor, an update, or a skip when fresh; its row of the details.

    The assignments file carries its fit's state in its parquet metadata (STATE_KEY; its
    manifest repeats it): {"model", "fit": {"id", "params", "rows", "n_clusters",
    "centroids_sha256", "purity"}, "assigned_since_fit"}. An update reads the state from that
    file itself, not its manifest, so a run killed between the writes is finished by the next
    one exactly as it would have finished. The fit's date is in the manifests only
    (`_fit_date`): with it in the file a refit of unchanged inputs would change the file's
    bytes, and every stage keyed on them would redo its work.
    """
    start = time.perf_counter()
    n = len(item_ids)
    vectors, vectors_hash = read_embeddings(config, name, n_rows=n, map_large=True)
    model = model_id(config, name)
    n_clusters = min(config.n_clusters, len(vectors))
    params = _params(config, n)
    inputs = {"catalog": catalog_hash, embeddings_key(name): vectors_hash}
    paths = dict(
        zip(
            _PATHS,
            (
                config.clusters_path(name),
                config.cluster_summary_path(name),
                config.centroids_path(name),
            ),
            strict=True,
        )
    )
    row = {**{key: str(p) for key, p in paths.items()}, "n_clusters": n_clusters}
    if not force and all(is_fresh(p, STAGE, params, inputs) for p in paths.values()):
        manifest = read_manifest(paths["path"]) or {}
        print(f"cluster {name}: up to date, skipped ({paths['path']})")
        return {
            **row,
            "skipped": True,
            "purity": manifest.get("purity"),
            "refit": None,
            "kept": n,
            "assigned": 0,
            "removed": 0,
        }

    found = None if force else read_previous(paths)
    previous = None if found is None else found[0]
    # Each current row's row in the previous assignments (-1: a new item).
    source = np.full(n, -1, dtype=np.int64)
    old_ids = np.empty(0, dtype=np.int32)
    if found is not None:
        old = found[1]
        source = match_rows(old["item_id"], item_ids)
        old_ids = old["cluster"].to_numpy(np.int32)
    keep = source >= 0
    kept = int(keep.sum())
    if kept == 0:
        previous = None  # nothing in common: nothing to keep
    removed = 0 if previous is None else len(old_ids) - kept
    assigned_since = (
        0 if previous is None else int(previous.get("assigned_since_fit", 0)) + n - kept
    )
    reason = (
        "forced"
        if force
        else _refit_reason(
            config, previous, model, paths["centroids_path"], assigned_since / max(n, 1), n
        )
    )

    if reason is None:
        assert previous is not None
        fit = previous["fit"]
        centroids = np.load(paths["centroids_path"])
        cluster_ids = np.empty(n, dtype=np.int32)
        cluster_ids[keep] = old_ids[source[keep]]
        new_rows = np.flatnonzero(~keep)
        if len(new_rows):
            new_vectors = approximate.take_rows(vectors, new_rows)
            cluster_ids[new_rows] = assign(new_vectors, centroids)
        assigned = len(new_rows)
        date = _fit_date(paths["path"], fit.get("id"))
    else:
        cluster_ids, centroids = kmeans(
            vectors,
            n_clusters,
            config.seed,
            full_max_items=config.kmeans_full_max_items,
            sample=config.kmeans_sample,
        )
        fit = {
            # The same inputs and settings give the same clusters, so they name the fit.
            "id": sha256_json({"stage": STAGE, "params": params, "inputs": inputs})[:16],
            "params": params,
            "rows": n,
            "n_clusters": n_clusters,
        }
        kept = removed = assigned = assigned_since = 0
        date = None
    date = date or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # From the catalog's current labels, fit or update: a label correction changes the
    # summary without moving any item.
    summary = cluster_summary(cluster_ids, None if labels is None else labels.to_numpy())
    purity = overall_purity(summary)
    extra = {
        "n_clusters": n_clusters,
        "purity": purity,
        "rows": n,
        "model": model,
        "assigned_since_fit": assigned_since,
        "assigned_share": round(assigned_since / max(n, 1), 4),
        "refit_assigned_share": REFIT_ASSIGNED_SHARE,
        "made_by": "fit" if reason is not None else "update",
        "refit_reason": reason,
        "update": {"kept": kept, "assigned": assigned, "removed": removed},
    }
    # Centroids and summary first: the assignments' manifest, written last, marks the set
    # as complete for readers that check it. An update keeps the centroids' bytes and only
    # renews their manifest (new inputs).
    if reason is not None:
        write_npy(centroids, paths["centroids_path"])
        fit["centroids_sha256"] = sha256_file(paths["centroids_path"])
        fit["purity"] = purity
    state = {"model": model, "fit": fit, "assigned_since_fit": assigned_since}
    extra["fit"] = {**fit, "date": date}
    write_manifest(paths["centroids_path"], STAGE, params, inputs, extra)
    write_parquet(summary, paths["summary_path"])
    write_manifest(paths["summary_path"], STAGE, params, inputs, extra)
    table = pd.DataFrame({"item_id": item_ids, "cluster": cluster_ids})
    table.attrs[STATE_KEY] = state
    write_parquet(table, paths["path"])
    write_manifest(paths["path"], STAGE, params, inputs, extra)
    seconds = time.perf_counter() - start
    purity_text = "n/a (no labels)" if purity is None else f"{purity:.3f}"
    how = (
        f"fitted ({reason})"
        if reason is not None
        else f"updated in place: {kept} kept, {assigned} assigned, {removed} removed, "
        f"{assigned_since} assigned since the fit of {date}"
    )
    print(
        f"cluster {name}: {n_clusters} clusters over {n} items {how}, "
        f"purity {purity_text}, {seconds:.1f}s -> {paths['path']}"
    )
    return {
        **row,
        "skipped": False,
        "purity": purity,
        "refit": reason,
        "kept": kept,
        "assigned": assigned,
        "removed": removed,
    }

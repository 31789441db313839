"""Tables the explorer browses: the catalog with thumbnails, map points, pages of items,
clusters and evaluation results in long form. Pure pandas; writes nothing."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import commands
from pipelines.data.item_ids import match_rows
from pipelines.errors import LookalikeError


def with_thumb_files(catalog: pd.DataFrame, artifacts_dir: Path) -> pd.DataFrame:
    """A copy of the catalog with `thumb_file`: the absolute path of each item's thumbnail."""
    out = catalog.copy()
    out["item_id"] = out["item_id"].astype(str)
    if "label" not in out.columns:
        out["label"] = None
    # os.path.join, not Path: the same paths at a fifth of the cost (seconds at 1M items).
    root = str(Path(artifacts_dir))
    out["thumb_file"] = [os.path.join(root, t) for t in out["thumb"].astype(str).tolist()]
    return out


def map_points(
    catalog: pd.DataFrame,
    map_table: pd.DataFrame,
    clusters: pd.DataFrame | None = None,
    categories: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per catalog item with its map position and everything a map is coloured by.

    Parameters
    ----------
    catalog : the catalog (item_id, label, split, thumb, ...).
    map_table : item_id, x, y (one extractor's map).
    clusters : item_id, cluster, or None.
    categories : item_id, predicted, confidence, or None.

    Returns
    -------
    DataFrame in catalog order: item_id, x, y, label, split, cluster (str, "" when unknown),
    predicted, thumb_file (when the catalog has it).
    """
    ids = catalog["item_id"].astype(str)
    coords = map_table.assign(item_id=map_table["item_id"].astype(str)).set_index("item_id")
    missing = ~ids.isin(coords.index)
    if missing.any():
        raise LookalikeError(
            f"the map lacks {int(missing.sum())} catalog item(s) (first {ids[missing].iloc[0]}) "
            f"— rerun `{commands.MAPS}`"
        )
    points = pd.DataFrame({"item_id": ids.to_numpy()})
    points["x"] = coords["x"].reindex(ids).to_numpy(np.float32)
    points["y"] = coords["y"].reindex(ids).to_numpy(np.float32)
    for column in ("label", "split", "thumb_file"):
        if column in catalog.columns:
            points[column] = catalog[column].to_numpy()
    if "label" not in points.columns:
        points["label"] = None
    if "split" not in points.columns:
        points["split"] = None
    points["cluster"] = _lookup(clusters, ids, "cluster", lambda v: str(int(v)))
    points["predicted"] = _lookup(categories, ids, "predicted", str)
    return points


def _lookup(table: pd.DataFrame | None, ids: pd.Series, column: str, fmt: Any) -> list[Any]:
    if table is None or column not in table.columns:
        return [""] * len(ids)
    values = table.assign(item_id=table["item_id"].astype(str)).set_index("item_id")[column]
    values = values[~values.index.duplicated()]
    found = values.reindex(ids)
    # fmt once per distinct value (a few clusters or categories), not once per item.
    names = {v: fmt(v) for v in pd.unique(found.dropna())}
    return found.map(names).fillna("").tolist()


def random_item(catalog: pd.DataFrame, rng: np.random.Generator | None = None) -> str:
    """A random catalog item id."""
    if len(catalog) == 0:
        raise LookalikeError(f"the catalog is empty — rerun `{commands.RUN}` on a folder of photos")
    rng = rng or np.random.default_rng()
    return str(catalog["item_id"].iloc[int(rng.integers(len(catalog)))])


def browse_page(
    catalog: pd.DataFrame, labels: Sequence[str] | None = None, page: int = 0, per_page: int = 24
) -> tuple[pd.DataFrame, int]:
    """One page of the catalog for a browsable grid.

    Parameters
    ----------
    labels : keep only these labels (None or empty keeps all).
    page : 0-based page number, clipped to the last page.
    per_page : items per page.

    Returns
    -------
    (rows of that page, number of pages (at least 1)).
    """
    table = catalog
    if labels:
        table = table[table["label"].isin(list(labels))]
    pages = max(1, math.ceil(len(table) / per_page))
    page = min(max(0, int(page)), pages - 1)
    return table.iloc[page * per_page : (page + 1) * per_page], pages


def centre_order(
    rows: np.ndarray, vectors: np.ndarray | None, centroid: np.ndarray | None
) -> np.ndarray:
    """`rows` (catalog rows) sorted by cosine similarity to `centroid`, nearest first; unchanged
    when vectors or the centroid are unknown."""
    rows = np.asarray(rows, dtype=np.int64)
    if vectors is None or centroid is None or len(rows) == 0:
        return rows
    sims = vectors[rows] @ np.asarray(centroid, dtype=vectors.dtype)
    return rows[np.argsort(-sims, kind="stable")]


def _cluster_rows(clusters: pd.DataFrame, catalog: pd.DataFrame) -> dict[int, np.ndarray]:
    """{cluster: catalog rows of its members, in catalog order}."""
    rows = match_rows(catalog["item_id"], clusters["item_id"])
    table = pd.DataFrame({"cluster": clusters["cluster"].to_numpy(), "row": rows})
    table = table[table["row"] >= 0].sort_values("row", kind="stable")
    return {int(c): g["row"].to_numpy() for c, g in table.groupby("cluster", sort=True)}


def cluster_overview(
    summary: pd.DataFrame,
    clusters: pd.DataFrame,
    catalog: pd.DataFrame,
    n_thumbs: int = 4,
    vectors: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per cluster for the overview: cluster, size, top_label, purity, `labels` (the
    label counts as "18 dress · 3 hat") and `thumbs`: the paths of its `n_thumbs` members
    nearest the cluster's centre (its k-means centroid), so the row shows what the cluster
    is, not whichever items the catalog lists first.

    Parameters
    ----------
    summary : see `pipelines.explore.clusters.cluster_summary`.
    clusters : item_id, cluster.
    catalog : item_id, label, thumb_file (row i = embeddings row i).
    vectors : (n, d) unit embeddings of the catalog rows; None keeps catalog order.
    centroids : (c, d) unit centroids, row = cluster id; None keeps catalog order.
    """
    members = _cluster_rows(clusters, catalog)
    paths = catalog["thumb_file"].to_numpy(dtype=object)
    labels = catalog["label"].to_numpy(dtype=object)
    out = summary[["cluster", "size", "top_label", "purity"]].copy()
    # Every item against every centre in one product (cheaper than one per cluster).
    sims = None if vectors is None or centroids is None else vectors @ centroids.T
    thumbs, counts = [], []
    for c in out["cluster"]:
        rows = members.get(int(c), np.zeros(0, np.int64))
        if sims is not None and int(c) < sims.shape[1]:
            rows = rows[np.argsort(-sims[rows, int(c)], kind="stable")]
        thumbs.append([paths[r] for r in rows[:n_thumbs]])
        counts.append(label_counts_text(labels[rows]))
    out["thumbs"] = thumbs
    out["labels"] = counts
    return out.sort_values("cluster").reset_index(drop=True)


def cluster_members(
    clusters: pd.DataFrame,
    catalog: pd.DataFrame,
    cluster: int,
    vectors: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
) -> pd.DataFrame:
    """The catalog rows (item_id, label, thumb_file, ...) of one cluster, nearest its centre
    first when `vectors` and `centroids` are given (catalog order otherwise), with
    `centre_similarity` (NaN without vectors)."""
    rows = _cluster_rows(clusters, catalog).get(int(cluster), np.zeros(0, np.int64))
    centre = None if centroids is None or int(cluster) >= len(centroids) else centroids[cluster]
    rows = centre_order(rows, vectors, centre)
    out = catalog.iloc[rows].reset_index(drop=True)
    if vectors is not None and centre is not None:
        out["centre_similarity"] = vectors[rows] @ np.asarray(centre, dtype=vectors.dtype)
    else:
        out["centre_similarity"] = np.nan
    return out


def label_counts(labels: Sequence[object]) -> pd.DataFrame:
    """label, count, share of a set of items, most common first (ties by label); missing
    labels count as "(no label)"."""
    counts = Counter(_label_key(v) for v in labels)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    table = pd.DataFrame(ordered, columns=["label", "count"])
    table["share"] = table["count"] / max(1, sum(counts.values()))
    return table


def label_counts_text(labels: Sequence[object], top: int = 3) -> str:
    """ "18 dress · 3 hat · 1 shoes" (the `top` most common, then "+ n more")."""
    table = label_counts(labels)
    parts = [f"{c} {label}" for label, c in zip(table["label"], table["count"], strict=True)]
    more = f" · +{len(parts) - top} more" if len(parts) > top else ""
    return " · ".join(parts[:top]) + more


def stratified_sample(items: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """At most `n` rows that show a selection's mix of labels: each label gets slots in
    proportion to its count (largest remainders first, at least one per label while slots
    last), its rows drawn at random (seeded); the result is grouped by label, most common
    first.

    Parameters
    ----------
    items : rows with a `label` column.
    n : how many rows to keep.
    seed : the draw within each label.
    """
    if len(items) <= n:
        keys = label_counts(items["label"]).reset_index().set_index("label")["index"]
        order = [keys[_label_key(v)] for v in items["label"]]
        return items.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)
    counts = label_counts(items["label"])
    slots = dict.fromkeys(counts["label"], 0)
    # One each for as many labels as fit (most common first), the rest in proportion.
    for label in list(slots)[:n]:
        slots[label] = 1
    left = n - sum(slots.values())
    if left > 0:
        quota = counts.set_index("label")["count"] / len(items) * n
        extra = (quota - pd.Series(slots)).clip(lower=0)
        base = np.floor(extra).astype(int)
        for label, add in base.items():
            take = min(int(add), left)
            slots[label] += take
            left -= take
        for label in (extra - base).sort_values(ascending=False, kind="stable").index:
            if left <= 0:
                break
            slots[label] += 1
            left -= 1
    rng = np.random.default_rng(seed)
    keys = np.array([_label_key(v) for v in items["label"]], dtype=object)
    picked = []
    for label, take in slots.items():
        rows = np.flatnonzero(keys == label)
        take = min(take, len(rows))
        picked.extend(np.sort(rng.choice(rows, size=take, replace=False)).tolist())
    return items.iloc[picked].reset_index(drop=True)


def _label_key(value: object) -> str:
    return "(no label)" if value is None or value != value else str(value)


def export_table(items: pd.DataFrame, catalog: pd.DataFrame) -> pd.DataFrame:
    """What a CSV download holds: item_id, path, label, and rank and similarity when `items`
    has them (neighbour lists), in `items`' order."""
    ids = items["item_id"].astype(str).to_numpy()
    # A positional lookup: indexing the 3,781-row catalog by id costs ~10 ms a call.
    rows = match_rows(catalog["item_id"], ids)
    found = rows >= 0
    out = pd.DataFrame({"item_id": ids})
    for column in ("rank", "similarity"):
        if column in items.columns:
            out[column] = items[column].to_numpy()
    for column in ("path", "label"):
        values = np.full(len(ids), None, dtype=object)
        if column in catalog.columns:
            values[found] = catalog[column].to_numpy(dtype=object)[rows[found]]
        out[column] = values
    return out


def to_csv(table: pd.DataFrame) -> bytes:
    """A table as UTF-8 CSV bytes (no index), for st.download_button."""
    return table.to_csv(index=False).encode("utf-8")


def plural(n: int, word: str, many: str | None = None) -> str:
    """ "1 item", "3 items", "1,200 photos" (`many` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def top_with_ties(counts: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """The `top` most common rows of a (category, count) table, most common first, plus every
    row tied with the last one kept."""
    table = counts.sort_values(["count", "category"], ascending=[False, True], kind="stable")
    if len(table) <= top:
        return table.reset_index(drop=True)
    cut = table["count"].iloc[top - 1]
    return table[table["count"] >= cut].reset_index(drop=True)


def cluster_composition(summary: pd.DataFrame, cluster: int) -> pd.DataFrame:
    """Label counts of one cluster (label, count), most common first; empty without labels."""
    row = summary.loc[summary["cluster"] == int(cluster)]
    if row.empty:
        raise LookalikeError(
            f"cluster {cluster} does not exist; valid clusters: "
            f"{', '.join(str(c) for c in summary['cluster'])}"
        )
    counts = json.loads(row["composition"].iloc[0] or "{}")
    return pd.DataFrame(list(counts.items()), columns=["label", "count"])


# The health stage's lists (pipelines/quality/health.py), in the order the Health page shows them.
HEALTH_KINDS = ("duplicates", "mislabelled", "outliers")


# --------------------------------------------------------------------------- evaluation


def best_extractor(
    metrics: Mapping[str, Any] | None,
    offered: Sequence[str],
    strategy: str = "exact",
    k: int = 10,
) -> tuple[str, float] | None:
    """The extractor of `offered` with the highest P@k of `strategy` in metrics.json (the
    evaluate stage's results), with that P@k; the first offered wins a tie. None when the
    evaluation scored none of them (not evaluated, no labels, skipped)."""
    results = (metrics or {}).get("results") or {}
    scored = []
    for name in offered:
        value = ((results.get(name) or {}).get(strategy) or {}).get(f"p@{k}")
        if value is not None and math.isfinite(float(value)):
            scored.append((name, float(value)))
    return max(scored, key=lambda pair: pair[1], default=None)


def metrics_long(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """metrics.json's results as rows extractor, strategy, metric ("p@10", "map@10", ...),
    value — only precision and mAP; skipped combinations are left out."""
    rows = []
    for extractor, by_strategy in (metrics.get("results") or {}).items():
        for strategy, values in by_strategy.items():
            for metric, value in values.items():
                if metric.startswith(("p@", "map@")) and value is not None:
                    rows.append((extractor, strategy, metric, float(value)))
    return pd.DataFrame(rows, columns=["extractor", "strategy", "metric", "value"])

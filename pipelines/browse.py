"""Tables the explorer browses: the catalog with thumbnails, map points, pages of items,
clusters and evaluation results in long form. Pure pandas; writes nothing."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import commands
from pipelines.errors import LookalikeError


def with_thumb_files(catalog: pd.DataFrame, artifacts_dir: Path) -> pd.DataFrame:
    """A copy of the catalog with `thumb_file`: the absolute path of each item's thumbnail."""
    out = catalog.copy()
    out["item_id"] = out["item_id"].astype(str)
    if "label" not in out.columns:
        out["label"] = None
    root = Path(artifacts_dir)
    out["thumb_file"] = [str(root / t) for t in out["thumb"]]
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
    return ["" if pd.isna(v) else fmt(v) for v in found]


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


def cluster_overview(
    summary: pd.DataFrame, clusters: pd.DataFrame, catalog: pd.DataFrame, n_thumbs: int = 4
) -> pd.DataFrame:
    """One row per cluster for the overview: cluster, size, top_label, purity and a few
    thumbnails (the first `n_thumbs` members in catalog order, as `thumbs`, a list of paths).
    """
    members = clusters.assign(item_id=clusters["item_id"].astype(str)).merge(
        catalog[["item_id", "thumb_file"]], on="item_id", how="left", sort=False
    )
    thumbs = members.groupby("cluster", sort=True)["thumb_file"].apply(
        lambda s: list(s.dropna())[:n_thumbs]
    )
    out = summary[["cluster", "size", "top_label", "purity"]].copy()
    out["thumbs"] = [thumbs.get(c, []) for c in out["cluster"]]
    return out.sort_values("cluster").reset_index(drop=True)


def cluster_members(clusters: pd.DataFrame, catalog: pd.DataFrame, cluster: int) -> pd.DataFrame:
    """The catalog rows (item_id, label, thumb_file, ...) of one cluster, in catalog order."""
    ids = set(clusters.loc[clusters["cluster"] == int(cluster), "item_id"].astype(str))
    return catalog[catalog["item_id"].isin(ids)].reset_index(drop=True)


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


# --------------------------------------------------------------------------- evaluation


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

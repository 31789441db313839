"""The items the cluster and category strategies may return for a catalog item, computed
from the artifact files themselves (not through `Index`), for the strategy tests of the HTTP
service and the app."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.config import Config


def _categories(value: object, every: set[str]) -> set[str]:
    """The categories one `search` cell of categories.parquet names ("a", "a|b" or "*")."""
    if value is None or pd.isna(value):
        return set()
    return set(every) if value == "*" else set(str(value).split("|"))


def strategy_pool(config: Config, extractor: str, item_id: str, strategy: str) -> list[str]:
    """The catalog items `strategy` searches for catalog item `item_id` (never the item
    itself), most similar first by the raw embeddings.

    cluster : items whose k-means cluster is the item's own or one of the
        `cluster_search_width - 1` clusters whose centroids are nearest to its vector.
    category : items whose predicted category is one the item searches (its `search` cell:
        "a", "a|b" or "*" for all), or whose own `search` cell names one of those (an item the
        classifier is unsure about belongs to each category it might be).
    """
    catalog = pd.read_parquet(config.catalog_path)
    ids = catalog["item_id"].tolist()
    row = ids.index(item_id)
    vectors = np.load(config.embeddings_path(extractor))
    if strategy == "cluster":
        table = pd.read_parquet(config.clusters_path(extractor))
        assert table["item_id"].tolist() == ids
        clusters = table["cluster"].to_numpy()
        centroids = np.load(config.centroids_path(extractor))
        nearest = np.argsort(-(centroids @ vectors[row]), kind="stable")
        wanted = {clusters[row], *nearest[: config.cluster_search_width - 1]}
        member = np.isin(clusters, list(wanted))
    elif strategy == "category":
        table = pd.read_parquet(config.categories_path)
        assert table["item_id"].tolist() == ids
        predicted = table["predicted"].to_numpy(dtype=object)
        searched = table["search"].where(table["search"].notna(), table["predicted"])
        every = {str(p) for p in predicted if p is not None and not pd.isna(p)}
        wanted = _categories(searched.iloc[row], every)
        member = np.array(
            [
                (p is not None and not pd.isna(p) and p in wanted)
                or bool(_categories(s, every) & wanted)
                for p, s in zip(predicted, searched, strict=True)
            ]
        )
    else:
        raise ValueError(f"no pool for strategy {strategy!r}")
    member[row] = False
    rows = np.flatnonzero(member)
    order = np.argsort(-(vectors[rows] @ vectors[row]), kind="stable")
    return [ids[i] for i in rows[order]]


def narrow_query(config: Config, extractor: str, strategy: str) -> tuple[str, list[str]]:
    """The first catalog item whose `strategy` pool leaves out part of the catalog (so a search
    that ignored the strategy would show), and that pool."""
    ids = pd.read_parquet(config.catalog_path)["item_id"].tolist()
    for item_id in ids:
        pool = strategy_pool(config, extractor, item_id, strategy)
        if 0 < len(pool) < len(ids) - 1:
            return item_id, pool
    raise AssertionError(f"every item's {strategy} pool is the whole catalog")

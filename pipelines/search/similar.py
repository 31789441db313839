"""Neighbours of a catalog item or an outside vector as tables the app and the service show:
rank, item, similarity, label, thumbnail. Reads an `Index` and the catalog; writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import commands
from pipelines.config import STRATEGIES
from pipelines.errors import LookalikeError
from pipelines.quality.metrics import precision_at_k
from pipelines.search.diversity import diversify_result, diversify_table
from pipelines.search.diversity import pool_size as diversity_pool_size
from pipelines.search.index import Index, SearchResult
from pipelines.search.rerank import reranked
from pipelines.search.topk import check_k

NEIGHBOUR_COLUMNS = ["rank", "item_id", "similarity", "label", "thumb"]


def resolve_strategy(index: Index, strategy: str) -> tuple[str, str | None]:
    """The strategy to use on `index`: `strategy` when the index has its data, otherwise
    "exact" and a note saying why (for example clusters not built yet)."""
    if strategy not in STRATEGIES:
        raise LookalikeError(
            f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
        )
    if strategy in index.strategies:
        return strategy, None
    reason = index.unavailable.get(strategy, "its data is missing")
    return "exact", f"the {strategy} strategy is unavailable ({reason}); showing exact search"


def neighbours_table(
    result: SearchResult, catalog: pd.DataFrame, artifacts_dir: Path | None = None
) -> pd.DataFrame:
    """A search result as a table for grids and charts.

    Parameters
    ----------
    result : from `Index.search`; its rows are catalog rows.
    catalog : the catalog the index was built from (same row order).
    artifacts_dir : to make thumbnail paths absolute; None uses `thumb_file` when present, or
        the catalog's relative `thumb`.

    Returns
    -------
    DataFrame with NEIGHBOUR_COLUMNS: rank (1 = most similar), item_id, similarity (cosine,
    float), label, thumb (path of the thumbnail).
    """
    rows = np.asarray(result.rows, dtype=np.int64)
    if len(rows) and rows.max() >= len(catalog):
        raise LookalikeError(
            f"search returned catalog row {int(rows.max())} but the catalog has {len(catalog)} "
            f"rows — the index and catalog are out of step; rerun `{commands.RUN}`"
        )

    # Only the k result rows of each column are read: converting a whole column costs per
    # request what the catalog's size costs (milliseconds at 1M items).
    def column(name: str) -> np.ndarray:
        return catalog[name].take(rows).to_numpy(dtype=object)

    labels = column("label") if "label" in catalog.columns else [None] * len(rows)
    if artifacts_dir is not None:
        thumbs = [str(Path(artifacts_dir) / t) for t in column("thumb")]
    elif "thumb_file" in catalog.columns:
        thumbs = list(column("thumb_file"))
    else:
        thumbs = list(column("thumb"))
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(rows) + 1),
            "item_id": np.asarray(result.item_ids, dtype=object).astype(str),
            "similarity": np.asarray(result.similarities, dtype=np.float64),
            "label": labels,
            "thumb": thumbs,
        },
        columns=NEIGHBOUR_COLUMNS,
    )


# A filtered search first asks for this many times the wanted neighbours, and widens by the same
# factor until enough pass the filter (or the whole catalog is ranked).
WIDEN = 4


def row_filter(
    catalog: pd.DataFrame,
    colour: str | None = None,
    colours: np.ndarray | None = None,
    label: str | None = None,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """A test of catalog rows for a filtered search: rows -> bool, True where the row has colour
    `colour` in `colours` (per catalog row) and label `label`; None when nothing filters. It
    reads only the rows it is given, so a search at a million items never builds a mask over
    the whole catalog."""
    by_colour = colour is not None and colours is not None
    if not by_colour and label is None:
        return None

    def keep(rows: np.ndarray) -> np.ndarray:
        ok = np.ones(len(rows), dtype=bool)
        if by_colour:
            ok &= np.asarray(colours, dtype=object)[rows] == colour
        if label is not None:
            if "label" not in catalog.columns:
                return np.zeros(len(rows), dtype=bool)
            ok &= catalog["label"].iloc[rows].to_numpy(dtype=object) == label
        return ok

    return keep


def filtered_search(
    search: Callable[[int], SearchResult],
    keep: Callable[[np.ndarray], np.ndarray] | None,
    want: int,
    most: int,
) -> SearchResult:
    """The first `want` results of `search(width)` whose rows pass `keep`, in order.

    `search(width)` ranks the best `width` candidates; the width starts at WIDEN x `want` and
    grows by WIDEN until `want` pass, the strategy's pool runs out or all `most` are ranked,
    so a common filter costs one small search and a rare one a few larger ones.
    """
    if keep is None:
        return search(want)
    width = min(most, WIDEN * want)
    while True:
        result = search(width)
        rows = np.asarray(result.rows, dtype=np.int64)
        passed = np.flatnonzero(keep(rows))[:want]
        if len(passed) >= want or width >= most or len(rows) < width:
            return SearchResult(
                item_ids=np.asarray(result.item_ids)[passed],
                similarities=np.asarray(result.similarities)[passed],
                rows=rows[passed],
            )
        width = min(most, width * WIDEN)


def keep_colour(
    table: pd.DataFrame, colour_of: dict[str, str], colour: str | None, k: int
) -> pd.DataFrame:
    """The first k rows of a neighbours table whose item's colour (`colour_of`: item_id ->
    colour) is `colour`, re-ranked 1..; the first k rows unchanged when `colour` is None."""
    if colour is not None:
        table = table[table["item_id"].astype(str).map(colour_of) == colour]
    table = table.head(k).reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table


def item_neighbours(
    index: Index,
    catalog: pd.DataFrame,
    item_id: str,
    k: int,
    strategy: str = "exact",
    artifacts_dir: Path | None = None,
    *,
    diversity: float = 0.0,
    colour: str | None = None,
    colours: np.ndarray | None = None,
    label: str | None = None,
    rerank: bool = False,
) -> pd.DataFrame:
    """The k nearest catalog items of a catalog item (never itself), best first, as the
    `neighbours_table` of `item_search` (which takes the same parameters but `artifacts_dir`)."""
    found = item_search(
        index,
        catalog,
        item_id,
        k,
        strategy,
        diversity=diversity,
        colour=colour,
        colours=colours,
        label=label,
        rerank=rerank,
    )
    return neighbours_table(found, catalog, artifacts_dir)


def item_search(
    index: Index,
    catalog: pd.DataFrame,
    item_id: str,
    k: int,
    strategy: str = "exact",
    *,
    diversity: float = 0.0,
    colour: str | None = None,
    colours: np.ndarray | None = None,
    label: str | None = None,
    rerank: bool = False,
) -> SearchResult:
    """The k nearest catalog items of a catalog item (never itself), best first: the one
    engine question behind `item_neighbours` (its table) and the HTTP service (which builds
    its body from these arrays, skipping the table: ~0.4 ms of a ~2.5 ms request).

    Parameters
    ----------
    index : the extractor's index (row i = catalog row i).
    catalog : the catalog, see `neighbours_table`.
    item_id : the query item.
    k : wanted neighbours, clipped to the catalog size minus one.
    strategy : one of STRATEGIES; the cluster strategy searches the item's own cluster, the
        category strategy the items with its predicted category.
    diversity : 0 (default) gives plain nearest neighbours; above 0 (up to 1) re-ranks the
        nearest `diversity.pool_size` candidates by maximal marginal relevance
        (`pipelines.search.diversity.mmr_order`), so near-duplicates do not fill the list.
    colour, colours : only items whose colour (`colours`, (n,) per catalog row, from
        `pipelines.data.colour.read_colours`) is `colour`: the search widens until k of that
        colour are found (`filtered_search`), so up to k come back. None filters nothing.
    label : only items with this catalog label, found the same way. None filters nothing.
    rerank : False (default) gives plain search; True re-orders a shortlist by
        alpha-query-expansion (`pipelines.search.rerank.RerankedIndex`, every strategy); the
        similarity column stays the cosine to the query.

    Returns
    -------
    SearchResult of up to k items (fewer when the strategy's pool is smaller).
    """
    index = reranked(index, rerank)
    row = index.rows_of([item_id])
    k = clip_k(k, index.size - 1)
    pool = diversity_pool_size(k, diversity, index.size - 1)
    clusters = None
    if strategy == "cluster" and index.clusters is not None:
        clusters = index.clusters[row]
    vector = index.row_vectors(row)

    def search(width: int) -> SearchResult:
        return index.search(vector, width, strategy, exclude_rows=row, query_clusters=clusters)[0]

    keep = row_filter(catalog, colour, colours, label)
    found = filtered_search(search, keep, pool, index.size - 1)
    return diversify_result(found, index, k, diversity)


def vector_neighbours(
    index: Index,
    catalog: pd.DataFrame,
    vector: np.ndarray,
    k: int,
    strategy: str = "exact",
    category: str | None = None,
    artifacts_dir: Path | None = None,
    *,
    diversity: float = 0.0,
    rerank: bool = False,
    colour: str | None = None,
    colours: np.ndarray | None = None,
    label: str | None = None,
) -> pd.DataFrame:
    """The k nearest catalog items of an outside vector (an upload), best first.

    Parameters
    ----------
    vector : (d,) embedding from the index's extractor.
    category : the query's categories for the category strategy ("a", "a|b" or "*").
    Other parameters (diversity, rerank and the colour and label filters included) as in
    `item_neighbours`.
    """
    index = reranked(index, rerank)
    k = clip_k(k, index.size)
    pool = diversity_pool_size(k, diversity, index.size)
    if strategy == "category" and category is None:
        raise LookalikeError(
            "the category strategy needs the photo's predicted category, and there is none "
            f"(no category classifier) — run `{commands.RUN}`, or choose the exact or cluster "
            "strategy"
        )
    categories = [category] if strategy == "category" else None

    def search(width: int) -> SearchResult:
        return index.search(vector, width, strategy, query_categories=categories)[0]

    keep = row_filter(catalog, colour, colours, label)
    result = filtered_search(search, keep, pool, index.size)
    return diversify_table(neighbours_table(result, catalog, artifacts_dir), index, k, diversity)


def clip_k(k: int, most: int) -> int:
    """`k` checked (`check_k`) and clipped to `most`, the items a query can have as
    neighbours; a catalog too small for any neighbour is an error."""
    if most < 1:
        raise LookalikeError("the catalog needs at least two items to find neighbours")
    return min(check_k(k), most)


def query_precision(neighbours: pd.DataFrame, query_label: object, k: int) -> float:
    """Precision@k of one query against its own label: the share of its first k neighbours
    with that label (missing neighbours count as misses; NaN when the query has no label)."""
    return precision_at_k(neighbours["label"].tolist(), query_label, k)

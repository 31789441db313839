"""Is an uploaded photo far from everything in the catalog? Reads an `Index`; writes nothing.

The yardstick is the catalog itself: how similar each catalog item is to its own nearest other
item. A photo whose nearest catalog item is less similar than what all but FAR_QUANTILE of the
catalog items get is "far" (a photo of something else, or a very different kind of photo),
and the Upload page says so instead of presenting its neighbours as look-alikes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.search.index import Index

# Share of catalog items allowed below the threshold (their nearest neighbour is unusually far).
FAR_QUANTILE = 0.01
# Catalog items sampled (evenly) to set the threshold: enough for a stable 1 % quantile.
SAMPLE = 1000
# The frozen extractor whose similarities decide: it holds up best on photos from elsewhere.
REFERENCE = "inception_v3"


@dataclass(frozen=True)
class FarCheck:
    """The threshold of one index and how it was found."""

    extractor: str
    threshold: float  # nearest-neighbour similarity below which a photo is far
    quantile: float
    sampled: int


def far_check(index: Index, quantile: float = FAR_QUANTILE, sample: int = SAMPLE) -> FarCheck:
    """The `quantile` of the catalog's leave-one-out nearest-neighbour similarity."""
    if index.size < 2:
        return FarCheck(index.name, float("-inf"), quantile, 0)
    rows = np.unique(np.linspace(0, index.size - 1, min(sample, index.size)).astype(np.int64))
    _, sims = index.search_rows(index.row_vectors(rows), 1, "exact", exclude_rows=rows)
    return FarCheck(index.name, float(np.quantile(sims[:, 0], quantile)), quantile, len(rows))


def nearest_similarity(index: Index, vector: np.ndarray) -> float:
    """Cosine similarity of an outside vector to its nearest catalog item (exact search)."""
    return float(index.search(vector, 1, "exact")[0].similarities[0])


def far_message(top_similarity: float, check: FarCheck) -> str | None:
    """A warning when the photo's nearest catalog item is below the threshold, else None."""
    if not np.isfinite(top_similarity) or top_similarity >= check.threshold:
        return None
    share = 1 - check.quantile
    return (
        f"This photo is far from everything in the catalog: its most similar item has "
        f"similarity {top_similarity:.2f}, while {share:.0%} of catalog photos have a neighbour "
        f"above {check.threshold:.2f} ({check.extractor}). It may not be clothing, or not a kind "
        f"the catalog holds — the results below are the nearest items, not look-alikes."
    )

"""Diverse results: MMR at diversity 0 is plain search, above 0 it spreads out near-duplicates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import LookalikeError
from pipelines.search import diversity, similar
from pipelines.search.index import Index
from tests.conftest import blobs, unit


def catalog_of(n: int, labels: np.ndarray | None = None) -> pd.DataFrame:
    ids = [f"item{i:03d}" for i in range(n)]
    return pd.DataFrame(
        {
            "item_id": ids,
            "label": labels if labels is not None else ["x"] * n,
            "thumb": [f"thumbs/{i}.jpg" for i in ids],
        }
    )


def planted() -> tuple[np.ndarray, np.ndarray]:
    """A query (row 0), six near-duplicates of one product very close to it (rows 1-6), and
    six different products a little further away (rows 7-12), plus unrelated items."""
    rng = np.random.default_rng(3)
    d = 64
    query = unit(rng.normal(size=(1, d)))[0]
    product = unit((query + 0.35 * unit(rng.normal(size=(1, d)))[0])[None])[0]
    dups = unit(product + 0.02 * rng.normal(size=(6, d)))
    others = unit(query + 0.55 * unit(rng.normal(size=(6, d))))
    far = unit(rng.normal(size=(30, d)))
    vectors = np.vstack([query[None], dups, others, far]).astype(np.float32)
    labels = np.array(["q"] + ["dup"] * 6 + ["other"] * 6 + ["far"] * 30, dtype=object)
    return vectors, labels


def test_planted_near_duplicates_fill_plain_results_and_mmr_spreads_them() -> None:
    vectors, labels = planted()
    index = Index(vectors, catalog_of(len(vectors))["item_id"], name="planted")
    catalog = catalog_of(len(vectors), labels)
    plain = similar.item_neighbours(index, catalog, "item000", 6)
    # The planted setup: plain search returns the six near-duplicates and nothing else.
    assert plain["label"].tolist() == ["dup"] * 6
    plain_ils = diversity.intra_list_similarity(index.vectors[index.rows_of(plain["item_id"])])

    mixed = similar.item_neighbours(index, catalog, "item000", 6, diversity=0.5)
    mixed_ils = diversity.intra_list_similarity(index.vectors[index.rows_of(mixed["item_id"])])
    assert mixed["rank"].tolist() == list(range(1, 7))
    assert mixed["item_id"].iloc[0] == plain["item_id"].iloc[0]  # the best match stays first
    assert (mixed["label"] == "other").sum() >= 3, mixed["label"].tolist()
    assert mixed_ils < plain_ils - 0.2, (plain_ils, mixed_ils)
    # Similarities are still each item's cosine to the query.
    rows = index.rows_of(mixed["item_id"])
    np.testing.assert_allclose(mixed["similarity"], vectors[rows] @ vectors[0], atol=1e-5)

    # The same through the outside-vector path (an upload that is not in the catalog).
    rest = Index(vectors[1:], catalog["item_id"].iloc[1:], name="rest")
    rest_catalog = catalog.iloc[1:].reset_index(drop=True)
    plain_upload = similar.vector_neighbours(rest, rest_catalog, vectors[0], 6)
    upload = similar.vector_neighbours(rest, rest_catalog, vectors[0], 6, diversity=0.5)
    assert plain_upload["item_id"].tolist() == plain["item_id"].tolist()
    assert upload["item_id"].tolist() == mixed["item_id"].tolist()


def test_mmr_picks_the_different_item_before_the_duplicate() -> None:
    a = np.array([1.0, 0.0, 0.0])
    a_copy = unit(np.array([[1.0, 0.01, 0.0]]))[0]
    b = np.array([0.0, 1.0, 0.0])
    candidates = np.stack([a, a_copy, b])
    relevance = np.array([0.9, 0.89, 0.7])
    assert diversity.mmr_order(relevance, candidates, 3, 0.0).tolist() == [0, 1, 2]
    assert diversity.mmr_order(relevance, candidates, 3, 0.5).tolist() == [0, 2, 1]


@pytest.mark.parametrize("strategy", ["exact", "cluster", "category"])
def test_diversity_zero_is_plain_search_exactly(strategy: str) -> None:
    vectors, groups = blobs((12, 9, 15, 7), d=24, noise=0.3, seed=5)
    names = np.array(["a", "b", "c", "d"], dtype=object)[groups]
    ids = catalog_of(len(vectors))["item_id"]
    index = Index(vectors, ids, clusters=groups, categories=names, name="blobs")
    catalog = catalog_of(len(vectors), names)
    for item in ids[::5]:
        plain = similar.item_neighbours(index, catalog, item, 8, strategy)
        zero = similar.item_neighbours(index, catalog, item, 8, strategy, diversity=0.0)
        pd.testing.assert_frame_equal(plain, zero)
        # ... and plain search is the exact ranking by cosine (an independent computation).
        if strategy == "exact":
            sims = vectors @ vectors[index.rows_of([item])[0]]
            sims[index.rows_of([item])[0]] = -np.inf
            expected = ids.to_numpy()[np.argsort(-sims, kind="stable")[:8]]
            assert plain["item_id"].tolist() == expected.tolist()
    plain = similar.vector_neighbours(index, catalog, vectors[3], 5, strategy, category="a")
    zero = similar.vector_neighbours(
        index, catalog, vectors[3], 5, strategy, category="a", diversity=0
    )
    pd.testing.assert_frame_equal(plain, zero)


def test_diversity_table_trades_precision_for_spread_on_blobs() -> None:
    # Tight groups of near-duplicates: more diversity must lower intra-list similarity.
    vectors, groups = blobs((15, 15, 15), d=16, noise=0.15, seed=1)
    index = Index(vectors, catalog_of(len(vectors))["item_id"])
    table = diversity.diversity_table(index, groups, settings=(0.0, 0.5, 0.9), k=5)
    ils = table["ils@5"].tolist()
    assert ils[0] > ils[1] > ils[2], table
    assert table["p@5"].iloc[0] == pytest.approx(1.0)
    assert table["queries"].tolist() == [45, 45, 45]


@pytest.mark.parametrize("bad", [-0.1, 1.5, "lots", float("nan"), None])
def test_diversity_out_of_range_is_refused(bad: object) -> None:
    with pytest.raises(
        LookalikeError, match=r"diversity must be between 0 \(plain nearest neighbours\) and 1"
    ):
        diversity.check_diversity(bad)


def test_item_neighbours_refuses_a_bad_diversity() -> None:
    vectors, _ = blobs((5, 5), d=8)
    index = Index(vectors, catalog_of(10)["item_id"])
    with pytest.raises(LookalikeError, match="diversity must be between 0"):
        similar.item_neighbours(index, catalog_of(10), "item000", 3, diversity=2)


def test_intra_list_similarity_is_the_mean_off_diagonal_cosine() -> None:
    rows = unit(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    # Pairs: (1,2) 0, (1,3) 0.7071, (2,3) 0.7071 -> mean 0.4714.
    assert diversity.intra_list_similarity(rows) == pytest.approx(2 * 0.5**0.5 / 3)
    assert np.isnan(diversity.intra_list_similarity(rows[:1]))

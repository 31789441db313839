"""Nearest-neighbour search: exactness, pools, self-exclusion, validation and the loader."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.artifacts import write_manifest, write_npy, write_parquet
from pipelines.config import STRATEGIES, Config
from pipelines.errors import LookalikeError
from pipelines.quality.metrics import precision_at_k
from pipelines.readers import load_index
from pipelines.search.index import Index, SearchResult
from pipelines.search.topk import PREFILTER_MIN_ITEMS, best_first, best_first_rows, top_k
from tests.conftest import blobs as conftest_blobs
from tests.conftest import unit, write_vector_artifacts


def blobs(n_clusters: int = 4, per: int = 10, d: int = 32, noise: float = 0.05, seed: int = 0):
    """`n_clusters` groups of `per` unit vectors (see tests.conftest.blobs)."""
    return conftest_blobs((per,) * n_clusters, d, noise, seed)


@pytest.fixture
def data():
    vectors, labels = blobs()
    ids = [f"item{i:03d}" for i in range(len(vectors))]
    return vectors, labels, ids


def test_exact_search_on_separated_clusters_has_precision_one(data):
    vectors, labels, ids = data
    index = Index(vectors, ids, name="inception_v3")
    rows, sims = index.search_rows(vectors, 9, exclude_rows=np.arange(len(vectors)))
    assert rows.shape == (40, 9) and sims.dtype == np.float32
    assert (labels[rows] == labels[:, None]).all()  # every one of the 9 is from the same blob
    assert np.mean([precision_at_k(labels[r], labels[i]) for i, r in enumerate(rows)]) == 1.0


def test_exact_search_matches_brute_force_and_finds_planted_neighbour():
    rng = np.random.default_rng(1)
    vectors = unit(rng.normal(size=(200, 64)))
    index = Index(vectors, [str(i) for i in range(200)])
    query = vectors[17] + 0.01 * rng.normal(size=64)
    (hit,) = index.search(query * 7.0, 5)  # scale must not matter: queries are normalised
    assert isinstance(hit, SearchResult)
    assert hit.rows[0] == 17 and hit.item_ids[0] == "17"
    expected = np.argsort(-(vectors @ (query / np.linalg.norm(query))))[:5]
    np.testing.assert_array_equal(hit.rows, expected)
    assert np.all(np.diff(hit.similarities) <= 0)  # best first
    np.testing.assert_allclose(hit.similarities[0], vectors[17] @ unit(query[None])[0], rtol=1e-5)


def test_batch_and_single_queries_agree(data):
    vectors, _, ids = data
    index = Index(vectors, ids)
    batch = index.search(vectors[:5], 7, exclude_rows=np.arange(5))
    for i, result in enumerate(batch):
        (single,) = index.search(vectors[i], 7, exclude_rows=[i])
        np.testing.assert_array_equal(result.rows, single.rows)
        np.testing.assert_allclose(result.similarities, single.similarities, rtol=1e-5)


def test_a_catalog_item_never_returns_itself(data):
    vectors, labels, ids = data
    index = Index(vectors, ids, clusters=labels, categories=np.array(list("abcd"))[labels])
    everyone = np.arange(len(vectors))
    for strategy in STRATEGIES:
        # k = n: even when asked for everything, the query itself is left out.
        results = index.search(vectors, len(vectors), strategy, exclude_rows=everyone)
        for row, result in enumerate(results):
            assert row not in result.rows
            assert ids[row] not in set(result.item_ids)


def test_cluster_strategy_stays_in_the_query_cluster(data):
    vectors, labels, ids = data
    # Clusters that cut across the true blobs, so a leak out of the pool would show.
    clusters = np.arange(len(vectors)) % 3
    index = Index(vectors, ids, clusters=clusters)
    results = index.search(vectors, 5, "cluster", query_clusters=clusters)
    for row, result in enumerate(results):
        assert (clusters[result.rows] == clusters[row]).all()
    # Without query_clusters, the nearest centroid decides; the members then share it.
    nearest = np.argmax(unit(vectors) @ index.centroids.T, axis=1)
    for row, result in enumerate(index.search(vectors, 5, "cluster")):
        assert (clusters[result.rows] == nearest[row]).all()


def test_category_strategy_stays_in_the_predicted_category(data):
    vectors, labels, ids = data
    predicted = np.array(["shirt", "dress"], dtype=object)[np.arange(len(vectors)) % 2]
    index = Index(vectors, ids, categories=predicted)
    rows = np.arange(len(vectors))
    # Catalog items: their own predicted category is used.
    for row, result in enumerate(index.search(vectors, 6, "category", exclude_rows=rows)):
        assert set(predicted[result.rows]) == {predicted[row]}
    # Outside queries say their category.
    (result,) = index.search(vectors[0], 6, "category", query_categories=["dress"])
    assert set(predicted[result.rows]) == {"dress"}
    (nothing,) = index.search(vectors[0], 6, "category", query_categories=["hat"])
    assert len(nothing.rows) == 0


def test_a_pool_smaller_than_k_returns_what_there_is(data):
    vectors, labels, ids = data
    clusters = np.zeros(len(vectors), dtype=int)
    clusters[:3] = 1  # cluster 1 holds three items
    index = Index(vectors, ids, clusters=clusters)
    (result,) = index.search(vectors[0], 10, "cluster", exclude_rows=[0], query_clusters=[1])
    assert sorted(result.rows.tolist()) == [1, 2]
    assert np.isfinite(result.similarities).all()
    rows, sims = index.search_rows(vectors[0], 10, "cluster", exclude_rows=[0], query_clusters=[1])
    assert (rows[0, 2:] == -1).all() and np.isnan(sims[0, 2:]).all()


def test_catalog_rows_that_are_not_unit_length_are_normalised_once(data):
    vectors, _, ids = data
    index = Index(vectors * 3.0, ids)
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1.0, rtol=1e-5)
    (result,) = index.search(vectors[0], 1)
    np.testing.assert_allclose(result.similarities[0], 1.0, rtol=1e-5)


def test_subset_and_rows_of(data):
    vectors, labels, ids = data
    index = Index(vectors, ids, clusters=labels)
    gallery = index.subset(np.arange(20, 40))
    assert gallery.size == 20 and gallery.item_ids[0] == "item020"
    np.testing.assert_array_equal(index.rows_of(["item003", "item039"]), [3, 39])
    with pytest.raises(LookalikeError, match="'nope' is not in the index"):
        index.rows_of(["nope"])


@pytest.mark.parametrize("n", [1, 5, 10, 11, 300, PREFILTER_MIN_ITEMS, 50_000])
@pytest.mark.parametrize("kind", ["random", "ties", "constant"])
def test_prefiltered_top_k_equals_the_full_sort(n, kind):
    """`_best_first` (sampled bound + partial sort) is exactly the first k of a stable sort,
    ties going to the lower row, on sizes below and above the prefilter's threshold."""
    rng = np.random.default_rng(n)
    sims = rng.normal(size=n).astype(np.float32)
    if kind == "ties":  # few distinct values: many ties at the k-th place
        sims = np.round(sims * 2) / 2
    elif kind == "constant":
        sims = np.zeros(n, dtype=np.float32)
    for k in (1, 10, 100, n):
        width = min(k, n)
        expected = np.argsort(-sims, kind="stable")[:width]
        np.testing.assert_array_equal(best_first(sims, width), expected)
        if kind == "random" and width < n:  # no ties: the same set as plain argpartition
            plain = np.argpartition(sims, n - width)[n - width :]
            assert set(best_first(sims, width).tolist()) == set(plain.tolist())


@pytest.mark.parametrize("n", [3, 40, 3781])
def test_block_top_k_equals_the_full_sort_row_by_row(n):
    """The vectorised block path (many queries, small catalog) gives exactly the stable sort's
    first k per row: rows with ties at the k-th value and -inf (excluded rows) included."""
    rng = np.random.default_rng(n)
    sims = rng.normal(size=(64, n)).astype(np.float32)
    sims[1] = np.round(sims[1])  # many ties
    sims[2] = 0.0  # all tied
    sims[3, : n // 2] = -np.inf
    sims[4, 0] = -np.inf  # an excluded row
    for k in (1, 10, n):
        width = min(k, n)
        got = best_first_rows(sims, width)
        for row in range(len(sims)):
            np.testing.assert_array_equal(got[row], best_first(sims[row], width))
        expected = np.argsort(-sims, axis=1, kind="stable")[:, :width]
        np.testing.assert_array_equal(got, expected)


def test_top_k_excludes_rows_above_the_prefilter_threshold():
    rng = np.random.default_rng(3)
    matrix = unit(rng.normal(size=(PREFILTER_MIN_ITEMS * 2, 16)))
    queries = matrix[[5, 700, 30_000]]
    exclude = np.array([5, -1, 30_000])
    rows, sims = top_k(queries, matrix, 10, exclude)
    full = queries @ matrix.T
    for i, row in enumerate(exclude):
        if row >= 0:
            full[i, row] = -np.inf
        expected = np.argsort(-full[i], kind="stable")[:10]
        np.testing.assert_array_equal(rows[i], expected)
        np.testing.assert_allclose(sims[i], full[i, expected], rtol=1e-6)
        (single_rows,), _ = top_k(queries[i : i + 1], matrix, 10, exclude[i : i + 1])
        np.testing.assert_array_equal(single_rows, expected)  # the one-query path agrees


# --- one invalid input per test, checking the message ---
@pytest.fixture
def wide():
    rng = np.random.default_rng(2)
    return Index(
        unit(rng.normal(size=(10, 2048))), [str(i) for i in range(10)], name="inception_v3"
    )


def test_k_zero_is_rejected(wide):
    with pytest.raises(LookalikeError, match="k must be between 1 and 10, got 0"):
        wide.search(wide.vectors[0], 0)


def test_k_above_catalog_size_is_rejected(wide):
    with pytest.raises(LookalikeError, match="k must be between 1 and 10, got 11"):
        wide.search(wide.vectors[0], 11)


def test_wrong_dimension_is_rejected(wide):
    with pytest.raises(
        LookalikeError, match="query vectors have 127 dims; the inception_v3 index has 2048"
    ):
        wide.search(np.ones(127, dtype=np.float32), 3)


def test_unknown_strategy_lists_the_valid_ones(wide):
    with pytest.raises(
        LookalikeError, match="unknown strategy 'fuzzy'; valid strategies: exact, cluster, category"
    ):
        wide.search(wide.vectors[0], 3, strategy="fuzzy")


def test_cluster_strategy_without_clusters_says_how_to_make_them(wide):
    with pytest.raises(
        LookalikeError, match="needs k-means clusters .*run `python -m pipelines clusters`"
    ):
        wide.search(wide.vectors[0], 3, strategy="cluster")


def test_category_strategy_without_categories_says_how_to_make_them(wide):
    with pytest.raises(
        LookalikeError, match="needs predicted categories .* run `python -m pipelines classify`"
    ):
        wide.search(wide.vectors[0], 3, strategy="category")


def test_category_of_an_outside_query_must_be_given(data):
    vectors, labels, ids = data
    index = Index(vectors, ids, categories=labels.astype(str))
    with pytest.raises(LookalikeError, match="needs query_categories for queries that are not"):
        index.search(vectors[0], 3, strategy="category")


def test_zero_query_is_rejected(wide):
    with pytest.raises(LookalikeError, match="query 0 has zero or non-finite length"):
        wide.search(np.zeros(2048, dtype=np.float32), 3)


def test_exclude_rows_must_match_the_queries(wide):
    with pytest.raises(LookalikeError, match="exclude_rows needs one catalog row per query"):
        wide.search(wide.vectors[:2], 3, exclude_rows=[0])


def test_precision_at_k_helper():
    assert precision_at_k(["a", "b", "a", "c"], "a") == 0.5
    assert precision_at_k(["a", "a"], "a", k=4) == 0.5  # missing results count as misses
    assert np.isnan(precision_at_k(["a"], None))


# --- load_index on an artifacts folder ---
def write_catalog(config: Config, n: int) -> pd.DataFrame:
    """A labelled catalog of n items (labels class0..class3) with no embeddings yet."""
    catalog = write_vector_artifacts(
        config, {"none": np.zeros((n, 1))}, labels=[f"class{i % 4}" for i in range(n)]
    )
    config.embeddings_path("none").unlink()
    return catalog


def write_embeddings(config: Config, name: str, vectors: np.ndarray) -> None:
    """Embeddings beside an existing catalog (possibly of the wrong length, on purpose)."""
    write_npy(vectors, config.embeddings_path(name))
    write_manifest(config.embeddings_path(name), "embed", {}, {})


def test_load_index_names_the_missing_catalog(tmp_path):
    with pytest.raises(
        LookalikeError, match="catalog.parquet is missing — run `python -m pipelines catalog"
    ):
        load_index(Config(artifacts_dir=tmp_path), "inception_v3")


def test_load_index_names_the_missing_embeddings(tmp_path):
    config = Config(artifacts_dir=tmp_path)
    write_catalog(config, 8)
    with pytest.raises(
        LookalikeError,
        match="inception_v3.npy is missing — run `python -m pipelines embed --extractor "
        "inception_v3`",
    ):
        load_index(config, "inception_v3")


def test_load_index_rejects_an_unknown_extractor(tmp_path):
    config = Config(artifacts_dir=tmp_path)
    write_catalog(config, 8)
    with pytest.raises(
        LookalikeError, match="unknown extractor 'clip'; valid extractors: inception_v3, custom_cnn"
    ):
        load_index(config, "clip")


def test_load_index_rejects_embeddings_of_another_catalog(tmp_path):
    config = Config(artifacts_dir=tmp_path)
    write_catalog(config, 8)
    write_embeddings(config, "inception_v3", unit(np.ones((9, 4))))
    with pytest.raises(LookalikeError, match="has 9 rows but the catalog has 8"):
        load_index(config, "inception_v3")


def test_load_index_reads_clusters_and_categories(tmp_path):
    from pipelines.explore.clusters import run_clusters

    config = Config(artifacts_dir=tmp_path, n_clusters=4)
    vectors, labels = blobs()
    catalog = write_catalog(config, len(vectors))
    write_embeddings(config, "inception_v3", vectors)

    index = load_index(config, "inception_v3")
    assert index.strategies == ("exact",)
    with pytest.raises(LookalikeError, match="clusters/inception_v3.parquet is missing"):
        index.search(vectors[0], 3, "cluster")
    with pytest.raises(LookalikeError, match="categories.parquet is missing"):
        index.search(vectors[0], 3, "category")

    run_clusters(config, ["inception_v3"])
    predicted = pd.DataFrame(
        {"item_id": catalog["item_id"], "predicted": [f"c{v}" for v in labels], "confidence": 0.9}
    )
    write_parquet(predicted, config.categories_path)
    index = load_index(config, "inception_v3")
    assert index.strategies == STRATEGIES
    assert config.centroids_path("inception_v3").exists()
    rows = np.arange(len(vectors))
    for strategy in STRATEGIES:
        found, _ = index.search_rows(vectors, 9, strategy, exclude_rows=rows)
        assert (labels[found] == labels[:, None]).all(), strategy

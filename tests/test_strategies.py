"""Strategies that widen instead of failing: several nearest clusters, the top categories while
the classifier is unsure, the whole catalog below a confidence threshold; and the classifier
chosen on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.artifacts import write_manifest, write_parquet
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.models.classify import candidate_sets, choose_model, run_classify, search_categories
from pipelines.search.index import Index, cluster_key
from tests.conftest import blobs, unit


def _two_groups():
    """Two tight groups on either side of a query that is slightly nearer group 0."""
    rng = np.random.default_rng(0)
    a, b = unit(np.array([[1.0, 0.2, 0.0]])), unit(np.array([[1.0, -0.2, 0.0]]))
    vectors = unit(
        np.vstack([a + 0.01 * rng.normal(size=(5, 3)), b + 0.01 * rng.normal(size=(5, 3))])
    )
    clusters = np.repeat([0, 1], 5)
    query = unit(np.array([[1.0, 0.01, 0.0]]))
    return vectors, clusters, query


def test_cluster_width_searches_the_nearest_clusters_together() -> None:
    vectors, clusters, query = _two_groups()
    ids = [f"i{i}" for i in range(10)]
    narrow = Index(vectors, ids, clusters=clusters, cluster_width=1)
    wide = Index(vectors, ids, clusters=clusters, cluster_width=2)
    rows_narrow, _ = narrow.search_rows(query, 8, "cluster")
    rows_wide, _ = wide.search_rows(query, 8, "cluster")
    assert set(rows_narrow[0][rows_narrow[0] >= 0]) == set(range(5))  # only its own cluster
    exact, _ = wide.search_rows(query, 8, "exact")
    np.testing.assert_array_equal(rows_wide, exact)  # both clusters: as good as exact
    # A catalog item keeps its own cluster and adds the nearest other one.
    assert cluster_key([1, 0, 1]) == "0|1" and cluster_key([3, 3]) == 3
    assert wide.subset(np.arange(10)).cluster_width == 2
    with pytest.raises(LookalikeError, match="cluster_width must be a whole number >= 1"):
        Index(vectors, ids, clusters=clusters, cluster_width=0)


def test_category_queries_widen_to_several_categories_or_everything() -> None:
    vectors, labels = blobs((4, 4, 4), d=8)
    names = np.array(["a", "b", "c"], dtype=object)[labels]
    ids = [f"i{i}" for i in range(12)]
    queries = names.copy()
    queries[0] = "a|b"
    queries[4] = "*"
    index = Index(vectors, ids, categories=names, category_queries=queries)
    rows, _ = index.search_rows(vectors[[0, 4, 8]], 11, "category", exclude_rows=[0, 4, 8])
    assert set(rows[0][rows[0] >= 0]) == set(range(1, 8))  # a and b, not itself
    exact, _ = index.search_rows(vectors[[4]], 11, "exact", exclude_rows=[4])
    np.testing.assert_array_equal(rows[1], exact[0])  # "*" is exact search
    # Confident: its own category only, plus the unsure items that may be of it (row 4
    # could be anything).
    assert set(rows[2][rows[2] >= 0]) == {4, 9, 10, 11}
    # An outside query names its categories the same way; row 0 (a or b) is in b's pool.
    outside, _ = index.search_rows(vectors[[0]], 12, "category", query_categories=["b|c"])
    assert set(outside[0][outside[0] >= 0]) == {0} | set(range(4, 12))
    only_a, _ = index.search_rows(vectors[[1]], 12, "category", query_categories=["a"])
    assert set(only_a[0][only_a[0] >= 0]) == {0, 1, 2, 3, 4}
    # Subsets keep what each row searches.
    assert index.subset(np.array([0, 1])).category_queries.tolist() == ["a|b", "a"]


def test_search_categories_follow_confidence() -> None:
    probs = np.array(
        [[0.95, 0.04, 0.01], [0.5, 0.45, 0.05], [0.35, 0.33, 0.32], [0.6, 0.2, 0.2]],
        dtype=np.float32,
    )
    out = search_categories(probs, ["dress", "skirt", "hat"], cover=0.9, exact_below=0.4)
    assert out.tolist() == ["dress", "dress|skirt", "*", "dress|hat|skirt"]
    # cover 0 keeps only the top category; exact_below 0 never falls back to exact search.
    assert search_categories(probs, ["x", "y", "z"], 0.0, 0.0).tolist() == ["x", "x", "x", "x"]


def test_classifier_is_chosen_on_validation() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["a", "b", "c"], dtype=object), 40)
    signal = np.eye(3)[np.repeat([0, 1, 2], 40)]
    good = np.hstack([signal * 2 + 0.3 * rng.normal(size=(120, 3)), rng.normal(size=(120, 5))])
    noise = rng.normal(size=(120, 8))  # carries no label information
    fit = np.tile([True, True, True, False], 30)
    model, trials = choose_model(
        {"noise": noise, "good": good}, labels, fit, ~fit, seed=0,
        feature_sets=[("noise",), ("good",)], c_values=(0.5,),
    )  # fmt: skip
    assert model.features == ("good",)
    by_set = {tuple(t["features"]): t["val_accuracy"] for t in trials}
    assert by_set[("good",)] > 0.9 > 0.6 > by_set[("noise",)]
    probs = model.probabilities({"good": good[~fit]})
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_classifier_prefers_inception_features_and_falls_back_to_the_cnn(tmp_path: Path) -> None:
    # InceptionV3 embedded: only its vectors are candidates, however well the CNN's would do.
    assert candidate_sets({"inception_v3", "custom_cnn"}) == (("inception_v3",),)
    assert candidate_sets({"custom_cnn"}) == (("custom_cnn",),)
    assert candidate_sets(set()) == ()
    # A catalog with no vectors yet: a message that names the missing stage.
    catalog = pd.DataFrame(
        {"item_id": ["a", "b", "c", "d"], "path": ["a", "b", "c", "d"],
         "label": ["x", "y", "x", "y"], "split": ["train"] * 4}
    )  # fmt: skip
    config = Config(artifacts_dir=tmp_path)
    write_parquet(catalog, config.catalog_path)
    write_manifest(config.catalog_path, "catalog", {}, {})
    with pytest.raises(LookalikeError, match="python -m pipelines embed"):
        run_classify(config)

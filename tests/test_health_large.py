"""Catalog health of a large catalog through the approximate index
(`pipelines.quality.health_large`): near-duplicates within the index's lists, likely
mislabelled items and outliers on a sample, the stage's switch to it, and the page's note."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.artifacts import read_manifest
from pipelines.config import Config
from pipelines.quality import health, health_large, health_lists
from pipelines.search.approximate import AnnIndex
from tests.conftest import copy_build, unit


def _catalog(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """6,000 unit vectors in 6 labelled groups, 40 planted near-copies, 12 swapped labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 48))
    labels = rng.integers(0, 6, 6000)
    vectors = unit(centres[labels] + rng.normal(scale=0.6, size=(6000, 48)))
    planted = []
    for i in range(40):
        a, b = 2 * i, 3000 + 2 * i
        vectors[b] = unit((vectors[a] + rng.normal(scale=0.01, size=48))[None])[0]
        labels[b] = labels[a]
        planted.append((a, b))
    names = np.array([f"c{v}" for v in labels], dtype=object)
    swapped = rng.choice(np.arange(100, 3000), 12, replace=False)
    names[swapped] = [f"c{(labels[r] + 1) % 6}" for r in swapped]
    return vectors, names, planted


@pytest.fixture(scope="module")
def large() -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], AnnIndex]:
    vectors, names, planted = _catalog()
    return vectors, names, planted, AnnIndex.build(vectors, nlist=16, seed=0)


def test_near_duplicates_through_the_index_lists_match_the_exact_ones(large) -> None:
    vectors, _, planted, ann = large
    found = health_large.list_pairs(ann, vectors, 0.97, 5000)
    exact = health_lists.near_duplicate_pairs(vectors, 0.97, 5000)
    found_set = {tuple(r) for r in found.rows.tolist()}
    exact_set = {tuple(r) for r in exact.rows.tolist()}
    assert found_set <= exact_set  # never a pair below the floor
    assert len(found_set) >= 0.9 * len(exact_set)  # a pair split across lists may be missed
    assert sum(p in found_set for p in planted) >= 36
    # Exact similarities, most similar first.
    np.testing.assert_allclose(
        found.similarities,
        np.einsum("ij,ij->i", vectors[found.rows[:, 0]], vectors[found.rows[:, 1]]),
        atol=1e-5,
    )
    assert np.all(np.diff(found.similarities) <= 1e-7)


def test_a_sample_finds_the_swapped_labels_and_the_outliers(large) -> None:
    vectors, names, _, ann = large
    config = Config(health_neighbors=10)
    ids = [f"i{r}" for r in range(len(vectors))]
    duplicates, mislabelled, outliers, record = health_large.health_tables_large(
        vectors, ann, ids, names, config, sample=len(vectors)
    )
    assert record["sampled"] == len(vectors) and record["method"] == "approximate"
    exact = health_lists.health_tables(vectors, ids, names, config)
    listed, exact_listed = set(mislabelled["item_id"]), set(exact[1]["item_id"])
    assert len(listed & exact_listed) >= 0.9 * len(exact_listed)
    assert len(outliers) == len(vectors)
    worst_exact = set(exact[2]["item_id"].head(100))
    assert len(set(outliers["item_id"].head(100)) & worst_exact) >= 80
    # A smaller sample: its rows only, seeded.
    _, _, few, again = health_large.health_tables_large(vectors, ann, ids, names, config, 500)
    assert len(few) == 500 and again["sampled"] == 500
    _, _, same, _ = health_large.health_tables_large(vectors, ann, ids, names, config, 500)
    assert few["item_id"].tolist() == same["item_id"].tolist()


def test_the_stage_switches_to_the_index_for_a_large_catalog(
    built: Config, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = copy_build(built, tmp_path)
    monkeypatch.setattr(health, "ANN_MIN_ITEMS", 10)  # the 36-item build counts as large
    result = health.run_health(config, ["inception_v3"], force=True)
    assert not result.details["inception_v3"]["skipped"]
    manifest = read_manifest(config.health_path("inception_v3", "outliers"))
    assert manifest["params"]["method"] == "approximate" and manifest["sampled"] == 36
    outliers = pd.read_parquet(config.health_path("inception_v3", "outliers"))
    assert len(outliers) == 36 and outliers["rank"].tolist() == list(range(1, 37))
    again = health.run_health(config, ["inception_v3"])
    assert again.details["inception_v3"]["skipped"]


def test_blocks_and_the_candidate_cap_keep_the_most_similar_pairs(
    large, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One list holding the whole catalog (as near-copies can make one), scored in blocks:
    the same pairs as the exact scan; a small max_pairs keeps the most similar."""
    vectors, _, planted, _ = large
    one_list = AnnIndex.build(vectors, nlist=1, seed=0)
    exact = health_lists.near_duplicate_pairs(vectors, 0.97, 5000)
    monkeypatch.setattr(health_large, "BLOCK_ROWS", 700)  # 9 blocks of the 6,000-item list
    blocked = health_large.list_pairs(one_list, vectors, 0.97, 5000)
    assert {tuple(r) for r in blocked.rows.tolist()} == {tuple(r) for r in exact.rows.tolist()}
    few = health_large.list_pairs(one_list, vectors, 0.97, 10)
    top = {tuple(r) for r in exact.rows[:10].tolist()}
    assert len(few.rows) >= 10 and len(top & {tuple(r) for r in few.rows.tolist()}) >= 8
    assert few.floor >= exact.floor

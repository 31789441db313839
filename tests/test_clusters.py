"""k-means clusters: purity on separable data, the summary table, and the cluster stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.artifacts import read_manifest
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.explore import clusters as clusters_module
from pipelines.explore.clusters import (
    cluster_summary,
    kmeans,
    overall_purity,
    run_clusters,
    summary_path,
)
from tests.conftest import blobs as conftest_blobs
from tests.conftest import unit, write_vector_artifacts


def blobs(sizes=(12, 10, 8, 6), d: int = 24, noise: float = 0.05, seed: int = 0):
    return conftest_blobs(sizes, d, noise, seed)


def test_kmeans_recovers_separable_clusters_with_purity_one():
    vectors, labels = blobs()
    cluster_ids, centroids = kmeans(vectors, 4, seed=0)
    assert cluster_ids.dtype == np.int32 and cluster_ids.shape == (36,)
    assert centroids.dtype == np.float32 and centroids.shape == (4, 24)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    summary = cluster_summary(cluster_ids, np.array(list("abcd"))[labels])
    assert (summary["purity"] == 1.0).all() and overall_purity(summary) == 1.0
    # Numbered by size, largest first: the 12-item blob is cluster 0.
    assert summary["size"].tolist() == [12, 10, 8, 6]
    assert summary["top_label"].tolist() == ["a", "b", "c", "d"]


def test_above_the_threshold_minibatch_kmeans_on_a_sample_finds_the_same_clusters(
    tmp_path, monkeypatch
):
    vectors, labels = blobs(sizes=(300, 250, 200, 150), noise=0.1)
    fitted = []
    real = clusters_module.MiniBatchKMeans

    def spy(*args, **kwargs):  # records the rows MiniBatchKMeans learns from
        model = real(*args, **kwargs)
        fit = model.fit
        model.fit = lambda data: (fitted.append(len(data)), fit(data))[1]
        return model

    monkeypatch.setattr(clusters_module, "MiniBatchKMeans", spy)
    path = tmp_path / "vectors.npy"
    np.save(path, vectors)
    mm = np.load(path, mmap_mode="r")  # as a large catalog's stage reads it
    ids, centroids = kmeans(mm, 4, seed=0, full_max_items=500, sample=400)
    assert fitted == [400]  # the mini-batch path, on the sample only
    assert ids.shape == (900,) and centroids.shape == (4, 24)
    full_ids, _ = kmeans(vectors, 4, seed=0)  # below the threshold: full KMeans
    assert fitted == [400]
    np.testing.assert_array_equal(ids, full_ids)  # same clusters, same (size) numbering
    summary = cluster_summary(ids, labels)
    assert overall_purity(summary) == 1.0
    # Every row, sampled or not, sits in its most similar centroid's cluster.
    np.testing.assert_array_equal(ids, np.argmax(vectors @ centroids.T, axis=1))


def test_kmeans_assigns_each_item_to_its_most_similar_centroid():
    vectors, _ = blobs(noise=0.6)  # overlapping blobs, where the rule matters
    cluster_ids, centroids = kmeans(vectors, 4, seed=0)
    np.testing.assert_array_equal(cluster_ids, np.argmax(vectors @ centroids.T, axis=1))


def test_kmeans_is_deterministic_with_the_seed():
    vectors, _ = blobs(noise=0.5)
    first, centroids_a = kmeans(vectors, 5, seed=3)
    second, centroids_b = kmeans(vectors, 5, seed=3)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(centroids_a, centroids_b)


def test_kmeans_clips_clusters_to_the_number_of_items():
    vectors, _ = blobs(sizes=(1, 1, 1))
    cluster_ids, centroids = kmeans(vectors, 10, seed=0)
    assert len(centroids) == 3 and sorted(cluster_ids.tolist()) == [0, 1, 2]


def test_cluster_summary_on_a_hand_made_case():
    summary = cluster_summary(np.array([0, 0, 0, 1, 1]), ["a", "a", "b", "c", None])
    first, second = summary.to_dict("records")
    assert first["size"] == 3 and first["top_label"] == "a"
    assert first["purity"] == pytest.approx(2 / 3)
    assert json.loads(first["composition"]) == {"a": 2, "b": 1}
    # Unlabelled members count in size but not in purity.
    assert second["size"] == 2 and second["n_labelled"] == 1 and second["purity"] == 1.0
    assert overall_purity(summary) == pytest.approx(3 / 4)


def test_cluster_summary_without_labels():
    summary = cluster_summary(np.array([1, 0, 1]), None)
    assert summary["size"].tolist() == [1, 2]
    assert summary["top_label"].isna().all() and summary["purity"].isna().all()
    assert (summary["composition"] == "{}").all()
    assert overall_purity(summary) is None


# --- the stage ---
def write_inputs(config: Config, vectors: np.ndarray, labels) -> pd.DataFrame:
    """Both extractors: the blobs, and their first 8 dims (a narrower extractor)."""
    embeddings = {"inception_v3": vectors, "custom_cnn": unit(vectors[:, :8])}
    return write_vector_artifacts(config, embeddings, labels=labels)


def test_run_clusters_writes_aligned_tables_and_skips_when_unchanged(tmp_path):
    config = Config(artifacts_dir=tmp_path, n_clusters=4)
    vectors, labels = blobs()
    catalog = write_inputs(config, vectors, np.array(list("abcd"))[labels])

    result = run_clusters(config)
    for name in ("inception_v3", "custom_cnn"):
        assert not result.details[name]["skipped"]
        table = pd.read_parquet(config.clusters_path(name))
        assert table["item_id"].tolist() == catalog["item_id"].tolist()
        assert table["cluster"].dtype == np.int32
        summary = pd.read_parquet(config.cluster_summary_path(name))
        assert summary["size"].sum() == len(catalog)
        centroids = np.load(config.centroids_path(name))
        assert centroids.dtype == np.float32 and len(centroids) == 4
        manifest = read_manifest(config.clusters_path(name))
        assert manifest["stage"] == "clusters" and manifest["params"]["n_clusters"] == 4
        assert set(manifest["inputs"]) == {"catalog", f"embeddings/{name}"}
    assert result.details["inception_v3"]["purity"] == 1.0

    before = config.clusters_path("inception_v3").stat().st_mtime_ns
    again = run_clusters(config)
    assert again.skipped and not again.wrote
    assert again.details["inception_v3"]["purity"] == 1.0
    assert config.clusters_path("inception_v3").stat().st_mtime_ns == before
    assert not run_clusters(config, ["inception_v3"], force=True).details["inception_v3"]["skipped"]


def test_run_clusters_on_an_unlabelled_catalog(tmp_path):
    config = Config(artifacts_dir=tmp_path, n_clusters=50)  # more clusters than items: clipped
    vectors, _ = blobs(sizes=(5, 5))
    write_inputs(config, vectors, [None] * 10)
    result = run_clusters(config, ["inception_v3"])
    assert result.details["inception_v3"]["purity"] is None
    assert result.details["inception_v3"]["n_clusters"] == 10
    assert pd.read_parquet(summary_path(config, "inception_v3"))["top_label"].isna().all()


def test_run_clusters_needs_embeddings(tmp_path):
    config = Config(artifacts_dir=tmp_path)
    vectors, _ = blobs()
    write_inputs(config, vectors, [None] * len(vectors))
    config.embeddings_path("custom_cnn").unlink()
    with pytest.raises(
        LookalikeError, match="run `python -m pipelines embed --extractor custom_cnn"
    ):
        run_clusters(config, ["custom_cnn"])

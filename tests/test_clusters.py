"""k-means clusters: purity on separable data, the summary table, and the cluster stage."""

from __future__ import annotations

import json
import shutil

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


# --- updates in place ---
class Killed(Exception):
    """Stands for a SIGKILL at the patched write."""


@pytest.fixture(scope="module")
def pool():
    """4 blobs of 20 unit vectors (labels a-d), the items a catalog's versions come from."""
    vectors, blob = blobs(sizes=(20, 20, 20, 20), noise=0.3)
    ids = np.array([f"b{b}-{i:03d}" for i, b in enumerate(blob)])
    return vectors, np.array(list("abcd"))[blob], ids


def versions(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool rows of a first catalog (16 per blob) and of its update: 2 per blob removed, 2 per
    blob added (8 new of 64, under the refit share), in a shuffled order."""
    per_blob = [np.flatnonzero(labels == b) for b in "abcd"]
    first = np.concatenate([rows[:16] for rows in per_blob])
    removed = np.concatenate([rows[:2] for rows in per_blob])
    added = np.concatenate([rows[16:18] for rows in per_blob])
    update = np.concatenate([np.setdiff1d(first, removed), added])
    return first, np.random.default_rng(3).permutation(update)


def write_version(config, pool, rows, labels=None, weights="w1") -> pd.DataFrame:
    vectors, pool_labels, ids = pool
    labels = pool_labels[rows] if labels is None else labels
    return write_vector_artifacts(
        config, {"inception_v3": vectors[rows]}, labels=labels, item_ids=ids[rows], weights=weights
    )


def no_fit(*args, **kwargs):
    raise AssertionError("an update must not fit k-means")


def test_an_update_keeps_clusters_assigns_new_items_and_recounts_the_summary(
    tmp_path, pool, monkeypatch
):
    vectors, labels, ids = pool
    config = Config(artifacts_dir=tmp_path, n_clusters=4)
    first, update = versions(labels)
    write_version(config, pool, first)
    run_clusters(config, ["inception_v3"])
    before = pd.read_parquet(config.clusters_path("inception_v3")).set_index("item_id")
    centroids_bytes = config.centroids_path("inception_v3").read_bytes()
    fitted = read_manifest(config.clusters_path("inception_v3"))["fit"]

    # One kept item's label corrected in the same update: the summary must count it.
    new_labels = labels[update].copy()
    corrected = next(i for i, row in enumerate(update) if row in first and labels[row] == "a")
    new_labels[corrected] = "z"
    catalog = write_version(config, pool, update, labels=new_labels)
    monkeypatch.setattr(clusters_module, "kmeans", no_fit)
    detail = run_clusters(config, ["inception_v3"]).details["inception_v3"]
    assert detail["refit"] is None and not detail["skipped"]
    assert (detail["kept"], detail["assigned"], detail["removed"]) == (56, 8, 8)

    table = pd.read_parquet(config.clusters_path("inception_v3"))
    assert table["item_id"].tolist() == catalog["item_id"].tolist()  # catalog order
    assert table["cluster"].dtype == np.int32
    after = table.set_index("item_id")["cluster"]
    kept = np.intersect1d(ids[first], ids[update])
    np.testing.assert_array_equal(after.loc[kept], before.loc[kept, "cluster"])
    new_rows = np.setdiff1d(update, first)
    centroids = np.load(config.centroids_path("inception_v3"))
    np.testing.assert_array_equal(
        after.loc[ids[new_rows]], np.argmax(vectors[new_rows] @ centroids.T, axis=1)
    )
    assert config.centroids_path("inception_v3").read_bytes() == centroids_bytes

    # The summary, counted independently from the table and the current labels.
    summary = pd.read_parquet(config.cluster_summary_path("inception_v3")).set_index("cluster")
    counted = pd.Series(new_labels, index=catalog["item_id"]).groupby(after.to_numpy())
    for cluster, members in counted:
        counts = members.value_counts()
        assert summary.loc[cluster, "size"] == len(members)
        assert json.loads(summary.loc[cluster, "composition"]) == counts.to_dict()
        assert summary.loc[cluster, "purity"] == pytest.approx(counts.iloc[0] / len(members))
    assert "z" in set().union(*(json.loads(c) for c in summary["composition"]))
    manifest = read_manifest(config.clusters_path("inception_v3"))
    assert manifest["made_by"] == "update" and manifest["assigned_since_fit"] == 8
    assert manifest["fit"] == fitted and manifest["update"] == {
        "kept": 56,
        "assigned": 8,
        "removed": 8,
    }
    assert manifest["purity"] == pytest.approx(overall_purity(summary.reset_index()))

    again = run_clusters(config, ["inception_v3"])
    assert again.skipped and not again.wrote


def test_a_label_correction_alone_recounts_the_summary_without_moving_items(tmp_path, pool):
    _, labels, _ = pool
    config = Config(artifacts_dir=tmp_path, n_clusters=4)
    first, _ = versions(labels)
    write_version(config, pool, first)
    run_clusters(config, ["inception_v3"])
    before = pd.read_parquet(config.clusters_path("inception_v3"))
    relabelled = labels[first].copy()
    relabelled[:3] = "z"
    write_version(config, pool, first, labels=relabelled)
    detail = run_clusters(config, ["inception_v3"]).details["inception_v3"]
    assert detail["refit"] is None and detail["assigned"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(config.clusters_path("inception_v3")), before)
    summary = pd.read_parquet(config.cluster_summary_path("inception_v3"))
    cluster = before["cluster"].iloc[0]
    composition = json.loads(summary.set_index("cluster").loc[cluster, "composition"])
    assert composition.get("z") == 3


def test_a_new_model_force_or_drift_refits_kmeans(tmp_path, pool, monkeypatch):
    vectors, labels, ids = pool
    config = Config(artifacts_dir=tmp_path, n_clusters=4)
    first, update = versions(labels)
    write_version(config, pool, first)
    fits = []
    real = clusters_module.kmeans
    monkeypatch.setattr(
        clusters_module, "kmeans", lambda *a, **kw: fits.append(1) or real(*a, **kw)
    )
    run_clusters(config, ["inception_v3"])
    write_version(config, pool, update)
    assert run_clusters(config, ["inception_v3"]).details["inception_v3"]["refit"] is None
    assert len(fits) == 1

    # Retrained: the same items, other vectors (dimensions reversed), a new weights id.
    write_version(config, (vectors[:, ::-1].copy(), labels, ids), update, weights="w2")
    detail = run_clusters(config, ["inception_v3"]).details["inception_v3"]
    assert len(fits) == 2 and "another model" in detail["refit"]
    manifest = read_manifest(config.clusters_path("inception_v3"))
    assert manifest["assigned_since_fit"] == 0 and manifest["fit"]["rows"] == 64

    fitted_bytes = config.clusters_path("inception_v3").read_bytes()
    detail = run_clusters(config, ["inception_v3"], force=True).details["inception_v3"]
    assert len(fits) == 3 and detail["refit"] == "forced"
    # A refit of the same inputs writes the same bytes (no date in the file), so the stages
    # keyed on the assignments' hash (evaluate) stay up to date.
    assert config.clusters_path("inception_v3").read_bytes() == fitted_bytes

    # 8 new of 72 (11 %), then 8 more and 4 removed: 16 assigned since the fit of 76 (21 %).
    retrained = (vectors[:, ::-1].copy(), labels, ids)
    extra = np.setdiff1d(np.arange(len(ids)), update)
    write_version(config, retrained, np.concatenate([update, extra[:8]]), weights="w2")
    assert run_clusters(config, ["inception_v3"]).details["inception_v3"]["refit"] is None
    assert read_manifest(config.clusters_path("inception_v3"))["assigned_since_fit"] == 8
    write_version(config, retrained, np.concatenate([update[4:], extra]), weights="w2")
    detail = run_clusters(config, ["inception_v3"]).details["inception_v3"]
    assert len(fits) == 4 and "assigned since the fit" in detail["refit"]
    assert 8 / 72 <= clusters_module.REFIT_ASSIGNED_SHARE < 16 / 76  # the test's premise


@pytest.mark.parametrize("at", ["summary", "assignments"])
def test_a_run_killed_during_an_update_ends_as_an_uninterrupted_one(
    tmp_path, pool, monkeypatch, at
):
    _, labels, _ = pool
    first, update = versions(labels)
    done = Config(artifacts_dir=tmp_path / "done", n_clusters=4)
    write_version(done, pool, first)
    run_clusters(done, ["inception_v3"])
    shutil.copytree(done.artifacts_dir, tmp_path / "killed")
    killed = Config(artifacts_dir=tmp_path / "killed", n_clusters=4)
    for config in (done, killed):
        write_version(config, pool, update)
    run_clusters(done, ["inception_v3"])  # uninterrupted

    # Killed after the summary's rename, or after the assignments' (before their manifest).
    target = killed.cluster_summary_path("inception_v3").name if at == "summary" else None
    target = target or killed.clusters_path("inception_v3").name
    real = clusters_module.write_manifest

    def kill_after(artifact, *args, **kwargs):
        if artifact.name == target:
            raise Killed
        return real(artifact, *args, **kwargs)

    monkeypatch.setattr(clusters_module, "write_manifest", kill_after)
    with pytest.raises(Killed):
        run_clusters(killed, ["inception_v3"])
    monkeypatch.undo()
    monkeypatch.setattr(clusters_module, "kmeans", no_fit)
    detail = run_clusters(killed, ["inception_v3"]).details["inception_v3"]
    assert not detail["skipped"] and detail["refit"] is None
    for path in ("clusters_path", "cluster_summary_path", "centroids_path"):
        a, b = getattr(killed, path)("inception_v3"), getattr(done, path)("inception_v3")
        assert a.read_bytes() == b.read_bytes(), path
    assert run_clusters(killed, ["inception_v3"]).skipped

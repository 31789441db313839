"""UMAP maps: neighbourhoods kept, determinism, Procrustes alignment, and the map stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.artifacts import read_manifest, write_manifest, write_npy
from pipelines.config import Config
from pipelines.explore import maps as maps_module
from pipelines.explore.maps import align_procrustes, compute_map, map_trustworthiness, run_maps
from tests.conftest import blobs as conftest_blobs
from tests.conftest import unit, write_vector_artifacts

# Small settings keep each UMAP run about a second once numba has compiled.
MAP = {"pca_dims": 10, "n_neighbors": 10, "min_dist": 0.1, "seed": 0}


def blobs(n_clusters: int = 4, per: int = 25, d: int = 32, noise: float = 0.15, seed: int = 0):
    """`n_clusters` groups of `per` unit vectors (see tests.conftest.blobs)."""
    return conftest_blobs((per,) * n_clusters, d, noise, seed)


@pytest.fixture(scope="module")
def mapped():
    """One UMAP run shared by the tests below (the first run pays numba's compile time)."""
    vectors, labels = blobs()
    return vectors, labels, compute_map(vectors, **MAP)


def test_map_of_separated_clusters_keeps_neighbourhoods(mapped):
    vectors, labels, coords = mapped
    assert coords.shape == (100, 2) and coords.dtype == np.float32
    assert np.isfinite(coords).all()
    assert map_trustworthiness(vectors, coords, k=10) > 0.9
    # Each item's nearest map neighbour is from its own cluster.
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    assert (labels[distances.argmin(axis=1)] == labels).mean() > 0.95


def test_map_is_deterministic_with_the_seed(mapped):
    vectors, _, coords = mapped
    np.testing.assert_allclose(compute_map(vectors, **MAP), coords, atol=1e-5)


def test_trustworthiness_of_a_random_map_is_low(mapped):
    vectors, _, _ = mapped
    noise = np.random.default_rng(5).normal(size=(len(vectors), 2))
    assert map_trustworthiness(vectors, noise, k=10) < 0.75


def test_above_the_threshold_the_map_is_fitted_on_a_sample_and_keeps_neighbourhoods(
    tmp_path, monkeypatch
):
    vectors, labels = blobs(n_clusters=6, per=80, d=64)
    path = tmp_path / "vectors.npy"
    np.save(path, vectors)
    mm = np.load(path, mmap_mode="r")  # as a large catalog's stage reads it
    calls = []
    real = maps_module.sampled_map
    monkeypatch.setattr(
        maps_module,
        "sampled_map",
        lambda *a, **kw: calls.append(kw["fit_sample"]) or real(*a, **kw),
    )
    sampled = compute_map(mm, **MAP, full_fit_max_items=300, fit_sample=200)
    assert calls == [200]
    assert sampled.shape == (480, 2) and sampled.dtype == np.float32
    assert np.isfinite(sampled).all()
    full = compute_map(vectors, **MAP)  # today's full fit; below the threshold too
    assert calls == [200]
    np.testing.assert_array_equal(compute_map(vectors, **MAP, full_fit_max_items=480), full)
    # The 280 placed rows land among their own kind, and the map keeps neighbourhoods
    # about as well as the full fit does.
    trust_sampled = map_trustworthiness(vectors, sampled, k=10)
    trust_full = map_trustworthiness(vectors, full, k=10)
    assert trust_sampled >= trust_full - 0.02
    distances = np.linalg.norm(sampled[:, None] - sampled[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    assert (labels[distances.argmin(axis=1)] == labels).mean() > 0.95


def test_tiny_catalogs_get_a_map():
    rng = np.random.default_rng(0)
    for n in (1, 3, 6):
        coords = compute_map(unit(rng.normal(size=(n, 16))), **MAP)
        assert coords.shape == (n, 2) and np.isfinite(coords).all()
    assert np.isnan(map_trustworthiness(np.ones((2, 4)), np.zeros((2, 2))))


def test_procrustes_recovers_a_rotated_scaled_shifted_reflected_copy():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(60, 2)).astype(np.float32)
    angle = 1.1
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = 3.5 * reference @ rotation @ np.diag([1.0, -1.0]) + np.array([10.0, -4.0])
    aligned = align_procrustes(moved, reference)
    assert aligned.dtype == np.float32
    np.testing.assert_allclose(aligned, reference, atol=1e-4)
    # With noise the alignment is still close: error about the noise level, not the shift.
    noisy = moved + 0.05 * rng.normal(size=moved.shape)
    error = np.abs(align_procrustes(noisy, reference) - reference).mean()
    assert error < 0.05


# --- the stage ---
def write_inputs(config: Config, vectors: np.ndarray) -> pd.DataFrame:
    embeddings = {"inception_v3": vectors, "custom_cnn": unit(vectors[:, :12])}
    return write_vector_artifacts(config, embeddings)


def test_run_maps_writes_aligned_maps_and_skips_when_unchanged(tmp_path, mapped):
    config = Config(artifacts_dir=tmp_path, map_pca_dims=10, map_neighbors=10)
    vectors, _ = blobs(per=15)
    catalog = write_inputs(config, vectors)

    # Asked in the other order: the reference map is still made first.
    result = run_maps(config, ["custom_cnn", "inception_v3"])
    assert result.details["custom_cnn"]["aligned_to"] == "inception_v3"
    assert result.details["inception_v3"]["aligned_to"] is None
    maps = {}
    for name in ("inception_v3", "custom_cnn"):
        path = config.map_path(name)
        maps[name] = table = pd.read_parquet(path)
        assert list(table.columns) == ["item_id", "x", "y"]
        assert table["item_id"].tolist() == catalog["item_id"].tolist()
        assert table["x"].dtype == np.float32
        manifest = read_manifest(path)
        assert manifest["stage"] == "maps" and manifest["rows"] == len(catalog)
        assert manifest["params"]["pca_dims"] == 10 and manifest["params"]["metric"] == "cosine"
        assert 0.5 < manifest["trustworthiness"] <= 1.0
    assert "maps/inception_v3" in read_manifest(config.map_path("custom_cnn"))["inputs"]
    # Aligned maps share a frame: similar centre and spread.
    a, b = (maps[n][["x", "y"]].to_numpy() for n in ("inception_v3", "custom_cnn"))
    np.testing.assert_allclose(a.mean(axis=0), b.mean(axis=0), atol=1e-3)

    before = config.map_path("custom_cnn").stat().st_mtime_ns
    again = run_maps(config)
    assert again.skipped and not again.wrote
    assert config.map_path("custom_cnn").stat().st_mtime_ns == before

    # New embeddings make the map stale.
    write_npy(unit(vectors[:, 3:15]), config.embeddings_path("custom_cnn"))
    write_manifest(config.embeddings_path("custom_cnn"), "embed", {}, {})
    changed = run_maps(config)
    assert changed.details["inception_v3"]["skipped"]
    assert not changed.details["custom_cnn"]["skipped"]

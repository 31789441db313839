"""UMAP maps: neighbourhoods kept, determinism, Procrustes alignment, and the map stage."""

from __future__ import annotations

import shutil

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


# --- updates in place ---
UPDATE_SETTINGS = {"map_pca_dims": 10, "map_neighbors": 10}


class Killed(Exception):
    """Stands for a SIGKILL at the patched write."""


@pytest.fixture(scope="module")
def pool():
    """4 blobs of 33 unit vectors, the items a catalog's versions are drawn from, with ids."""
    vectors, labels = blobs(n_clusters=4, per=33)
    ids = np.array([f"b{label}-{i:03d}" for i, label in enumerate(labels)])
    return vectors, labels, ids


def versions(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool rows of a first catalog (25 per blob) and of its update: 2 per blob removed,
    3 per blob added (12 new of 104, under the refit share), in a shuffled order."""
    per_blob = [np.flatnonzero(labels == b) for b in range(4)]
    first = np.concatenate([rows[:25] for rows in per_blob])
    removed = np.concatenate([rows[:2] for rows in per_blob])
    added = np.concatenate([rows[25:28] for rows in per_blob])
    update = np.concatenate([np.setdiff1d(first, removed), added])
    return first, np.random.default_rng(7).permutation(update)


def write_version(config: Config, pool, rows: np.ndarray, weights: str = "w1") -> pd.DataFrame:
    """The catalog of pool items `rows` and both extractors' embeddings of them."""
    vectors, _, ids = pool
    embeddings = {"inception_v3": vectors[rows], "custom_cnn": unit(vectors[rows, :12])}
    return write_vector_artifacts(config, embeddings, item_ids=ids[rows], weights=weights)


def read_map(config: Config, name: str) -> pd.DataFrame:
    return pd.read_parquet(config.map_path(name))


def expected_places(new: np.ndarray, kept: np.ndarray, kept_xy: np.ndarray) -> np.ndarray:
    """Brute-force weighted-mean placement: the 15 most similar kept items, weights sim^4."""
    sims = new.astype(np.float64) @ kept.astype(np.float64).T
    top = np.argsort(-sims, axis=1, kind="stable")[:, : maps_module.PLACE_NEIGHBOURS]
    weights = np.maximum(np.take_along_axis(sims, top, axis=1), 0) ** 4
    return (weights[..., None] * kept_xy[top]).sum(1) / weights.sum(1, keepdims=True)


def no_fit(*args, **kwargs):
    raise AssertionError("an update must not fit UMAP")


def test_an_update_keeps_kept_places_drops_removed_and_places_new_items(
    tmp_path, pool, monkeypatch
):
    vectors, labels, ids = pool
    config = Config(artifacts_dir=tmp_path, **UPDATE_SETTINGS)
    names = ["inception_v3", "custom_cnn"]
    first, update = versions(labels)
    write_version(config, pool, first)
    run_maps(config, names)
    before = {name: read_map(config, name).set_index("item_id") for name in names}
    fitted = read_manifest(config.map_path("inception_v3"))
    assert fitted["made_by"] == "fit" and fitted["fit"]["rows"] == 100

    catalog = write_version(config, pool, update)
    monkeypatch.setattr(maps_module, "compute_map", no_fit)
    result = run_maps(config, names)
    kept_ids = np.intersect1d(ids[first], ids[update])
    new_rows = np.setdiff1d(update, first)
    for name in names:
        detail = result.details[name]
        assert detail["refit"] is None and not detail["skipped"]
        assert (detail["kept"], detail["placed"], detail["removed"]) == (92, 12, 8)
        table = read_map(config, name)
        # Rows in the current catalog's order; removed items gone.
        assert table["item_id"].tolist() == catalog["item_id"].tolist()
        after = table.set_index("item_id")
        old = before[name].loc[kept_ids, ["x", "y"]].to_numpy()
        new = after.loc[kept_ids, ["x", "y"]].to_numpy()
        assert old.dtype == new.dtype == np.float32
        np.testing.assert_array_equal(old.view(np.uint32), new.view(np.uint32))  # bit for bit
        # New items at the similarity-weighted mean place of their 15 most similar kept items.
        space = vectors if name == "inception_v3" else unit(vectors[:, :12])
        kept_rows = np.flatnonzero(np.isin(ids, kept_ids))
        want = expected_places(
            space[new_rows],
            space[kept_rows],
            before[name].loc[ids[kept_rows], ["x", "y"]].to_numpy(np.float64),
        )
        got = after.loc[ids[new_rows], ["x", "y"]].to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        manifest = read_manifest(config.map_path(name))
        assert manifest["made_by"] == "update" and manifest["refit_reason"] is None
        assert manifest["placed_since_fit"] == 12 and manifest["fit"]["rows"] == 100
        assert manifest["update"] == {"kept": 92, "placed": 12, "removed": 8}
        assert manifest["fit"]["umap_rows"] == 100 and manifest["model"]
        assert 0.5 < manifest["trustworthiness"] <= 1.0
    assert manifest["aligned_to"] == "inception_v3"  # custom_cnn's: kept, not re-aligned
    assert read_manifest(config.map_path("inception_v3"))["fit"] == fitted["fit"]

    # Each new item's nearest kept item on the map is one of its own blob.
    table = read_map(config, "inception_v3").set_index("item_id")
    kept_xy = table.loc[kept_ids, ["x", "y"]].to_numpy()
    kept_blob = labels[np.searchsorted(ids, kept_ids)]
    for row in new_rows:
        gaps = np.linalg.norm(kept_xy - table.loc[ids[row], ["x", "y"]].to_numpy(), axis=1)
        assert kept_blob[gaps.argmin()] == labels[row]

    again = run_maps(config, names)
    assert again.skipped and not again.wrote


def test_a_new_model_or_force_refits_the_map(tmp_path, pool, monkeypatch):
    _, labels, _ = pool
    config = Config(artifacts_dir=tmp_path, **UPDATE_SETTINGS)
    first, update = versions(labels)
    write_version(config, pool, first)
    run_maps(config, ["inception_v3"])
    write_version(config, pool, update)
    assert run_maps(config, ["inception_v3"]).details["inception_v3"]["refit"] is None

    fits = []
    real = maps_module.compute_map
    monkeypatch.setattr(
        maps_module, "compute_map", lambda *a, **kw: fits.append(1) or real(*a, **kw)
    )
    # Retrained: the same items, other vectors (the dimensions reversed), a new weights id.
    vectors, labels, ids = pool
    write_version(config, (vectors[:, ::-1].copy(), labels, ids), update, weights="w2")
    detail = run_maps(config, ["inception_v3"]).details["inception_v3"]
    assert len(fits) == 1 and "another model" in detail["refit"]
    manifest = read_manifest(config.map_path("inception_v3"))
    assert manifest["made_by"] == "fit" and manifest["placed_since_fit"] == 0
    assert manifest["fit"]["rows"] == 104
    assert run_maps(config, ["inception_v3"]).skipped

    fitted_bytes = config.map_path("inception_v3").read_bytes()
    detail = run_maps(config, ["inception_v3"], force=True).details["inception_v3"]
    assert len(fits) == 2 and detail["refit"] == "forced"
    # A refit of the same inputs writes the same bytes (no date in the file), so the stages
    # keyed on the map's hash stay up to date.
    assert config.map_path("inception_v3").read_bytes() == fitted_bytes


def test_the_map_is_refit_once_the_placed_share_passes_the_threshold(tmp_path, pool):
    _, labels, _ = pool
    config = Config(artifacts_dir=tmp_path, **UPDATE_SETTINGS)
    per_blob = [np.flatnonzero(labels == b) for b in range(4)]
    for upto in (25, 28):  # 100 items fitted, then 12 placed: 12 / 112 = 11 %
        write_version(config, pool, np.concatenate([rows[:upto] for rows in per_blob]))
        run_maps(config, ["inception_v3"])
    manifest = read_manifest(config.map_path("inception_v3"))
    assert manifest["made_by"] == "update" and manifest["placed_since_fit"] == 12

    # 20 more: 32 placed since the fit of 132 items (24 %, above REFIT_PLACED_SHARE).
    write_version(config, pool, np.concatenate([rows[:33] for rows in per_blob]))
    detail = run_maps(config, ["inception_v3"]).details["inception_v3"]
    assert detail["refit"] and "placed since the fit" in detail["refit"]
    manifest = read_manifest(config.map_path("inception_v3"))
    assert manifest["made_by"] == "fit" and manifest["placed_since_fit"] == 0
    assert manifest["fit"]["rows"] == 132
    assert 12 / 112 <= maps_module.REFIT_PLACED_SHARE < 32 / 132  # the test's premise


def test_a_run_killed_between_an_update_and_its_manifest_ends_as_an_uninterrupted_one(
    tmp_path, pool, monkeypatch
):
    _, labels, _ = pool
    names = ["inception_v3", "custom_cnn"]
    first, update = versions(labels)
    done = Config(artifacts_dir=tmp_path / "done", **UPDATE_SETTINGS)
    write_version(done, pool, first)
    run_maps(done, names)
    shutil.copytree(done.artifacts_dir, tmp_path / "killed")
    killed = Config(artifacts_dir=tmp_path / "killed", **UPDATE_SETTINGS)
    for config in (done, killed):
        write_version(config, pool, update)
    run_maps(done, names)  # uninterrupted

    def kill(*args, **kwargs):
        raise Killed

    # The reference's map renamed into place, its manifest never written.
    monkeypatch.setattr(maps_module, "write_manifest", kill)
    with pytest.raises(Killed):
        run_maps(killed, names)
    monkeypatch.undo()
    monkeypatch.setattr(maps_module, "compute_map", no_fit)
    result = run_maps(killed, names)
    assert not result.details["inception_v3"]["skipped"]
    for name in names:
        assert result.details[name]["refit"] is None
        pd.testing.assert_frame_equal(read_map(killed, name), read_map(done, name))
        assert killed.map_path(name).read_bytes() == done.map_path(name).read_bytes()
    assert run_maps(killed, names).skipped


def test_largest_per_row_matches_a_full_sort_with_ties_and_masked_columns():
    rng = np.random.default_rng(3)
    sims = np.round(rng.normal(size=(6, 3000)), 1).astype(np.float32)  # many ties
    sims[:, rng.random(3000) < 0.3] = -np.inf  # rows that may not be neighbours
    sims[5, :2990] = -np.inf  # a row with only 10 finite entries
    for width in (1, 15):
        values, cols = maps_module._largest_per_row(sims, width)
        want = np.argsort(-sims, axis=1, kind="stable")[:, :width]
        np.testing.assert_array_equal(cols, want)
        np.testing.assert_array_equal(values, np.take_along_axis(sims, want, axis=1))


def test_placing_reads_the_fitted_rows_chunk_by_chunk_and_finds_the_same_neighbours(monkeypatch):
    from pipelines.search import approximate

    vectors, _ = blobs(n_clusters=5, per=40, d=24, noise=0.4)
    coords = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    new_rows = np.random.default_rng(1).choice(200, 20, replace=False)
    fitted = np.ones(200, dtype=bool)
    fitted[new_rows] = False
    monkeypatch.setattr(approximate, "CHUNK_ROWS", 7)  # 29 chunks, some holding new rows only
    got = maps_module.place_new_rows(vectors, coords, new_rows, fitted)
    want = expected_places(vectors[new_rows], vectors[fitted], coords[fitted].astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_sample_fitted_map_places_an_update_against_a_sample_of_kept_rows(monkeypatch):
    """Without its kept fit, a map above map_full_fit_max_items places an update against
    map_fit_sample kept rows (a seeded choice, so the cost follows the new rows); below it,
    against every kept row."""
    rng = np.random.default_rng(4)
    vectors = unit(rng.normal(size=(400, 8)).astype(np.float32))
    coords = rng.normal(size=(400, 2)).astype(np.float32)
    keep = np.ones(400, dtype=bool)
    keep[-10:] = False
    new_rows = np.flatnonzero(~keep)
    pools: list[int] = []
    original = maps_module.place_new_rows

    def spy(v, c, rows, fitted, k=maps_module.PLACE_NEIGHBOURS):
        pools.append(int(fitted.sum()))
        return original(v, c, rows, fitted, k)

    monkeypatch.setattr(maps_module, "place_new_rows", spy)
    large = Config(map_full_fit_max_items=300, map_fit_sample=100)
    first = maps_module._place_update(large, vectors, coords, new_rows, keep, None)
    again = maps_module._place_update(large, vectors, coords, new_rows, keep, None)
    small = maps_module._place_update(
        Config(map_full_fit_max_items=1000), vectors, coords, new_rows, keep, None
    )
    assert pools == [100, 100, 390]
    np.testing.assert_array_equal(first, again)  # the same pool every time
    assert first.shape == (10, 2) and np.all(np.isfinite(first))
    # Each new row lands among the places of the pool rows most like it, not anywhere.
    assert not np.allclose(first, small)


def test_an_update_of_a_sampled_map_places_new_items_as_its_fit_placed_them(tmp_path, pool):
    """A map fitted on a sample keeps that fit (its sample and PCA) beside it, and an update
    places new items with it, as the fit placed every row outside the sample: items taken out
    and put back land where the fit had put them, whatever else the update removes. Only
    the sample's and the new items' rows are read. A refit on every row drops the kept fit."""
    vectors, labels, ids = pool
    config = Config(
        artifacts_dir=tmp_path, **UPDATE_SETTINGS, map_full_fit_max_items=100, map_fit_sample=60
    )
    everything = np.arange(len(ids))
    write_version(config, pool, everything)
    run_maps(config, ["inception_v3"])
    fitted = read_map(config, "inception_v3").set_index("item_id")
    manifest = read_manifest(config.map_path("inception_v3"))
    assert manifest["fit"]["method"] == "umap-sample"
    with np.load(config.map_sample_path("inception_v3")) as kept_fit:
        assert str(kept_fit["fit_id"]) == manifest["fit"]["id"]
        sample_ids = set(kept_fit["item_ids"].tolist())
    assert len(sample_ids) == 60

    outside = [i for i, item in enumerate(ids) if item not in sample_ids]
    back = np.array(outside[::6])  # 12 items placed by the fit
    gone = np.array(outside[1::6][:5])  # and 5 others that leave for good
    write_version(config, pool, np.setdiff1d(everything, np.concatenate([back, gone])))
    run_maps(config, ["inception_v3"])
    write_version(config, pool, np.setdiff1d(everything, gone))
    detail = run_maps(config, ["inception_v3"]).details["inception_v3"]
    assert detail["refit"] is None and detail["placed"] == 12
    after = read_map(config, "inception_v3").set_index("item_id")
    np.testing.assert_allclose(
        after.loc[ids[back], ["x", "y"]], fitted.loc[ids[back], ["x", "y"]], atol=1e-4
    )
    kept = ids[np.setdiff1d(everything, np.concatenate([back, gone]))]
    np.testing.assert_array_equal(after.loc[kept, ["x", "y"]], fitted.loc[kept, ["x", "y"]])

    small = config.replace(map_full_fit_max_items=1000)
    run_maps(small, ["inception_v3"], force=True)
    assert not config.map_sample_path("inception_v3").exists()

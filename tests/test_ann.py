"""Approximate search: recall against exact search, self-exclusion, validation, and the switch
in `search.Index` above the catalog-size threshold."""

from __future__ import annotations

# Pinned in requirements.txt: a missing faiss fails this module (and the run), never skips it.
import faiss  # noqa: F401
import numpy as np
import pytest

from pipelines.artifacts import read_manifest, write_manifest
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.readers import load_index
from pipelines.search import approximate
from pipelines.search.ann import run_ann
from pipelines.search.approximate import AnnIndex
from pipelines.search.index import Index
from pipelines.search.topk import top_k
from tests.conftest import write_vector_artifacts


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int, clusters: int = 40, spread: float = 0.8, seed: int = 0):
    """n unit vectors around `clusters` centres, noise norm ~ spread x the centre's.

    Centres and noise have a decaying spectrum (a few strong directions), as real embeddings
    do; isotropic noise in hundreds of dims has no neighbourhood structure to find."""
    rng = np.random.default_rng(seed)
    scales = np.arange(1, d + 1) ** -0.5
    centres = unit(rng.normal(size=(clusters, d)) * scales)
    noise = unit(rng.normal(size=(n, d)) * scales) * spread
    return unit(centres[rng.integers(0, clusters, n)] + noise)


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


@pytest.mark.parametrize(("d", "pca"), [(64, False), (512, True)])
def test_recall_at_10_against_exact_search(d, pca):
    vectors = clustered(4000 + 100, d)
    catalog, queries = vectors[:4000], vectors[4000:]  # held-out queries, same distribution
    index = AnnIndex.build(catalog)
    assert (index.reduced_dim < d) is pca  # wide vectors are PCA-reduced, then re-ranked

    rows, sims = index.search(queries, 10)
    truth, exact_sims = top_k(queries, catalog, 10, None)
    assert rows.shape == sims.shape == (100, 10) and rows.dtype == np.int64
    assert recall_at_10(rows, truth) >= 0.95
    assert np.all(np.diff(sims, axis=1) <= 0)  # best first
    # Similarities are the exact cosines of the rows returned.
    np.testing.assert_allclose(sims, np.einsum("md,mkd->mk", queries, catalog[rows]), atol=1e-5)


def test_a_catalog_item_never_returns_itself():
    vectors = clustered(2000, 32)
    index = AnnIndex.build(vectors)
    queries = np.arange(0, 2000, 50)
    rows, _ = index.search(vectors[queries], 10, exclude_rows=queries)
    assert not (rows == queries[:, None]).any()
    assert (rows >= 0).all()  # the extra candidate fetched makes up for the excluded one
    # Without exclusion the item is its own best match.
    rows, sims = index.search(vectors[queries], 10)
    np.testing.assert_array_equal(rows[:, 0], queries)
    np.testing.assert_allclose(sims[:, 0], 1.0, rtol=1e-5)


@pytest.fixture(scope="module")
def small() -> AnnIndex:
    return AnnIndex.build(clustered(500, 16))


@pytest.mark.parametrize("k", [0, 501, 2.0, True])
def test_bad_k_is_rejected(small, k):
    with pytest.raises(LookalikeError, match=f"k must be between 1 and 500, got {k}"):
        small.search(np.ones(16, dtype=np.float32), k)


def test_wrong_dimension_is_rejected(small):
    with pytest.raises(
        LookalikeError, match="query vectors have 15 dims; the approximate index has 16"
    ):
        small.search(np.ones(15, dtype=np.float32), 3)


def test_zero_query_is_rejected(small):
    with pytest.raises(LookalikeError, match="zero or non-finite length"):
        small.search(np.zeros(16, dtype=np.float32), 3)


def test_exclude_rows_must_match_the_queries(small):
    with pytest.raises(LookalikeError, match=r"exclude_rows needs one row per query \(2\), got 1"):
        small.search(np.ones((2, 16), dtype=np.float32), 3, exclude_rows=[0])


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(LookalikeError, match="unknown ANN method 'lsh'; valid: ivf, hnsw"):
        AnnIndex.build(clustered(100, 8), method="lsh")


def test_hnsw_method_also_finds_neighbours():
    vectors = clustered(1000 + 50, 32)
    index = AnnIndex.build(vectors[:1000], method="hnsw")
    rows, _ = index.search(vectors[1000:], 10)
    assert recall_at_10(rows, top_k(vectors[1000:], vectors[:1000], 10, None)[0]) >= 0.95


# --- search.Index switches to the approximate index above its threshold ---
def test_index_uses_ann_from_the_threshold_and_keeps_its_conventions():
    vectors = clustered(3000, 48)
    ids = [f"item{i}" for i in range(3000)]
    exact = Index(vectors, ids, ann_min_items=10**9)
    approx = Index(vectors, ids, ann_min_items=3000)  # forced: the catalog is at the threshold
    assert not exact.approximate and approx.approximate
    assert approx._ann is None  # built lazily, on the first search

    queries = np.arange(0, 3000, 30)
    want_rows, want_sims = exact.search_rows(vectors[queries], 10, exclude_rows=queries)
    rows, sims = approx.search_rows(vectors[queries], 10, exclude_rows=queries)
    assert isinstance(approx._ann, AnnIndex)
    assert rows.shape == (100, 10) and rows.dtype == np.int64 and sims.dtype == np.float32
    assert not (rows == queries[:, None]).any()  # exclude-self, as in exact search
    assert recall_at_10(rows, want_rows) >= 0.95
    same = rows == want_rows  # where both found the same row, the similarity is the same
    np.testing.assert_allclose(sims[same], want_sims[same], rtol=1e-5)

    (result,) = approx.search(vectors[7] * 3.0, 5, exclude_rows=[7])  # one unnormalised query
    assert len(result.rows) == 5 and 7 not in result.rows
    assert list(result.item_ids) == [ids[r] for r in result.rows]
    # A subset (an evaluation gallery) keeps the threshold.
    assert approx.subset(np.arange(100)).ann_min_items == 3000


def test_index_below_the_threshold_stays_exact():
    vectors = clustered(200, 16)
    index = Index(vectors, [str(i) for i in range(200)])
    assert not index.approximate  # the default threshold is far above 200 items
    index.search(vectors[0], 5)
    assert index._ann is None


def test_negative_threshold_is_rejected():
    with pytest.raises(LookalikeError, match="ann_min_items must be >= 0, got -1"):
        Index(clustered(10, 4), [str(i) for i in range(10)], ann_min_items=-1)


# --- large catalogs: memory-mapped (float16 or float32) vectors, pools, a saved index ---


def mapped(tmp_path, vectors: np.ndarray, dtype: str = "float16") -> np.memmap:
    """`vectors` saved as a .npy of `dtype` and opened as the app opens a large catalog's."""
    path = tmp_path / f"vectors_{dtype}.npy"
    np.save(path, vectors.astype(dtype))
    return np.load(path, mmap_mode="r")


def test_take_rows_of_a_mapped_file_are_the_rows(tmp_path):
    vectors = clustered(300, 48)
    mm = mapped(tmp_path, vectors, "float32")
    rows = np.array([299, 0, 17, 17, 150])  # any order, repeats kept
    np.testing.assert_array_equal(approximate.take_rows(mm, rows), vectors[rows])
    blocks = list(approximate.iter_chunks(mm, rows=128))
    assert [len(b) for b in blocks] == [128, 128, 44]
    np.testing.assert_array_equal(np.concatenate(blocks), vectors)


def test_ann_over_memmapped_float16_finds_the_exact_top_10(tmp_path):
    vectors = clustered(4000 + 100, 512)
    catalog, queries = vectors[:4000], vectors[4000:]
    mm = mapped(tmp_path, catalog, "float16")
    index = AnnIndex.build(mm)
    assert index.reduced_dim < 512 and index._vectors is mm  # re-ranked from the file itself
    rows, sims = index.search(queries, 10)
    truth, _ = top_k(queries, catalog, 10, None)
    assert recall_at_10(rows, truth) >= 0.95
    # Re-ranked with the float16 rows: cosines within float16 rounding of the float32 ones.
    np.testing.assert_allclose(sims, np.einsum("md,mkd->mk", queries, catalog[rows]), atol=2e-3)


def test_a_saved_index_searches_like_the_one_it_was_saved_from(tmp_path):
    vectors = clustered(2000, 256)
    mm = mapped(tmp_path, vectors, "float32")
    built = AnnIndex.build(mm)
    np.savez(tmp_path / "ann.npz", **built.to_arrays())
    with np.load(tmp_path / "ann.npz", allow_pickle=False) as arrays:
        loaded = AnnIndex.from_arrays(arrays, mm)
        with pytest.raises(LookalikeError, match="covers 2000 x 256 vectors, not 10 x 256"):
            AnnIndex.from_arrays(arrays, vectors[:10])
    queries = vectors[::50]
    for got, want in zip(loaded.search(queries, 10), built.search(queries, 10), strict=True):
        np.testing.assert_array_equal(got, want)
    assert (loaded.nprobe, loaded.reduced_dim) == (built.nprobe, built.reduced_dim)


@pytest.mark.parametrize("d", [64, 256])  # searched as saved, and PCA-reduced then re-ranked
def test_lists_saved_on_their_own_are_memory_mapped_and_search_the_same(tmp_path, d):
    vectors = clustered(3000, d)
    built = AnnIndex.build(vectors)
    arrays = built.to_arrays(with_lists=False)
    assert "faiss" not in arrays
    built.write_lists(tmp_path / "lists.faiss")
    loaded = AnnIndex.from_arrays(arrays, vectors, tmp_path / "lists.faiss")
    lists = faiss.extract_index_ivf(loaded._index).invlists
    # Read through the mapping (faiss's on-disk lists, read-only), not copied into memory.
    assert type(faiss.downcast_InvertedLists(lists)).__name__ == "OnDiskInvertedLists"
    queries = vectors[::40]
    for got, want in zip(loaded.search(queries, 10), built.search(queries, 10), strict=True):
        np.testing.assert_array_equal(got, want)
    # Its lists are the built index's lists, and an update reads them whole (it changes them).
    assert [r.tolist() for r, _ in loaded.inverted_lists()] == [
        r.tolist() for r, _ in built.inverted_lists()
    ]
    grown = AnnIndex.updated(
        arrays,
        np.concatenate([vectors, clustered(30, d, seed=3)]),
        lists_file=tmp_path / "lists.faiss",
    )
    assert grown.size == 3030
    with pytest.raises(LookalikeError, match="no lists beside it"):
        AnnIndex.from_arrays(arrays, vectors)


def test_index_uses_a_memmap_in_place_and_searches_pools_within_their_members(tmp_path):
    vectors = clustered(3000, 256)
    mm = mapped(tmp_path, vectors, "float32")
    # Pools as k-means leaves them: each row's nearest of 6 centroids.
    centroids = unit(np.stack([vectors[i * 500 : i * 500 + 9].mean(axis=0) for i in range(6)]))
    clusters = np.argmax(vectors @ centroids.T, axis=1)
    index = Index(
        mm, np.arange(3000).astype(str), clusters=clusters, centroids=centroids, ann_min_items=0
    )
    assert isinstance(index.vectors, np.memmap) and np.shares_memory(index.vectors, mm)
    assert all(matrix is None for _, matrix in index._cluster_pools.values())  # no copies
    np.testing.assert_array_equal(index.row_vectors([5, 2999, 5]), vectors[[5, 2999, 5]])
    np.testing.assert_array_equal(index.row_vectors(7), vectors[7])

    queries = np.arange(0, 3000, 37)
    rows, sims = index.search_rows(vectors[queries], 10, "exact", exclude_rows=queries)
    truth, _ = top_k(vectors[queries], vectors, 10, queries)
    assert recall_at_10(rows, truth) >= 0.95

    rows, sims = index.search_rows(
        vectors[queries], 10, "cluster", exclude_rows=queries, query_clusters=clusters[queries]
    )
    assert (clusters[rows] == clusters[queries][:, None]).all()  # only the query's cluster
    assert not (rows == queries[:, None]).any()
    # The same pool searched exactly: the approximate pool search finds its top 10.
    small = Index(vectors, np.arange(3000).astype(str), clusters=clusters, centroids=centroids)
    exact, _ = small.search_rows(
        vectors[queries], 10, "cluster", exclude_rows=queries, query_clusters=clusters[queries]
    )
    assert recall_at_10(rows, exact) >= 0.95


def test_index_refuses_a_memmap_that_is_not_unit_length(tmp_path):
    mm = mapped(tmp_path, clustered(200, 16) * 3.0, "float32")
    with pytest.raises(LookalikeError, match="must be unit length .* rebuild the embeddings"):
        Index(mm, np.arange(200).astype(str), name="inception_v3")


def test_a_large_catalog_is_memory_mapped_and_uses_its_saved_index(tmp_path, monkeypatch):
    monkeypatch.setattr(approximate, "ANN_MIN_ITEMS", 500)  # "large" from 500 items in this test
    config = Config(artifacts_dir=tmp_path)
    vectors = clustered(1200, 256)
    write_vector_artifacts(config, {"inception_v3": vectors})
    index = load_index(config, "inception_v3")
    assert isinstance(index.vectors, np.memmap) and index.approximate
    assert index._ann is None  # nothing saved yet: built in memory on first use

    result = run_ann(config, ["inception_v3"])
    assert not result.details["inception_v3"]["skipped"]
    embeddings = read_manifest(config.embeddings_path("inception_v3"))
    saved = read_manifest(config.ann_index_path("inception_v3"))
    assert saved["inputs"] == {"embeddings/inception_v3": embeddings["sha256"]}
    assert run_ann(config, ["inception_v3"]).skipped  # unchanged inputs: nothing to do

    index = load_index(config, "inception_v3")
    assert index._ann is not None and index._ann.size == 1200  # the saved one, attached
    queries = np.arange(0, 1200, 30)
    rows, _ = index.search_rows(vectors[queries], 10, exclude_rows=queries)
    truth, _ = top_k(vectors[queries], vectors, 10, queries)
    assert recall_at_10(rows, truth) >= 0.95

    # Its lists come from the file beside it, and only with the index they were written with.
    lists = config.ann_lists_path("inception_v3")
    assert (
        read_manifest(lists)["sha256"]
        == read_manifest(config.ann_index_path("inception_v3"))[approximate.LISTS_SHA_KEY]
    )
    other = AnnIndex.build(clustered(1200, 256, seed=2))
    other.write_lists(lists)  # another write's lists, under a manifest of their own
    write_manifest(lists, approximate.SAVED_STAGE, approximate.saved_params(), saved["inputs"])
    assert load_index(config, "inception_v3")._ann is None  # not paired: built in memory
    assert not run_ann(config, ["inception_v3"]).skipped  # and the stage writes the pair again
    assert load_index(config, "inception_v3")._ann is not None

    # New embeddings make the saved index stale: it is not used for them.
    write_vector_artifacts(config, {"inception_v3": clustered(1200, 256, seed=1)})
    assert load_index(config, "inception_v3")._ann is None


def test_a_refilled_index_is_the_saved_one_with_the_new_rows(tmp_path):
    """Refilling keeps the trained parts: with the same rows it searches exactly as the index
    it was saved from; with rows added it finds them."""
    more = clustered(2100, 256)  # 100 new rows from the same catalog
    vectors = more[:2000]
    built = AnnIndex.build(vectors)
    arrays = built.to_arrays()
    same = AnnIndex.updated(arrays, vectors)
    queries = vectors[::50]
    for got, want in zip(same.search(queries, 10), built.search(queries, 10), strict=True):
        np.testing.assert_array_equal(got, want)
    grown = AnnIndex.updated(arrays, more)
    assert grown.size == 2100 and grown.nprobe == built.nprobe
    new = np.arange(2000, 2100, 5)
    rows, _ = grown.search(more[new], 10, exclude_rows=new)
    truth, _ = top_k(more[new], more, 10, new)
    assert recall_at_10(rows, truth) >= 0.9
    with pytest.raises(LookalikeError, match="256-d, the vectors 64-d"):
        AnnIndex.updated(arrays, clustered(10, 64))


def test_an_update_in_place_searches_as_a_refill_of_the_same_rows():
    """Removing 150 rows, moving the kept ones to other rows and adding 100 new ones in place
    (only the new rows projected) gives the index a refill of the updated catalog gives: the
    same rows and similarities for every query."""
    rng = np.random.default_rng(3)
    pool = clustered(2100, 256)
    old = pool[:2000]
    built = AnnIndex.build(old)
    arrays = built.to_arrays()
    kept = np.sort(rng.choice(2000, 1850, replace=False))
    rng.shuffle(kept)  # the updated catalog lists the kept items in another order
    source = np.concatenate([kept, np.full(100, -1)])
    rng.shuffle(source)
    fresh = iter(range(2000, 2100))
    vectors = np.stack([pool[s] if s >= 0 else pool[next(fresh)] for s in source])

    moved = AnnIndex.updated(arrays, vectors, source)
    refill = AnnIndex.updated(arrays, vectors)
    assert moved.size == refill.size == 1950
    queries = np.arange(0, 1950, 13)
    for got, want in zip(
        moved.search(vectors[queries], 10, exclude_rows=queries),
        refill.search(vectors[queries], 10, exclude_rows=queries),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    rows, _ = moved.search(vectors[queries], 10, exclude_rows=queries)
    truth, _ = top_k(vectors[queries], vectors, 10, queries)
    assert recall_at_10(rows, truth) >= 0.9
    with pytest.raises(LookalikeError, match="row in the saved index"):
        AnnIndex.updated(arrays, vectors, source[:-1])


def test_an_update_refills_the_saved_index_until_the_catalog_moved_or_the_model_changed(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(approximate, "ANN_MIN_ITEMS", 500)
    config = Config(artifacts_dir=tmp_path)
    vectors = clustered(1300, 256)

    def update(n: int, weights: str) -> dict:
        write_vector_artifacts(config, {"inception_v3": vectors[:n]}, weights=weights)
        part = run_ann(config, ["inception_v3"]).details["inception_v3"]
        manifest = read_manifest(config.ann_index_path("inception_v3"))
        return {"refilled": part["refilled"], "trained": manifest["trained_rows"]}

    assert update(1000, "m1") == {"refilled": False, "trained": 1000}
    assert update(1150, "m1") == {"refilled": True, "trained": 1000}  # 15 % more rows
    assert update(1000, "m2") == {"refilled": False, "trained": 1000}  # another model
    assert update(1250, "m2") == {"refilled": False, "trained": 1250}  # 25 % more: retrained
    index = load_index(config, "inception_v3")
    assert index._ann is not None and index._ann.size == 1250


def test_a_small_update_leaves_the_saved_index_and_writes_a_delta_readers_apply(
    tmp_path, monkeypatch
):
    """An update of up to ann.DELTA_MAX_SHARE of the rows leaves the saved file's bytes as they
    are and writes each row's row in it beside it; the index readers get from the two searches
    as the rewritten file of the same update does (rows and similarities). Past the share the
    file is rewritten and the delta dropped; a delta without its manifest (a kill between its
    rename and its manifest) is never read, and the next run writes it again."""
    import hashlib

    from pipelines.search import ann

    monkeypatch.setattr(approximate, "ANN_MIN_ITEMS", 500)
    rng = np.random.default_rng(5)
    pool = clustered(1200, 256)
    ids = np.array([f"{i:016x}" for i in range(1200)])

    def write(config: Config, rows: np.ndarray) -> None:
        write_vector_artifacts(config, {"inception_v3": pool[rows]}, item_ids=ids[rows])

    config, rewrite = Config(artifacts_dir=tmp_path / "a"), Config(artifacts_dir=tmp_path / "b")
    base_rows = np.arange(1000)
    for cfg in (config, rewrite):
        write(cfg, base_rows)
        run_ann(cfg, ["inception_v3"])
    path, delta = config.ann_index_path("inception_v3"), config.ann_delta_path("inception_v3")
    saved = hashlib.sha256(path.read_bytes()).hexdigest()
    # 20 removed, 25 added, the kept ones in another order: 4.5 % of the rows changed.
    kept = rng.permutation(np.sort(rng.choice(1000, 980, replace=False)))
    updated = rng.permutation(np.concatenate([kept, np.arange(1000, 1025)]))
    write(config, updated)
    part = run_ann(config, ["inception_v3"]).details["inception_v3"]
    assert part["delta"] and delta.exists()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == saved
    assert run_ann(config, ["inception_v3"]).skipped  # the delta is current: nothing to do

    share = ann.DELTA_MAX_SHARE
    monkeypatch.setattr(ann, "DELTA_MAX_SHARE", 0.0)  # the same update, the file rewritten
    write(rewrite, updated)
    assert not run_ann(rewrite, ["inception_v3"]).details["inception_v3"]["delta"]
    monkeypatch.setattr(ann, "DELTA_MAX_SHARE", share)
    assert not rewrite.ann_delta_path("inception_v3").exists()
    got, want = load_index(config, "inception_v3"), load_index(rewrite, "inception_v3")
    assert got._ann is not None and got._ann.size == len(updated)
    queries = np.arange(0, len(updated), 17)
    for a, b in zip(
        got.search_rows(pool[updated[queries]], 10, exclude_rows=queries),
        want.search_rows(pool[updated[queries]], 10, exclude_rows=queries),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)

    # A delta whose manifest was not written is not read; the next run writes it again.
    from pipelines.artifacts import manifest_path

    manifest_path(delta).unlink()
    assert load_index(config, "inception_v3")._ann is None
    assert run_ann(config, ["inception_v3"]).details["inception_v3"]["delta"]
    assert load_index(config, "inception_v3")._ann is not None

    write(config, np.arange(1100))  # 10 % more than the saved file: rewritten, delta dropped
    assert not run_ann(config, ["inception_v3"]).details["inception_v3"]["delta"]
    assert not delta.exists() and hashlib.sha256(path.read_bytes()).hexdigest() != saved
    assert load_index(config, "inception_v3")._ann.size == 1100

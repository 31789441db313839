"""The pixel cache: rows equal `load_array`, stale on any input change, streamed by the embed
stage instead of decoding, filled by the train stage, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import artifacts
from pipelines.config import Config
from pipelines.data import pixel_cache
from pipelines.data.catalog import bbox_of, load_catalog, run_catalog
from pipelines.data.images import load_array
from pipelines.embedding.embed import pixel_stream
from pipelines.errors import LookalikeError
from tests.conftest import copy_subset

SIZE = 32


@pytest.fixture
def small(tmp_path: Path) -> Config:
    """A 12-photo real catalog (2 classes x 3 splits), cache size 32 px."""
    source = copy_subset(tmp_path / "src", {"dress": 2, "hat": 2})
    config = Config(
        artifacts_dir=tmp_path / "art", source=source, batch_size=4, cnn_image_size=SIZE
    )
    run_catalog(config, progress=False)
    return config


def _decoded(config: Config, rows: list[int]) -> np.ndarray:
    """The model input of each row, decoded independently of the cache."""
    catalog = load_catalog(config)
    return np.stack(
        [
            load_array(catalog.iloc[i]["path"], SIZE, bbox=bbox_of(catalog.iloc[i]),
                       max_pixels=config.max_pixels)
            for i in rows
        ]
    )  # fmt: skip


def test_rows_equal_load_array_and_the_cache_is_memory_mapped(small: Config) -> None:
    catalog = load_catalog(small)
    built = pixel_cache.build_cache(small, catalog, SIZE)
    path = small.pixel_cache_path(SIZE)
    assert built.path == path == small.artifacts_dir / "cache" / f"pixels_{SIZE}.npy"
    assert built.ok.all() and built.skipped == []

    opened = pixel_cache.open_cache(small, catalog, SIZE)
    assert opened is not None and isinstance(opened.pixels, np.memmap)
    assert opened.pixels.shape == (len(catalog), SIZE, SIZE, 3) and opened.pixels.dtype == np.uint8
    np.testing.assert_array_equal(opened.pixels, _decoded(small, list(range(len(catalog)))))
    assert path.stat().st_size - len(catalog) * pixel_cache.bytes_per_item(SIZE) < 256  # header
    manifest = artifacts.read_manifest(path)
    assert manifest["stage"] == pixel_cache.STAGE and manifest["failed_rows"] == []
    assert manifest["params"] == {
        "size": SIZE,
        "max_pixels": small.max_pixels,
        "version": pixel_cache.CACHE_VERSION,
    }
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]


def test_stream_from_the_cache_equals_decoding(small: Config) -> None:
    catalog = load_catalog(small)
    rows = np.array([7, 1, 2, 3, 10, 0])  # out of order and across batch boundaries
    decoded = list(pixel_stream(catalog, rows, SIZE, small))  # no cache yet: tf.data decode
    pixel_cache.build_cache(small, catalog, SIZE)
    cached = list(pixel_stream(catalog, rows, SIZE, small))
    assert [len(b) for _, b in cached] == [4, 2]
    for (i_dec, p_dec), (i_cache, p_cache) in zip(decoded, cached, strict=True):
        np.testing.assert_array_equal(i_dec, i_cache)
        np.testing.assert_array_equal(p_dec, p_cache)
    np.testing.assert_array_equal(np.concatenate([b for _, b in cached]), _decoded(small, rows))


def test_a_matching_cache_is_read_not_rebuilt(small: Config, monkeypatch) -> None:
    catalog = load_catalog(small)
    pixel_cache.catalog_pixels(small, catalog, SIZE)
    path = small.pixel_cache_path(SIZE)
    written = path.stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache matches")

    monkeypatch.setattr("pipelines.models.train_data.decode_catalog", no_decoding)
    monkeypatch.setattr("pipelines.embedding.embed.load_array", no_decoding)
    again = pixel_cache.catalog_pixels(small, catalog, SIZE)
    assert isinstance(again.pixels, np.memmap) and path.stat().st_mtime_ns == written
    assert sum(len(b) for _, b in pixel_stream(catalog, np.arange(len(catalog)), SIZE, small))


def test_any_input_change_makes_the_cache_stale(small: Config, tmp_path: Path) -> None:
    catalog = load_catalog(small)
    pixel_cache.build_cache(small, catalog, SIZE)
    assert pixel_cache.open_cache(small, catalog, SIZE) is not None
    assert pixel_cache.open_cache(small.replace(max_pixels=1_000_000), catalog, SIZE) is None
    assert pixel_cache.open_cache(small, catalog, 48) is None  # another size, another file
    swapped = catalog.copy()
    swapped["path"] = swapped["path"].iloc[::-1].to_numpy()
    assert pixel_cache.open_cache(small, swapped, SIZE) is None
    # A rebuilt catalog (new hash) with other photos.
    other = copy_subset(tmp_path / "other", {"shoes": 2, "hat": 2})
    run_catalog(small.replace(source=other), progress=False)
    assert pixel_cache.open_cache(small, load_catalog(small), SIZE) is None
    # A cache file replaced by hand (other size on disk) is stale too.
    pixel_cache.build_cache(small, load_catalog(small), SIZE)
    np.save(small.pixel_cache_path(SIZE), np.zeros((1, SIZE, SIZE, 3), np.uint8))
    assert pixel_cache.open_cache(small, load_catalog(small), SIZE) is None


def test_a_photo_that_fails_is_zeros_reported_and_refused_by_the_stream(small: Config) -> None:
    catalog = load_catalog(small)
    broken = 5
    Path(catalog.iloc[broken]["path"]).write_bytes(b"not a jpeg")
    built = pixel_cache.build_cache(small, catalog, SIZE)
    assert built.ok.tolist() == [i != broken for i in range(len(catalog))]
    assert built.skipped[0][0] == catalog.iloc[broken]["path"]
    opened = pixel_cache.open_cache(small, catalog, SIZE)
    assert opened is not None and not opened.pixels[broken].any()
    assert artifacts.read_manifest(opened.path)["failed_rows"] == [broken]
    assert sum(len(b) for _, b in pixel_stream(catalog, np.arange(4), SIZE, small)) == 4
    with pytest.raises(LookalikeError, match=rf"1 catalog file.*{Path(built.skipped[0][0]).name}"):
        list(pixel_stream(catalog, np.arange(4, 8), SIZE, small))


def test_an_interrupted_write_leaves_no_cache(small: Config, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        pixel_cache.build_cache(small, load_catalog(small), SIZE)
    folder = small.pixel_cache_path(SIZE).parent
    assert list(folder.iterdir()) == []


def test_without_a_catalog_manifest_nothing_is_written(small: Config) -> None:
    catalog = load_catalog(small)
    artifacts.manifest_path(small.catalog_path).unlink()
    built = pixel_cache.catalog_pixels(small, catalog, SIZE)
    assert built.path is None and built.pixels.shape == (len(catalog), SIZE, SIZE, 3)
    assert not small.pixel_cache_path(SIZE).exists()


@pytest.mark.slow
def test_train_fills_the_cache_and_embed_reads_it(small: Config, monkeypatch) -> None:
    from pipelines.embedding.embed import run_embed
    from pipelines.models.extractors import get_extractor
    from pipelines.models.train import run_train

    config = small.replace(cnn_epochs=1, cnn_patience=1)
    run_train(config)
    catalog = load_catalog(config)
    opened = pixel_cache.open_cache(config, catalog, SIZE)
    assert opened is not None  # every row, test split included, for the embed stage
    np.testing.assert_array_equal(opened.pixels, _decoded(config, list(range(len(catalog)))))

    def no_decoding(*args, **kwargs):
        raise AssertionError("the embed stage decoded although the cache matches")

    monkeypatch.setattr("pipelines.embedding.embed.load_array", no_decoding)
    run_embed(config, "custom_cnn", progress=False)
    emb = np.load(config.embeddings_path("custom_cnn"))
    expected = get_extractor("custom_cnn", config).embed_arrays(np.asarray(opened.pixels))
    np.testing.assert_allclose(emb, expected, atol=1e-5)

"""Shared fixtures: where the real photos are, and small real subsets of them."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.artifacts import write_manifest, write_npy, write_parquet
from pipelines.config import DEFAULT_SOURCE, Config

# Playwright's wait for a page to answer in the browser tests (reruns on 2 busy cores).
BROWSER_TIMEOUT_MS = 60_000
CLOTHING = DEFAULT_SOURCE
# Classes of the small real catalog the `built` fixture runs the whole pipeline on.
SMALL_LABELS = ["dress", "hat", "pants", "shoes"]


def encode(img: Image.Image, fmt: str, **params: int) -> bytes:
    """`img` saved as `fmt` in memory (`params`, such as quality, go to the encoder). HEIF
    (what iPhones save) is written by pillow-heif's encoder directly, not through Pillow's
    plugin table: the product only decodes HEIC, with pi-heif, and the tests must exercise
    that decoder, not the encoder's own opener."""
    buf = io.BytesIO()
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.from_pillow(img).save(buf, format="HEIF", **params)
    else:
        img.save(buf, format=fmt, **params)
    return buf.getvalue()


def real_photos(label: str, n: int, split: str = "train") -> list[Path]:
    """The first `n` real photos of one class and split of clothing-small, sorted by name."""
    folder = CLOTHING / split / label
    if not folder.is_dir():
        pytest.fail(
            f"the shared dataset is missing: {folder} (tests need ../shared beside the repo)"
        )
    return sorted(folder.glob("*.jpg"))[:n]


def copy_subset(
    dest: Path, per_class: dict[str, int], splits=("train", "validation", "test")
) -> Path:
    """Copy a few real photos per class and split into dest/<split>/<label>/ (a folder catalog)."""
    for split in splits:
        for label, n in per_class.items():
            target = dest / split / label
            target.mkdir(parents=True, exist_ok=True)
            for photo in real_photos(label, n, split):
                shutil.copy(photo, target / photo.name)
    return dest


@pytest.fixture
def artifacts_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh artifacts folder, also set as $LOOKALIKE_ARTIFACTS for subprocesses."""
    path = tmp_path / "artifacts"
    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(path))
    return path


def unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32."""
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def blobs(
    sizes: tuple[int, ...] = (10, 10, 10, 10), d: int = 32, noise: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in well-separated groups of the given sizes; returns (vectors, labels)."""
    rng = np.random.default_rng(seed)
    centers = unit(rng.normal(size=(len(sizes), d)))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return unit(centers[labels] + noise * rng.normal(size=(len(labels), d))), labels


def write_vector_artifacts(
    config: Config,
    embeddings: dict[str, np.ndarray],
    labels=None,
    splits=None,
    item_ids=None,
    weights: str | None = None,
) -> pd.DataFrame:
    """A catalog of n fake items (item000, ...) and the given (n, d) embeddings per extractor,
    each with a manifest, as the catalog and embed stages would leave them. `labels` and
    `splits` default to missing values; `item_ids` to item000, item001, ...; `weights` (the
    id of the model that made the vectors, recorded as the embed stage does) to none.
    Returns the catalog."""
    n = len(next(iter(embeddings.values())))
    catalog = pd.DataFrame(
        {
            "item_id": [f"item{i:03d}" for i in range(n)] if item_ids is None else list(item_ids),
            "path": [f"img/{i}.jpg" for i in range(n)],
            "label": pd.Series([None] * n if labels is None else list(labels), dtype=object),
            "split": pd.Series([None] * n if splits is None else list(splits), dtype=object),
            "width": 64,
            "height": 64,
        }
    )
    write_parquet(catalog, config.catalog_path)
    write_manifest(config.catalog_path, "catalog", {}, {})
    for name, vectors in embeddings.items():
        write_npy(np.asarray(vectors, dtype=np.float32), config.embeddings_path(name))
        inputs = {} if weights is None else {"weights": weights}
        write_manifest(config.embeddings_path(name), "embed", {}, inputs)
    return catalog


def build_small_pipeline(root: Path, labels: list[str]) -> Config:
    """The whole pipeline (`run_all`) on 3 real photos per label and split, with small settings
    that keep it to about a minute on 2 cores: a 32 px custom CNN trained for 2 epochs,
    4 clusters, 5-neighbour maps. Returns the config whose artifacts it built."""
    from pipelines.run import run_all

    source = copy_subset(root / "src", {label: 3 for label in labels})
    config = Config(
        artifacts_dir=root / "artifacts",
        source=source,
        batch_size=8,
        chunk_size=16,
        cnn_image_size=32,
        cnn_epochs=2,
        cnn_patience=1,
        n_clusters=4,
        map_neighbors=5,
    )
    run_all(config)
    return config


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Artifacts of the whole pipeline on 36 real photos (dress, hat, pants, shoes: 3 per
    split), built once per session and shared by the app and browser tests (read only)."""
    return build_small_pipeline(tmp_path_factory.mktemp("pipeline"), SMALL_LABELS)


def copy_build(built: Config, root: Path) -> Config:
    """The `built` artifacts and their source photos copied under `root` (root/artifacts,
    root/src; file times kept, so the catalog stage knows every photo), and the config that
    updates the copy: change root/src, then `run_all` it."""
    shutil.copytree(built.artifacts_dir, root / "artifacts")
    shutil.copytree(built.source, root / "src")
    return built.replace(artifacts_dir=root / "artifacts", source=root / "src")


def remove_last_photos(config: Config, built: Config, drop: int) -> list[str]:
    """Delete the photos of the catalog's last `drop` items from a `copy_build` copy's source
    (as a shop removes sold-out products), before its catalog is updated; their item ids."""
    gone = pd.read_parquet(config.catalog_path).iloc[-drop:]
    for path in gone["path"]:
        (config.source / Path(path).relative_to(built.source)).unlink()
    return gone["item_id"].astype(str).tolist()


@pytest.fixture
def clear_caches() -> Iterator[None]:
    """Each AppTest starts with empty Streamlit caches, and leaves none behind."""
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Debian Chromium, one for the whole session: Playwright's sync API runs one
    event loop per thread, so every browser test module shares this one (a second
    `sync_playwright()` beside it fails). `launch` (not a persistent context) gives the run a
    fresh temporary profile, which Playwright deletes when the browser closes."""
    from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, require_browser

    require_browser()
    from playwright.sync_api import expect, sync_playwright

    # Rerun-driven pages need more than Playwright's default 5 s per assertion.
    expect.set_options(timeout=BROWSER_TIMEOUT_MS)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()

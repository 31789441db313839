"""Catalog health: near-duplicate pairs are complete above their floor, planted problems are
found (a re-encoded, cropped copy; a wrong label; an odd one out), on vectors and real photos."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.config import Config
from pipelines.quality.health import run_health
from pipelines.quality.health_lists import (
    knn,
    likely_mislabelled,
    near_duplicate_pairs,
    outlier_scores,
)
from tests.conftest import blobs, copy_subset, real_photos, unit


def brute_force_pairs(vectors: np.ndarray, floor: float) -> set[tuple[int, int]]:
    """Every pair a < b with similarity >= floor, from the full float64 matrix."""
    x = vectors.astype(np.float64)
    sims = x @ x.T
    a, b = np.nonzero(np.triu(sims >= floor, k=1))
    return set(zip(a.tolist(), b.tolist(), strict=True))


@pytest.mark.parametrize("block_rows", [7, 1024])
def test_near_duplicates_are_every_pair_above_the_threshold(block_rows: int) -> None:
    vectors, _ = blobs((30, 30, 30), d=16, noise=0.3, seed=1)
    pairs = near_duplicate_pairs(vectors, 0.8, max_pairs=10**6, block_rows=block_rows)
    found = {tuple(r) for r in pairs.rows.tolist()}
    # A margin of float32 rounding either side of the threshold.
    assert brute_force_pairs(vectors, 0.8 + 1e-5) <= found <= brute_force_pairs(vectors, 0.8 - 1e-5)
    assert pairs.floor == pytest.approx(0.8)
    assert np.all(np.diff(pairs.similarities) <= 0)  # most similar first
    assert all(a < b for a, b in found)


def test_a_pair_cap_raises_the_floor_and_the_list_stays_complete_above_it() -> None:
    vectors, _ = blobs((40, 40), d=8, noise=0.4, seed=2)
    uncapped = near_duplicate_pairs(vectors, 0.0, max_pairs=10**6)
    capped = near_duplicate_pairs(vectors, 0.0, max_pairs=50, block_rows=9)
    assert capped.floor > 0.0
    assert 50 <= len(capped.similarities) < len(uncapped.similarities)
    found = {tuple(r) for r in capped.rows.tolist()}
    assert brute_force_pairs(vectors, capped.floor + 1e-5) <= found
    assert capped.similarities.min() >= capped.floor


def test_a_flipped_label_ranks_first_and_an_odd_vector_is_the_top_outlier() -> None:
    vectors, groups = blobs((12, 12, 12), d=16, noise=0.2, seed=3)
    odd = unit(np.random.default_rng(9).normal(size=(1, 16)))
    vectors = np.vstack([vectors, odd])
    labels = [f"class{g}" for g in groups] + ["class0"]
    labels[5] = "class2"  # planted: a class0 item labelled class2
    rows, sims = knn(vectors, 5)
    assert rows.shape == (len(vectors), 5)
    assert not np.any(rows == np.arange(len(vectors))[:, None])  # never itself
    table = likely_mislabelled(labels, rows, sims)
    assert table["row"].iloc[0] == 5
    assert table["suggested"].iloc[0] == "class0"
    assert table["evidence"].iloc[0] > 0.5
    assert int(np.argmin(outlier_scores(sims))) == len(vectors) - 1


def test_unlabelled_items_are_never_listed_as_mislabelled() -> None:
    vectors, _ = blobs((5, 5), d=8, seed=4)
    rows, sims = knn(vectors, 3)
    assert likely_mislabelled([None] * 10, rows, sims).empty


def _planted_catalog(root: Path) -> tuple[Path, Path, Path, Path]:
    """Three real photos per class and split, plus a cropped re-encoded copy of a dress photo
    and a hat photo filed as a dress. Returns (source, original, copy, wrong)."""
    source = copy_subset(root / "src", {"dress": 3, "hat": 3, "pants": 3, "shoes": 3})
    original = sorted((source / "train" / "dress").glob("*.jpg"))[0]
    with Image.open(original) as img:
        w, h = img.size
        cropped = img.convert("RGB").crop((w // 25, h // 25, w - w // 25, h - h // 25))
        buffer = io.BytesIO()
        cropped.save(buffer, format="JPEG", quality=70)
    copy = source / "train" / "dress" / "zz-near-copy.jpg"
    copy.write_bytes(buffer.getvalue())
    hat = real_photos("hat", 6)[5]  # not among the three hats already copied
    wrong = source / "train" / "dress" / "zz-planted-hat.jpg"
    shutil.copy(hat, wrong)
    return source, original, copy, wrong


@pytest.mark.slow
def test_planted_near_duplicate_and_wrong_label_are_found_on_real_photos(tmp_path: Path) -> None:
    from pipelines.data.catalog import run_catalog
    from pipelines.embedding.embed import run_embed

    source, original, copy, wrong = _planted_catalog(tmp_path)
    config = Config(artifacts_dir=tmp_path / "artifacts", source=source, batch_size=8)
    run_catalog(config)
    run_embed(config, "inception_v3", progress=False)
    result = run_health(config, ["inception_v3"])
    assert not result.skipped
    catalog = pd.read_parquet(config.catalog_path)
    id_of = {Path(p).name: str(i) for p, i in zip(catalog["path"], catalog["item_id"], strict=True)}

    duplicates = pd.read_parquet(config.health_path("inception_v3", "duplicates"))
    floor = result.details["inception_v3"]["floor"]
    pairs = {frozenset(p) for p in duplicates[["item_a", "item_b"]].itertuples(index=False)}
    assert frozenset((id_of[original.name], id_of[copy.name])) in pairs
    # Every pair at or above the floor is listed (independent float64 computation).
    vectors = np.load(config.embeddings_path("inception_v3"))
    ids = catalog["item_id"].astype(str).tolist()
    expected = {frozenset((ids[a], ids[b])) for a, b in brute_force_pairs(vectors, floor + 1e-5)}
    assert expected <= pairs
    assert (duplicates["similarity"] >= floor - 1e-6).all()

    mislabelled = pd.read_parquet(config.health_path("inception_v3", "mislabelled"))
    top5 = mislabelled["item_id"].head(5).tolist()
    assert id_of[wrong.name] in top5, mislabelled.head(8)
    row = mislabelled.set_index("item_id").loc[id_of[wrong.name]]
    assert row["label"] == "dress" and row["suggested"] == "hat"

    outliers = pd.read_parquet(config.health_path("inception_v3", "outliers"))
    assert len(outliers) == len(catalog) and outliers["rank"].tolist()[:3] == [1, 2, 3]
    # A second run with nothing changed writes nothing.
    assert run_health(config, ["inception_v3"]).skipped

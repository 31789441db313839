"""What the browsing pages show, as pure tables: representative thumbnails, label counts,
stratified samples, CSV exports, plurals, ties, and the upload warnings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipelines.explore import browse
from pipelines.search.photos import upload_warnings
from tests.conftest import unit


def test_cluster_thumbnails_are_the_members_nearest_the_centre() -> None:
    rng = np.random.default_rng(0)
    centroids = unit(rng.normal(size=(2, 8)))
    # Cluster 0's members listed far-to-near in catalog order: the overview must reverse that.
    spread = [centroids[0] + s * rng.normal(size=8) for s in (2.0, 1.0, 0.5, 0.1)]
    vectors = unit(np.vstack([*spread, centroids[1]]))
    catalog = browse.with_thumb_files(
        pd.DataFrame(
            {
                "item_id": list("abcde"),
                "label": ["hat", "hat", "dress", "hat", "shoes"],
                "thumb": [f"t/{c}" for c in "abcde"],
            }
        ),
        Path("/art"),
    )
    clusters = pd.DataFrame({"item_id": list("abcde"), "cluster": [0, 0, 0, 0, 1]})
    summary = pd.DataFrame(
        {"cluster": [0, 1], "size": [4, 1], "top_label": ["hat", "shoes"], "purity": [0.75, 1.0]}
    )
    overview = browse.cluster_overview(summary, clusters, catalog, 2, vectors, centroids)
    sims = vectors[:4] @ centroids[0]
    nearest = [f"/art/t/{'abcd'[i]}" for i in np.argsort(-sims)[:2]]
    assert overview["thumbs"].iloc[0] == nearest
    assert overview["labels"].iloc[0] == "3 hat · 1 dress"
    members = browse.cluster_members(clusters, catalog, 0, vectors, centroids)
    assert np.all(np.diff(members["centre_similarity"].to_numpy()) <= 1e-6)


def test_a_stratified_sample_keeps_every_label_in_proportion() -> None:
    items = pd.DataFrame(
        {"item_id": [str(i) for i in range(100)], "label": ["a"] * 70 + ["b"] * 27 + ["c"] * 3}
    )
    sample = browse.stratified_sample(items, 10)
    counts = sample["label"].value_counts().to_dict()
    assert len(sample) == 10 and counts == {"a": 7, "b": 2, "c": 1}
    assert sample["item_id"].is_unique
    # Every rare label is shown while slots last, and a small selection is shown whole.
    assert set(browse.stratified_sample(items, 3)["label"]) == {"a", "b", "c"}
    assert len(browse.stratified_sample(items.head(5), 10)) == 5


def test_label_counts_and_text() -> None:
    labels = ["hat", "dress", "hat", None, "hat", "dress", "shoes"]
    table = browse.label_counts(labels)
    assert table[["label", "count"]].values.tolist() == [
        ["hat", 3],
        ["dress", 2],
        ["(no label)", 1],
        ["shoes", 1],
    ]
    assert browse.label_counts_text(labels, top=2) == "3 hat · 2 dress · +2 more"


def test_export_table_has_ids_paths_labels_and_similarity() -> None:
    catalog = pd.DataFrame(
        {"item_id": ["a", "b", "c"], "path": ["/p/a.jpg", "/p/b.jpg", "/p/c.jpg"], "label": "x"}
    )
    neighbours = pd.DataFrame({"rank": [1, 2], "item_id": ["c", "a"], "similarity": [0.9, 0.8]})
    table = browse.export_table(neighbours, catalog)
    assert table.columns.tolist() == ["item_id", "rank", "similarity", "path", "label"]
    assert table["path"].tolist() == ["/p/c.jpg", "/p/a.jpg"]
    text = browse.to_csv(table).decode()
    assert text.splitlines()[1] == "c,1,0.9,/p/c.jpg,x"


def test_plurals_and_top_categories_with_ties() -> None:
    assert browse.plural(1, "nearest item") == "1 nearest item"
    assert browse.plural(1200, "photo") == "1,200 photos"
    assert browse.plural(2, "category", "categories") == "2 categories"
    counts = pd.DataFrame({"category": ["a", "b", "c", "d", "e"], "count": [3, 2, 1, 1, 1]})
    assert browse.top_with_ties(counts, 3)["category"].tolist() == ["a", "b", "c", "d", "e"]
    counts["count"] = [3, 2, 2, 1, 1]
    assert browse.top_with_ties(counts, 3)["category"].tolist() == ["a", "b", "c"]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_warnings_for_tiny_panoramic_and_unsure_photos() -> None:
    (tiny,) = upload_warnings("dot.png", _png(1, 1), 0.9)
    assert "dot.png is only 1×1 px" in tiny and "upload a larger photo" in tiny
    (wide,) = upload_warnings("pano.png", _png(8000, 300), 0.9)
    assert "8000×300 px (26.7:1)" in wide and "crop" in wide
    (unsure,) = upload_warnings("shirt.png", _png(300, 400), 0.31)
    assert "Low confidence (31%)" in unsure
    assert upload_warnings("fine.png", _png(300, 400), 0.8) == []

"""A catalog that changes: `run` on a changed source updates the build in place (issue 24).

On a copy of the small real build (36 photos, 4 labels): two photos added, two removed and
one replaced by an altered copy of itself, then `run_all`. Each artifact is checked against
the build before: kept items' vectors bit for bit, kept map places, kept clusters, no model
retrained, removed items gone from every table (catalog, maps, clusters, health lists,
categories, colours, the neighbours feed, the embeddings' item ids), new items searchable with
the exact top-10 of their vectors, the replaced photo a new item with a new vector. A second
`run` does nothing; a moved source folder is no change at all.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.artifacts import read_manifest
from pipelines.config import Config
from pipelines.models.training_set import snapshot_path
from pipelines.models.views import views_path
from tests.conftest import copy_build, real_photos, remove_last_photos

ADDED = (("train", "dress"), ("test", "shoes"))  # one new photo each, beyond the 3 in the build


@dataclass
class Update:
    before: Config  # a copy of the build before the update (read only)
    config: Config  # the updated build
    added: list[str]  # item ids
    removed: list[str]
    replaced_old: str
    replaced_new: str
    results: dict[str, object]  # stage name -> StageResult of the update
    again: list  # StageResults of the run after it


def _ids(config: Config) -> list[str]:
    return pd.read_parquet(config.catalog_path)["item_id"].astype(str).tolist()


def _vectors(config: Config, name: str) -> pd.DataFrame:
    vectors = np.load(config.embeddings_path(name))
    return pd.DataFrame({"row": range(len(vectors))}, index=_ids(config)).assign(v=list(vectors))


@pytest.fixture(scope="module")
def update(built: Config, tmp_path_factory: pytest.TempPathFactory) -> Update:
    from pipelines.run import run_all
    from pipelines.search.neighbours import run_neighbours

    root = tmp_path_factory.mktemp("update")
    config = copy_build(built, root)
    extractors = config.extractors_built()
    run_neighbours(config, extractors, k=5, progress=False)
    shutil.copytree(config.artifacts_dir, root / "before")
    before = config.replace(artifacts_dir=root / "before")

    catalog = pd.read_parquet(config.catalog_path)
    removed = remove_last_photos(config, built, 2)
    # Replaced: the first item's photo cropped a little and saved over it (new bytes, same path).
    first = catalog.iloc[0]
    path = config.source / Path(first["path"]).relative_to(built.source)
    with Image.open(path) as img:
        w, h = img.size
        img.convert("RGB").crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(path, "JPEG")
    for split, label in ADDED:
        photo = real_photos(label, 4, split)[3]
        shutil.copy(photo, config.source / split / label / photo.name)

    results = run_all(config)
    names = [
        "catalog", "colours", "training set", "train", "embed inception_v3", "embed custom_cnn",
        "views", "train inception_head", "embed inception_head", "classify", "maps", "clusters",
        "ann",
        "mosaic", "health", "evaluate",
    ]  # fmt: skip
    run_neighbours(config, extractors, k=5, progress=False)
    after = pd.read_parquet(config.catalog_path)
    new = sorted(set(after["item_id"].astype(str)) - set(catalog["item_id"].astype(str)))
    replaced_new = str(after.loc[after["path"] == str(path), "item_id"].iloc[0])
    again = run_all(config)
    return Update(
        before=before,
        config=config,
        added=[i for i in new if i != replaced_new],
        removed=removed,
        replaced_old=str(first["item_id"]),
        replaced_new=replaced_new,
        results=dict(zip(names, results, strict=True)),
        again=again,
    )


def test_the_catalog_reads_only_the_changed_files(update: Update) -> None:
    ids = _ids(update.config)
    assert len(ids) == 36 - 2 + 2
    assert len(update.added) == 2 and set(update.added) <= set(ids)
    assert not set(update.removed) & set(ids)
    assert update.replaced_old not in ids and update.replaced_new in ids
    details = update.results["catalog"].details
    # Two new files and the replaced one are read; the 33 unchanged ones come from the memo.
    assert (details["files_read"], details["files_known"]) == (3, 33)


def test_kept_vectors_are_bit_identical_and_new_ones_are_embedded(update: Update) -> None:
    for name in update.config.extractors_built():
        old, new = _vectors(update.before, name), _vectors(update.config, name)
        kept = old.index.intersection(new.index)
        assert len(kept) == 36 - 2 - 1
        np.testing.assert_array_equal(np.stack(new.loc[kept, "v"]), np.stack(old.loc[kept, "v"]))
        fresh = np.stack(new.loc[update.added + [update.replaced_new], "v"])
        assert np.all(np.isfinite(fresh)) and np.allclose(np.linalg.norm(fresh, axis=1), 1, 1e-3)
        # The replaced photo is a new item with its own vector: close to the old one (the same
        # garment, a little cropped) but not the same.
        a, b = new.loc[update.replaced_new, "v"], old.loc[update.replaced_old, "v"]
        assert not np.array_equal(a, b) and float(a @ b) > 0.5, name
        # The embeddings' item-id file names the rows of the vectors.
        ids = np.load(update.config.embeddings_path(name).with_suffix(".items.npy")).astype(str)
        assert ids.tolist() == _ids(update.config)


def test_no_trained_part_is_retrained(update: Update) -> None:
    for result in ("training set", "train", "views", "train inception_head"):
        assert update.results[result].skipped, result
    for path in (
        update.config.custom_cnn_path,
        update.config.head_path,
        views_path(update.config),
        snapshot_path(update.config),
    ):
        before = update.before.artifacts_dir / path.relative_to(update.config.artifacts_dir)
        assert read_manifest(path)["sha256"] == read_manifest(before)["sha256"], path.name


def test_kept_items_keep_their_map_place_and_cluster(update: Update) -> None:
    for name in update.config.extractors_built():
        old = pd.read_parquet(update.before.map_path(name)).set_index("item_id")
        new = pd.read_parquet(update.config.map_path(name)).set_index("item_id")
        assert list(new.index) == _ids(update.config)
        kept = old.index.intersection(new.index)
        pd.testing.assert_frame_equal(new.loc[kept, ["x", "y"]], old.loc[kept, ["x", "y"]])
        assert np.all(np.isfinite(new.loc[update.added, ["x", "y"]].to_numpy()))
        old_c = pd.read_parquet(update.before.clusters_path(name)).set_index("item_id")
        new_c = pd.read_parquet(update.config.clusters_path(name)).set_index("item_id")
        assert list(new_c.index) == _ids(update.config)
        assert (new_c.loc[kept, "cluster"] == old_c.loc[kept, "cluster"]).all()
        # A new item joins the cluster of its most similar centroid.
        centroids = np.load(update.config.centroids_path(name))
        vectors = _vectors(update.config, name)
        for item in update.added:
            nearest = int(np.argmax(centroids @ vectors.loc[item, "v"]))
            assert new_c.loc[item, "cluster"] == nearest, (name, item)


def test_removed_items_are_gone_from_every_table(update: Update) -> None:
    gone = set(update.removed) | {update.replaced_old}
    training_set = snapshot_path(update.config)  # what the kept models learnt from
    tables = [p for p in update.config.artifacts_dir.rglob("*.parquet") if p != training_set]
    checked = {p.relative_to(update.config.artifacts_dir).as_posix() for p in tables}
    # The tables a removed item could hide in are among those read here.
    assert {"catalog.parquet", "colours.parquet", "categories.parquet"} <= checked
    for name in update.config.extractors_built():
        for part in (f"maps/{name}", f"clusters/{name}", f"health/{name}_duplicates"):
            assert f"{part}.parquet" in checked, part
    assert any(p.startswith("neighbours/") for p in checked), checked
    for path in tables:
        table = pd.read_parquet(path)
        for column in (c for c in table.columns if "item" in str(c)):
            left = set(table[column].astype(str)) & gone
            assert not left, (path.name, column, left)


def test_new_items_are_searchable_with_the_exact_top_10(update: Update) -> None:
    from pipelines.api import Lookalike

    engine = Lookalike.open(update.config.artifacts_dir)
    ids = np.array(_ids(update.config))
    for name in update.config.extractors_built():
        vectors = np.stack(_vectors(update.config, name)["v"])
        for item in update.added:
            row = int(np.flatnonzero(ids == item)[0])
            sims = vectors @ vectors[row]
            sims[row] = -np.inf
            expected = ids[np.argsort(-sims, kind="stable")[:10]]
            found = engine.similar_to(item, k=10, extractor=name)["item_id"].tolist()
            assert set(found) == set(expected), (name, item)


def test_a_second_run_has_nothing_to_do(update: Update) -> None:
    assert all(result.skipped for result in update.again), [
        (result.stage, result.note) for result in update.again if not result.skipped
    ]


def test_the_same_photos_in_another_folder_are_no_change(built: Config, tmp_path: Path) -> None:
    """The source moved (copied elsewhere with its file times): the catalog stage re-reads no
    photo, and every later stage is up to date."""
    from pipelines.run import run_all

    config = copy_build(built, tmp_path)
    moved = tmp_path / "moved"
    shutil.move(config.source, moved)
    results = run_all(config.replace(source=moved))
    catalog, *rest = results
    assert catalog.details["files_read"] == 0 and catalog.details["files_known"] == 36
    assert all(result.skipped for result in rest), [r.stage for r in rest if not r.skipped]

"""`pipelines.consistency`: a folder is one build only when every manifest's inputs are the
artifacts there now, and every artifact's bytes are its manifest's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import artifacts
from pipelines.config import Config
from pipelines.consistency import UpdateInProgress, build_stamp, check_unchanged
from tests.conftest import blobs


def _catalog(config: Config, n: int, content: str) -> None:
    table = pd.DataFrame({"item_id": [f"item{i:03d}" for i in range(n)], "label": "hat"})
    artifacts.write_parquet(table, config.catalog_path)
    artifacts.write_manifest(config.catalog_path, "catalog", {}, {}, extra={"content": content})


def _embeddings(config: Config, n: int, catalog: str) -> str:
    path = config.embeddings_path("inception_v3")
    artifacts.write_npy(blobs((n,), d=8)[0], path)
    return artifacts.write_manifest(path, "embed", {}, {"catalog": catalog})["sha256"]


def _map(config: Config, n: int, catalog: str, embeddings: str) -> None:
    path = config.map_path("inception_v3")
    artifacts.write_parquet(pd.DataFrame({"x": np.arange(n, dtype=float)}), path)
    inputs = {"catalog": catalog, "embeddings/inception_v3": embeddings}
    artifacts.write_manifest(path, "maps", {}, inputs)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """A catalog of 4 items, its embeddings and its map: one build."""
    config = Config(artifacts_dir=tmp_path / "artifacts")
    _catalog(config, 4, "c1")
    _map(config, 4, "c1", _embeddings(config, 4, "c1"))
    return config


def test_one_build_is_consistent_and_keys_every_artifact(config: Config) -> None:
    stamp = build_stamp(config)
    assert stamp.consistent and stamp.problem is None and stamp.note() == ""
    manifest = artifacts.read_manifest(config.embeddings_path("inception_v3"))
    assert stamp.shas["embeddings/inception_v3"] == manifest["sha256"]
    assert stamp.sha(config.embeddings_path("inception_v3")) == manifest["sha256"]
    assert stamp.shas["clusters/inception_v3"] == "missing"  # not built: not a problem
    assert stamp.sha(config.artifacts_dir / "elsewhere.npy") is None


def test_an_empty_folder_is_consistent(tmp_path: Path) -> None:
    stamp = build_stamp(Config(artifacts_dir=tmp_path / "nothing"))
    assert stamp.consistent and set(stamp.shas.values()) == {"missing"}


def test_a_new_catalog_beside_old_embeddings_is_mid_update(config: Config) -> None:
    _catalog(config, 5, "c2")
    stamp = build_stamp(config)
    assert not stamp.consistent
    assert stamp.problem == "embeddings/inception_v3.npy was built from another catalog"
    assert stamp.note().startswith("The catalog is being updated (embeddings/inception_v3.npy")
    assert "python -m pipelines run" in stamp.note()


def test_new_embeddings_beside_an_old_map_is_mid_update(config: Config) -> None:
    _embeddings(config, 5, "c1")  # same catalog content, other vectors (a retrain)
    assert build_stamp(config).problem == (
        "maps/inception_v3.parquet was built from another embeddings/inception_v3.npy"
    )


def test_a_file_renamed_before_its_manifest_is_mid_update(config: Config) -> None:
    path = config.embeddings_path("inception_v3")
    artifacts.write_npy(blobs((4,), d=8, seed=1)[0], path)  # the manifest is the old file's
    assert build_stamp(config).problem == (
        "embeddings/inception_v3.npy is being rewritten (its bytes differ from its manifest)"
    )


def test_embeddings_of_other_weights_are_mid_update(config: Config) -> None:
    weights = config.model_path("inception_v3")
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"new weights")
    artifacts.write_manifest(weights, "weights", {}, {})
    path = config.embeddings_path("inception_v3")
    manifest = artifacts.read_manifest(path)
    artifacts.write_manifest(path, "embed", {}, {**manifest["inputs"], "weights": "older"})
    assert build_stamp(config).problem == (
        "embeddings/inception_v3.npy was made by another models/inception_v3.weights.h5"
    )


def test_the_stamp_is_remembered_until_a_file_changes(config: Config) -> None:
    first = build_stamp(config)
    assert build_stamp(config) is first
    _catalog(config, 5, "c2")  # rewritten: a new inode and manifest
    again = build_stamp(config)
    assert again is not first and not again.consistent
    assert again.shas["catalog"] != first.shas["catalog"]


def test_check_unchanged_refuses_a_file_rewritten_since_the_stamp(config: Config) -> None:
    stamp = build_stamp(config)
    path = config.catalog_path
    check_unchanged({path: stamp.shas["catalog"]})  # unchanged: no error
    _catalog(config, 5, "c2")
    with pytest.raises(UpdateInProgress, match="catalog.parquet changed while it was read"):
        check_unchanged({path: stamp.shas["catalog"]})
    missing = config.clusters_path("inception_v3")
    check_unchanged({missing: "missing"})

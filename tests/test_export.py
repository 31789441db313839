"""The neighbours stage: every item's top-k against a brute-force answer, CSV and parquet,
resuming after an interruption, skipping when up to date."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import artifacts
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.search.index import Index
from pipelines.search.neighbours import run_neighbours, write_neighbours
from tests.conftest import blobs


def _brute_force(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def test_every_item_top_k_matches_brute_force(tmp_path: Path) -> None:
    vectors, _ = blobs((30, 25, 20), d=16, noise=0.3)
    ids = [f"item{i:03d}" for i in range(len(vectors))]
    out = tmp_path / "nb.parquet"
    summary = write_neighbours(Index(vectors, ids), out, k=7, part_rows=16, progress=False)
    table = pd.read_parquet(out)
    assert list(table.columns) == ["item_id", "rank", "neighbour_id", "similarity"]
    assert len(table) == 75 * 7 and summary["searched"] == 75
    rows, sims = _brute_force(vectors, 7)
    expected_ids = np.asarray(ids)[rows].reshape(-1)
    assert table["neighbour_id"].astype(str).tolist() == expected_ids.tolist()
    assert table["item_id"].astype(str).tolist() == np.repeat(ids, 7).tolist()
    assert table["rank"].tolist() == list(range(1, 8)) * 75
    np.testing.assert_allclose(table["similarity"], sims.reshape(-1), atol=1e-5)
    assert not (table["item_id"] == table["neighbour_id"]).any()
    assert not list(tmp_path.glob(".nb.parts*/*"))  # parts removed once the table is whole


def test_csv_holds_the_same_rows(tmp_path: Path) -> None:
    vectors, _ = blobs((12, 12), d=8)
    index = Index(vectors, [f"i{i}" for i in range(24)])
    write_neighbours(index, tmp_path / "a.parquet", 5, "parquet", progress=False)
    write_neighbours(index, tmp_path / "a.csv", 5, "csv", progress=False)
    parquet = pd.read_parquet(tmp_path / "a.parquet").astype({"item_id": str, "neighbour_id": str})
    csv = pd.read_csv(tmp_path / "a.csv")
    assert csv[["item_id", "rank", "neighbour_id"]].equals(
        parquet[["item_id", "rank", "neighbour_id"]].astype({"rank": "int64"})
    )
    np.testing.assert_allclose(csv["similarity"], parquet["similarity"], atol=1e-6)


def test_an_interrupted_pass_resumes_from_its_parts(tmp_path: Path) -> None:
    vectors, _ = blobs((40, 40), d=8, noise=0.4)
    ids = [f"x{i}" for i in range(80)]
    index = Index(vectors, ids)
    out = tmp_path / "nb.parquet"
    calls = []
    original = index.search_rows

    def dies_on_third_part(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    index.search_rows = dies_on_third_part  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        write_neighbours(index, out, 4, key="k1", part_rows=20, progress=False)
    assert not out.exists()  # nothing half-written that looks complete

    index.search_rows = original  # type: ignore[method-assign]
    summary = write_neighbours(index, out, 4, key="k1", part_rows=20, progress=False)
    assert summary["searched"] == 40  # only the two parts that were not done
    rows, _ = _brute_force(vectors, 4)
    table = pd.read_parquet(out)
    assert table["neighbour_id"].astype(str).tolist() == np.asarray(ids)[rows].ravel().tolist()


def test_bad_k_and_format_say_what_is_valid(tmp_path: Path) -> None:
    index = Index(*[blobs((5, 5), d=4)[0]], [str(i) for i in range(10)])
    with pytest.raises(LookalikeError, match="k must be between 1 and 9"):
        write_neighbours(index, tmp_path / "a.parquet", 10, progress=False)
    with pytest.raises(LookalikeError, match="parquet, csv"):
        write_neighbours(index, tmp_path / "a.xlsx", 3, "xlsx", progress=False)


def test_stage_on_the_real_build_writes_once(built: Config, tmp_path: Path) -> None:
    config = built.replace(artifacts_dir=tmp_path / "artifacts")
    shutil.copytree(built.artifacts_dir, config.artifacts_dir)
    first = run_neighbours(config, ["custom_cnn"], k=5, progress=False)
    out = config.neighbours_path("custom_cnn")
    assert first.wrote == (out,)
    table = pd.read_parquet(out)
    catalog = pd.read_parquet(config.catalog_path)
    assert len(table) == len(catalog) * 5
    assert set(table["item_id"].astype(str)) == set(catalog["item_id"].astype(str))
    manifest = artifacts.read_manifest(out)
    assert manifest["params"]["k"] == 5 and manifest["sha256"] == artifacts.sha256_file(out)
    again = run_neighbours(config, ["custom_cnn"], k=5, progress=False)
    assert again.skipped and again.wrote == ()
    other = run_neighbours(config, ["custom_cnn"], k=3, progress=False)
    assert other.wrote == (out,) and len(pd.read_parquet(out)) == len(catalog) * 3


def test_stage_skips_extractors_without_embeddings(built: Config, tmp_path: Path) -> None:
    config = built.replace(artifacts_dir=tmp_path / "artifacts")
    shutil.copytree(built.artifacts_dir, config.artifacts_dir)
    config.embeddings_path("inception_v3").unlink()
    result = run_neighbours(config, ["inception_v3", "custom_cnn"], k=3, progress=False)
    assert result.wrote == (config.neighbours_path("custom_cnn"),)
    assert result.details["inception_v3"]["missing"]
    with pytest.raises(LookalikeError, match="inception_v3.npy is missing — run"):
        run_neighbours(config, ["inception_v3"], k=3, progress=False)

"""The Python API: a catalog photo finds itself first, catalog items match the engine, folders
get categories with bad files named."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.api import Lookalike
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.search import similar


@pytest.fixture(scope="module")
def look(built: Config) -> Lookalike:
    return Lookalike.open(built.artifacts_dir)


@pytest.fixture(scope="module")
def catalog(built: Config) -> pd.DataFrame:
    return pd.read_parquet(built.catalog_path)


def test_a_catalog_photo_finds_itself_first(look: Lookalike, catalog: pd.DataFrame) -> None:
    for label in ("hat", "pants"):
        row = catalog[catalog["label"] == label].iloc[-1]
        for extractor in ("inception_v3", "custom_cnn"):
            table = look.similar(row["path"], k=5, extractor=extractor)
            assert list(table.columns) == similar.NEIGHBOUR_COLUMNS
            assert table["rank"].tolist() == [1, 2, 3, 4, 5]
            assert table["item_id"].iloc[0] == row["item_id"], (label, extractor)
            assert table["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-3)
            assert table.attrs["category"] is not None
    # Bytes work as well as a path, and diversity keeps the photo itself first.
    data = Path(row["path"]).read_bytes()
    spread = look.similar(data, k=5, diversity=0.5)
    assert spread["item_id"].iloc[0] == row["item_id"]
    assert len(spread) == 5


def test_similar_to_is_the_engines_item_search(look: Lookalike, catalog: pd.DataFrame) -> None:
    item = str(catalog["item_id"].iloc[7])
    table = look.similar_to(item, k=6, extractor="custom_cnn")
    expected = similar.item_neighbours(look.index("custom_cnn"), look.catalog, item, 6)
    pd.testing.assert_frame_equal(table, expected)
    assert item not in table["item_id"].tolist()


def test_categories_of_a_folder_name_the_bad_file(
    look: Lookalike, catalog: pd.DataFrame, tmp_path
) -> None:
    import shutil

    for i, row in enumerate(catalog.head(3).itertuples()):
        shutil.copy(row.path, tmp_path / f"{i}.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    table = look.categories(tmp_path)
    assert table["photo"].map(lambda p: p.rsplit("/", 1)[-1]).tolist() == [
        "0.jpg",
        "1.jpg",
        "2.jpg",
        "broken.png",
    ]
    # The classify stage's classifier predicts, as at every door: on these catalog photos it
    # gives what it gives on their stored InceptionV3 vectors (not the CNN's softmax).
    from pipelines.models.classify import load_category_model

    model = load_category_model(look.config)
    stored = look.index("inception_v3").vectors[:3]
    expected = model.classes[model.probabilities({"inception_v3": stored}).argmax(axis=1)]
    assert table["category"].iloc[:3].tolist() == expected.tolist()
    assert table["error"].iloc[:3].isna().all()
    assert table["error"].iloc[3].startswith(f"{tmp_path / 'broken.png'}: ")
    common = table.attrs["most_common"]
    assert common["count"].sum() == 3


def test_errors_say_what_to_do(look: Lookalike, tmp_path) -> None:
    with pytest.raises(LookalikeError, match="catalog.parquet is missing — build the artifacts"):
        Lookalike.open(tmp_path / "nothing")
    with pytest.raises(LookalikeError, match="no such file — check the path"):
        look.similar(tmp_path / "gone.jpg")
    with pytest.raises(LookalikeError, match="not a recognised image"):
        look.similar(b"plain text")
    with pytest.raises(LookalikeError, match="unknown extractor 'clip'; valid extractors"):
        look.similar_to("x", extractor="clip")

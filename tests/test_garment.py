"""Look at the garment, not the room (issue 25): InceptionV3's map finds the garment of an
upload, its crop is embedded by every extractor, and the photo search uses the crop only when
it is closer to the catalog than the whole photo; a catalog photo keeps its own vector."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.api import Lookalike
from pipelines.config import Config
from pipelines.models.extractors import get_extractor
from pipelines.search import garment


def test_the_map_average_is_the_inception_vector(built: Config) -> None:
    catalog = pd.read_parquet(built.catalog_path)
    extractor = get_extractor("inception_v3", built)
    pixels = np.stack([extractor.load_pixels(p) for p in catalog["path"].iloc[:3]])
    vectors, maps = garment.inception_vectors_and_maps(extractor, pixels)
    assert maps.shape == (3, 8, 8, 2048)
    np.testing.assert_allclose(vectors, extractor.embed_arrays(pixels), atol=1e-5)


def _map(hot: list[tuple[int, int]], value: float = 10.0) -> np.ndarray:
    cells = np.ones((8, 8, 4))
    for y, x in hot:
        cells[y, x] = value
    return cells


def test_the_box_is_the_strongest_group_of_hot_cells() -> None:
    # Two groups above the mean: a 2x3 block (rows 1-2, columns 4-6) and one weaker cell.
    block = [(y, x) for y in (1, 2) for x in (4, 5, 6)]
    cells = _map(block)
    cells[6, 0] = 5.0
    assert garment.garment_box(cells) == (4 / 8, 1 / 8, 7 / 8, 3 / 8)
    # Nothing stands out, or the hot part is most of the photo: no crop.
    assert garment.garment_box(np.ones((8, 8, 4))) is None
    most = [(y, x) for y in range(7) for x in range(7)]
    assert garment.garment_box(_map(most)) is None


def test_the_box_maps_from_the_centred_square_to_the_photo() -> None:
    # A 200 x 100 photo: the model saw its centred 100 x 100 square (x 50-150).
    photo = Image.new("RGB", (200, 100))
    crop = garment.crop_to_box(photo, (0.25, 0.5, 0.75, 1.0))
    assert crop is not None and crop.size == (50, 50)
    assert garment.crop_to_box(photo, (0.25, 0.5, 0.3, 0.6)) is None  # 5 px: too small


def _small_on_a_large_frame(path: str) -> bytes:
    """The catalog photo shrunk to 70 px tall and pasted off-centre on a 300 px grey frame."""
    photo = Image.open(path).convert("RGB")
    photo.thumbnail((70, 70))
    frame = Image.new("RGB", (300, 300), (196, 192, 188))
    frame.paste(photo, (60, 150))
    out = io.BytesIO()
    frame.save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.mark.slow
def test_a_small_garment_is_searched_by_its_crop_and_a_catalog_photo_by_itself(
    built: Config,
) -> None:
    api = Lookalike(built)
    catalog = api.catalog
    path = catalog["path"].iloc[0]
    extractors = ["inception_v3", "custom_cnn", "inception_head"]
    small, itself = api.search_bytes(
        [("small.jpg", _small_on_a_large_frame(path)), ("itself.jpg", Path(path).read_bytes())],
        k=3,
        extractors=extractors,
    )
    assert small.error is None and itself.error is None
    assert any("Searched with the garment" in note for note in small.notes), small.notes
    assert not any("Searched with the garment" in note for note in itself.notes)
    # The catalog photo is searched by its own vectors: it finds itself, at similarity ~1.
    for name in extractors:
        top = itself.neighbours[name].iloc[0]
        assert top["item_id"] == catalog["item_id"].iloc[0]
        assert top["similarity"] > 0.99
    # Without the crop, the small garment is further from its own catalog photo.
    plain = Lookalike(built.replace(garment_crop=False))
    (uncropped,) = plain.search_bytes(
        [("small.jpg", _small_on_a_large_frame(path))], k=len(catalog), extractors=extractors
    )
    (cropped,) = api.search_bytes(
        [("small.jpg", _small_on_a_large_frame(path))], k=len(catalog), extractors=extractors
    )
    own = catalog["item_id"].iloc[0]
    for name in ("inception_v3", "inception_head"):

        def similarity(result, name=name):  # noqa: ANN001, ANN202
            table = result.neighbours[name]
            return float(table.loc[table["item_id"] == own, "similarity"].iloc[0])

        assert similarity(cropped) > similarity(uncropped) + 0.02, name

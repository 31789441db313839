"""Likeness metrics and colours on cases with a known answer: copy-retrieval R@1, colour
agreement@k, the seeded alteration, the dominant colour of synthetic garments."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines.data.colour import COLOURS, dominant_colour, nearest_colour
from pipelines.quality.likeness import alter, colour_agreement, copy_recall_at_1
from tests.conftest import unit


def _photo(colour=(200, 30, 40), background=(245, 245, 245)) -> Image.Image:
    """A flat 'garment' rectangle in the middle of a plain background, with some texture."""
    rng = np.random.default_rng(0)
    pixels = np.empty((200, 150, 3), np.float64)
    pixels[:] = background
    pixels[40:170, 35:115] = colour
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_copy_recall_finds_planted_originals_and_counts_ties_as_misses() -> None:
    rng = np.random.default_rng(0)
    gallery = unit(rng.normal(size=(200, 16)))
    originals = unit(rng.normal(size=(10, 16)))
    altered = unit(originals + 0.05 * rng.normal(size=originals.shape))
    assert copy_recall_at_1(altered, originals, gallery) == 1.0
    # Query 0's copy is closer to a gallery item than to its own original: one miss in ten.
    gallery[5] = altered[0]
    assert copy_recall_at_1(altered, originals, gallery) == pytest.approx(0.9)
    # An exact duplicate of an original in the gallery ties with it: a miss as well.
    gallery[6] = originals[1]
    assert copy_recall_at_1(altered, originals, gallery) == pytest.approx(0.8)
    # Leave-one-out: the original sits in the gallery itself and is not another item.
    loo_gallery = np.vstack([gallery[7:], originals])
    exclude = np.arange(len(gallery) - 7, len(loo_gallery))
    assert copy_recall_at_1(altered, originals, loo_gallery, exclude) == 1.0


def test_colour_agreement_counts_matching_neighbours_and_missing_results() -> None:
    colours = np.array(["red", "red", "blue", "white", "red"], dtype=object)
    found = np.array([[0, 1, 2, 3], [2, 3, -1, -1]])
    share = colour_agreement(found, np.array(["red", "blue"], dtype=object), colours, 4)
    np.testing.assert_allclose(share, [0.5, 0.25])


def test_alteration_is_seeded_and_changes_the_photo() -> None:
    photo = _photo()
    a = alter(photo, np.random.default_rng([0, 3]))
    b = alter(photo, np.random.default_rng([0, 3]))
    c = alter(photo, np.random.default_rng([0, 4]))
    assert a == b and a != c
    decoded = Image.open(io.BytesIO(a))
    assert decoded.format == "JPEG" and decoded.size == photo.size


@pytest.mark.parametrize(
    ("garment", "background", "expected"),
    [
        ((200, 30, 40), (245, 245, 245), "red"),
        ((40, 70, 170), (128, 128, 128), "blue"),
        ((20, 20, 20), (240, 240, 240), "black"),
        ((245, 245, 245), (240, 240, 240), "white"),  # white on white keeps every pixel
        ((50, 130, 60), (115, 75, 45), "green"),
    ],
)
def test_dominant_colour_of_a_garment_on_a_plain_background(garment, background, expected):
    assert dominant_colour(_photo(garment, background)) == expected


def test_palette_colours_map_to_themselves() -> None:
    from pipelines.data.colour import PALETTE

    assert [COLOURS[i] for i in nearest_colour(np.array(list(PALETTE.values())))] == list(COLOURS)


def test_colour_filter_returns_k_items_of_that_colour_in_rank_order() -> None:
    import pandas as pd

    from pipelines.search.index import Index
    from pipelines.search.similar import item_neighbours, keep_colour
    from tests.conftest import blobs

    vectors, _ = blobs((6, 6), d=8)
    ids = [f"i{i}" for i in range(12)]
    colours = np.array(["red", "blue"] * 6, dtype=object)
    catalog = pd.DataFrame({"item_id": ids, "label": "x", "thumb": [f"t{i}.jpg" for i in ids]})
    index = Index(vectors, ids)
    plain = item_neighbours(index, catalog, "i0", 11)
    red = item_neighbours(index, catalog, "i0", 3, colour="red", colours=colours)
    expected = [i for i in plain["item_id"] if colours[ids.index(i)] == "red"][:3]
    assert red["item_id"].tolist() == expected and red["rank"].tolist() == [1, 2, 3]
    # Only 5 other red items exist: asking for 8 returns those 5.
    assert len(item_neighbours(index, catalog, "i0", 8, colour="red", colours=colours)) == 5
    # No colour chosen: the plain neighbours, unchanged.
    pd.testing.assert_frame_equal(item_neighbours(index, catalog, "i0", 11, colours=colours), plain)
    colour_of = dict(zip(ids, colours, strict=True))
    assert (
        keep_colour(plain, colour_of, "blue", 2)["item_id"].tolist()
        == [i for i in plain["item_id"] if colour_of[i] == "blue"][:2]
    )


def test_filtered_search_widens_only_as_far_as_a_rare_filter_needs() -> None:
    import pandas as pd

    from pipelines.search.index import Index
    from pipelines.search.similar import WIDEN, item_neighbours

    rng = np.random.default_rng(5)
    n = 500
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    ids = [f"i{i}" for i in range(n)]
    colours = np.where(np.arange(n) % 100 == 7, "red", "blue").astype(object)  # 5 red
    labels = np.array(["shoes", "hat"] * (n // 2), dtype=object)
    catalog = pd.DataFrame({"item_id": ids, "label": labels, "thumb": [f"{i}.jpg" for i in ids]})
    index = Index(vectors, ids)
    widths: list[int] = []
    search = index.search

    def spy(vector, k, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        widths.append(k)
        return search(vector, k, *args, **kwargs)

    index.search = spy  # type: ignore[method-assign]
    everything = item_neighbours(index, catalog, "i0", n - 1)

    def expected(keep) -> list[str]:  # noqa: ANN001
        return [i for i in everything["item_id"] if keep[ids.index(i)]]

    # A common label: one search of WIDEN x k candidates, the first k of that label.
    widths.clear()
    hats = item_neighbours(index, catalog, "i0", 10, label="hat")
    assert widths == [WIDEN * 10]
    assert hats["item_id"].tolist() == expected(labels == "hat")[:10]
    assert hats["rank"].tolist() == list(range(1, 11))
    # A rare colour: the search widens until all 5 red items (i0 is blue) are ranked.
    widths.clear()
    red = item_neighbours(index, catalog, "i0", 10, colour="red", colours=colours)
    assert red["item_id"].tolist() == expected(colours == "red")
    assert widths[0] == WIDEN * 10 and widths[-1] <= n - 1 and len(widths) >= 2
    # Both filters at once, and with diversity every result still passes both.
    both = item_neighbours(index, catalog, "i0", 3, colour="red", colours=colours, label="hat")
    assert both["item_id"].tolist() == expected((colours == "red") & (labels == "hat"))[:3]
    spread = item_neighbours(index, catalog, "i0", 5, label="shoes", diversity=0.5)
    assert len(spread) == 5 and set(spread["label"]) == {"shoes"}

"""Why two photos match: the similarity maps are exact shares of the cosine, and faithful (hiding
the hottest regions costs more similarity than hiding random ones), on real photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.models.extractors import get_extractor
from pipelines.search import explain
from tests.conftest import real_photos

# Real pairs for the faithfulness check: photos of the same class from the test split.
PAIR_LABELS = ["dress", "pants", "shoes", "hat", "t-shirt", "skirt"]
PAIRS_PER_LABEL = 6
RANDOM_MASKS = 3


@pytest.fixture(scope="module")
def inception(built: Config):
    return get_extractor("inception_v3", built)


@pytest.fixture(scope="module")
def custom_cnn(built: Config):
    from pipelines.status import app_config

    return get_extractor("custom_cnn", app_config(built))


def test_inception_maps_are_8x8_and_sum_to_the_search_cosine(inception) -> None:
    a, b = real_photos("dress", 2, "test")
    pair = explain.explain_pair(inception, a, b)
    assert pair.map_a.shape == pair.map_b.shape == (8, 8)
    # An independent computation: the embeddings the search uses.
    emb = inception.embed_images([a, b])
    assert pair.similarity == pytest.approx(float(emb[0] @ emb[1]), abs=1e-4)
    assert float(pair.map_a.sum()) == pytest.approx(pair.similarity, abs=1e-4)
    assert float(pair.map_b.sum()) == pytest.approx(pair.similarity, abs=1e-4)
    # The spatial model is built once per extractor and shares the loaded model's weights.
    assert explain.spatial_model(inception) is explain.spatial_model(inception)
    assert explain.spatial_model(inception).model.get_layer("mixed10") is (
        inception.model.get_layer("mixed10")
    )


def test_custom_cnn_maps_sum_to_its_cosine(custom_cnn) -> None:
    a = real_photos("hat", 1, "test")[0]
    b = real_photos("shoes", 1, "test")[0]
    pair = explain.explain_pair(custom_cnn, a, b)
    emb, _ = custom_cnn.embed_and_classify(
        np.stack([custom_cnn.load_pixels(a), custom_cnn.load_pixels(b)])
    )
    assert pair.map_a.ndim == 2 and pair.map_a.shape[0] >= 2
    assert pair.similarity == pytest.approx(float(emb[0] @ emb[1]), abs=1e-4)
    assert float(pair.map_a.sum()) == pytest.approx(pair.similarity, abs=1e-4)
    assert float(pair.map_b.sum()) == pytest.approx(pair.similarity, abs=1e-4)


def test_hiding_the_hottest_quarter_costs_more_similarity_than_a_random_quarter(
    inception,
) -> None:
    rng = np.random.default_rng(0)
    queries, targets, hot, random = [], [], [], []
    for label in PAIR_LABELS:
        photos = real_photos(label, 2 * PAIRS_PER_LABEL, "test")
        for a, b in zip(photos[::2], photos[1::2], strict=True):
            pair = explain.explain_pair(inception, a, b)
            grid = pair.map_a.shape
            cells = grid[0] * grid[1]
            queries.append(pair)
            targets.append(pair.pixels_b)
            hot.append(
                explain.mask_cells(pair.pixels_a, explain.hottest_cells(pair.map_a, 0.25), grid)
            )
            random.extend(
                explain.mask_cells(
                    pair.pixels_a, rng.choice(cells, cells // 4, replace=False), grid
                )
                for _ in range(RANDOM_MASKS)
            )
    n = len(queries)
    assert n == len(PAIR_LABELS) * PAIRS_PER_LABEL  # a few dozen real pairs
    neighbour = inception.embed_arrays(np.stack(targets))
    before = np.array([q.similarity for q in queries])
    after_hot = np.einsum("nd,nd->n", inception.embed_arrays(np.stack(hot)), neighbour)
    after_random = np.einsum(
        "nrd,nd->nr",
        inception.embed_arrays(np.stack(random)).reshape(n, RANDOM_MASKS, -1),
        neighbour,
    ).mean(axis=1)
    drop_hot = before - after_hot
    drop_random = before - after_random
    print(
        f"faithfulness over {n} pairs: mean drop hot {drop_hot.mean():.4f}, "
        f"random {drop_random.mean():.4f}; hot > random in {np.mean(drop_hot > drop_random):.0%}"
    )
    assert drop_hot.mean() > drop_random.mean()
    # Not a coin flip: the hottest regions cost more in most pairs, not only on average.
    assert np.mean(drop_hot > drop_random) > 0.5


def test_overlay_is_the_photo_with_the_hot_region_painted() -> None:
    photo = np.full((64, 64, 3), 200, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[0, 0] = 1.0  # hot corner, everything else cold
    image = explain.overlay(photo, heat)
    assert isinstance(image, Image.Image) and image.size == (64, 64)
    pixels = np.asarray(image).astype(int)
    corner, far = pixels[2, 2], pixels[60, 60]
    assert corner[0] > corner[2]  # red over blue where it is hot
    assert far[0] < 150  # darkened (cold colour) far away
    jpeg = explain.overlay_jpeg(photo, heat)
    assert jpeg[:3] == b"\xff\xd8\xff"


def test_hottest_cells_and_masking() -> None:
    heat = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert explain.hottest_cells(heat, 0.25).tolist() == [15, 14, 13, 12]
    masked = explain.mask_cells(np.zeros((8, 8, 3), np.uint8), np.array([15]), (4, 4))
    assert (masked[6:, 6:] == explain.MASK_VALUE).all() and masked[:6].sum() == 0
    with pytest.raises(LookalikeError, match=r"fraction must be in \(0, 1\], got 0"):
        explain.hottest_cells(heat, 0)


def test_an_extractor_without_a_spatial_map_is_refused() -> None:
    class Other:
        name = "clip"
        model = object()

    with pytest.raises(LookalikeError, match="cannot explain matches of extractor 'clip'"):
        explain.spatial_model(Other())

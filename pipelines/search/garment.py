"""Look at the garment, not the room: where the garment is in an uploaded photo, found with
InceptionV3's own last feature map, and which of the photo and its garment crop to search with.

The box is the bounding box of the largest group of cells of the 8x8 `mixed10` map whose
activation (summed over channels) is above the map's mean: the unsupervised localisation of
SCDA (Wei et al., "Selective Convolutional Descriptor Aggregation", 2017), which finds the main
object of a photo from a classification network's activations. InceptionV3's vector is the
average of that same map, so the map costs no extra pass; the crop costs one pass per
extractor, and only when the box covers at most MAX_AREA of the photo.

A crop is searched instead of the photo only when it is closer to the catalog: its nearest
catalog item (InceptionV3) is more similar than the whole photo's. A catalog-like photo keeps
its own vector, a small garment in a large frame gets the crop's. Measured on the 341
validation photos (InceptionV3 exact P@10 against the train photos): the shifted check's copies
0.316 -> 0.460, the photos themselves 0.767 -> 0.771. Always using the crop gave 0.489 and
0.745 (it loses the catalog's own photos); a mean of the two vectors 0.442 / 0.771; a box of
the cells above 1.5x the mean 0.465 / 0.746; a half-cell margin around the box was worse on
the shifted copies (0.464 against 0.489, crop always used).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

# The extractor whose map finds the garment and whose index judges the crop.
BASE = "inception_v3"
# Cells above this multiple of the map's mean activation belong to the garment.
THRESHOLD = 1.0
# A box covering more than this share of the photo is the photo: no crop is embedded.
MAX_AREA = 0.6
# A crop smaller than this many pixels a side is too small to embed.
MIN_SIDE = 16

Box = tuple[float, float, float, float]


def inception_vectors_and_maps(extractor: Any, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2048) unit InceptionV3 vectors and their (n, 8, 8, 2048) `mixed10` maps from one
    pass: the vector is the map's average, as in `embed_arrays` (a test checks they agree)."""
    maps = extractor.last_maps(pixels)
    pooled = maps.mean(axis=(1, 2))
    norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return (pooled / norms).astype(np.float32), maps


def garment_box(feature_map: np.ndarray) -> Box | None:
    """(left, top, right, bottom), fractions of the model's square input, of the largest group
    of cells above THRESHOLD x the mean activation; None when it covers more than MAX_AREA
    (the photo is the garment) or nothing stands out."""
    from scipy import ndimage

    energy = np.asarray(feature_map, np.float64).sum(axis=-1)
    mask = energy > THRESHOLD * energy.mean()
    groups, count = ndimage.label(mask)
    if count == 0:
        return None
    weight = ndimage.sum(energy, groups, range(1, count + 1))
    ys, xs = np.nonzero(groups == 1 + int(np.argmax(weight)))
    h, w = energy.shape
    box = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
    if (box[2] - box[0]) * (box[3] - box[1]) > MAX_AREA:
        return None
    return box


def photo_box(size: tuple[int, int], box: Box) -> tuple[int, int, int, int]:
    """`box`, given in fractions of the centred square every model input is made of
    (`pipelines.data.images.square_array`), as pixels (left, top, right, bottom) of a photo of
    `size` (width, height)."""
    width, height = size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    x0, y0, x1, y1 = (int(round(v * side)) for v in box)
    return left + x0, top + y0, left + x1, top + y1


def crop_to_box(image: Image.Image, box: Box) -> Image.Image | None:
    """The part of `image` under `box` (fractions of its centred square); None when too small."""
    x0, y0, x1, y1 = photo_box(image.size, box)
    if min(x1 - x0, y1 - y0) < MIN_SIDE:
        return None
    return image.crop((x0, y0, x1, y1))


def crop_is_closer(whole: float, crop: float) -> bool:
    """Search with the crop when its nearest catalog similarity beats the whole photo's."""
    return crop > whole

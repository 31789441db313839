"""Why two photos match: similarity activation maps of a pair of images, and heatmap overlays.
Reads an extractor's loaded model and two images; writes nothing.

Both extractors end in a global average pool over a last convolutional map F (h, w, c):
InceptionV3 pools `mixed10` (8 x 8 x 2048) and uses the pooled vector as is; the custom CNN pools
its last residual stage and applies an affine layer (`embedding_dense`) before normalising. The
embedding of A is therefore z_A / |z_A| with z_A = P(mean over cells of F_A) and P affine, so

    cos(A, B) = sum over cells x of  P(F_A(x)) . e_B / (h w |z_A|)

exactly: each cell's term is its share of the similarity. That per-cell map is the "similarity
activation map" drawn here. It is exact (the cells sum to the cosine the search shows, which a
test checks), needs one forward pass of the pair and no gradients, so it is both faithful and
fast; Grad-CAM would only approximate the same quantity for these linear heads.
"""

from __future__ import annotations

import io
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipelines.data.images import BBox, ImageSource
from pipelines.errors import LookalikeError

# Spatial layer of each extractor: InceptionV3's last mixed block; the custom CNN's layer that
# feeds its global pool (found through the pool layer, whatever the block's own name).
INCEPTION_LAYER = "mixed10"
CNN_POOL_LAYER = "pool"
CNN_PROJECTION_LAYER = "embedding_dense"
# Share of the heatmap's colour in the overlay (the rest is the photo).
OVERLAY_ALPHA = 0.5
# Grey that hides a cell when checking faithfulness: the middle of the pixel range, which both
# preprocessings map to (about) zero input.
MASK_VALUE = 128

# Colour stops of the heatmap, cold to hot (a blue-to-red ramp that stays readable when blended).
_STOPS = np.array(
    [
        [0, 0, 0.0],
        [30, 60, 160],
        [40, 170, 200],
        [250, 220, 60],
        [220, 40, 30],
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SpatialModel:
    """What a pair explanation needs from one extractor: its spatial map and its head.

    model : keras.Model from the extractor's preprocessed input to the (n, h, w, c) map; it
        shares the loaded model's layers (no copy of the weights).
    kernel, bias : the affine map P from pooled features to the embedding before it is
        normalised; None for InceptionV3, whose embedding is the pooled map itself.
    """

    model: Any
    kernel: np.ndarray | None = None
    bias: np.ndarray | None = None

    def project(self, features: np.ndarray) -> np.ndarray:
        """(..., c) features -> (..., d) through P (the identity when there is no head)."""
        if self.kernel is None:
            return features
        return features @ self.kernel + (0.0 if self.bias is None else self.bias)


@dataclass(frozen=True)
class PairExplanation:
    """Where the similarity of a pair comes from.

    similarity : cosine of the two embeddings (the sum of either map, up to float error).
    map_a, map_b : (h, w) float32 share of `similarity` at each cell of A (compared with B's
        embedding) and of B (compared with A's).
    pixels_a, pixels_b : (S, S, 3) uint8 model inputs of the two photos, for overlays.
    """

    similarity: float
    map_a: np.ndarray
    map_b: np.ndarray
    pixels_a: np.ndarray
    pixels_b: np.ndarray


# One spatial model per loaded extractor, built on first use; weak keys so a dropped extractor
# (a rebuilt model in the app's cache) takes its spatial model with it.
_SPATIAL: weakref.WeakKeyDictionary[Any, SpatialModel] = weakref.WeakKeyDictionary()


def spatial_model(extractor: Any) -> SpatialModel:
    """The `SpatialModel` of an extractor (built once per extractor object, then reused).

    Parameters
    ----------
    extractor : a `pipelines.models.extractors.Extractor` ("inception_v3" or "custom_cnn"); its
        `.model` is loaded if it was not yet.
    """
    cached = _SPATIAL.get(extractor)
    if cached is not None:
        return cached
    import keras

    model = extractor.keras_model if hasattr(extractor, "keras_model") else extractor.model
    name = getattr(extractor, "name", "")
    if name == "inception_v3":
        try:
            layer = model.get_layer(INCEPTION_LAYER)
        except ValueError as err:
            raise LookalikeError(
                f"the InceptionV3 model has no {INCEPTION_LAYER!r} layer to explain matches "
                f"with — rebuild its weights with `python -m pipelines embed --force`"
            ) from err
        spatial = SpatialModel(keras.Model(model.inputs, layer.output))
    elif name == "custom_cnn":
        try:
            pool = model.get_layer(CNN_POOL_LAYER)
            dense = model.get_layer(CNN_PROJECTION_LAYER)
        except ValueError as err:
            raise LookalikeError(
                f"the custom CNN has no {CNN_POOL_LAYER!r}/{CNN_PROJECTION_LAYER!r} layers to "
                f"explain matches with — retrain it with `python -m pipelines train --force`"
            ) from err
        kernel, bias = (np.asarray(w, dtype=np.float32) for w in dense.get_weights())
        spatial = SpatialModel(keras.Model(model.inputs, pool.input), kernel, bias)
    else:
        raise LookalikeError(
            f"cannot explain matches of extractor {name!r}; explainable: inception_v3, custom_cnn"
        )
    _SPATIAL[extractor] = spatial
    return spatial


def feature_maps(extractor: Any, pixels: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) uint8 model inputs -> (n, h, w, c) float32 last spatial feature maps."""
    spatial = spatial_model(extractor)
    out = spatial.model.predict_on_batch(extractor.preprocess(np.asarray(pixels)))
    return np.asarray(out, dtype=np.float32)


def similarity_maps(
    spatial: SpatialModel, maps: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """The pair's cosine and each photo's per-cell share of it, from their feature maps.

    Parameters
    ----------
    spatial : the extractor's `SpatialModel` (for its head P).
    maps : (2, h, w, c) feature maps of photos A and B.

    Returns
    -------
    (cosine, map_a, map_b): map_a[y, x] = P(F_A(y, x)) . e_B / (h w |z_A|), and the same for B;
    each map sums to the cosine.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 4 or len(maps) != 2:
        raise LookalikeError(f"similarity_maps takes (2, h, w, c) maps, got {maps.shape}")
    _, h, w, _ = maps.shape
    cells = spatial.project(maps.reshape(2, h * w, -1))  # (2, hw, d)
    z = cells.mean(axis=1)  # (2, d): the embeddings before normalisation
    norms = np.maximum(np.linalg.norm(z, axis=1), 1e-12)
    e = z / norms[:, None]
    map_a = cells[0] @ e[1] / (h * w * norms[0])
    map_b = cells[1] @ e[0] / (h * w * norms[1])
    cosine = float(e[0] @ e[1])
    return (
        cosine,
        map_a.reshape(h, w).astype(np.float32),
        map_b.reshape(h, w).astype(np.float32),
    )


def explain_pixels(extractor: Any, pixels_a: np.ndarray, pixels_b: np.ndarray) -> PairExplanation:
    """`PairExplanation` of two (S, S, 3) uint8 model inputs: one forward pass of the pair."""
    pair = np.stack([np.asarray(pixels_a), np.asarray(pixels_b)])
    if getattr(extractor, "descriptor", None) is not None:
        cosine, map_a, map_b = descriptor_maps(extractor, pair)
    else:
        cosine, map_a, map_b = similarity_maps(
            spatial_model(extractor), feature_maps(extractor, pair)
        )
    return PairExplanation(cosine, map_a, map_b, pair[0], pair[1])


def _pool_to(cells: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(n, h, w) per-cell shares summed onto a coarser (gh, gw) grid; totals are unchanged."""
    n, h, w = cells.shape
    gh, gw = grid
    ys = np.arange(h) * gh // h
    xs = np.arange(w) * gw // w
    out = np.zeros((n, gh, gw))
    np.add.at(out, (slice(None), ys[:, None], xs[None, :]), cells)
    return out


def descriptor_maps(extractor: Any, pair: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The custom CNN's joined vector (`pipelines.models.cnn_descriptor`), split over cells exactly.

    cos(A, B) = (1 - s) c_A . c_B + s a_A . a_B. The category part c is the normalised sum of
    the photo's and its mirror's unit embeddings, each an affine map of its last map's cell
    mean, so every cell of both passes gets its share as in `similarity_maps`. The appearance
    part a is the normalised whitened concatenation of unit stage means, each stage's cell
    sums a linear share; the whitening's mean is spread evenly. Mirror passes are mirrored
    back and finer stages summed onto the last map's grid, so each map sums to the cosine.
    """
    descriptor = extractor.descriptor
    dense = extractor.keras_model.get_layer(CNN_PROJECTION_LAYER)
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in dense.get_weights())
    images = extractor.preprocess(np.asarray(pair))
    both = np.concatenate([images, images[:, :, ::-1]])
    outs = extractor.feature_model.predict_on_batch(both)
    maps = [np.asarray(m, np.float64) for m in outs[2:]]
    maps = [np.concatenate([m[:2], m[2:, :, ::-1]]) for m in maps]  # mirrors lined up
    last = maps[-1]  # (4, h, w, c): A, B, mirrored A, mirrored B
    _, h, w, _ = last.shape
    # Category part: cells of each pass through the affine head, over that pass's |z|.
    cells = last.reshape(4, h * w, -1) @ kernel + bias
    z = cells.mean(axis=1)
    passes = cells / (h * w * np.linalg.norm(z, axis=1)[:, None, None])
    sums = passes[:2] + passes[2:]  # (2, hw, d): A's and B's cells, both passes
    total = sums.sum(axis=1)
    category = total / np.linalg.norm(total, axis=1, keepdims=True)
    # Appearance part: each stage's cells over its summed map's mean norm, then whitened.
    offsets = np.cumsum([0, *(m.shape[-1] for m in maps)])
    stages = []
    for i, m in enumerate(maps):
        summed = m[:2] + m[2:]  # (2, h_i, w_i, c_i)
        _, hi, wi, _ = summed.shape
        norm = np.linalg.norm(summed.mean(axis=(1, 2)), axis=1)
        scaled = summed / (hi * wi * norm[:, None, None, None])
        stages.append((scaled, descriptor.projection[offsets[i] : offsets[i + 1]]))
    offset = -descriptor.mean @ descriptor.projection
    u = offset + sum(part.sum(axis=(1, 2)) @ rows for part, rows in stages)  # (2, c)
    appearance = u / np.linalg.norm(u, axis=1, keepdims=True)
    s = descriptor.share
    heat = []
    for x, y in ((0, 1), (1, 0)):
        part = (sums[x] @ category[y]).reshape(h, w) / np.linalg.norm(total[x])
        look = np.full((h, w), offset @ appearance[y] / (h * w))
        for stage_cells, rows in stages:
            look += _pool_to((stage_cells[x] @ (rows @ appearance[y]))[None], (h, w))[0]
        heat.append(((1 - s) * part + s * look / np.linalg.norm(u[x])).astype(np.float32))
    cosine = float((1 - s) * category[0] @ category[1] + s * appearance[0] @ appearance[1])
    return cosine, heat[0], heat[1]


def explain_pair(
    extractor: Any,
    source_a: ImageSource,
    source_b: ImageSource,
    bbox_a: BBox | None = None,
    bbox_b: BBox | None = None,
) -> PairExplanation:
    """Why photo A and photo B match for `extractor`: their similarity maps.

    Parameters
    ----------
    extractor : a loaded `pipelines.models.extractors.Extractor`.
    source_a, source_b : file paths or bytes (an upload), loaded exactly as the search loads
        them (`Extractor.load_pixels`).
    bbox_a, bbox_b : crop boxes of catalog items that have one (`pipelines.data.catalog.bbox_of`).
    """
    pixels_a = extractor.load_pixels(source_a, bbox_a)
    pixels_b = extractor.load_pixels(source_b, bbox_b)
    return explain_pixels(extractor, pixels_a, pixels_b)


# --------------------------------------------------------------------------- pictures


def colourise(heat: np.ndarray, size: int) -> np.ndarray:
    """(h, w) map -> (size, size, 3) uint8 colours, 0 and below cold, the map's maximum hot.

    Cells that pull the similarity down (negative shares) are drawn as cold as cells that add
    nothing: the picture answers "where does the match come from".
    """
    heat = np.asarray(heat, dtype=np.float32)
    top = float(heat.max()) if heat.size else 0.0
    scaled = np.clip(heat / top, 0.0, 1.0) if top > 0 else np.zeros_like(heat)
    # Bilinear upsampling of the cell grid: blocky 8x8 squares read as artefacts, not regions.
    grey = Image.fromarray((scaled * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    t = np.asarray(grey, dtype=np.float32) / 255.0 * (len(_STOPS) - 1)
    low = np.minimum(np.floor(t).astype(np.int64), len(_STOPS) - 2)
    frac = (t - low)[..., None]
    colours = _STOPS[low] * (1 - frac) + _STOPS[low + 1] * frac
    return colours.astype(np.uint8)


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """A photo (S, S, 3) uint8 with its (h, w) similarity map blended over it (RGB image)."""
    if not 0.0 <= alpha <= 1.0:
        raise LookalikeError(f"alpha must be between 0 and 1, got {alpha}")
    pixels = np.asarray(pixels, dtype=np.uint8)
    colours = colourise(heat, pixels.shape[0]).astype(np.float32)
    if colours.shape != pixels.shape:
        colours = np.asarray(
            Image.fromarray(colours.astype(np.uint8)).resize(
                (pixels.shape[1], pixels.shape[0]), Image.Resampling.BILINEAR
            ),
            dtype=np.float32,
        )
    blended = (1 - alpha) * pixels.astype(np.float32) + alpha * colours
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def overlay_jpeg(pixels: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> bytes:
    """`overlay` encoded as JPEG bytes (what the app shows)."""
    buffer = io.BytesIO()
    overlay(pixels, heat, alpha).save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


# --------------------------------------------------------------------------- faithfulness


def mask_cells(pixels: np.ndarray, cells: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A copy of (S, S, 3) pixels with the chosen cells of an (h, w) grid set to grey.

    Parameters
    ----------
    pixels : the model input.
    cells : flat indices (row-major) of the cells to hide.
    grid : (h, w) of the similarity map the cells belong to.
    """
    h, w = grid
    out = np.array(pixels, dtype=np.uint8, copy=True)
    size_y, size_x = out.shape[:2]
    ys = np.linspace(0, size_y, h + 1).round().astype(int)
    xs = np.linspace(0, size_x, w + 1).round().astype(int)
    for cell in np.asarray(cells, dtype=np.int64).reshape(-1):
        r, c = divmod(int(cell), w)
        out[ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = MASK_VALUE
    return out


def hottest_cells(heat: np.ndarray, fraction: float) -> np.ndarray:
    """Flat indices of the `fraction` of cells with the largest values, hottest first."""
    if not 0.0 < fraction <= 1.0:
        raise LookalikeError(f"fraction must be in (0, 1], got {fraction}")
    flat = np.asarray(heat).reshape(-1)
    n = max(1, int(round(fraction * flat.size)))
    return np.argsort(-flat, kind="stable")[:n]

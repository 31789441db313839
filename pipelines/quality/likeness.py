"""Likeness beside category: copy-retrieval R@1 (altered photos find their original) and colour
agreement@k, plus the seeded photo alterations they use. Pure numpy/Pillow; writes nothing."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from pipelines.config import Config
from pipelines.data.images import BBox, ImageSource, load_image

# The alteration of issue 12: random resized crop keeping 70-100 % of each side, horizontal
# flip (half the photos), brightness and contrast each within +-15 %, then JPEG quality 60.
CROP_RANGE = (0.70, 1.00)
JITTER = 0.15
JPEG_QUALITY = 60
# Copies decoded and embedded at a time.
BATCH = 32


def alter(image: Image.Image, rng: np.random.Generator) -> bytes:
    """One seeded alteration of an RGB photo, returned as JPEG bytes (quality 60).

    The crop keeps a random 70-100 % of the width and of the height at a random place and is
    resized back to the photo's size, so only content, not the size, changes.
    """
    width, height = image.size
    fw, fh = rng.uniform(*CROP_RANGE, size=2)
    cw, ch = max(1, round(width * fw)), max(1, round(height * fh))
    x0 = int(rng.integers(0, width - cw + 1))
    y0 = int(rng.integers(0, height - ch + 1))
    out = image.crop((x0, y0, x0 + cw, y0 + ch)).resize((width, height), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(1 - JITTER, 1 + JITTER))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(1 - JITTER, 1 + JITTER))
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def altered_copies(
    sources: Sequence[ImageSource],
    seed: int,
    max_pixels: int,
    bboxes: Sequence[BBox | None] | None = None,
    keys: Sequence[int] | None = None,
) -> list[bytes]:
    """`alter` applied to each photo (cropped to its box when given) with its own generator
    (seed, key): the same key always gets the same alteration. Keys default to positions;
    the evaluation passes `item_key(item_id)`, so a photo keeps its alteration (and its cached
    vectors) when the catalog around it changes."""
    boxes = bboxes if bboxes is not None else [None] * len(sources)
    keys = keys if keys is not None else range(len(sources))
    out = []
    for key, source, box in zip(keys, sources, boxes, strict=True):
        image = load_image(source, bbox=box, max_pixels=max_pixels)
        out.append(alter(image, np.random.default_rng([seed, int(key)])))
    return out


def item_key(item_id: str) -> int:
    """A photo's generator key from its item id: stable across updates, any id spelling."""
    return int.from_bytes(hashlib.sha256(str(item_id).encode()).digest()[:8], "big")


def altered_vectors(
    config: Config, catalog: pd.DataFrame, rows: np.ndarray, extractors: Sequence[str]
) -> dict[str, np.ndarray]:
    """{extractor: (m, d) unit vectors of the altered copies of catalog `rows`}.

    Each extractor loads the altered JPEG through its own `load_pixels` path; a head on
    another extractor's vectors (`from_base`) reuses that extractor's vectors of the copies.
    """
    from pipelines.data.catalog import bbox_of
    from pipelines.models.extractors import get_extractor

    records = catalog.iloc[rows].to_dict("records")
    photos = altered_copies(
        [r["path"] for r in records],
        config.seed,
        config.max_pixels,
        [bbox_of(r) for r in records],
        keys=[item_key(r["item_id"]) for r in records],
    )
    out: dict[str, np.ndarray] = {}
    heads = []
    for name in extractors:
        ext = get_extractor(name, config)
        if hasattr(ext, "from_base"):
            heads.append((name, ext))
        else:
            out[name] = ext.embed_images(photos, batch=BATCH)
    for name, ext in heads:
        for base in ("inception_v3", "custom_cnn"):
            if base not in out and (base == "inception_v3" or ext.head.cnn_share > 0):
                out[base] = get_extractor(base, config).embed_images(photos, batch=BATCH)
        out[name] = ext.from_base(out["inception_v3"], out.get("custom_cnn"))
    return {name: out[name] for name in extractors}


def copy_recall_at_1(
    altered: np.ndarray,
    originals: np.ndarray,
    gallery: np.ndarray,
    exclude: np.ndarray | None = None,
) -> float:
    """Share of altered copies whose nearest item is their own original.

    Parameters
    ----------
    altered : (m, d) unit vectors of the altered photos.
    originals : (m, d) unit vectors of the same photos unaltered (row i is query i's original).
    gallery : (g, d) unit vectors of the other items.
    exclude : (m,) position in `gallery` of each query's original when it is in the gallery
        (leave-one-out), -1 when not; that position is not counted as another item.

    Each query searches the gallery plus its own original; a tie counts as a miss.
    """
    altered = np.asarray(altered, np.float32)
    if not len(altered):
        return float("nan")
    to_original = np.einsum("ij,ij->i", altered, np.asarray(originals, np.float32))
    sims = altered @ np.asarray(gallery, np.float32).T
    if exclude is not None:
        own = np.flatnonzero(np.asarray(exclude) >= 0)
        sims[own, np.asarray(exclude)[own]] = -np.inf
    return float((to_original > sims.max(axis=1)).mean())


def colour_agreement(found: np.ndarray, query_colours: np.ndarray, colours: np.ndarray, k: int):
    """(m,) share of each query's first k results whose colour is the query's.

    Parameters
    ----------
    found : (m, >=k) result rows into `colours` (-1 for a missing result, counted as a miss).
    query_colours : (m,) colour name of each query.
    colours : (n,) colour name of every item `found` points into.
    """
    top = np.asarray(found)[:, :k]
    names = np.asarray(colours, dtype=object)[np.maximum(top, 0)]
    same = (top >= 0) & (names == np.asarray(query_colours, dtype=object)[:, None])
    return same.sum(axis=1) / k

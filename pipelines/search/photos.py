"""Live uploads: checks, decodes and embeds a photo with every extractor, then finds its
neighbours and its place on each map, through the same functions as the catalog. Writes
nothing."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipelines.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    load_image,
    printable,
    square_array,
    thumbnail,
)
from pipelines.errors import LookalikeError
from pipelines.search.index import Index
from pipelines.search.similar import resolve_strategy, vector_neighbours

# Largest upload accepted, in MB; .streamlit/config.toml sets the same server.maxUploadSize.
MAX_UPLOAD_MB = 20
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
# Long side of the preview kept for an uploaded photo: the app never shows full-size photos.
UPLOAD_PREVIEW_SIZE = 256
# Memory one upload's decode may take (`images.decode_cost`): a 20 MB file can declare a huge
# RGBA or 16-bit image; this keeps the decode of any single upload to ~250 MB of resident
# memory (8-megapixel RGBA or 12-megapixel RGB PNGs, and any JPEG, decoded reduced, fit).
UPLOAD_MAX_DECODE_BYTES = 192 * 2**20


@dataclass(frozen=True)
class UploadEmbedding:
    """One uploaded photo embedded by every extractor (or the reason it could not be)."""

    name: str
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # extractor -> (d,) unit
    category: str | None = None  # custom CNN's top class
    confidence: float | None = None  # its probability
    preview: bytes | None = None  # small JPEG of the photo for the page
    error: str | None = None  # "<name>: <problem>" when the photo cannot be used


@dataclass(frozen=True)
class UploadResult:
    """Everything the Upload page shows for one photo."""

    name: str
    category: str | None = None
    confidence: float | None = None
    preview: bytes | None = None
    neighbours: dict[str, pd.DataFrame] = field(default_factory=dict)  # extractor -> table
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)  # extractor -> x, y
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def check_upload(name: str, data: bytes, max_bytes: int = MAX_UPLOAD_BYTES) -> str | None:
    """The problem with an upload before decoding it (empty or too large), or None."""
    shown = printable(name)
    if not data:
        return f"{shown}: empty file (0 bytes)"
    if len(data) > max_bytes:
        size, exact = _size_over(len(data), max_bytes)
        return (
            f"{shown}: {size} is over the {_size_text(max_bytes)} upload limit{exact} — upload "
            f"a smaller photo"
        )
    return None


def _size_text(n_bytes: int, decimals: int = 1) -> str:
    if n_bytes >= 2**20:
        return f"{n_bytes / 2**20:.{decimals}f} MB"
    return f"{n_bytes / 2**10:.{decimals}f} KB"


def _size_over(n_bytes: int, limit: int) -> tuple[str, str]:
    """A size over `limit` in words that show it is over: more decimals when one rounds to the
    limit ("20.03 MB"), exact bytes for both when even three do ("20.0 MB is over the 20.0 MB
    limit" is not a reason anyone can act on). Returns (size, note after the limit)."""
    cap = _size_text(limit)
    for decimals in (1, 2, 3):
        size = _size_text(n_bytes, decimals)
        if size != _size_text(limit, decimals) and size != cap:
            return size, ""
    return f"{n_bytes:,} bytes", f" ({limit:,} bytes)"


def decode_upload(
    name: str,
    data: bytes,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = UPLOAD_PREVIEW_SIZE,
    max_decode_bytes: int = UPLOAD_MAX_DECODE_BYTES,
) -> Image.Image:
    """Check and decode one upload into an upright RGB image: the decode every upload takes.

    Parameters
    ----------
    name : the file name, used in messages (control characters escaped).
    data : the file's bytes.
    max_bytes : larger files are refused before decoding.
    max_pixels : decompression-bomb cap on the declared size.
    draft_size : JPEGs decode reduced to at least this many pixels a side.
    max_decode_bytes : memory budget of the decode (`images.decode_cost`).

    Raises
    ------
    ImageError
        The only exception for a bad upload; its message is "<name>: <problem and fix>".
    """
    problem = check_upload(name, data, max_bytes)
    if problem:
        raise ImageError(problem.split(": ", 1)[1], name)
    try:
        return load_image(
            data, max_pixels=max_pixels, draft_size=draft_size, max_bytes=max_decode_bytes
        )
    except ImageError as err:
        raise ImageError(err.reason, name) from err


def embed_upload(
    name: str,
    data: bytes,
    extractors: Mapping[str, Any],
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
) -> UploadEmbedding:
    """Embed one uploaded photo live with every extractor; never raises for a bad photo.

    Parameters
    ----------
    name : the file name, used in messages.
    data : the file's bytes.
    extractors : {extractor name: `pipelines.models.extractors.Extractor`}. An extractor with
        `embed_and_classify` and class names (the custom CNN) also predicts the category.
    max_bytes : larger files are refused before decoding.
    max_pixels : decompression-bomb cap; default the extractors' config (`max_pixels`).

    Returns
    -------
    UploadEmbedding; `error` names the file and the problem (not an image, corrupt, too
    large) when it cannot be used, and then `vectors` is empty.
    """
    vectors: dict[str, np.ndarray] = {}
    category = confidence = None
    try:
        first = next(iter(extractors.values()), None)
        cap = max_pixels or (first.config.max_pixels if first is not None else None)
        cap = cap or DEFAULT_MAX_PIXELS
        image = decode_upload(name, data, max_bytes, max_pixels=cap)
        # JPEGs decode at a reduced size per use (draft mode), so each use decodes its own
        # copy cheaply. Other formats decode in full every time: decode once and share it.
        is_jpeg = data[:3] == b"\xff\xd8\xff"
        buffer = io.BytesIO()
        thumbnail(image, UPLOAD_PREVIEW_SIZE).save(buffer, format="JPEG", quality=85)
        heads = {n: e for n, e in extractors.items() if hasattr(e, "from_base")}
        for extractor_name, extractor in extractors.items():
            if extractor_name in heads:
                continue
            if is_jpeg:
                pixels = extractor.load_pixels(data)[None]
            else:
                pixels = square_pixels(image, extractor.input_size)[None]
            classify = getattr(extractor, "embed_and_classify", None)
            names = list(getattr(extractor, "class_names", []) or []) if classify else []
            if classify is not None and names:
                emb, probs = classify(pixels)
                if probs is not None:
                    top = int(np.argmax(probs[0]))
                    category, confidence = names[top], float(probs[0][top])
            else:
                emb = extractor.embed_arrays(pixels)
            vectors[extractor_name] = np.asarray(emb[0], dtype=np.float32)
        for extractor_name, head in heads.items():
            vectors[extractor_name] = _head_vector(head, data, vectors)
    except ImageError as err:
        return UploadEmbedding(name, error=f"{printable(name)}: {err.reason}")
    except LookalikeError as err:
        return UploadEmbedding(name, error=f"{printable(name)}: {err}")
    return UploadEmbedding(name, vectors, category, confidence, buffer.getvalue())


def _head_vector(head: Any, data: bytes, vectors: Mapping[str, np.ndarray]) -> np.ndarray:
    """A metric head's vector of an upload: from the base extractors' vectors of the same
    photo when they were just computed (as the embed stage does from the stored ones; no
    second InceptionV3 pass), else through the head's own live path."""
    base = vectors.get("inception_v3")
    cnn = vectors.get("custom_cnn") if head.head.cnn_share > 0 else None
    if base is None or (head.head.cnn_share > 0 and cnn is None):
        return np.asarray(head.embed_images([data])[0], dtype=np.float32)
    fused = head.from_base(base[None], None if cnn is None else cnn[None])
    return np.asarray(fused[0], dtype=np.float32)


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """A decoded RGB image as the (size, size, 3) uint8 model input, made square exactly as
    `pipelines.data.images.load_array` does for a non-JPEG file (a test checks they agree)."""
    return square_array(image, size)


def place_on_map(neighbours: pd.DataFrame, points: pd.DataFrame) -> tuple[float, float]:
    """Where a query sits on a map: the similarity-weighted mean of its neighbours' positions.

    Parameters
    ----------
    neighbours : item_id, similarity (a `neighbours_table`).
    points : item_id, x, y (a map).

    Returns
    -------
    (x, y); negative similarities weigh nothing, and equal weights are used when none is
    positive. NaN when no neighbour is on the map.
    """
    # A hashed lookup: `isin` against a 3,781-id index costs ~25 ms per call with arrow strings.
    rows = pd.Index(points["item_id"].astype(str)).get_indexer(neighbours["item_id"].astype(str))
    found = rows >= 0
    if not found.any():
        return float("nan"), float("nan")
    xy = points[["x", "y"]].to_numpy(np.float64)[rows[found]]
    weights = np.clip(neighbours["similarity"].to_numpy(np.float64)[found], 0.0, None)
    weights = np.nan_to_num(weights)
    if weights.sum() <= 0:
        weights = np.ones(len(xy))
    x, y = (weights[:, None] * xy).sum(axis=0) / weights.sum()
    return float(x), float(y)


def analyse_upload(
    embedding: UploadEmbedding,
    indexes: Mapping[str, Index],
    catalog: pd.DataFrame,
    maps: Mapping[str, pd.DataFrame],
    k: int,
    strategy: str = "exact",
    *,
    diversity: float = 0.0,
) -> UploadResult:
    """Neighbours of an embedded upload in every extractor's index, and its place on each map.

    Parameters
    ----------
    embedding : from `embed_upload`.
    indexes : {extractor: Index}; extractors without a vector in `embedding` are skipped.
    catalog : the catalog (with `thumb_file` for absolute thumbnail paths).
    maps : {extractor: map points (item_id, x, y)}; an extractor without a map gets no
        position.
    k : neighbours per extractor.
    strategy : one of STRATEGIES; falls back to exact (with a note) where unavailable. The
        category strategy searches the photo's predicted category.
    diversity : 0 (plain nearest neighbours) to 1; see `pipelines.search.similar.item_neighbours`.
    """
    base = {
        "name": embedding.name,
        "category": embedding.category,
        "confidence": embedding.confidence,
        "preview": embedding.preview,
    }
    if embedding.error:
        return UploadResult(**base, error=embedding.error)
    neighbours: dict[str, pd.DataFrame] = {}
    positions: dict[str, tuple[float, float]] = {}
    notes: list[str] = []
    for name, index in indexes.items():
        if name not in embedding.vectors:
            continue
        use, note = resolve_strategy(index, strategy)
        if use == "category" and embedding.category is None:
            use, note = "exact", "no predicted category for this photo; showing exact search"
        if note:
            notes.append(f"{name}: {note}")
        table = vector_neighbours(
            index,
            catalog,
            embedding.vectors[name],
            k,
            use,
            category=embedding.category,
            diversity=diversity,
        )
        neighbours[name] = table
        if name in maps:
            positions[name] = place_on_map(table, maps[name])
    return UploadResult(**base, neighbours=neighbours, positions=positions, notes=notes)


def analyse_uploads(
    uploads: Sequence[tuple[str, bytes]],
    extractors: Mapping[str, Any],
    indexes: Mapping[str, Index],
    catalog: pd.DataFrame,
    maps: Mapping[str, pd.DataFrame],
    k: int,
    strategy: str = "exact",
    max_bytes: int = MAX_UPLOAD_BYTES,
    *,
    diversity: float = 0.0,
) -> list[UploadResult]:
    """`embed_upload` then `analyse_upload` for each (name, bytes); one result per upload, in
    order, bad files included with their `error`."""
    return [
        analyse_upload(
            embed_upload(name, data, extractors, max_bytes),
            indexes,
            catalog,
            maps,
            k,
            strategy,
            diversity=diversity,
        )
        for name, data in uploads
    ]


def category_summary(
    results: Sequence[UploadResult | UploadEmbedding], top: int = 3
) -> pd.DataFrame:
    """The most common predicted categories among the usable uploads: category, count (at
    most `top` rows, most common first; ties by name)."""
    cats = [r.category for r in results if r.error is None and r.category is not None]
    counts = pd.Series(cats, dtype=object).value_counts()
    table = pd.DataFrame({"category": counts.index.astype(str), "count": counts.to_numpy()})
    table = table.sort_values(["count", "category"], ascending=[False, True], kind="stable")
    return table.head(top).reset_index(drop=True)


# Warnings on usable uploads whose results deserve less trust (issue 14).
# The short side below which a photo holds too little detail for either model.
MIN_UPLOAD_SIDE = 64
# Long side / short side above which squeezing the photo into the model's square distorts it.
MAX_UPLOAD_ASPECT = 3.0
# Category probability below which the prediction is called a guess.
LOW_CONFIDENCE = 0.5


def upload_warnings(name: str, data: bytes, confidence: float | None) -> list[str]:
    """What makes one usable upload's results less trustworthy, each with what to do: a tiny
    image, an extreme aspect ratio, a low-confidence category. Reads only the image header.

    Parameters
    ----------
    name : the file name, used in messages.
    data : the file's bytes (already accepted by `embed_upload`).
    confidence : the predicted category's probability, or None.
    """
    warnings = []
    shown = printable(name)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except (OSError, ValueError):
        width = height = 0
    if width and height:
        if min(width, height) < MIN_UPLOAD_SIDE:
            warnings.append(
                f"{shown} is only {width}×{height} px: too small to show a garment (at least "
                f"{MIN_UPLOAD_SIDE} px a side) — the category and neighbours are guesses; "
                f"upload a larger photo"
            )
        aspect = max(width, height) / min(width, height)
        if aspect > MAX_UPLOAD_ASPECT:
            warnings.append(
                f"{shown} is {width}×{height} px ({aspect:.1f}:1): the models see only its "
                f"centred square, so most of it is cut off — crop the photo to the garment"
            )
    if confidence is not None and confidence < LOW_CONFIDENCE:
        warnings.append(
            f"Low confidence ({confidence:.0%}): the category is a guess; the neighbours may "
            f"show better what the photo resembles"
        )
    return warnings

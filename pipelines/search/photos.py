"""Photo search, the one engine function every door calls (`search_photos`): uploaded bytes ->
checked, decoded and embedded photos -> predicted category, neighbours per extractor (strategy,
colour and label filters, diversity, re-ranking), warnings and places on the maps. The Upload
page, `pipelines.api.Lookalike`, POST /search and `python -m pipelines search` only present its
`UploadResult`s. Reads the loaded artifacts (`PhotoSources`); writes nothing."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipelines import commands
from pipelines.config import EXTRACTORS, STRATEGIES, Config
from pipelines.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    load_image,
    printable,
    square_array,
    thumbnail,
)
from pipelines.data.item_ids import match_rows
from pipelines.errors import LookalikeError
from pipelines.search import garment
from pipelines.search.index import SEPARATOR, WHOLE_CATALOG, Index

# Largest upload accepted, in MB; .streamlit/config.toml sets the same server.maxUploadSize.
MAX_UPLOAD_MB = 20
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
# Long side of the preview kept for an uploaded photo: the app never shows full-size photos.
UPLOAD_PREVIEW_SIZE = 256
# Memory one upload's decode may take (`images.decode_cost`): a 20 MB file can declare a huge
# RGBA or 16-bit image; this keeps the decode of any single upload to ~250 MB of resident
# memory (8-megapixel RGBA or 12-megapixel RGB PNGs, and any JPEG, decoded reduced, fit).
UPLOAD_MAX_DECODE_BYTES = 192 * 2**20
# The custom CNN's own softmax, named as the category model when no classifier was trained.
CNN_HEAD = "custom_cnn softmax head"


@dataclass(frozen=True)
class UploadEmbedding:
    """One uploaded photo embedded by every extractor (or the reason it could not be)."""

    name: str
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # extractor -> (d,) unit
    category: str | None = None  # custom CNN's top class (its softmax head)
    confidence: float | None = None  # its probability
    preview: bytes | None = None  # small JPEG of the photo for the page
    error: str | None = None  # "<name>: <problem>" when the photo cannot be used
    probabilities: dict[str, float] = field(default_factory=dict)  # custom CNN: class -> p
    # The garment's crop (`pipelines.search.garment`), embedded by every extractor when
    # InceptionV3's map finds one; the search uses it when it is closer to the catalog.
    crop_vectors: dict[str, np.ndarray] = field(default_factory=dict)
    crop_box: tuple[float, float, float, float] | None = None  # fractions of the photo
    cropped: bool = False  # the vectors are the crop's (set by `choose_view`)


@dataclass(frozen=True)
class UploadResult:
    """Everything one searched photo gets, at every door.

    `neighbours` holds one table per extractor (`pipelines.search.similar.NEIGHBOUR_COLUMNS`);
    `strategies` the strategy each actually used (exact where the asked one lacks data, with
    a note). `category`, `confidence` and `probabilities` come from `category_model`;
    `searched` is what the category strategy searches for this photo ("a|b", or "*" for the
    whole catalog when the model is unsure). `notes` explain the search, `warnings` say why
    its results deserve less trust (far from the catalog, tiny, panoramic, a guessed category).
    A photo that cannot be used has `error` ("<name>: <problem>") and nothing else.
    """

    name: str
    category: str | None = None
    confidence: float | None = None
    preview: bytes | None = None
    neighbours: dict[str, pd.DataFrame] = field(default_factory=dict)  # extractor -> table
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)  # extractor -> x, y
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)  # category -> p, best first
    searched: str | None = None
    category_model: str | None = None
    strategies: dict[str, str] = field(default_factory=dict)  # extractor -> strategy used
    warnings: list[str] = field(default_factory=list)

    @property
    def searched_categories(self) -> list[str] | None:
        """`searched` as a list (["*"] = the whole catalog), None without a category."""
        return None if self.searched is None else self.searched.split(SEPARATOR)


@dataclass(frozen=True)
class PhotoSources:
    """What a photo search reads, loaded once by a door and shared by all its searches.

    The mappings may load on first use (`pipelines.api.Lookalike` does): a search only asks for
    the extractors it needs.
    """

    catalog: pd.DataFrame  # with `thumb_file` for absolute thumbnail paths
    indexes: Mapping[str, Index]  # extractor -> index (the extractors that can be searched)
    models: Mapping[str, Any]  # extractor -> loaded Extractor (those that can embed photos)
    config: Config = field(default_factory=Config)  # max_pixels, category cover settings
    maps: Mapping[str, pd.DataFrame] = field(default_factory=dict)  # extractor -> map points
    colours: np.ndarray | None = None  # (n,) colour per catalog row, for the colour filter
    category_model: Any = None  # `pipelines.models.classify.CategoryModel` or None
    far: Any = None  # `pipelines.search.novelty.FarCheck` of the reference index, or None


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
    probabilities: dict[str, float] = {}
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
        box = None
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
                    probabilities = {c: float(p) for c, p in zip(names, probs[0], strict=True)}
            elif (
                extractor_name == garment.BASE
                and extractor.config.garment_crop
                and callable(getattr(extractor, "embed_with_maps", None))
            ):
                emb, maps = extractor.embed_with_maps(pixels)
                box = garment.garment_box(maps[0])
            else:
                emb = extractor.embed_arrays(pixels)
            vectors[extractor_name] = np.asarray(emb[0], dtype=np.float32)
        for extractor_name, head in heads.items():
            vectors[extractor_name] = _head_vector(head, data, vectors)
        crop = garment.crop_to_box(image, box) if box is not None else None
        crop_vectors = _crop_vectors(crop, extractors, heads) if crop is not None else {}
    except ImageError as err:
        return UploadEmbedding(name, error=f"{printable(name)}: {err.reason}")
    except LookalikeError as err:
        return UploadEmbedding(name, error=f"{printable(name)}: {err}")
    return UploadEmbedding(
        name,
        vectors,
        category,
        confidence,
        buffer.getvalue(),
        probabilities=probabilities,
        crop_vectors=crop_vectors,
        crop_box=_fractions(image.size, box) if crop_vectors and box is not None else None,
    )


def _fractions(size: tuple[int, int], box: garment.Box) -> tuple[float, float, float, float]:
    """A garment box as fractions of the photo's width and height (the note's numbers)."""
    x0, y0, x1, y1 = garment.photo_box(size, box)
    width, height = size
    return x0 / width, y0 / height, x1 / width, y1 / height


def _crop_vectors(
    crop: Image.Image, extractors: Mapping[str, Any], heads: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Every extractor's vector of the garment's crop (heads from their bases' vectors)."""
    out: dict[str, np.ndarray] = {}
    for extractor_name, extractor in extractors.items():
        if extractor_name not in heads:
            pixels = square_pixels(crop, extractor.input_size)[None]
            out[extractor_name] = np.asarray(extractor.embed_arrays(pixels)[0], np.float32)
    for extractor_name, head in heads.items():
        base = out.get(garment.BASE)
        cnn = out.get("custom_cnn") if head.head.cnn_share > 0 else None
        if base is None or (head.head.cnn_share > 0 and cnn is None):
            return {}  # the head's bases were not embedded: no crop to compare
        fused = head.from_base(base[None], None if cnn is None else cnn[None])
        out[extractor_name] = np.asarray(fused[0], np.float32)
    return out


def choose_view(embedding: UploadEmbedding, index: Index | None) -> UploadEmbedding:
    """The upload as searched: its garment's crop instead of the whole photo when the crop's
    nearest catalog item in `index` (InceptionV3's) is more similar (`garment.crop_is_closer`)."""
    import dataclasses

    from pipelines.search.novelty import nearest_similarity

    if not embedding.crop_vectors or index is None:
        return embedding
    whole = nearest_similarity(index, embedding.vectors[garment.BASE])
    crop = nearest_similarity(index, embedding.crop_vectors[garment.BASE])
    if not garment.crop_is_closer(whole, crop):
        return embedding
    return dataclasses.replace(embedding, vectors=dict(embedding.crop_vectors), cropped=True)


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
    # Rows by id (`match_rows`): `isin` against a 3,781-id index cost ~25 ms per call with
    # arrow strings.
    rows = match_rows(points["item_id"], neighbours["item_id"])
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


def search_photos(
    uploads: Sequence[tuple[str, bytes | str]],
    sources: PhotoSources,
    k: int = 10,
    extractors: Sequence[str] | None = None,
    strategy: str = "exact",
    *,
    diversity: float = 0.0,
    rerank: bool = False,
    colour: str | None = None,
    label: str | None = None,
    max_bytes: int = MAX_UPLOAD_BYTES,
    embed: Callable[..., UploadEmbedding] | None = None,
) -> list[UploadResult]:
    """Search catalog items like each uploaded photo: the one photo search of every door.

    For each photo: check and decode it (`decode_upload`: the project's one decoder, under the
    upload's size and memory budget), embed it with every extractor the search needs, predict
    its category, search each asked extractor's index, and place it on the maps.

    The category comes from the `classify` stage's classifier (`sources.category_model`) when
    it exists: its probabilities choose the categories the category strategy searches (the top
    ones until they add up to `config.category_cover`; the whole catalog when the top one is
    below `config.category_exact_below`). Without it (a build from before that stage, or a
    catalog without labels), the custom CNN's own softmax predicts, with the same rule on its
    probabilities; without either, the photo has no category and the category strategy falls
    back to exact search, with a note.

    Parameters
    ----------
    uploads : (name, bytes) per photo, in order; a str instead of bytes is a problem the door
        found before (an unreadable file), kept as that photo's error.
    sources : the loaded catalog, indexes, models, maps, colours, classifier and far check.
    k : neighbours per extractor, 1 to the catalog size.
    extractors : the extractors whose neighbours are wanted; default every index in `sources`.
        The classifier's extractors and the far check's reference are embedded in any case.
    strategy : one of STRATEGIES; an index without the strategy's data searches exactly (note).
    diversity : 0 (plain nearest neighbours) to 1, see `pipelines.search.diversity`.
    rerank : re-order the nearest candidates by query expansion (`pipelines.search.rerank`).
    colour : only catalog items of this dominant colour (`sources.colours`); None: any.
    label : only catalog items with this label; None: any. Filtered searches widen until k
        pass (`pipelines.search.similar.filtered_search`), never rank the whole catalog.
    max_bytes : larger files are refused before decoding.
    embed : `embed_upload` (default) or a memoised wrapper of it with the same arguments (the
        Upload page caches embeddings across reruns).

    Returns
    -------
    One `UploadResult` per upload, in order; an unusable photo has only its `error`.

    Raises
    ------
    LookalikeError for a bad setting (unknown extractor, strategy, colour or label; k or
    diversity out of range): the message names the rule and the valid choices.
    """
    from pipelines.search.diversity import check_diversity
    from pipelines.search.rerank import check_rerank
    from pipelines.search.topk import check_k

    asked = list(dict.fromkeys(sources.indexes if extractors is None else extractors))
    check_search(sources, asked, strategy, colour, label)
    check_k(k)
    diversity = check_diversity(diversity)
    rerank = check_rerank(rerank)
    embed = embed or embed_upload  # looked up now, so a test can replace embed_upload
    models = {name: sources.models[name] for name in needed_models(sources, asked)}
    results = []
    for name, data in uploads:
        if isinstance(data, str):
            results.append(UploadResult(name, error=data))
            continue
        embedding = _embedded(embed, name, data, models, max_bytes, sources.config.max_pixels)
        if embedding.error is not None:
            results.append(UploadResult(name, error=embedding.error))
            continue
        embedding = choose_view(embedding, sources.indexes.get(garment.BASE))
        results.append(
            _search_one(
                embedding, data, sources, asked, k, strategy, diversity, rerank, colour, label
            )
        )
    return results


def check_search(
    sources: PhotoSources,
    extractors: Sequence[str],
    strategy: str,
    colour: str | None = None,
    label: str | None = None,
) -> None:
    """The search settings a door may check before reading any photo: extractors searchable
    and able to embed, strategy, colour and label names. Raises LookalikeError naming the
    valid choices."""
    for name in extractors:
        if name not in EXTRACTORS:
            raise LookalikeError(
                f"unknown extractor {name!r}; valid extractors: {', '.join(EXTRACTORS)}"
            )
        if name not in sources.indexes:
            raise LookalikeError(
                f"the {name} embeddings are not built — run `{commands.embed(name)}`; "
                f"searchable: {', '.join(sources.indexes)}"
            )
        if name not in sources.models:
            raise LookalikeError(
                f"the {name} model cannot embed photos: it is not trained or not loaded — "
                f"build it with `{commands.RUN}`; can embed: {', '.join(sources.models)}"
            )
    if strategy not in STRATEGIES:
        raise LookalikeError(
            f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
        )
    if colour is not None:
        from pipelines.data.colour import COLOURS, MISSING_HINT

        if colour not in COLOURS:
            raise LookalikeError(f"unknown colour {colour!r}; valid colours: {', '.join(COLOURS)}")
        if sources.colours is None:
            raise LookalikeError(f"the colour filter needs the items' colours: {MISSING_HINT}")
    if label is not None:
        labels = sorted({str(v) for v in sources.catalog.get("label", pd.Series()).dropna()})
        if label not in labels:
            raise LookalikeError(
                f"unknown label {label!r}; valid labels: {', '.join(labels) or 'none'}"
            )


def needed_models(sources: PhotoSources, extractors: Sequence[str]) -> list[str]:
    """The extractors a search embeds each photo with, in EXTRACTORS order: the asked ones,
    the classifier's features (else the custom CNN for its softmax), and the far check's."""
    needed = set(extractors)
    model = sources.category_model
    if model is not None and all(f in sources.models for f in model.features):
        needed.update(model.features)
    elif "custom_cnn" in sources.models:
        needed.add("custom_cnn")
    if sources.far is not None and sources.far.extractor in sources.models:
        needed.add(sources.far.extractor)
    return [name for name in EXTRACTORS if name in needed]


def _embedded(
    embed: Callable[..., UploadEmbedding],
    name: str,
    data: bytes,
    models: Mapping[str, Any],
    max_bytes: int,
    max_pixels: int,
) -> UploadEmbedding:
    """`embed(...)`, with any decoder failure it did not word kept as the photo's error: a
    photo's problem is never the door's."""
    try:
        return embed(name, data, models, max_bytes, max_pixels=max_pixels)
    except Exception as err:  # noqa: BLE001 - a plugin's own exception type, said as such
        return UploadEmbedding(
            name, error=f"{printable(name)}: unreadable image ({type(err).__name__}: {err})"
        )


@dataclass(frozen=True)
class CategoryPrediction:
    """A photo's predicted category, its probabilities, what the category strategy searches
    ("a|b" or "*") and the model that predicted it."""

    category: str
    confidence: float
    probabilities: dict[str, float]
    searched: str
    model: str


def predict_category(
    embedding: UploadEmbedding, sources: PhotoSources
) -> CategoryPrediction | None:
    """The photo's category, by the classifier when it exists, else the custom CNN's softmax
    (see `search_photos`); None without either."""
    from pipelines.models.classify import search_categories

    model = sources.category_model
    if model is not None and all(f in embedding.vectors for f in model.features):
        probs = model.probabilities({f: embedding.vectors[f] for f in model.features})[0]
        classes, name = [str(c) for c in model.classes], model.name
    elif embedding.probabilities:
        classes, name = list(embedding.probabilities), CNN_HEAD
        probs = np.asarray(list(embedding.probabilities.values()), dtype=np.float32)
    else:
        return None
    cfg = sources.config
    searched = search_categories(
        probs[None], classes, cfg.category_cover, cfg.category_exact_below
    )[0]
    order = np.argsort(-probs, kind="stable")
    return CategoryPrediction(
        category=classes[order[0]],
        confidence=float(probs[order[0]]),
        probabilities={classes[i]: round(float(probs[i]), 6) for i in order},
        searched=str(searched),
        model=name,
    )


def _search_one(
    embedding: UploadEmbedding,
    data: bytes,
    sources: PhotoSources,
    extractors: Sequence[str],
    k: int,
    strategy: str,
    diversity: float,
    rerank: bool,
    colour: str | None,
    label: str | None,
) -> UploadResult:
    """One embedded photo's category, neighbours, notes, warnings and map places."""
    from pipelines.search.similar import resolve_strategy, vector_neighbours

    predicted = predict_category(embedding, sources)
    neighbours: dict[str, pd.DataFrame] = {}
    used: dict[str, str] = {}
    notes: list[str] = []
    for name in extractors:
        index = sources.indexes[name]
        use, note = resolve_strategy(index, strategy)
        if use == "category" and predicted is None:
            use, note = "exact", "no predicted category for this photo; showing exact search"
        if note:
            notes.append(f"{name}: {note}")
        table = vector_neighbours(
            index,
            sources.catalog,
            embedding.vectors[name],
            k,
            use,
            category=None if predicted is None else predicted.searched,
            diversity=diversity,
            rerank=rerank,
            colour=colour,
            colours=sources.colours,
            label=label,
        )
        if (colour is not None or label is not None) and len(table) < min(k, index.size):
            wanted = " and ".join(
                f"{what} {value}" for what, value in (("colour", colour), ("label", label)) if value
            )
            notes.append(f"{name}: only {len(table)} items with {wanted} in the searched items")
        neighbours[name], used[name] = table, use
    if predicted is not None and "category" in used.values():
        searched = (
            "everything (the category is uncertain)"
            if predicted.searched == WHOLE_CATALOG
            else predicted.searched.replace(SEPARATOR, ", ")
        )
        notes.append(f"The category strategy searches: {searched}")
    if embedding.cropped and embedding.crop_box is not None:
        left, top, right, bottom = (round(100 * v) for v in embedding.crop_box)
        notes.append(
            f"Searched with the garment, cropped from the photo (from {left}% to {right}% of "
            f"its width, {top}% to {bottom}% of its height): it is closer to the catalog than "
            f"the whole photo"
        )
    warnings = []
    if sources.far is not None and sources.far.extractor in embedding.vectors:
        from pipelines.search.novelty import far_message, nearest_similarity

        reference = sources.indexes[sources.far.extractor]
        nearest = nearest_similarity(reference, embedding.vectors[sources.far.extractor])
        far = far_message(nearest, sources.far)
        if far:
            warnings.append(far)
    confidence = None if predicted is None else predicted.confidence
    warnings += upload_warnings(embedding.name, data, confidence)
    positions = {
        name: place_on_map(table, sources.maps[name])
        for name, table in neighbours.items()
        if name in sources.maps
    }
    return UploadResult(
        embedding.name,
        category=None if predicted is None else predicted.category,
        confidence=confidence,
        preview=embedding.preview,
        neighbours=neighbours,
        positions=positions,
        notes=notes,
        probabilities={} if predicted is None else predicted.probabilities,
        searched=None if predicted is None else predicted.searched,
        category_model=None if predicted is None else predicted.model,
        strategies=used,
        warnings=warnings,
    )


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

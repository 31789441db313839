"""Reads the catalog, indexes, maps and clusters the app loads; answers its questions as tables."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipelines.artifacts import read_manifest
from pipelines.config import EXTRACTORS, STRATEGIES, Config
from pipelines.errors import LookalikeError
from pipelines.images import DEFAULT_MAX_PIXELS, load_image, thumbnail
from pipelines.search import Index, SearchResult, precision_at_k

# The command that builds every artifact the app reads, quoted in its guidance.
RUN_COMMAND = "python -m pipelines run"
# Largest upload accepted, in MB; .streamlit/config.toml sets the same server.maxUploadSize.
MAX_UPLOAD_MB = 20
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
# Long side of the preview kept for an uploaded photo: the app never shows full-size photos.
UPLOAD_PREVIEW_SIZE = 256
NEIGHBOUR_COLUMNS = ["rank", "item_id", "similarity", "label", "thumb"]
CATALOG_PARTS = ("catalog", "embeddings", "maps", "clusters", "models", "metrics")


# --------------------------------------------------------------------------- artifacts


def app_config(config: Config | None = None) -> Config:
    """The settings the app runs with: `config` (default `Config()`, which honours
    $LOOKALIKE_ARTIFACTS) with the custom CNN's input size and width taken from the trained
    model's manifest, so live uploads are embedded exactly as the model was trained.

    Parameters
    ----------
    config : base settings; None builds `Config()`.

    Returns
    -------
    Config, unchanged when there is no trained model yet.
    """
    config = config or Config()
    manifest = read_manifest(config.models_dir / "custom_cnn.keras") or {}
    changes = {}
    if isinstance(manifest.get("image_size"), int):
        changes["cnn_image_size"] = manifest["image_size"]
    if isinstance(manifest.get("embedding_dim"), int):
        changes["cnn_embedding_dim"] = manifest["embedding_dim"]
    return config.replace(**changes) if changes else config


def required_paths(
    config: Config, parts: Sequence[str], extractors: Sequence[str] = EXTRACTORS
) -> list[Path]:
    """The artifact files a page needs.

    Parameters
    ----------
    config : where the artifacts live.
    parts : any of "catalog", "embeddings", "maps", "clusters", "models", "metrics".
    extractors : extractors whose per-extractor artifacts are needed.
    """
    unknown = [p for p in parts if p not in CATALOG_PARTS]
    if unknown:
        raise LookalikeError(
            f"unknown artifact part {unknown[0]!r}; valid parts: {', '.join(CATALOG_PARTS)}"
        )
    paths: list[Path] = []
    if "catalog" in parts:
        paths.append(config.catalog_path)
    for name in extractors:
        if "embeddings" in parts:
            paths.append(config.embeddings_path(name))
        if "maps" in parts:
            paths.append(config.map_path(name))
        if "clusters" in parts:
            paths.append(config.clusters_path(name))
    if "models" in parts:
        paths.append(config.models_dir / "inception_v3.weights.h5")
        paths.append(config.models_dir / "custom_cnn.keras")
    if "metrics" in parts:
        paths.append(config.metrics_path)
    return paths


def missing_artifacts(
    config: Config, parts: Sequence[str], extractors: Sequence[str] = EXTRACTORS
) -> list[Path]:
    """The needed artifact files (see `required_paths`) that are absent or lack a manifest."""
    return [
        p
        for p in required_paths(config, parts, extractors)
        if not p.exists() or read_manifest(p) is None
    ]


def manifest_sha(path: Path) -> str:
    """The sha256 recorded in `path`'s manifest ("missing" when there is none): the cache key
    of everything loaded from it, so a rebuilt artifact is read again."""
    manifest = read_manifest(path) or {}
    return str(manifest.get("sha256") or "missing")


def artifacts_summary(config: Config) -> dict[str, Any]:
    """What the sidebar says about the artifacts: catalog rows and when they were built.

    Returns
    -------
    {"dir": str, "built": bool, "items": int | None, "catalog_created": str | None,
    "embeddings_created": {extractor: str | None}}
    """
    catalog = read_manifest(config.catalog_path) or {}
    rows = catalog.get("rows")
    if rows is None and config.catalog_path.exists():
        # Older manifests may not count rows; parquet metadata does, without reading the data.
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(config.catalog_path).metadata.num_rows
    return {
        "dir": str(config.artifacts_dir),
        "built": bool(catalog) and config.catalog_path.exists(),
        "items": None if rows is None else int(rows),
        "catalog_created": catalog.get("created"),
        "embeddings_created": {
            name: (read_manifest(config.embeddings_path(name)) or {}).get("created")
            for name in EXTRACTORS
        },
    }


def with_thumb_files(catalog: pd.DataFrame, artifacts_dir: Path) -> pd.DataFrame:
    """A copy of the catalog with `thumb_file`: the absolute path of each item's thumbnail."""
    out = catalog.copy()
    out["item_id"] = out["item_id"].astype(str)
    if "label" not in out.columns:
        out["label"] = None
    root = Path(artifacts_dir)
    out["thumb_file"] = [str(root / t) for t in out["thumb"]]
    return out


def map_points(
    catalog: pd.DataFrame,
    map_table: pd.DataFrame,
    clusters: pd.DataFrame | None = None,
    categories: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per catalog item with its map position and everything a map is coloured by.

    Parameters
    ----------
    catalog : the catalog (item_id, label, split, thumb, ...).
    map_table : item_id, x, y (one extractor's map).
    clusters : item_id, cluster, or None.
    categories : item_id, predicted, confidence, or None.

    Returns
    -------
    DataFrame in catalog order: item_id, x, y, label, split, cluster (str, "" when unknown),
    predicted, thumb_file (when the catalog has it).
    """
    ids = catalog["item_id"].astype(str)
    coords = map_table.assign(item_id=map_table["item_id"].astype(str)).set_index("item_id")
    missing = ~ids.isin(coords.index)
    if missing.any():
        raise LookalikeError(
            f"the map lacks {int(missing.sum())} catalog item(s) (first {ids[missing].iloc[0]}) "
            f"— rerun `python -m pipelines maps`"
        )
    points = pd.DataFrame({"item_id": ids.to_numpy()})
    points["x"] = coords["x"].reindex(ids).to_numpy(np.float32)
    points["y"] = coords["y"].reindex(ids).to_numpy(np.float32)
    for column in ("label", "split", "thumb_file"):
        if column in catalog.columns:
            points[column] = catalog[column].to_numpy()
    if "label" not in points.columns:
        points["label"] = None
    if "split" not in points.columns:
        points["split"] = None
    points["cluster"] = _lookup(clusters, ids, "cluster", lambda v: str(int(v)))
    points["predicted"] = _lookup(categories, ids, "predicted", str)
    return points


def _lookup(table: pd.DataFrame | None, ids: pd.Series, column: str, fmt: Any) -> list[Any]:
    if table is None or column not in table.columns:
        return [""] * len(ids)
    values = table.assign(item_id=table["item_id"].astype(str)).set_index("item_id")[column]
    values = values[~values.index.duplicated()]
    found = values.reindex(ids)
    return ["" if pd.isna(v) else fmt(v) for v in found]


# --------------------------------------------------------------------------- neighbours


def resolve_strategy(index: Index, strategy: str) -> tuple[str, str | None]:
    """The strategy to use on `index`: `strategy` when the index has its data, otherwise
    "exact" and a note saying why (for example clusters not built yet)."""
    if strategy not in STRATEGIES:
        raise LookalikeError(
            f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
        )
    if strategy in index.strategies:
        return strategy, None
    reason = index.unavailable.get(strategy, "its data is missing")
    return "exact", f"the {strategy} strategy is unavailable ({reason}); showing exact search"


def neighbours_table(
    result: SearchResult, catalog: pd.DataFrame, artifacts_dir: Path | None = None
) -> pd.DataFrame:
    """A search result as a table for grids and charts.

    Parameters
    ----------
    result : from `Index.search`; its rows are catalog rows.
    catalog : the catalog the index was built from (same row order).
    artifacts_dir : to make thumbnail paths absolute; None uses `thumb_file` when present, or
        the catalog's relative `thumb`.

    Returns
    -------
    DataFrame with NEIGHBOUR_COLUMNS: rank (1 = most similar), item_id, similarity (cosine,
    float), label, thumb (path of the thumbnail).
    """
    rows = np.asarray(result.rows, dtype=np.int64)
    if len(rows) and rows.max() >= len(catalog):
        raise LookalikeError(
            f"search returned catalog row {int(rows.max())} but the catalog has {len(catalog)} "
            f"rows — the index and catalog are out of step; rerun `{RUN_COMMAND}`"
        )
    labels = catalog["label"].to_numpy(dtype=object) if "label" in catalog.columns else None
    if artifacts_dir is not None:
        thumbs = [str(Path(artifacts_dir) / t) for t in catalog["thumb"].to_numpy()[rows]]
    elif "thumb_file" in catalog.columns:
        thumbs = list(catalog["thumb_file"].to_numpy()[rows])
    else:
        thumbs = list(catalog["thumb"].to_numpy()[rows])
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(rows) + 1),
            "item_id": np.asarray(result.item_ids, dtype=object).astype(str),
            "similarity": np.asarray(result.similarities, dtype=np.float64),
            "label": [None] * len(rows) if labels is None else labels[rows],
            "thumb": thumbs,
        },
        columns=NEIGHBOUR_COLUMNS,
    )


def item_neighbours(
    index: Index,
    catalog: pd.DataFrame,
    item_id: str,
    k: int,
    strategy: str = "exact",
    artifacts_dir: Path | None = None,
) -> pd.DataFrame:
    """The k nearest catalog items of a catalog item (never itself), best first.

    Parameters
    ----------
    index : the extractor's index (row i = catalog row i).
    catalog : the catalog, see `neighbours_table`.
    item_id : the query item.
    k : wanted neighbours, clipped to the catalog size minus one.
    strategy : one of STRATEGIES; the cluster strategy searches the item's own cluster, the
        category strategy the items with its predicted category.
    artifacts_dir : see `neighbours_table`.

    Returns
    -------
    The `neighbours_table` (fewer than k rows when the strategy's pool is smaller).
    """
    row = index.rows_of([item_id])
    k = _clip_k(k, index.size - 1)
    clusters = None
    if strategy == "cluster" and index.clusters is not None:
        clusters = index.clusters[row]
    result = index.search(
        index.vectors[row], k, strategy, exclude_rows=row, query_clusters=clusters
    )[0]
    return neighbours_table(result, catalog, artifacts_dir)


def vector_neighbours(
    index: Index,
    catalog: pd.DataFrame,
    vector: np.ndarray,
    k: int,
    strategy: str = "exact",
    category: str | None = None,
    artifacts_dir: Path | None = None,
) -> pd.DataFrame:
    """The k nearest catalog items of an outside vector (an upload), best first.

    Parameters
    ----------
    vector : (d,) embedding from the index's extractor.
    category : the query's predicted category; needed by the category strategy.
    Other parameters as in `item_neighbours`.
    """
    k = _clip_k(k, index.size)
    if strategy == "category" and category is None:
        raise LookalikeError(
            "the category strategy needs the photo's predicted category, and the custom CNN "
            "gave none (it has no classifier head) — choose the exact or cluster strategy"
        )
    categories = [category] if strategy == "category" else None
    result = index.search(vector, k, strategy, query_categories=categories)[0]
    return neighbours_table(result, catalog, artifacts_dir)


def _clip_k(k: int, most: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise LookalikeError(f"k must be a whole number >= 1, got {k!r}")
    if most < 1:
        raise LookalikeError("the catalog needs at least two items to find neighbours")
    return int(min(k, most))


def query_precision(neighbours: pd.DataFrame, query_label: object, k: int) -> float:
    """Precision@k of one query against its own label: the share of its first k neighbours
    with that label (missing neighbours count as misses; NaN when the query has no label)."""
    return precision_at_k(neighbours["label"].tolist(), query_label, k)


def jaccard_at_k(a_ids: Sequence[str], b_ids: Sequence[str]) -> float:
    """|A ∩ B| / |A ∪ B| of two neighbour lists taken as sets (1.0 when both are empty).

    Parameters
    ----------
    a_ids, b_ids : the item ids each extractor returned for the same query at the same k.
    """
    a, b = {str(i) for i in a_ids}, {str(i) for i in b_ids}
    union = a | b
    return 1.0 if not union else len(a & b) / len(union)


def random_item(catalog: pd.DataFrame, rng: np.random.Generator | None = None) -> str:
    """A random catalog item id."""
    if len(catalog) == 0:
        raise LookalikeError(f"the catalog is empty — rerun `{RUN_COMMAND}` on a folder of photos")
    rng = rng or np.random.default_rng()
    return str(catalog["item_id"].iloc[int(rng.integers(len(catalog)))])


def browse_page(
    catalog: pd.DataFrame, labels: Sequence[str] | None = None, page: int = 0, per_page: int = 24
) -> tuple[pd.DataFrame, int]:
    """One page of the catalog for a browsable grid.

    Parameters
    ----------
    labels : keep only these labels (None or empty keeps all).
    page : 0-based page number, clipped to the last page.
    per_page : items per page.

    Returns
    -------
    (rows of that page, number of pages (at least 1)).
    """
    table = catalog
    if labels:
        table = table[table["label"].isin(list(labels))]
    pages = max(1, math.ceil(len(table) / per_page))
    page = min(max(0, int(page)), pages - 1)
    return table.iloc[page * per_page : (page + 1) * per_page], pages


# --------------------------------------------------------------------------- map selections


def selection_to_item_ids(
    event: Mapping[str, Any] | None, trace_item_ids: Sequence[Sequence[str] | None] | None = None
) -> list[str]:
    """The catalog items picked on a map, in the order the chart reports them, once each.

    Parameters
    ----------
    event : what `st.plotly_chart(..., on_select="rerun")` returns
        ({"selection": {"points": [...], "point_indices": [...], "box": [...],
        "lasso": [...]}}), its "selection" part alone, or None.
        Each point carries curve_number and point_index (or point_number), and customdata
        when the figure set it.
    trace_item_ids : item ids of each trace's points, in figure order (None for traces that
        are not catalog items, such as highlight markers and lines). Used when a point carries
        no customdata; a point of an unknown trace or past its trace's end is ignored.

    Returns
    -------
    Item ids (str); empty for no event or an empty selection.
    """
    if not event:
        return []
    selection = event.get("selection", event) if isinstance(event, Mapping) else None
    if not isinstance(selection, Mapping):
        return []
    points = selection.get("points") or []
    ids: list[str] = []
    seen: set[str] = set()
    for point in points:
        if not isinstance(point, Mapping):
            continue
        item = _point_item_id(point, trace_item_ids)
        if item is not None and item not in seen:
            seen.add(item)
            ids.append(item)
    return ids


def _point_item_id(
    point: Mapping[str, Any], trace_item_ids: Sequence[Sequence[str] | None] | None
) -> str | None:
    curve = point.get("curve_number", point.get("curveNumber"))
    # A trace the caller marked as not items (highlights) never yields an id, even when it
    # carries customdata.
    if (
        trace_item_ids is not None
        and curve is not None
        and (not 0 <= int(curve) < len(trace_item_ids) or trace_item_ids[int(curve)] is None)
    ):
        return None
    custom = point.get("customdata")
    if isinstance(custom, list | tuple):
        custom = custom[0] if custom else None
    if isinstance(custom, str) and custom:
        return custom
    if trace_item_ids is None or curve is None:
        return None
    index = point.get("point_index", point.get("point_number", point.get("pointIndex")))
    ids = trace_item_ids[int(curve)]
    if index is None or ids is None or not 0 <= int(index) < len(ids):
        return None
    return str(ids[int(index)])


# --------------------------------------------------------------------------- clusters


def cluster_overview(
    summary: pd.DataFrame, clusters: pd.DataFrame, catalog: pd.DataFrame, n_thumbs: int = 4
) -> pd.DataFrame:
    """One row per cluster for the overview: cluster, size, top_label, purity and a few
    thumbnails (the first `n_thumbs` members in catalog order, as `thumbs`, a list of paths).
    """
    members = clusters.assign(item_id=clusters["item_id"].astype(str)).merge(
        catalog[["item_id", "thumb_file"]], on="item_id", how="left", sort=False
    )
    thumbs = members.groupby("cluster", sort=True)["thumb_file"].apply(
        lambda s: list(s.dropna())[:n_thumbs]
    )
    out = summary[["cluster", "size", "top_label", "purity"]].copy()
    out["thumbs"] = [thumbs.get(c, []) for c in out["cluster"]]
    return out.sort_values("cluster").reset_index(drop=True)


def cluster_members(clusters: pd.DataFrame, catalog: pd.DataFrame, cluster: int) -> pd.DataFrame:
    """The catalog rows (item_id, label, thumb_file, ...) of one cluster, in catalog order."""
    ids = set(clusters.loc[clusters["cluster"] == int(cluster), "item_id"].astype(str))
    return catalog[catalog["item_id"].isin(ids)].reset_index(drop=True)


def cluster_composition(summary: pd.DataFrame, cluster: int) -> pd.DataFrame:
    """Label counts of one cluster (label, count), most common first; empty without labels."""
    row = summary.loc[summary["cluster"] == int(cluster)]
    if row.empty:
        raise LookalikeError(
            f"cluster {cluster} does not exist; valid clusters: "
            f"{', '.join(str(c) for c in summary['cluster'])}"
        )
    counts = json.loads(row["composition"].iloc[0] or "{}")
    return pd.DataFrame(list(counts.items()), columns=["label", "count"])


# --------------------------------------------------------------------------- evaluation


def metrics_long(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """metrics.json's results as rows extractor, strategy, metric ("p@10", "map@10", ...),
    value — only precision and mAP; skipped combinations are left out."""
    rows = []
    for extractor, by_strategy in (metrics.get("results") or {}).items():
        for strategy, values in by_strategy.items():
            for metric, value in values.items():
                if metric.startswith(("p@", "map@")) and value is not None:
                    rows.append((extractor, strategy, metric, float(value)))
    return pd.DataFrame(rows, columns=["extractor", "strategy", "metric", "value"])


# --------------------------------------------------------------------------- uploads


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
    if not data:
        return f"{name}: empty file (0 bytes)"
    if len(data) > max_bytes:
        return (
            f"{name}: {_size_text(len(data))} is over the {_size_text(max_bytes)} upload limit "
            f"— upload a smaller photo"
        )
    return None


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KB"


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
    extractors : {extractor name: `pipelines.extractors.Extractor`}. An extractor with
        `embed_and_classify` and class names (the custom CNN) also predicts the category.
    max_bytes : larger files are refused before decoding.
    max_pixels : decompression-bomb cap; default the extractors' config (`max_pixels`).

    Returns
    -------
    UploadEmbedding; `error` names the file and the problem (not an image, corrupt, too
    large) when it cannot be used, and then `vectors` is empty.
    """
    problem = check_upload(name, data, max_bytes)
    if problem:
        return UploadEmbedding(name, error=problem)
    vectors: dict[str, np.ndarray] = {}
    category = confidence = None
    try:
        first = next(iter(extractors.values()), None)
        cap = max_pixels or (first.config.max_pixels if first is not None else None)
        cap = cap or DEFAULT_MAX_PIXELS
        # JPEGs decode at a reduced size per use (draft mode), so each use decodes its own
        # copy cheaply. Other formats decode in full every time: decode once and share it.
        is_jpeg = data[:3] == b"\xff\xd8\xff"
        image = load_image(data, max_pixels=cap, draft_size=UPLOAD_PREVIEW_SIZE)
        buffer = io.BytesIO()
        thumbnail(image, UPLOAD_PREVIEW_SIZE).save(buffer, format="JPEG", quality=85)
        for extractor_name, extractor in extractors.items():
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
    except LookalikeError as err:
        reason = getattr(err, "reason", None) or str(err)
        return UploadEmbedding(name, error=f"{name}: {reason}")
    return UploadEmbedding(name, vectors, category, confidence, buffer.getvalue())


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """A decoded RGB image as the (size, size, 3) uint8 model input, resized exactly as
    `pipelines.images.load_array` does for a non-JPEG file (a test checks they agree)."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


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
            index, catalog, embedding.vectors[name], k, use, category=embedding.category
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
) -> list[UploadResult]:
    """`embed_upload` then `analyse_upload` for each (name, bytes); one result per upload, in
    order, bad files included with their `error`."""
    return [
        analyse_upload(
            embed_upload(name, data, extractors, max_bytes), indexes, catalog, maps, k, strategy
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

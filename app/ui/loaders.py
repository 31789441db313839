"""Reads artifacts for the pages: tables (st.cache_data), models and indexes (st.cache_resource).

Every loader is keyed on its artifacts' manifest sha256 in one consistent build
(`pipelines.consistency.build_stamp`), so an updated catalog is shown at the next rerun of any
page, and never half of one: `config()`, at the top of every run, pins the build the run shows
— the folder's build when it is consistent, else the last consistent build this process saw
(its tables and indexes are still in the caches) while `run` is writing the next one. A loader
that must read a file checks afterwards that the file is still the pinned build's
(`consistency.check_unchanged`); when it is not, the run stops with a short "being updated"
note (`consistency.UpdateInProgress`, shown by the router and `widgets.user_errors`) instead
of caching or showing a mix. The artifacts folder comes from `Config()` (which honours
$LOOKALIKE_ARTIFACTS).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from app.ui import plots
from pipelines import consistency, status
from pipelines.artifacts import read_manifest
from pipelines.config import Config
from pipelines.explore import browse, tiles
from pipelines.readers import load_index, read_catalog
from pipelines.search import photos
from pipelines.search.approximate import take_rows
from pipelines.search.index import Index

# The build each script run shows, pinned by `config()` (every session reruns on a thread of
# its own); and per artifacts folder, the last consistent build this process saw.
_RUN = threading.local()
_SHOWN: dict[str, consistency.BuildStamp] = {}
_SHOWN_LOCK = threading.Lock()


def config() -> Config:
    """The app's settings: `Config()` (honours $LOOKALIKE_ARTIFACTS), with the custom CNN's
    input size from its trained model; and pins the build this run shows (`build`). Cheap: a
    few small JSON reads and a `stat` of each artifact per rerun."""
    cfg = status.app_config(Config())
    pin(cfg)
    return cfg


def pin(cfg: Config) -> consistency.BuildStamp:
    """Pin the build this script run shows: the folder's when it is one consistent build,
    else the last consistent one this process saw (what `run` is replacing), else the
    inconsistent one (the router then shows only the "being updated" note)."""
    now = consistency.build_stamp(cfg)
    folder = str(cfg.artifacts_dir)
    with _SHOWN_LOCK:
        if now.consistent:
            _SHOWN[folder] = now
        shown = _SHOWN.get(folder, now)
    _RUN.shown, _RUN.now = shown, now
    return shown


def build(cfg: Config) -> tuple[consistency.BuildStamp, consistency.BuildStamp]:
    """(the build this run shows, the folder's state now): they differ while an update is
    being written and the previous build is still shown."""
    shown, now = getattr(_RUN, "shown", None), getattr(_RUN, "now", None)
    if shown is None or now is None or shown.artifacts_dir != str(cfg.artifacts_dir):
        shown = pin(cfg)
        now = _RUN.now
    return shown, now


def sha(path: Path) -> str:
    """`path`'s manifest sha256 in the build this run shows (the cache key of everything
    loaded from it); the manifest on disk for a path outside it or outside a script run."""
    shown = getattr(_RUN, "shown", None)
    found = None if shown is None else shown.sha(path)
    return status.manifest_sha(path) if found is None else found


def _unchanged(*read: tuple[Path, str]) -> None:
    """After reading: the files still are the pinned build's, else UpdateInProgress (so a
    cache never holds a file of one build under the key of another)."""
    consistency.check_unchanged(dict(read))


def _config(artifacts_dir: str, cnn: tuple | None = None) -> Config:
    base = Config(artifacts_dir=Path(artifacts_dir))
    if cnn is None:
        return base
    # (cnn image size, cnn width[, InceptionV3 weights source]): the settings `app_config`
    # read from the manifests, so live uploads use the weights the catalog was embedded with.
    weights = {"inception_weights": cnn[2]} if len(cnn) > 2 else {}
    return base.replace(cnn_image_size=cnn[0], cnn_embedding_dim=cnn[1], **weights)


# --------------------------------------------------------------------------- tables


# The catalog and map tables are st.cache_resource, not st.cache_data: cache_data hands every
# rerun its own unpickled copy, which at 1M items costs about a second per table per rerun.
# Shared objects are read only: pages derive new frames (assign, iloc), never write in place.
@st.cache_resource(show_spinner=False, max_entries=4)
def _catalog(artifacts_dir: str, catalog_sha: str) -> pd.DataFrame:
    cfg = _config(artifacts_dir)
    table, _ = read_catalog(cfg)
    _unchanged((cfg.catalog_path, catalog_sha))
    return _plain_strings(browse.with_thumb_files(table, cfg.artifacts_dir))


def _plain_strings(table: pd.DataFrame) -> pd.DataFrame:
    """String columns as numpy object arrays (missing values None): the pages and the engine
    take `.to_numpy(dtype=object)` of them on every rerun, a copy of every value from Arrow
    strings (~0.1 s per column at 1M rows), free from object arrays."""
    out = table.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.StringDtype):
            out[column] = pd.Series(
                out[column].to_numpy(dtype=object, na_value=None), index=out.index, dtype=object
            )
    return out


def catalog(cfg: Config) -> pd.DataFrame:
    """The catalog with absolute thumbnail paths (`thumb_file`). Shared by every session:
    read only."""
    return _catalog(str(cfg.artifacts_dir), sha(cfg.catalog_path))


@st.cache_data(show_spinner=False, max_entries=4)
def _catalog_labels(artifacts_dir: str, catalog_sha: str) -> list[str]:
    labels = _catalog(artifacts_dir, catalog_sha)["label"].dropna().astype(str)
    return sorted(labels.unique())


def catalog_labels(cfg: Config) -> list[str]:
    """The catalog's labels, sorted (read once per build)."""
    return _catalog_labels(str(cfg.artifacts_dir), sha(cfg.catalog_path))


# id(table) -> (weak reference to the table, its item-id index); see `item_index`.
_ITEM_INDEXES: dict[int, tuple[weakref.ref, pd.Index]] = {}
_ITEM_LOCK = threading.Lock()


def item_index(table: pd.DataFrame) -> pd.Index:
    """`table`'s item ids as a hash index, built once per table object (the shared catalog
    and maps): `item in index` and `index.get_loc(item)` (its row) cost microseconds, where
    `set(table["item_id"])` or `table.set_index("item_id")` cost about a second per rerun
    at 1M items. The memo holds the table weakly, so a dropped table drops its index."""
    with _ITEM_LOCK:  # sessions run on threads of their own
        held = _ITEM_INDEXES.get(id(table))
        if held is not None and held[0]() is table:
            return held[1]
        found = pd.Index(table["item_id"].astype(str))
        for key in [k for k, (ref, _) in _ITEM_INDEXES.items() if ref() is None]:
            del _ITEM_INDEXES[key]
        _ITEM_INDEXES[id(table)] = (weakref.ref(table), found)
        return found


def catalog_row(table: pd.DataFrame, item_id: str) -> pd.Series:
    """One row of a catalog (with its item_id) by id, without indexing the whole table; a
    KeyError when it is not there."""
    row = table.iloc[item_index(table).get_loc(item_id)].copy()
    row["item_id"] = item_id
    return row


def _table(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


@st.cache_resource(show_spinner=False, max_entries=8)
def _points(artifacts_dir: str, extractor: str, key: tuple[str, ...]) -> pd.DataFrame:
    cfg = _config(artifacts_dir)
    table = _catalog(artifacts_dir, key[0])
    points = browse.map_points(
        table,
        pd.read_parquet(cfg.map_path(extractor)),
        _table(cfg.clusters_path(extractor)),
        _table(cfg.categories_path),
    )
    paths = (cfg.map_path(extractor), cfg.clusters_path(extractor), cfg.categories_path)
    _unchanged(*zip(paths, key[1:4], strict=True))
    return points


def _points_key(cfg: Config, extractor: str) -> tuple[str, ...]:
    return (
        sha(cfg.catalog_path),
        sha(cfg.map_path(extractor)),
        sha(cfg.clusters_path(extractor)),
        sha(cfg.categories_path),
        sha(cfg.colours_path),  # read by the map's colour view (`_map_layer`)
    )


def map_points(cfg: Config, extractor: str) -> pd.DataFrame:
    """One extractor's map: item_id, x, y, label, split, cluster, predicted, thumb_file.
    Shared by every session: read only."""
    return _points(str(cfg.artifacts_dir), extractor, _points_key(cfg, extractor))


@st.cache_data(show_spinner=False, max_entries=8)
def _label_counts(artifacts_dir: str, extractor: str, key: tuple[str, ...]) -> dict[str, int]:
    labels = _points(artifacts_dir, extractor, key)["label"].dropna().astype(str)
    return {str(k): int(v) for k, v in labels.value_counts().sort_index().items()}


def map_labels(cfg: Config, extractor: str) -> list[str]:
    """The labels on one extractor's map, sorted (counted once per build)."""
    return list(_label_counts(str(cfg.artifacts_dir), extractor, _points_key(cfg, extractor)))


def label_total(cfg: Config, extractor: str, labels: tuple[str, ...]) -> int:
    """How many items of one extractor's map carry any of `labels`."""
    counts = _label_counts(str(cfg.artifacts_dir), extractor, _points_key(cfg, extractor))
    return sum(counts.get(str(label), 0) for label in labels)


@st.cache_resource(show_spinner="Drawing the map…", max_entries=16)
def _map_layer(
    artifacts_dir: str, extractor: str, key: tuple[str, ...], color_by: str, shown: tuple
) -> plots.MapLayer:
    points = _points(artifacts_dir, extractor, key)
    if color_by == "colour":
        from pipelines.data.colour import read_colours

        cfg = _config(artifacts_dir)
        colours = read_colours(cfg, points["item_id"].to_numpy())
        _unchanged((cfg.colours_path, key[4]))
        points = points.assign(colour="none" if colours is None else colours)
    return plots.map_layer(points, color_by, shown)


# Session key of the raster threshold: a session may draw maps as images from another size
# than `plots.RASTER_MIN_ITEMS` (the app's timing harness, app/timing.py, sets it for a run).
RASTER_MIN_KEY = "raster_min_items"


def raster_min_items() -> int:
    """From how many items this session draws a map as an image."""
    return int(st.session_state.get(RASTER_MIN_KEY, plots.RASTER_MIN_ITEMS))


def map_layer(
    cfg: Config, extractor: str, color_by: str = "label", shown_labels: tuple = ()
) -> plots.MapLayer | None:
    """A large map drawn once per colouring and label filter (`plots.map_layer`: its image,
    interactive sample and id lookups), shared by every session; None for a map below
    `raster_min_items()` items, which is drawn point by point as always."""
    points = map_points(cfg, extractor)
    if len(points) < raster_min_items():
        return None
    key = _points_key(cfg, extractor)
    return _map_layer(str(cfg.artifacts_dir), extractor, key, color_by, tuple(shown_labels))


def map_trustworthiness(cfg: Config, extractor: str) -> float | None:
    """The map's trustworthiness@10 from its manifest (None when not measured)."""
    value = (read_manifest(cfg.map_path(extractor)) or {}).get("trustworthiness")
    return None if value is None else float(value)


@st.cache_data(show_spinner=False, max_entries=8)
def _clusters(artifacts_dir: str, extractor: str, key: tuple[str, str]) -> pd.DataFrame:
    path = _config(artifacts_dir).clusters_path(extractor)
    table = pd.read_parquet(path)
    _unchanged((path, key[0]))
    return table.assign(item_id=table["item_id"].astype(str))


def clusters(cfg: Config, extractor: str) -> pd.DataFrame:
    """item_id, cluster of every catalog item for one extractor."""
    key = (sha(cfg.clusters_path(extractor)), sha(cfg.catalog_path))
    return _clusters(str(cfg.artifacts_dir), extractor, key)


@st.cache_data(show_spinner=False, max_entries=8)
def _cluster_summary(artifacts_dir: str, extractor: str, summary_sha: str) -> pd.DataFrame:
    path = _config(artifacts_dir).cluster_summary_path(extractor)
    table = pd.read_parquet(path)
    _unchanged((path, summary_sha))
    return table


# From this many items the Clusters page picks each cluster's photos nearest its centre among
# a seeded sample of OVERVIEW_SAMPLE members per cluster: scoring every item reads the whole
# matrix (8 GB memory-mapped at 1M x 2048, ~10 s from disk). The label counts still cover
# every member (they come from the cluster summary).
OVERVIEW_SAMPLE_FROM = 200_000
OVERVIEW_SAMPLE = 2_000
# Members of one cluster ordered by their centre similarity on a large catalog (a sample).
MEMBERS_SAMPLE = 5_000


@st.cache_resource(show_spinner="Ordering the clusters…", max_entries=8)
def _cluster_overview(
    _index: Index, artifacts_dir: str, extractor: str, key: tuple[str, ...]
) -> pd.DataFrame:
    summary = _cluster_summary(artifacts_dir, extractor, key[2])
    members = _clusters(artifacts_dir, extractor, (key[1], key[0]))
    table = _catalog(artifacts_dir, key[0])
    if len(table) < OVERVIEW_SAMPLE_FROM:
        return browse.cluster_overview(
            summary, members, table, 5, vectors=_index.vectors, centroids=_index.centroids
        )
    rows = item_index(table).get_indexer(members["item_id"].astype(str))
    groups = pd.Series(np.arange(len(members))).groupby(members["cluster"].to_numpy())
    rng = np.random.default_rng(0)
    picked = np.sort(
        np.concatenate(
            [
                rng.choice(g.to_numpy(), size=min(len(g), OVERVIEW_SAMPLE), replace=False)
                for _, g in groups
            ]
        )
    )
    sub = members.iloc[picked].reset_index(drop=True)
    sub_rows = rows[picked]
    overview = browse.cluster_overview(
        summary,
        sub,
        table.iloc[sub_rows].reset_index(drop=True),
        5,
        vectors=take_rows(_index.vectors, sub_rows),
        centroids=_index.centroids,
    )
    texts = dict(zip(summary["cluster"], summary["composition"], strict=True))
    sizes = dict(zip(summary["cluster"], summary["size"], strict=True))
    overview["labels"] = [_counts_text(texts[c], sizes[c]) for c in overview["cluster"]]
    return overview


def _counts_text(composition: str, size: int, top: int = 3) -> str:
    """`browse.label_counts_text` of a cluster from its summary's composition JSON."""
    counts = json.loads(composition or "{}")
    labelled = sum(counts.values())
    if size > labelled:
        counts["(no label)"] = size - labelled
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    parts = [f"{c} {label}" for label, c in ordered]
    more = f" · +{len(parts) - top} more" if len(parts) > top else ""
    return " · ".join(parts[:top]) + more


def _overview_key(cfg: Config, extractor: str) -> tuple[str, ...]:
    return (
        sha(cfg.catalog_path),
        sha(cfg.clusters_path(extractor)),
        sha(cfg.cluster_summary_path(extractor)),
        sha(cfg.embeddings_path(extractor)),
        sha(cfg.centroids_path(extractor)),
    )


def cluster_overview(cfg: Config, extractor: str) -> pd.DataFrame:
    """`browse.cluster_overview` of one extractor (the five photos nearest each centre),
    computed once per build and shared (read only): it scores every item against every
    centre, seconds at 1M items."""
    key = _overview_key(cfg, extractor)
    return _cluster_overview(index(cfg, extractor), str(cfg.artifacts_dir), extractor, key)


@st.cache_resource(show_spinner=False, max_entries=32)
def _cluster_members(
    _index: Index, artifacts_dir: str, extractor: str, key: tuple[str, ...], cluster: int
) -> pd.DataFrame:
    members = _clusters(artifacts_dir, extractor, (key[1], key[0]))
    table = _catalog(artifacts_dir, key[0])
    if len(table) < OVERVIEW_SAMPLE_FROM:
        return browse.cluster_members(members, table, cluster, _index.vectors, _index.centroids)
    # A large catalog: the members nearest the centre among a seeded sample, then the rest
    # in catalog order (ordering all ~100k members of a cluster reads ~1 GB of vectors).
    centroids = _index.centroids
    rows = item_index(table).get_indexer(members["item_id"][members["cluster"] == cluster])
    rows = np.sort(rows[rows >= 0])
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(rows, size=min(len(rows), MEMBERS_SAMPLE), replace=False))
    sims = np.full(len(picked), np.nan, dtype=np.float32)
    if centroids is not None and int(cluster) < len(centroids):
        sims = take_rows(_index.vectors, picked) @ np.asarray(centroids[cluster], np.float32)
    order = np.argsort(-sims, kind="stable")
    rest = np.setdiff1d(rows, picked, assume_unique=True)
    out = table.iloc[np.concatenate([picked[order], rest])].reset_index(drop=True)
    out["centre_similarity"] = np.concatenate([sims[order], np.full(len(rest), np.nan)])
    out.attrs["ordered"] = len(picked)
    return out


def cluster_members(cfg: Config, extractor: str, cluster: int) -> pd.DataFrame:
    """`browse.cluster_members` of one cluster, nearest its centre first, computed once per
    cluster and shared (read only). From OVERVIEW_SAMPLE_FROM items only a seeded sample of
    MEMBERS_SAMPLE members is ordered (then the rest, `attrs["ordered"]` says how many)."""
    key = _overview_key(cfg, extractor)
    return _cluster_members(
        index(cfg, extractor), str(cfg.artifacts_dir), extractor, key, int(cluster)
    )


def cluster_summary(cfg: Config, extractor: str) -> pd.DataFrame:
    """cluster, size, n_labelled, top_label, purity, composition (pipelines.explore.clusters)."""
    path = cfg.cluster_summary_path(extractor)
    return _cluster_summary(str(cfg.artifacts_dir), extractor, sha(path))


def _drift_paths(cfg: Config) -> tuple[Path, ...]:
    from pipelines.models.training_set import snapshot_path

    # The catalog and the training set; the trained parts' manifests hold the training times.
    return (
        cfg.catalog_path,
        snapshot_path(cfg),
        cfg.custom_cnn_path,
        cfg.head_path,
        cfg.categories_path,
    )


@st.cache_data(show_spinner=False, max_entries=4)
def _drift(artifacts_dir: str, key: tuple[str, ...]) -> dict[str, Any] | None:
    cfg = _config(artifacts_dir)
    found = status.drift(cfg)  # reads the catalog once per build (ids, labels and splits)
    _unchanged(*zip(_drift_paths(cfg), key, strict=True))
    return found


def drift(cfg: Config) -> dict[str, Any] | None:
    """`pipelines.status.drift` of the build shown: items added and removed since the models
    were trained, what the next `run` does, what `run --retrain` costs (None before the
    catalog is built). Once per build."""
    if status.missing_paths([cfg.catalog_path]):
        return None
    return _drift(str(cfg.artifacts_dir), tuple(sha(path) for path in _drift_paths(cfg)))


@st.cache_data(show_spinner=False, max_entries=4)
def _metrics(artifacts_dir: str, metrics_sha: str) -> dict[str, Any] | None:
    path = _config(artifacts_dir).metrics_path
    found = json.loads(path.read_text()) if path.exists() else None
    _unchanged((path, metrics_sha))
    return found


def metrics(cfg: Config) -> dict[str, Any] | None:
    """metrics.json (None before the evaluate stage ran)."""
    return _metrics(str(cfg.artifacts_dir), sha(cfg.metrics_path))


@st.cache_data(show_spinner=False, max_entries=4)
def _per_class(artifacts_dir: str, table_sha: str) -> pd.DataFrame | None:
    path = _config(artifacts_dir).per_class_path
    table = _table(path)
    _unchanged((path, table_sha))
    return table


def per_class(cfg: Config) -> pd.DataFrame | None:
    """extractor, strategy, label, n_queries, p@10 (None before the evaluate stage ran)."""
    return _per_class(str(cfg.artifacts_dir), sha(cfg.per_class_path))


# --------------------------------------------------------------------------- indexes and models


@st.cache_resource(show_spinner="Building the search index…", max_entries=4)
def _index(artifacts_dir: str, extractor: str, key: tuple[str, ...]) -> Index:
    cfg = _config(artifacts_dir)
    found = load_index(cfg, extractor)
    _unchanged(*zip(_index_paths(cfg, extractor), key, strict=True))
    return found


def _index_paths(cfg: Config, extractor: str) -> tuple[Path, ...]:
    return (
        cfg.catalog_path,
        cfg.embeddings_path(extractor),
        cfg.clusters_path(extractor),
        cfg.centroids_path(extractor),
        cfg.categories_path,
        cfg.ann_index_path(extractor),
        cfg.ann_lists_path(extractor),
        cfg.ann_delta_path(extractor),
    )


def index(cfg: Config, extractor: str) -> Index:
    """The extractor's search index (shared by every session; never mutated)."""
    key = tuple(sha(path) for path in _index_paths(cfg, extractor))
    return _index(str(cfg.artifacts_dir), extractor, key)


@st.cache_data(show_spinner="Measuring how close catalog photos are to each other…", max_entries=4)
def _far_check(_index: Index, extractor: str, key: tuple[str, ...]) -> Any:
    from pipelines.search.novelty import far_check

    return far_check(_index)


def far_check(cfg: Config, extractor: str) -> Any:
    """`pipelines.search.novelty.far_check` on the extractor's cached index, once per build."""
    key = (sha(cfg.catalog_path), sha(cfg.embeddings_path(extractor)))
    return _far_check(index(cfg, extractor), extractor, key)


def keep_kernels_across_reruns() -> None:
    """Stop Streamlit's end-of-run `keras.backend.clear_session()` from clearing TensorFlow's
    kernel cache, once Keras is imported (uploads run LiteRT and import none of it; explaining
    a match reads the Keras model).

    Streamlit calls it after every script run (for apps that build models per run); ours
    keeps its models in st.cache_resource, and the cleared cache made the next upload's
    InceptionV3 pass ~0.8 s slower (every rerun runs on a new thread with cold kernels).
    Only calls made from Streamlit's script runner are skipped; any other caller still clears.
    """
    if "keras" not in sys.modules:
        return
    import keras

    backend = keras.backend
    original = backend.clear_session
    if getattr(original, "_lookalike_guard", False):
        return

    def clear_session(*args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller == "streamlit.runtime.scriptrunner.script_runner":
            return None
        return original(*args, **kwargs)

    clear_session._lookalike_guard = True  # type: ignore[attr-defined]
    backend.clear_session = clear_session


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _extractor(artifacts_dir: str, name: str, cnn: tuple, weights_sha: str) -> Any:
    from pipelines.models.extractors import get_extractor

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    cfg = _config(artifacts_dir, cnn)
    extractor = get_extractor(name, cfg, live=True)
    # One call on a blank image builds and traces the model, so the first upload is fast.
    size = extractor.input_size
    blank = np.zeros((1, size, size, 3), np.uint8)
    if hasattr(extractor, "embed_and_classify") and extractor.class_names:
        extractor.embed_and_classify(blank)
    else:
        extractor.embed_arrays(blank)
    _unchanged((cfg.model_path(name), weights_sha))
    keep_kernels_across_reruns()
    return extractor


def model_sha(cfg: Config, name: str) -> str:
    """The manifest hash of an extractor's model or weights file (a cache key)."""
    return sha(cfg.model_path(name))


def extractor(cfg: Config, name: str) -> Any:
    """One extractor, loaded once and warmed up (the heatmap needs only the page's one)."""
    cnn = (cfg.cnn_image_size, cfg.cnn_embedding_dim, cfg.inception_weights)
    return _extractor(str(cfg.artifacts_dir), name, cnn, sha(cfg.model_path(name)))


def extractors(cfg: Config) -> dict[str, Any]:
    """Both extractors, loaded once and warmed up: {name: Extractor}."""
    cnn = (cfg.cnn_image_size, cfg.cnn_embedding_dim, cfg.inception_weights)
    return {
        name: _extractor(str(cfg.artifacts_dir), name, cnn, sha(cfg.model_path(name)))
        for name in cfg.extractors_built()
    }


@st.cache_data(show_spinner="Embedding the photo…", max_entries=64)
def _upload(
    name: str, data: bytes, key: tuple[Any, ...], max_bytes: int, max_pixels: int, _models: Any
) -> Any:
    return photos.embed_upload(name, data, _models, max_bytes, max_pixels=max_pixels)


def upload_embedding(
    cfg: Config,
    name: str,
    data: bytes,
    models: dict[str, Any],
    max_bytes: int = photos.MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
) -> photos.UploadEmbedding:
    """`photos.embed_upload` cached on the photo's name and bytes and the models' files, so a
    widget change does not embed it again: the `embed` of `photos.search_photos`."""
    key = (
        str(cfg.artifacts_dir),
        (cfg.cnn_image_size, cfg.cnn_embedding_dim, cfg.inception_weights),
        *((model, sha(cfg.model_path(model))) for model in models),
    )
    return _upload(name, data, key, max_bytes, max_pixels or cfg.max_pixels, models)


# --------------------------------------------------------------------------- photo map, health


@st.cache_data(show_spinner=False, max_entries=4)
def _mosaic(artifacts_dir: str, extractor: str, key: tuple[str, ...]) -> dict[str, Any]:
    import base64

    cfg = _config(artifacts_dir)
    manifest = read_manifest(cfg.mosaic_cells_path(extractor)) or {}
    cells = pd.read_parquet(cfg.mosaic_cells_path(extractor))
    cells["item_id"] = cells["item_id"].astype(str)
    labels = _catalog(artifacts_dir, key[0]).set_index("item_id")["label"]
    cells["label"] = labels.reindex(cells["item_id"]).to_numpy()
    image = base64.b64encode(cfg.mosaic_image_path(extractor).read_bytes()).decode("ascii")
    _unchanged(
        (cfg.mosaic_image_path(extractor), key[1]), (cfg.mosaic_cells_path(extractor), key[2])
    )
    return {
        "uri": f"data:image/jpeg;base64,{image}",
        "cells": cells,
        "cols": int(manifest["cols"]),
        "rows": int(manifest["rows"]),
        "tile": int(manifest["tile"]),
        "sha": key[1],
    }


def mosaic(cfg: Config, extractor: str) -> dict[str, Any] | None:
    """The photo map of one extractor (see `pipelines.explore.mosaic`): {"uri": the JPEG as a data
    URI, "cells": item_id, col, row, label, "cols", "rows", "tile", "sha"}; None before the mosaic
    stage ran."""
    paths = (cfg.mosaic_image_path(extractor), cfg.mosaic_cells_path(extractor))
    if status.missing_paths(paths):
        return None
    key = (sha(cfg.catalog_path), sha(paths[0]), sha(paths[1]))
    return _mosaic(str(cfg.artifacts_dir), extractor, key)


@st.cache_resource(show_spinner=False, max_entries=4)
def _tiled_map(artifacts_dir: str, extractor: str, key: tuple[str, ...]) -> tiles.TiledMap | None:
    cfg = _config(artifacts_dir)
    catalog_table = _catalog(artifacts_dir, key[0])
    found = tiles.open_tiled_map(
        cfg.mosaic_tiles_path(extractor),
        cfg.mosaic_tiles_dir(extractor),
        cfg.mosaic_cells_path(extractor),
        catalog_table,
        cfg.artifacts_dir,
    )
    _unchanged(
        (cfg.mosaic_tiles_path(extractor), key[1]), (cfg.mosaic_cells_path(extractor), key[2])
    )
    return found


@st.cache_data(show_spinner=False, max_entries=16)
def _tiles_index(artifacts_dir: str, extractor: str, key: str) -> tiles.TilesIndex | None:
    path = _config(artifacts_dir).mosaic_tiles_path(extractor)
    found = tiles.read_tiles_index(path)
    _unchanged((path, key))
    return found


def tiles_index(cfg: Config, extractor: str) -> tiles.TilesIndex | None:
    """The index of one extractor's tiled photo map (what the viewer draws from; a few
    hundred bytes), None when it is not built. `tiled_map` reads the cells too."""
    path = cfg.mosaic_tiles_path(extractor)
    if status.missing_paths((path,)):
        return None
    return _tiles_index(str(cfg.artifacts_dir), extractor, sha(path))


def tiled_map(cfg: Config, extractor: str) -> tiles.TiledMap | None:
    """The deep-zoom photo map of one extractor (a large catalog's; see
    `pipelines.explore.tiles`), shared by every session and by the tile routes; None when
    it is not built. Read only."""
    paths = (cfg.mosaic_tiles_path(extractor), cfg.mosaic_cells_path(extractor))
    if status.missing_paths(paths):
        return None
    key = (sha(cfg.catalog_path), sha(paths[0]), sha(paths[1]))
    return _tiled_map(str(cfg.artifacts_dir), extractor, key)


@st.cache_data(show_spinner=False, max_entries=16)
def _health(artifacts_dir: str, extractor: str, kind: str, key: str) -> pd.DataFrame:
    path = _config(artifacts_dir).health_path(extractor, kind)
    table = pd.read_parquet(path)
    _unchanged((path, key))
    for column in ("item_id", "item_a", "item_b"):
        if column in table.columns:
            table[column] = table[column].astype(str)
    return table


def health(cfg: Config, extractor: str, kind: str) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """One health list (duplicates, mislabelled or outliers; see `pipelines.quality.health`) and its
    manifest; None before the health stage ran."""
    path = cfg.health_path(extractor, kind)
    if status.missing_paths([path]):
        return None
    return _health(str(cfg.artifacts_dir), extractor, kind, sha(path)), read_manifest(path) or {}

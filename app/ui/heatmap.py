"""The "why do they match" heatmap: a toggle, a neighbour picker, and the query and neighbour
photos with their similarity maps (`pipelines.search.explain`) blended over them. Computed
live for the one pair shown, cached per pair."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from app.ui import loaders, widgets
from pipelines.config import Config
from pipelines.data.catalog import bbox_of
from pipelines.errors import LookalikeError
from pipelines.search import explain

TOGGLE_LABEL = "Why do they match? Show a heatmap"
# Caption prefixes the browser test looks for.
QUERY_CAPTION = "Heatmap · query"
NEIGHBOUR_CAPTION = "Heatmap · #"


@st.cache_data(show_spinner=False, max_entries=64)
def _overlays(
    artifacts_dir: str,
    extractor: str,
    key: tuple[Any, ...],
    source_a: str | bytes,
    bbox_a: tuple[float, ...] | None,
    source_b: str,
    bbox_b: tuple[float, ...] | None,
) -> tuple[bytes, bytes, float, float]:
    cfg = loaders.config()
    model = loaders.extractor(cfg, extractor)
    started = time.perf_counter()
    pair = explain.explain_pair(model, source_a, source_b, bbox_a, bbox_b)
    loaders.keep_kernels_across_reruns()  # explaining loaded the Keras model
    a = explain.overlay_jpeg(pair.pixels_a, pair.map_a)
    b = explain.overlay_jpeg(pair.pixels_b, pair.map_b)
    return a, b, pair.similarity, time.perf_counter() - started


def _item_source(catalog: pd.DataFrame, item_id: str) -> tuple[str, tuple[float, ...] | None]:
    row = catalog.loc[catalog["item_id"] == item_id].iloc[0]
    box = bbox_of(row)
    return str(row["path"]), None if box is None else tuple(float(v) for v in box)


def toggle(key: str) -> bool:
    """The heatmap toggle of one page (off by default: the maps are computed only on demand)."""
    return st.toggle(
        TOGGLE_LABEL,
        key=f"heatmap_{key}",
        help="Colours each photo by how much each region adds to the pair's similarity "
        "(a similarity activation map of the extractor's last convolutional layer). Red: "
        "where the match comes from; blue: regions that add little.",
    )


def show_pair(
    cfg: Config,
    extractor: str,
    catalog: pd.DataFrame,
    neighbours: pd.DataFrame,
    key: str,
    *,
    query_item: str | None = None,
    query_bytes: bytes | None = None,
) -> None:
    """Pick one of `neighbours` and draw the query and it with their heatmaps, side by side.

    Parameters
    ----------
    cfg : the app's settings.
    extractor : whose similarity is explained.
    catalog : the catalog (path and crop box of every item).
    neighbours : the neighbour table shown on the page.
    key : prefix of this picker's widget key.
    query_item, query_bytes : the query as a catalog item id or as an upload's bytes.
    """
    if neighbours.empty:
        st.caption("No neighbour to explain.")
        return
    labels = {
        str(r.item_id): widgets.caption(r._asdict(), int(r.rank), float(r.similarity))
        for r in neighbours.itertuples(index=False)
    }
    chosen = st.selectbox(
        "Neighbour to explain",
        list(labels),
        format_func=labels.get,
        key=f"heatmap_pick_{key}",
    )
    if query_item is not None:
        source_a, bbox_a = _item_source(catalog, query_item)
    elif query_bytes is not None:
        source_a, bbox_a = query_bytes, None
    else:
        raise ValueError("show_pair needs query_item or query_bytes")
    source_b, bbox_b = _item_source(catalog, chosen)
    model_key = (cfg.cnn_image_size, cfg.cnn_embedding_dim, loaders.model_sha(cfg, extractor))
    try:
        with st.spinner("Computing the heatmap…"):
            a, b, similarity, seconds = _overlays(
                str(cfg.artifacts_dir), extractor, model_key, source_a, bbox_a, source_b, bbox_b
            )
    except LookalikeError as err:
        st.warning(f"Cannot draw the heatmap: {err}")
        return
    rank = int(neighbours.loc[neighbours["item_id"] == chosen, "rank"].iloc[0])
    left, right = st.columns(2)
    left.image(a, caption=f"{QUERY_CAPTION} · where it matches #{rank}", width="stretch")
    right.image(
        b, caption=f"{NEIGHBOUR_CAPTION}{rank} · where it matches the query", width="stretch"
    )
    st.caption(
        f"Similarity {similarity:.3f}: each region's colour is its share of it (red most, blue "
        f"least) · computed in {seconds * 1000:.0f} ms"
    )

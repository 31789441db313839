"""Map page: the chosen extractor's UMAP map, full width; a box or lasso selection shows its
label counts, a label-stratified sample of its photos and a CSV download."""

from __future__ import annotations

import streamlit as st

from app.ui import hover, loaders, plots, selection, widgets
from app.ui.names import display_name
from pipelines.explore import browse

# Thumbnails a selection shows: a sample drawn in proportion to its labels.
SAMPLE_SIZE = 30

cfg = loaders.config()
settings = widgets.sidebar(cfg)
st.title("Map")
widgets.require(cfg, ("catalog", "maps"), [settings.extractor])

with widgets.user_errors():
    points = loaders.map_points(cfg, settings.extractor)
    catalog = loaders.catalog(cfg)

colour_col, filter_col, trust_col = st.columns([2, 3, 1])
with colour_col:
    colours = widgets.colours(cfg, catalog)
    options = ["label", "cluster", "split"] + (["colour"] if colours is not None else [])
    color_by = st.radio("Colour by", options, key="map_color", horizontal=True)
with filter_col:
    labels = loaders.map_labels(cfg, settings.extractor)
    chosen = st.multiselect("Show labels", labels, key="map_labels", placeholder="all labels")
# A large map is drawn once per colouring and filter as an image (None: a map of points).
layer = loaders.map_layer(cfg, settings.extractor, color_by, tuple(chosen))
if color_by == "colour" and layer is None:  # the dominant colour of each item (colour.py)
    by_id = dict(zip(catalog["item_id"].astype(str), colours, strict=True))
    points = points.assign(colour=points["item_id"].astype(str).map(by_id).fillna("none"))
with trust_col:
    trust = loaders.map_trustworthiness(cfg, settings.extractor)
    st.metric(
        "Trustworthiness@10",
        "n/a" if trust is None else f"{trust:.3f}",
        help="How well the 2-D map keeps each item's 10 nearest neighbours (1 = all kept).",
    )

shown = loaders.label_total(cfg, settings.extractor, tuple(chosen)) if chosen else len(points)
scope = f"{shown:,} of {len(points):,} items shown" if chosen else browse.plural(shown, "item")
st.caption(
    f"{scope} · {display_name(settings.extractor)} · "
    f"drag a box to select (the lasso is on the chart's toolbar); hover a point for its photo; "
    f"double-click to clear."
)

chart_key = f"map_chart_{settings.extractor}"
kept = selection.kept_selection(
    st.session_state.get(chart_key),
    st.session_state.get(f"{chart_key}_traces"),
    context=(settings.extractor, color_by, tuple(chosen)),
    key="map_selection",
    layer=layer,
    shown_labels=chosen,
)
figure, trace_ids = plots.map_figure(
    points,
    color_by,
    shown_labels=chosen,
    selected=kept,
    dragmode=plots.SELECT_DRAG,
    layer=layer,
)
st.session_state[f"{chart_key}_traces"] = trace_ids
st.plotly_chart(
    figure,
    on_select="rerun",
    selection_mode=("box", "lasso"),
    key=chart_key,
    width="stretch",
    config={"displaylogo": False},
)
hover.photo_hover(cfg, settings.extractor)

selected = selection.kept_ids("map_selection")
st.subheader(f"Selection: {browse.plural(len(selected), 'item')}")
if not selected:
    st.caption("Draw a box or lasso on the map to see those items here.")
else:
    found = loaders.item_index(catalog).get_indexer(selected)
    rows = catalog.iloc[found[found >= 0]].reset_index(drop=True)
    st.markdown(f"**Labels:** {browse.label_counts_text(rows['label'], top=len(rows))}")
    sample = browse.stratified_sample(rows, SAMPLE_SIZE)
    if len(sample) < len(rows):
        st.caption(f"Showing {len(sample)} of {len(rows):,}, drawn in proportion to their labels.")
    widgets.lookalike_grid(sample, SAMPLE_SIZE, "map")
    widgets.export_download(rows, catalog, "selection", key="map_csv")

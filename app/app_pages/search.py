"""Search page: one query item, its k neighbours as a grid, on the map, and its precision@k."""

from __future__ import annotations

import streamlit as st

from app.ui import heatmap, hover, loaders, plots, selection, widgets
from app.ui.names import display_name
from pipelines.explore import browse
from pipelines.search import similar

cfg = loaders.config()
settings = widgets.sidebar(cfg)
diversity = widgets.diversity_slider()
st.title("Search")
widgets.require(cfg, ("catalog", "embeddings", "maps"), [settings.extractor])

with widgets.user_errors():
    catalog = loaders.catalog(cfg)
    index = loaders.index(cfg, settings.extractor)
    points = loaders.map_points(cfg, settings.extractor)


chart_key = f"search_map_{settings.extractor}"
# A point clicked on the map (last run's chart state) becomes the query, once per new click:
# the chart keeps its selection, so an older click must not override a later pick.
clicked = selection.selection_to_item_ids(
    st.session_state.get(chart_key), st.session_state.get(f"{chart_key}_traces")
)
if clicked and clicked != st.session_state.get(f"{chart_key}_seen"):
    st.session_state[f"{chart_key}_seen"] = clicked
    if clicked[0] in loaders.item_index(catalog):
        widgets.set_query(clicked[0])

query_id = widgets.query_picker(catalog, "search", ("Random", "Item id", "Browse", "Map"))
strategy, note = similar.resolve_strategy(index, settings.strategy)
colour, colours = widgets.colour_filter(cfg, catalog, "search")
rerank = st.checkbox(
    "Re-rank by query expansion",
    key="search_rerank",
    help="Re-orders the nearest candidates by their likeness to the query's closest "
    "neighbours (alpha-query-expansion); the similarities stay cosines to the query.",
)
with widgets.user_errors():
    found = similar.item_neighbours(
        index, catalog, query_id, settings.k, strategy, diversity=diversity,
        colour=colour, colours=colours, rerank=rerank,
    )  # fmt: skip
query = loaders.catalog_row(catalog, query_id)
widgets.remember_query(query_id)
widgets.query_history(catalog, query_id)
precision = similar.query_precision(found, query.get("label"), settings.k)

if note:
    st.warning(note)
left, right = st.columns([1, 4])
with left:
    widgets.query_card(query, precision, settings.k, len(found))
with right:
    spread = f" · diversity {diversity:.1f}" if diversity > 0 else ""
    spread += " · re-ranked" if rerank else ""
    name = display_name(settings.extractor)
    shown = browse.plural(len(found), "nearest item")
    st.subheader(f"{shown} · {name} · {strategy}{spread}")
    widgets.neighbour_grid(found, key="search", catalog=catalog)
    if heatmap.toggle("search"):
        heatmap.show_pair(cfg, settings.extractor, catalog, found, "search", query_item=query_id)

st.subheader("On the map")
figure, trace_ids = plots.map_figure(
    points,
    "label",
    query=query_id,
    neighbours=found["item_id"].tolist(),
    layer=loaders.map_layer(cfg, settings.extractor),  # None below plots.RASTER_MIN_ITEMS
)
widgets.pick_map(figure, trace_ids, chart_key)
hover.photo_hover(cfg, settings.extractor)
st.caption(
    "★ query · red rings: its neighbours. Click any point to search from it; hover for its "
    "photo; drag to zoom, double-click to zoom out."
)

"""Photo map page: the catalog's photos laid out by the chosen extractor's map, snapped to a
grid (built once by the mosaic stage); zoom in, hover for a bigger photo, click to search.
A large catalog's map is a deep-zoom pyramid of tiles (`app/ui/tiled_map.py`)."""

from __future__ import annotations

import streamlit as st

from app import routes
from app.ui import hover, loaders, plots, selection, tiled_map, widgets
from app.ui.names import display_name
from pipelines import commands

HEIGHT = 820

cfg = loaders.config()
settings = widgets.sidebar(cfg)
st.title("Photo map")
widgets.require(cfg, ("catalog", "maps"), [settings.extractor])

name = display_name(settings.extractor)
with widgets.user_errors():
    tiled = loaders.tiles_index(cfg, settings.extractor)
if tiled is not None:
    shape = tiled.shape
    st.caption(
        f"{tiled.items:,} photos placed by the {name} map on a {shape.cols:,} × "
        f"{shape.rows:,} grid, drawn as deep-zoom tiles (only those in view are fetched). "
        f"Wheel or + / − to zoom, drag to pan, double-click for the whole map, hover for a "
        f"photo, click a photo to find its lookalikes."
    )
    picked = tiled_map.deep_zoom(tiled, settings.extractor, HEIGHT, f"tiles_{settings.extractor}")
    if picked is not None:  # the cells are read on the first click only (1M rows)
        with widgets.user_errors():
            cells = loaders.tiled_map(cfg, settings.extractor)
        row = None if cells is None else cells.row_at(*picked)
        if row is not None:
            widgets.find_lookalikes(str(cells.item_ids[row]))
            st.switch_page("app_pages/search.py")
    st.stop()

with widgets.user_errors():
    mosaic = loaders.mosaic(cfg, settings.extractor)
if mosaic is None:
    st.info(
        f"The photo map of this extractor is not built yet — run `{commands.MOSAIC}` (or "
        f"`{commands.RUN}`), then reload this page."
    )
    st.stop()

st.caption(
    f"{len(mosaic['cells']):,} photos placed by the {name} map on a {mosaic['cols']} × "
    f"{mosaic['rows']} grid (each in the free cell nearest its map position). Drag to zoom in, "
    f"double-click to zoom out, hover for a bigger photo, click a photo to find its lookalikes."
)
figure, trace_ids = plots.photo_map_figure(
    mosaic["cells"],
    routes.mosaic_source(settings.extractor, mosaic),
    mosaic["cols"],
    mosaic["rows"],
    height=HEIGHT,
)
chart_key = f"photo_map_{settings.extractor}"
event = st.plotly_chart(
    figure,
    on_select="rerun",
    selection_mode="points",
    key=chart_key,
    width="stretch",
    config={"displaylogo": False, "scrollZoom": True},
)
hover.photo_hover(cfg, settings.extractor)

clicked = selection.selection_to_item_ids(event, trace_ids)
if clicked and clicked != st.session_state.get(f"{chart_key}_seen"):
    st.session_state[f"{chart_key}_seen"] = clicked
    widgets.find_lookalikes(clicked[0])
    st.switch_page("app_pages/search.py")

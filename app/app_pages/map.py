"""Map page: the chosen extractor's UMAP map; a box or lasso selection fills a thumbnail grid."""

from __future__ import annotations

import streamlit as st

from app.ui import loaders, plots, selection, widgets

cfg = loaders.config()
settings = widgets.sidebar(cfg)
st.title("Map")
widgets.require(cfg, ("catalog", "maps"), [settings.extractor])

with widgets.user_errors():
    points = loaders.map_points(cfg, settings.extractor)
    catalog = loaders.catalog(cfg)

chart, side = st.columns([4, 1])
with side:
    color_by = st.radio("Colour by", ["label", "cluster", "split"], key="map_color")
    labels = sorted(points["label"].dropna().astype(str).unique())
    chosen = st.multiselect("Show labels", labels, key="map_labels", placeholder="all labels")
    trust = loaders.map_trustworthiness(cfg, settings.extractor)
    st.metric(
        "Trustworthiness@10",
        "n/a" if trust is None else f"{trust:.3f}",
        help="How well the 2-D map keeps each item's 10 nearest neighbours (1 = all kept).",
    )
    st.caption(f"{len(points):,} items · {widgets.EXTRACTOR_NAMES[settings.extractor]}")

shown = points[points["label"].isin(chosen)] if chosen else points
figure, trace_ids = plots.map_figure(shown, color_by)
with chart:
    event = st.plotly_chart(
        figure,
        on_select="rerun",
        selection_mode=("box", "lasso"),
        key=f"map_chart_{settings.extractor}",
        width="stretch",
    )

selected = selection.selection_to_item_ids(event, trace_ids)
st.subheader(f"Selection: {len(selected)} item(s)")
if not selected:
    st.caption("Draw a box or lasso on the map to see those items here.")
else:
    rows = catalog[catalog["item_id"].isin(selected)]
    widgets.thumbnail_grid(rows, [widgets.caption(r) for _, r in rows.iterrows()], key="map")

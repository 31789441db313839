"""Clusters page: every k-means cluster of the chosen extractor with the photos nearest its
centre and its label counts, then one cluster in detail."""

from __future__ import annotations

import streamlit as st

from app.ui import loaders, plots, widgets
from app.ui.names import display_name
from pipelines.explore import browse

# Thumbnails of one cluster shown at once (each is an image and a button).
DETAIL_LIMIT = 30

cfg = loaders.config()
settings = widgets.sidebar(cfg)
st.title("Clusters")
widgets.require(cfg, ("catalog", "clusters", "embeddings"), [settings.extractor])

with widgets.user_errors():
    catalog = loaders.catalog(cfg)
    summary = loaders.cluster_summary(cfg, settings.extractor)
    # Each cluster's photos nearest its centre: every item scored against every centre, so
    # it is computed once per build (loaders), not on every rerun.
    overview = loaders.cluster_overview(cfg, settings.extractor)

name = display_name(settings.extractor)
st.caption(
    f"{browse.plural(len(overview), 'k-means cluster')} of {name} embeddings. Each row shows "
    f"the five photos nearest the cluster's centre. Purity: share of a cluster's items with "
    f"its most common label."
)
for _, row in overview.iterrows():
    info, *cells = st.columns([2, 1, 1, 1, 1, 1])
    purity = "n/a" if row["purity"] != row["purity"] else f"{row['purity']:.0%}"
    info.markdown(
        f"**Cluster {row['cluster']}** · {browse.plural(int(row['size']), 'item')}  \n"
        f"mostly *{row['top_label'] or '—'}* · purity {purity}  \n{row['labels']}"
    )
    for cell, path in zip(cells, row["thumbs"], strict=False):
        cell.image(widgets.thumb(path), width="stretch")

st.divider()
cluster = st.selectbox(
    "Look at cluster",
    overview["cluster"].tolist(),
    format_func=lambda c: f"Cluster {c}",
    key=f"clusters_pick_{settings.extractor}",
)
items = loaders.cluster_members(cfg, settings.extractor, cluster)
composition = browse.cluster_composition(summary, cluster)
left, right = st.columns([1, 3])
with left:
    if composition.empty:
        st.caption("The catalog has no labels, so there is no composition to show.")
    else:
        st.plotly_chart(
            plots.composition_figure(composition), key="cluster_composition", width="stretch"
        )
    widgets.export_download(items, catalog, f"cluster-{cluster}", key="cluster_csv")
with right:
    st.subheader(f"Cluster {cluster}: {browse.plural(len(items), 'item')}")
    ordered = items.attrs.get("ordered")
    if ordered is not None and ordered < len(items):  # a large catalog: a sample is ordered
        st.caption(
            f"Nearest the cluster's centre first, among a sample of {ordered:,} of its items "
            f"(then the rest)."
        )
    else:
        st.caption("Nearest the cluster's centre first.")
    shown = items.head(DETAIL_LIMIT)
    widgets.lookalike_grid(shown, DETAIL_LIMIT, "cluster")
    if len(items) > DETAIL_LIMIT:
        st.caption(f"Showing the {DETAIL_LIMIT} most central of {len(items):,}; the CSV has all.")

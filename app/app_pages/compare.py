"""Compare page: one query through every extractor side by side, their overlap, and evaluation
(category and likeness metrics)."""

from __future__ import annotations

import streamlit as st

from app.ui import heatmap, hover, loaders, plots, selection, widgets
from app.ui.names import display_name
from pipelines import commands
from pipelines.config import STRATEGIES
from pipelines.explore import browse
from pipelines.quality import metrics
from pipelines.search import similar

cfg = loaders.config()
settings = widgets.sidebar(cfg)
diversity = widgets.diversity_slider()
st.title("Compare extractors")
widgets.require(cfg, ("catalog", "embeddings", "maps"))

with widgets.user_errors():
    catalog = loaders.catalog(cfg)
    EXTRACTORS = cfg.extractors_built()  # the metric head only where the catalog had labels
    indexes = {name: loaders.index(cfg, name) for name in EXTRACTORS}
    maps = {name: loaders.map_points(cfg, name) for name in EXTRACTORS}
    layers = {name: loaders.map_layer(cfg, name) for name in EXTRACTORS}  # None: small maps

# A point clicked on either map (last run's chart state) becomes the query.
for name in EXTRACTORS:
    clicked = selection.new_click(f"compare_map_{name}")
    if clicked is not None and clicked in loaders.item_index(catalog):
        widgets.set_query(clicked)
query_id = widgets.query_picker(catalog, "compare")
query = loaders.catalog_row(catalog, query_id)

results = {}
notes = []
with widgets.user_errors():
    for name, index in indexes.items():
        strategy, note = similar.resolve_strategy(index, settings.strategy)
        if note:
            notes.append(f"{name}: {note}")
        results[name] = similar.item_neighbours(
            index, catalog, query_id, settings.k, strategy, diversity=diversity
        )
for note in notes:
    st.warning(note)

ids = {name: table["item_id"].tolist() for name, table in results.items()}
first, second = list(ids)[:2]  # InceptionV3 and the custom CNN
jaccard = metrics.jaccard_at_k(ids[first], ids[second])
shared = set.intersection(*(set(v) for v in ids.values()))

top_left, top_right = st.columns([1, 4])
with top_left:
    st.image(
        widgets.thumb(query["thumb_file"]),
        caption=f"Query · {widgets.caption(query)}",
        width="stretch",
    )
with top_right:
    st.metric(
        f"Jaccard@{settings.k}",
        f"{jaccard:.3f}",
        help=f"Items both {first} and {second} return / items either returns, below.",
    )
    st.caption(
        f"{browse.plural(len(shared), 'item')} in both lists · strategy: {settings.strategy} · "
        f"map positions are aligned (the custom CNN's map is rotated onto InceptionV3's)"
    )

show_heatmaps = heatmap.toggle("compare")
columns = st.columns(len(EXTRACTORS))
for column, name in zip(columns, EXTRACTORS, strict=True):
    with column:
        table = results[name]
        precision = similar.query_precision(table, query.get("label"), settings.k)
        shown = "n/a" if precision != precision else f"{precision:.2f}"
        st.subheader(display_name(name))
        st.caption(f"Precision@{settings.k} against the query's label: **{shown}**")
        widgets.neighbour_grid(
            table, key=f"compare_{name}", columns=4, catalog=catalog, compact=True
        )
        if show_heatmaps:
            heatmap.show_pair(cfg, name, catalog, table, f"compare_{name}", query_item=query_id)
        figure, trace_ids = plots.map_figure(
            maps[name],
            "label",
            query=query_id,
            neighbours=table["item_id"].tolist(),
            height=520,
            layer=layers[name],
        )
        widgets.pick_map(figure, trace_ids, f"compare_map_{name}")

hover.photo_hover(cfg, settings.extractor)
st.caption("Click a point on either map to compare from it; hover for its photo.")

st.header("Evaluation")
metrics = loaders.metrics(cfg)
if metrics is None:
    st.info(f"No evaluation yet — run `{commands.RUN}` (its evaluate stage).")
elif not metrics.get("labels", False):
    st.info(str(metrics.get("message", "The catalog has no labels to evaluate against.")))
else:
    st.caption(f"Protocol: {metrics.get('protocol')}")
    likeness = [(name, by.get("exact", {})) for name, by in (metrics.get("results") or {}).items()]
    for cell, (name, exact) in zip(st.columns(max(1, len(likeness))), likeness, strict=False):
        copy, colour = exact.get("copy_r@1"), exact.get("colour@10")
        cell.metric(
            f"{display_name(name)} · copy R@1",
            "n/a" if copy is None else f"{copy:.3f}",
            "colour@10 n/a" if colour is None else f"colour@10 {colour:.3f}",
            delta_color="off",
            help="Copy R@1: altered test photos (crop, flip, light, JPEG 60) that find their "
            "original first. Colour@10: share of the 10 neighbours (exact search) whose "
            "dominant colour is the query's.",
        )
    long = browse.metrics_long(metrics)
    a, b = st.columns(2)
    a.plotly_chart(plots.precision_figure(long), key="eval_precision", width="stretch")
    b.plotly_chart(plots.map_score_figure(long), key="eval_map", width="stretch")
    per_class = loaders.per_class(cfg)
    if per_class is not None and not per_class.empty:
        available = [s for s in STRATEGIES if s in set(per_class["strategy"])]
        strategy = settings.strategy if settings.strategy in available else available[0]
        st.plotly_chart(
            plots.per_class_figure(per_class, strategy), key="eval_per_class", width="stretch"
        )

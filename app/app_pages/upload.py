"""Upload page: photos through the engine's one photo search, with neighbours, category, warnings
and map place.

Several photos also get the most common predicted categories (ties included), with one map of
all of them on top and each photo's results in its own collapsible section.
"""

from __future__ import annotations

import functools

import streamlit as st

from app.ui import heatmap, hover, loaders, plots, selection, warmup, widgets
from pipelines.data import images
from pipelines.explore import browse
from pipelines.models import classify
from pipelines.search import novelty, photos

cfg = loaders.config()
settings = widgets.sidebar(cfg)
diversity = widgets.diversity_slider()
st.title("Upload photos")
widgets.require(cfg, ("catalog", "embeddings", "maps", "models"))

with widgets.user_errors():
    catalog = loaders.catalog(cfg)
    EXTRACTORS = cfg.extractors_built()  # the metric head only where the catalog had labels
    indexes = {name: loaders.index(cfg, name) for name in EXTRACTORS}
    maps = {name: loaders.map_points(cfg, name) for name in EXTRACTORS}
    far = loaders.far_check(cfg, novelty.REFERENCE) if novelty.REFERENCE in indexes else None

# A point clicked on any map here opens Search on that catalog item.
for chart_key in [k for k in st.session_state if str(k).startswith(("upload_all_", "upload_map_"))]:
    if not str(chart_key).endswith(("_traces", "_seen")):
        clicked = selection.new_click(str(chart_key))
        if clicked is not None:
            widgets.find_lookalikes(clicked)
            st.switch_page("app_pages/search.py")


def model_text(name: str | None) -> str:
    """The model that predicted a category, with the extractors' display names."""
    text = name or "?"
    for extractor, shown in widgets.EXTRACTOR_NAMES.items():
        text = text.replace(extractor, shown)
    return text


files = st.file_uploader(
    f"Photos of clothing ({images.ACCEPTED_TEXT}), up to {photos.MAX_UPLOAD_MB} MB each",
    # MIME types for the browser's file picker, and the HEIC/AVIF extensions whose MIME type
    # many browsers do not know; anything else that arrives is checked by the photo search,
    # which names the file and the problem.
    type=[*images.UPLOAD_MIME_TYPES, *images.UPLOAD_EXTENSIONS],
    accept_multiple_files=True,
    max_upload_size=photos.MAX_UPLOAD_MB,
    key="uploads",
)
if not files:
    st.info("Upload one or several photos to find the most similar catalog items.")
    # The models were started in the background when the app opened (app/ui/warmup.py).
    warmup.note(cfg)
    st.stop()
warmup.wait(cfg)

photo_bytes = {file.name: file.getvalue() for file in files}
colour, colours = widgets.colour_filter(cfg, catalog, "upload")
with widgets.user_errors():
    # The engine's one photo search (as over HTTP, in the shell and from Python): category by
    # the classify stage's classifier, its category cover, the colour filter, diversity, the
    # far-from-catalog warning and the places on the maps. Embeddings are cached per photo.
    sources = photos.PhotoSources(
        catalog=catalog,
        indexes=indexes,
        models=loaders.extractors(cfg),
        config=cfg,
        maps=maps,
        colours=colours,
        category_model=classify.load_category_model(cfg),
        far=far,
    )
    results = photos.search_photos(
        [(file.name, photo_bytes[file.name]) for file in files],
        sources,
        settings.k,
        EXTRACTORS,
        settings.strategy,
        diversity=diversity,
        colour=colour,
        embed=functools.partial(loaders.upload_embedding, cfg),
    )

for result in results:
    if result.error:
        st.error(f"Could not use {result.error}")
good = [r for r in results if r.error is None]
if not good:
    st.stop()

if len(good) > 1:
    st.subheader(f"Top categories across {browse.plural(len(good), 'photo')}")
    summary = photos.category_summary(good, top=len(good))
    top = browse.top_with_ties(summary, 3)
    ties = " (ties included)" if len(top) > 3 else ""
    distinct = browse.plural(len(summary), "distinct category", "distinct categories")
    st.caption(
        f"Top {len(top)} of {distinct}{ties}, as predicted by the "
        f"{model_text(good[0].category_model)} classifier."
    )
    for cell, (_, row) in zip(st.columns(len(top)), top.iterrows(), strict=False):
        cell.metric(row["category"], browse.plural(int(row["count"]), "photo"))
    # One map per extractor with every photo on it: one chart per photo would slow the page.
    map_tabs = st.tabs([f"All photos on the {widgets.EXTRACTOR_NAMES[n]} map" for n in EXTRACTORS])
    for tab, name in zip(map_tabs, EXTRACTORS, strict=True):
        placed = [(r.name, *r.positions[name]) for r in good if name in r.positions]
        layer = loaders.map_layer(cfg, name)  # a large map drawn once as an image
        figure, trace_ids = plots.map_figure(
            maps[name], "label", extra=placed, height=560, layer=layer
        )
        widgets.pick_map(figure, trace_ids, f"upload_all_{name}", tab)

show_heatmaps = heatmap.toggle("upload")
for i, result in enumerate(good):
    found = f" · {result.category}" if result.category is not None else ""
    section = st.expander(f"{result.name}{found}", expanded=len(good) == 1)
    head, body = section.columns([1, 4])
    with head:
        st.image(result.preview, caption=result.name, width="stretch")
        if result.category is not None:
            st.metric(
                "Predicted category",
                result.category,
                f"{result.confidence:.0%} confidence",
                delta_color="off",
                delta_arrow="off",
                help=f"Predicted by the {model_text(result.category_model)} classifier.",
            )
            st.caption(f"Category by the {model_text(result.category_model)} classifier.")
        for warning in result.warnings:
            st.warning(warning)
        for note in result.notes:
            st.caption(note)
    with body:
        # The sidebar's extractor first (its tab opens), then the others in the engine's order.
        shown = sorted(result.neighbours.items(), key=lambda item: item[0] != settings.extractor)
        tabs = st.tabs([widgets.EXTRACTOR_NAMES[name] for name, _ in shown])
        for tab, (name, table) in zip(tabs, shown, strict=True):
            with tab:
                widgets.neighbour_grid(table, key=f"upload_{i}_{name}", catalog=catalog)
                if show_heatmaps:
                    heatmap.show_pair(
                        cfg,
                        name,
                        catalog,
                        table,
                        f"upload_{i}_{name}",
                        query_bytes=photo_bytes[result.name],
                    )
                if len(good) == 1:
                    x, y = result.positions.get(name, (float("nan"), float("nan")))
                    figure, trace_ids = plots.map_figure(
                        maps[name],
                        "label",
                        neighbours=table["item_id"].tolist(),
                        extra=[(result.name, x, y)],
                        height=520,
                        layer=loaders.map_layer(cfg, name),
                    )
                    widgets.pick_map(figure, trace_ids, f"upload_map_{i}_{name}")
hover.photo_hover(cfg, settings.extractor)

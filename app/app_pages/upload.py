"""Upload page: photos embedded live by both extractors, with neighbours, category and map place.

Several photos also get the most common predicted categories (ties included), with one map of
all of them on top and each photo's results in its own collapsible section.
"""

from __future__ import annotations

import dataclasses

import streamlit as st

from app.ui import heatmap, hover, loaders, plots, selection, warmup, widgets
from pipelines import api
from pipelines.explore import browse
from pipelines.models import classify
from pipelines.search import novelty, photos, similar
from pipelines.search.diversity import pool_size

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
    # The classifier chosen on validation (pipelines/models/classify.py) predicts the category, and
    # InceptionV3's similarities say when a photo is far from the whole catalog.
    category_model = classify.load_category_model(cfg)
    far = loaders.far_check(cfg, novelty.REFERENCE) if novelty.REFERENCE in indexes else None

# A point clicked on any map here opens Search on that catalog item.
for chart_key in [k for k in st.session_state if str(k).startswith(("upload_all_", "upload_map_"))]:
    if not str(chart_key).endswith(("_traces", "_seen")):
        clicked = selection.new_click(str(chart_key))
        if clicked is not None:
            widgets.find_lookalikes(clicked)
            st.switch_page("app_pages/search.py")

# The category comes from the classifier chosen on validation, else the custom CNN's head.
CATEGORY_MODEL = (
    "logistic regression on "
    + " + ".join(widgets.EXTRACTOR_NAMES.get(f, f) for f in category_model.features)
    if category_model is not None
    else widgets.EXTRACTOR_NAMES.get("custom_cnn", "custom_cnn")
)

files = st.file_uploader(
    f"Photos of clothing: JPG, PNG or WebP, up to {photos.MAX_UPLOAD_MB} MB each",
    # MIME types (not extensions): the browser filters the file picker, and anything else that
    # arrives is checked by photos.embed_upload, which names the file and the problem.
    type=["image/jpeg", "image/png", "image/webp"],
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

results = []
photo_bytes = {}
colour, colours = widgets.colour_filter(cfg, catalog, "upload")
with widgets.user_errors():
    # Diversity re-ranks a larger pool of nearest candidates down to k (pipelines.search.diversity).
    pool = pool_size(settings.k, diversity, min(index.size for index in indexes.values()))
    if colour is not None:  # rank the whole catalog, then keep the items of that colour
        colour_of = dict(zip(catalog["item_id"].astype(str), colours, strict=True))
        keep = pool
        pool = min(index.size for index in indexes.values())
    for file in files:
        photo_bytes[file.name] = file.getvalue()
        embedding = loaders.upload_embedding(cfg, file.name, photo_bytes[file.name])
        predicted = None
        if category_model is not None and embedding.error is None:
            predicted = classify.predict_upload(category_model, embedding.vectors, cfg)
        if predicted is not None:  # search the categories the classifier is unsure between
            embedding = dataclasses.replace(embedding, category=predicted[2])
        result = photos.analyse_upload(embedding, indexes, catalog, maps, pool, settings.strategy)
        if predicted is not None:
            result = dataclasses.replace(result, category=predicted[0], confidence=predicted[1])
            searched = "everything" if predicted[2] == "*" else predicted[2].replace("|", ", ")
            result.notes.append(f"The category strategy searches: {searched}")
        if far is not None and embedding.error is None:
            vector = embedding.vectors[novelty.REFERENCE]
            nearest = novelty.nearest_similarity(indexes[novelty.REFERENCE], vector)
            warning = novelty.far_message(nearest, far)
            if warning:
                result.notes.insert(0, f"⚠ {warning}")
        if colour is not None and result.error is None:
            tables = {
                n: similar.keep_colour(t, colour_of, colour, keep)
                for n, t in result.neighbours.items()
            }
            result = dataclasses.replace(result, neighbours=tables)
        if diversity > 0:
            result = api.diversify_upload(result, indexes, settings.k, diversity, maps)
        results.append(result)

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
        f"Top {len(top)} of {distinct}{ties}, as predicted by the {CATEGORY_MODEL} classifier."
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
                help=f"Predicted by the {CATEGORY_MODEL} classifier.",
            )
            st.caption(f"Category by the {CATEGORY_MODEL} classifier.")
        for warning in photos.upload_warnings(
            result.name, photo_bytes[result.name], result.confidence
        ):
            st.warning(warning)
        for note in result.notes:
            (st.warning if note.startswith("⚠") else st.caption)(note)
    with body:
        tabs = st.tabs([widgets.EXTRACTOR_NAMES[name] for name in result.neighbours])
        for tab, (name, table) in zip(tabs, result.neighbours.items(), strict=True):
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

"""Catalog health page: what a merchandiser fixes first — near-duplicate listings, items whose
neighbours mostly carry another label, and outliers (written by the health stage)."""

from __future__ import annotations

import streamlit as st

from app.ui import loaders, widgets
from pipelines import browse, commands

# Pairs and items a list shows; the CSV holds them all.
SHOWN = 20

cfg = loaders.config()
settings = widgets.sidebar(cfg)
st.title("Catalog health")
widgets.require(cfg, ("catalog",), [settings.extractor])

with widgets.user_errors():
    catalog = loaders.catalog(cfg)
    lists = {kind: loaders.health(cfg, settings.extractor, kind) for kind in browse.HEALTH_KINDS}
if any(found is None for found in lists.values()):
    st.info(
        f"The health lists of this extractor are not built yet — run `{commands.HEALTH}` (or "
        f"`{commands.RUN}`), then reload this page."
    )
    st.stop()

info = catalog.set_index("item_id")
name = widgets.EXTRACTOR_NAMES.get(settings.extractor, settings.extractor)
st.caption(f"Found with {name} embeddings; switch the extractor in the sidebar to compare.")


def _photo(item: str, caption: str, key: str) -> None:
    st.image(info.loc[item, "thumb_file"], caption=caption, width="stretch")
    st.button(
        "🔎 Open in Search",
        key=key,
        on_click=widgets.find_lookalikes,
        args=(item,),
        width="stretch",
    )


duplicates_tab, mislabelled_tab, outliers_tab = st.tabs(
    ["Near-duplicates", "Likely mislabelled", "Outliers"]
)

with duplicates_tab:
    pairs, manifest = lists["duplicates"]
    floor = float(manifest.get("floor", cfg.health_min_similarity))
    threshold = st.slider(
        "Similarity at least",
        min_value=round(floor, 3),
        max_value=1.0,
        value=max(round(floor, 3), 0.95) if floor < 0.95 else round(floor, 3),
        step=0.001,
        format="%.3f",
        key=f"health_threshold_{settings.extractor}",
        help=f"The list is complete from {floor:.3f} up (the health stage keeps every pair "
        f"at or above it).",
    )
    above = pairs[pairs["similarity"] >= threshold]
    st.markdown(f"**{browse.plural(len(above), 'pair')}** with similarity ≥ {threshold:.3f}")
    for i, row in enumerate(above.head(SHOWN).itertuples(index=False)):
        left, right, text = st.columns([1, 1, 2])
        with left:
            _photo(row.item_a, widgets.caption(info.loc[row.item_a]), f"dup_a_{i}")
        with right:
            _photo(row.item_b, widgets.caption(info.loc[row.item_b]), f"dup_b_{i}")
        text.markdown(f"Similarity **{row.similarity:.3f}**  \n`{row.item_a}`  \n`{row.item_b}`")
    if len(above) > SHOWN:
        st.caption(f"Showing the {SHOWN} most similar; the CSV has all {len(above):,}.")
    table = above.assign(
        path_a=info["path"].reindex(above["item_a"]).to_numpy(),
        path_b=info["path"].reindex(above["item_b"]).to_numpy(),
        label_a=info["label"].reindex(above["item_a"]).to_numpy(),
        label_b=info["label"].reindex(above["item_b"]).to_numpy(),
    )
    widgets.csv_download(table, f"near-duplicates-{settings.extractor}", key="health_dup_csv")

with mislabelled_tab:
    wrong, _ = lists["mislabelled"]
    st.markdown(
        f"**{browse.plural(len(wrong), 'item')}** whose {cfg.health_neighbors} nearest "
        f"neighbours mostly carry another label, strongest evidence first (evidence: the "
        f"other label's share of the neighbours' similarity-weighted votes minus its own)."
    )
    for start in range(0, min(SHOWN, len(wrong)), 5):
        cells = st.columns(5)
        for cell, row in zip(cells, wrong.iloc[start : start + 5].itertuples(), strict=False):
            with cell:
                _photo(
                    row.item_id,
                    f"{row.label} → {row.suggested}? · {row.evidence:.2f}",
                    f"wrong_{row.item_id}",
                )
    widgets.csv_download(
        browse.export_table(wrong, catalog).merge(
            wrong[["item_id", "suggested", "evidence"]], on="item_id"
        ),
        f"likely-mislabelled-{settings.extractor}",
        key="health_wrong_csv",
    )

with outliers_tab:
    outliers, _ = lists["outliers"]
    st.markdown(
        f"The items least like anything else: lowest mean similarity to their "
        f"{cfg.health_neighbors} nearest neighbours."
    )
    top = outliers.head(SHOWN)
    for start in range(0, len(top), 5):
        cells = st.columns(5)
        for cell, row in zip(cells, top.iloc[start : start + 5].itertuples(), strict=False):
            with cell:
                _photo(
                    row.item_id,
                    f"{widgets.caption(info.loc[row.item_id])} · {row.mean_similarity:.3f}",
                    f"outlier_{row.item_id}",
                )
    widgets.csv_download(
        browse.export_table(outliers, catalog).merge(
            outliers[["item_id", "mean_similarity", "rank"]], on="item_id"
        ),
        f"outliers-{settings.extractor}",
        key="health_outliers_csv",
    )

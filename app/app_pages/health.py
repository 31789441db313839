"""Catalog health page: what a merchandiser fixes first — near-duplicate listings, items whose
neighbours mostly carry another label, and outliers (written by the health stage) — and the
fixes: relabel or drop an item where it is listed, undo, applied at the next run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from app.ui import corrections as fixes
from app.ui import loaders, widgets
from app.ui.names import display_name
from pipelines import commands
from pipelines.explore import browse

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

# The catalog rows of the listed items only, by id: a set_index of the whole catalog cost
# about a second per rerun at 1M items.
listed = pd.unique(
    np.concatenate(
        [
            lists["duplicates"][0]["item_a"].to_numpy(dtype=object),
            lists["duplicates"][0]["item_b"].to_numpy(dtype=object),
            lists["mislabelled"][0]["item_id"].to_numpy(dtype=object),
            lists["outliers"][0]["item_id"].to_numpy(dtype=object),
        ]
    )
)
rows = loaders.item_index(catalog).get_indexer(listed)
info = catalog.iloc[rows[rows >= 0]].set_index("item_id")
labels = loaders.catalog_labels(cfg)
with widgets.user_errors():
    fixing = fixes.in_force(cfg, catalog)
name = display_name(settings.extractor)
st.caption(f"Found with {name} embeddings; switch the extractor in the sidebar to compare.")
sampled = lists["outliers"][1].get("sampled")
if sampled:  # a large catalog's lists (pipelines/quality/health_large.py)
    st.caption(
        f"At {len(catalog):,} items the lists come through the approximate index: "
        f"near-duplicates among items that share one of its lists, likely mislabelled items "
        f"and outliers among a seeded sample of {int(sampled):,} items."
    )


def _photo(item: str, caption: str, key: str, suggested: list[str] | None = None) -> None:
    """The item's photo and "Open in Search"; with `suggested` labels also its corrections and
    a "Fix" popover (relabel, suggested labels first, or drop)."""
    st.image(widgets.thumb(info.loc[item, "thumb_file"]), caption=caption, width="stretch")
    st.button(
        "🔎 Open in Search",
        key=key,
        on_click=widgets.find_lookalikes,
        args=(item,),
        width="stretch",
    )
    if suggested is None:
        return
    if note := fixes.status_caption(info.loc[item], fixing.get(item)):
        st.caption(note)
    fixes.fix_popover(cfg, item, info.loc[item, "label"], suggested, labels, f"fix_{key}")


def _csv(table: pd.DataFrame, columns: list[str], name: str, key: str) -> None:
    """A CSV download of a health list: the catalog columns plus the list's own `columns`."""
    widgets.csv_download(
        browse.export_table(table, catalog).merge(table[["item_id", *columns]], on="item_id"),
        f"{name}-{settings.extractor}",
        key=f"health_{key}_csv",
    )


def _grid(
    table: pd.DataFrame,
    caption_of: Callable[[Any], str],
    key: str,
    suggest: Callable[[Any], list[str]] | None = None,
) -> None:
    """The rows' photos, five to a row, each captioned and with "Open in Search" (and a "Fix"
    popover offering `suggest(row)` first, when given)."""
    for start in range(0, len(table), 5):
        cells = st.columns(5)
        for cell, row in zip(cells, table.iloc[start : start + 5].itertuples(), strict=False):
            with cell:
                fix = None if suggest is None else suggest(row)
                _photo(row.item_id, caption_of(row), f"{key}_{row.item_id}", fix)


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
    table = above.assign(
        path_a=info["path"].reindex(above["item_a"]).to_numpy(),
        path_b=info["path"].reindex(above["item_b"]).to_numpy(),
        label_a=info["label"].reindex(above["item_a"]).to_numpy(),
        label_b=info["label"].reindex(above["item_b"]).to_numpy(),
    )
    conflicting = table[table["label_a"].astype(str) != table["label_b"].astype(str)]
    st.markdown(
        f"**{browse.plural(len(above), 'pair')}** with similarity ≥ {threshold:.3f}, "
        f"{len(conflicting):,} of them with different labels"
    )
    only_conflicts = st.toggle(
        "Only pairs with different labels",
        key="health_conflicts_only",
        help="Pairs this alike with two labels: one of the two is likely wrong. ✏️ Fix relabels "
        "an item (the other's label first) or drops a duplicate.",
    )
    shown = conflicting if only_conflicts else table
    for row in shown.head(SHOWN).itertuples(index=False):
        left, right, text = st.columns([1, 1, 2])
        pair = f"dup_{row.item_a}_{row.item_b}"  # keys follow the pair, whichever list shows it
        with left:
            _photo(row.item_a, widgets.caption(info.loc[row.item_a]), f"{pair}_a", [row.label_b])
        with right:
            _photo(row.item_b, widgets.caption(info.loc[row.item_b]), f"{pair}_b", [row.label_a])
        text.markdown(f"Similarity **{row.similarity:.3f}**  \n`{row.item_a}`  \n`{row.item_b}`")
    if len(shown) > SHOWN:
        st.caption(f"Showing the {SHOWN} most similar; the CSV has all {len(above):,}.")
    widgets.csv_download(table, f"near-duplicates-{settings.extractor}", key="health_dup_csv")

with mislabelled_tab:
    wrong, _ = lists["mislabelled"]
    st.markdown(
        f"**{browse.plural(len(wrong), 'item')}** whose {cfg.health_neighbors} nearest "
        f"neighbours mostly carry another label, strongest evidence first (evidence: the "
        f"other label's share of the neighbours' similarity-weighted votes minus its own)."
    )
    _grid(
        wrong.head(SHOWN),
        lambda row: f"{row.label} → {row.suggested}? · {row.evidence:.2f}",
        "wrong",
        suggest=lambda row: [row.suggested],
    )
    _csv(wrong, ["suggested", "evidence"], "likely-mislabelled", "wrong")

with outliers_tab:
    outliers, _ = lists["outliers"]
    st.markdown(
        f"The items least like anything else: lowest mean similarity to their "
        f"{cfg.health_neighbors} nearest neighbours."
    )
    _grid(
        outliers.head(SHOWN),
        lambda row: f"{widgets.caption(info.loc[row.item_id])} · {row.mean_similarity:.3f}",
        "outlier",
    )
    _csv(outliers, ["mean_similarity", "rank"], "outliers", "outliers")

with widgets.user_errors():
    fixes.corrections_section(cfg, catalog)

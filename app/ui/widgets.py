"""Widgets the pages share: settings sidebar, artifact guard, thumbnail grids, query picker.

Shared values live under plain st.session_state keys so they persist across pages.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from app.ui import loaders
from app.ui.loaders import item_index
from app.ui.names import EXTRACTOR_NAMES, STRATEGY_NAMES, display_name  # noqa: F401
from pipelines import commands, consistency, status
from pipelines.config import EXTRACTORS, STRATEGIES, Config
from pipelines.errors import LookalikeError
from pipelines.explore import browse

# Settings shared by every page: session key -> default. The router sets these once.
# The extractor starts as None: the sidebar's first draw opens on the build's best one
# (`default_extractor`).
DEFAULTS = {"extractor": None, "k": 10, "strategy": STRATEGIES[0], "query_id": None}
# Sidebar labels, spelled once: tests and the benchmark find the widgets by them.
EXTRACTOR_LABEL = "Extractor"
K_LABEL = "Neighbours (k)"
GRID_COLUMNS = 6
# Thumbnails a grid shows at most; a larger selection says how many it left out.
GRID_LIMIT = 60
# The button under every thumbnail that searches from it.
LOOKALIKES_LABEL = "🔎 Find lookalikes"
# The same button in grids too narrow for the words (Compare's three panels): a magnifier
# from Streamlit's bundled Material font (an emoji needs a system emoji font, which headless
# browsers often lack), with the words as its tooltip.
LOOKALIKES_ICON = ":material/search:"
LOOKALIKES_HELP = "Find lookalikes of this item"
# Set by `find_lookalikes`; the router opens Search on the next run when it is set.
GOTO_SEARCH = "goto_search"
# Recent Search queries kept for "back" (newest last).
HISTORY_KEY = "query_history"
HISTORY_SIZE = 8


@dataclass(frozen=True)
class Settings:
    """The sidebar's choices."""

    extractor: str
    k: int
    strategy: str


def init_session() -> None:
    """Put every shared setting into st.session_state once (called by the router)."""
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(key, value)


def _keep(name: str) -> None:
    # Widget state is dropped on pages that do not draw the widget; the plain key survives.
    st.session_state[name] = st.session_state[f"sidebar_{name}"]


def sidebar(cfg: Config, max_k: int | None = None) -> Settings:
    """Draw the settings (extractor, k, strategy) and the artifacts' status in the sidebar.

    Parameters
    ----------
    cfg : the app's settings (artifacts dir, max_k).
    max_k : the largest k offered; default `cfg.max_k`.

    Returns
    -------
    Settings, also kept in st.session_state["extractor" | "k" | "strategy"].
    """
    init_session()
    top = max_k or cfg.max_k
    st.session_state["k"] = int(min(max(1, st.session_state["k"]), top))
    offered = cfg.extractors_built()  # the head only where the catalog had labels
    best = browse.best_extractor(loaders.metrics(cfg), offered)
    if st.session_state["extractor"] not in offered:  # first draw, or not in this build
        st.session_state["extractor"] = default_extractor(offered, best)
    for name in ("extractor", "k", "strategy"):
        st.session_state[f"sidebar_{name}"] = st.session_state[name]
    with st.sidebar:
        st.header("Settings")
        st.selectbox(
            EXTRACTOR_LABEL,
            offered,
            format_func=display_name,
            key="sidebar_extractor",
            on_change=_keep,
            args=("extractor",),
        )
        if best is not None:
            st.caption(
                f"Opens on {display_name(best[0])}: best P@10 ({best[1]:.2f}) in this "
                "build's evaluation"
            )
        st.slider(
            K_LABEL,
            1,
            top,
            key="sidebar_k",
            on_change=_keep,
            args=("k",),
            help=f"How many similar items to show, 1–{top}.",
        )
        st.selectbox(
            "Search strategy",
            STRATEGIES,
            format_func=lambda s: STRATEGY_NAMES.get(s, s),
            key="sidebar_strategy",
            on_change=_keep,
            args=("strategy",),
        )
        summary = status.artifacts_summary(cfg)
        st.divider()
        st.subheader("Artifacts")
        if summary["built"]:
            built = str(summary["catalog_created"] or "?").replace("T", " ")[:16]
            st.caption(
                f"Catalog: **{summary['items']:,}** items  \nBuilt: {built}  \n"
                f"Folder: `{summary['dir']}`"
            )
            build_captions(cfg)
        else:
            st.caption(f"Not built yet in `{summary['dir']}`.")
    return Settings(
        st.session_state["extractor"], int(st.session_state["k"]), st.session_state["strategy"]
    )


# The sidebar's caption while `run` writes an update and the previous build is still shown.
UPDATING_CAPTION = "⏳ An update is being written; this shows the previous build until it is done."


def build_captions(cfg: Config) -> None:
    """The sidebar's lines on the build: that an update is being written (while the previous
    build is shown), and the drift since the models were trained (one short caption; the
    policy and the cost of `run --retrain` in its tooltip)."""
    shown, now = loaders.build(cfg)
    if now.key != shown.key and not now.consistent:
        st.caption(UPDATING_CAPTION, help=now.note())
    try:
        found = loaders.drift(cfg)
    except LookalikeError:  # the training set is being rewritten: say nothing this time
        return
    if found is not None:
        st.caption(status.drift_caption(found), help="\n\n".join(status.drift_details(found)))


def default_extractor(offered: Sequence[str], best: tuple[str, float] | None) -> str:
    """The extractor the sidebar opens on: the best of `offered` by the build's evaluation
    (`browse.best_extractor`: exact search, P@10), else EXTRACTORS[0] (else the first
    offered)."""
    if best is not None:
        return best[0]
    return EXTRACTORS[0] if EXTRACTORS[0] in offered else offered[0]


def diversity_slider() -> float:
    """The "Diversity" slider in the sidebar (pages that search call it); 0 = plain nearest
    neighbours. Kept in st.session_state["diversity"] across pages."""
    st.session_state.setdefault("diversity", 0.0)
    st.session_state["sidebar_diversity"] = st.session_state["diversity"]
    st.sidebar.slider(
        "Diversity",
        0.0,
        1.0,
        step=0.1,
        key="sidebar_diversity",
        on_change=_keep,
        args=("diversity",),
        help="0 shows the plain nearest neighbours. Higher values re-rank the nearest "
        "candidates by maximal marginal relevance, so near-identical photos do not fill the "
        "grid (each result still shows its similarity to the query).",
    )
    return float(st.session_state["diversity"])


@st.cache_resource(show_spinner=False, max_entries=4)
def _colours(artifacts_dir: str, catalog_sha: str, colours_sha: str) -> np.ndarray | None:
    from pipelines.data.colour import read_colours
    from pipelines.readers import read_catalog

    cfg = Config(artifacts_dir=artifacts_dir)
    ids = read_catalog(cfg)[0]["item_id"].to_numpy(dtype=object)
    found = read_colours(cfg, ids)
    consistency.check_unchanged({cfg.catalog_path: catalog_sha, cfg.colours_path: colours_sha})
    return found


def colours(cfg: Config, catalog: pd.DataFrame) -> np.ndarray | None:
    """(n,) dominant colour per catalog row (`colours.parquet`), or None before it is built.
    Keyed on the catalog's and the colours' manifests (hashing a million ids per rerun as
    the key cost seconds); shared, read only."""
    if not cfg.colours_path.exists():
        return None
    values = _colours(
        str(cfg.artifacts_dir), loaders.sha(cfg.catalog_path), loaders.sha(cfg.colours_path)
    )
    return values if values is not None and len(values) == len(catalog) else None


def colour_filter(cfg: Config, catalog: pd.DataFrame, key: str) -> tuple[str | None, Any]:
    """A "Colour" select box ("any colour" or one palette name): (chosen colour or None,
    the colours array to filter with)."""
    from pipelines.data.colour import COLOURS

    values = colours(cfg, catalog)
    if values is None:
        return None, None
    choice = st.selectbox(
        "Colour",
        ["any colour", *COLOURS],
        key=f"{key}_colour",
        help="Only items whose dominant colour (of the garment's central region) is this one.",
    )
    return (None if choice == "any colour" else choice), values


def require(cfg: Config, parts: Sequence[str], extractors: Sequence[str] | None = None) -> None:
    """Stop the page with guidance when artifacts it needs are missing (never a traceback).

    Parameters
    ----------
    parts : see `pipelines.status.required_paths`.
    extractors : extractors whose artifacts the page needs.
    """
    if extractors is None:  # every extractor this catalog has
        extractors = cfg.extractors_built()
    missing = status.missing_artifacts(cfg, parts, extractors)
    if not missing:
        return
    shown = "\n".join(f"- `{p}`" for p in missing[:8])
    more = f"\n- … and {len(missing) - 8} more" if len(missing) > 8 else ""
    st.info(
        f"**The pipeline has not built what this page needs yet.** Run\n\n"
        f"```\n{commands.RUN}\n```\n\n"
        f"from the repository root (it takes a few minutes on 2 CPU cores; set "
        f"`LOOKALIKE_ARTIFACTS` to use another artifacts folder), then reload this page.\n\n"
        f"Missing:\n{shown}{more}"
    )
    st.stop()


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Show a LookalikeError (problem and fix) as st.error and stop the page; an update being
    written (`consistency.UpdateInProgress`) is a note, not an error."""
    try:
        yield
    except consistency.UpdateInProgress as err:
        st.info(str(err))
        st.stop()
    except LookalikeError as err:
        st.error(str(err))
        st.stop()


@functools.cache
def _gone_tile() -> bytes:
    """A plain grey JPEG tile."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 200, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def thumb(path: str) -> str | bytes:
    """What `st.image` shows for a thumbnail: its path, or a grey tile when the file is gone.
    `run` deletes removed items' thumbnails once an update is whole, and a session may still
    show the build that held them until its next rerun (`loaders.pin`); a missing file must
    not stop the page."""
    return path if os.path.isfile(path) else _gone_tile()


def caption(row: pd.Series | dict, rank: int | None = None, similarity: float | None = None) -> str:
    """A thumbnail caption: "#rank · label · similarity" (parts that exist)."""
    parts = []
    if rank is not None:
        parts.append(f"#{rank}")
    label = row.get("label")
    parts.append(str(label) if label is not None and not pd.isna(label) else "(no label)")
    if similarity is not None and not np.isnan(similarity):
        parts.append(f"{similarity:.3f}")
    return " · ".join(parts)


def thumbnail_grid(
    items: pd.DataFrame,
    captions: Sequence[str],
    *,
    path_column: str = "thumb_file",
    columns: int = GRID_COLUMNS,
    limit: int = GRID_LIMIT,
    pick: Callable[[str], None] | None = None,
    key: str = "grid",
    compact: bool = False,
) -> None:
    """Thumbnails in rows of `columns`, each with its caption (and a pick button).

    Parameters
    ----------
    items : rows with item_id and the thumbnail path column.
    captions : one caption per row.
    path_column : column holding the thumbnail path.
    columns : thumbnails per row.
    limit : at most this many are drawn; a note says how many were left out.
    pick : when given, a "Find lookalikes" button under each thumbnail calls pick(item_id)
        (`find_lookalikes` opens Search on that item).
    key : prefix of the buttons' keys.
    compact : the pick button shows only its icon (its words become the tooltip), for
        columns too narrow to hold "Find lookalikes".
    """
    if items.empty:
        st.caption("Nothing to show.")
        return
    shown = items.head(limit)
    paths = shown[path_column].tolist()
    ids = shown["item_id"].astype(str).tolist()
    for start in range(0, len(shown), columns):
        cells = st.columns(columns)
        for cell, i in zip(cells, range(start, min(start + columns, len(shown))), strict=False):
            with cell:
                st.image(thumb(paths[i]), caption=captions[i], width="stretch")
                if pick is not None:
                    st.button(
                        "" if compact else LOOKALIKES_LABEL,
                        key=f"{key}_pick_{ids[i]}",
                        icon=LOOKALIKES_ICON if compact else None,
                        help=LOOKALIKES_HELP if compact else None,
                        on_click=pick,
                        args=(ids[i],),
                        width="stretch",
                    )
    if len(items) > limit:
        st.caption(f"Showing {limit} of {len(items)}.")


def neighbour_grid(
    neighbours: pd.DataFrame,
    key: str = "neighbours",
    columns: int = 5,
    catalog: pd.DataFrame | None = None,
    compact: bool = False,
) -> None:
    """A neighbour table (`neighbours.neighbours_table`) as a grid captioned "#rank · label ·
    similarity", each with a "Find lookalikes" button (only its icon when `compact`), with the
    table itself (ids included) and its CSV download (paths too when `catalog` is given) in an
    expander."""
    # Records, not iterrows: a Series per row of arrow-backed columns costs ~2 ms each.
    captions = [
        caption(row, int(row["rank"]), float(row["similarity"]))
        for row in neighbours[["rank", "label", "similarity"]].to_dict("records")
    ]
    # Every neighbour is drawn: k is at most max_k (50), so no "showing n of m" cut.
    thumbnail_grid(
        neighbours,
        captions,
        path_column="thumb",
        columns=columns,
        limit=len(neighbours),
        pick=find_lookalikes,
        key=key,
        compact=compact,
    )
    with st.expander("As a table"):
        st.dataframe(
            neighbours[["rank", "item_id", "label", "similarity"]],
            hide_index=True,
            width="stretch",
        )
        if catalog is not None:
            export_download(neighbours, catalog, f"{key}-neighbours", key=f"{key}_csv")
        else:
            table = neighbours[["rank", "item_id", "similarity", "label"]]
            csv_download(table, f"{key}-neighbours", key=f"{key}_csv")


def csv_download(table: pd.DataFrame, name: str, key: str, label: str | None = None) -> None:
    """A "Download CSV" button for a table (no rerun on click).

    Parameters
    ----------
    table : what the file holds (see `browse.export_table`).
    name : file name without ".csv".
    key : the button's widget key.
    label : button text; default "⬇ Download CSV (n rows)".
    """
    st.download_button(
        label or f"⬇ Download CSV ({browse.plural(len(table), 'row')})",
        # Deferred: the CSV is written only when the button is clicked.
        data=lambda: browse.to_csv(table),
        file_name=f"{name}.csv",
        mime="text/csv",
        key=key,
        on_click="ignore",
    )


def export_download(items: pd.DataFrame, catalog: pd.DataFrame, name: str, key: str) -> None:
    """A "Download CSV" button for `browse.export_table(items, catalog)` (ids, paths, labels),
    the table built only when the button is clicked: it looks every item up in the whole
    catalog, about a second per rerun at 1M items."""
    st.download_button(
        f"⬇ Download CSV ({browse.plural(len(items), 'row')})",
        data=lambda: browse.to_csv(browse.export_table(items, catalog)),
        file_name=f"{name}.csv",
        mime="text/csv",
        key=key,
        on_click="ignore",
    )


def find_lookalikes(item_id: str) -> None:
    """Make `item_id` the query and open Search on it (the router switches page)."""
    set_query(item_id)
    st.session_state[GOTO_SEARCH] = True


def remember_query(item_id: str) -> None:
    """Add a query to the short Search history (no repeats; the newest last)."""
    history = [i for i in st.session_state.get(HISTORY_KEY, []) if i != item_id]
    st.session_state[HISTORY_KEY] = (history + [str(item_id)])[-HISTORY_SIZE:]


def query_history(catalog: pd.DataFrame, current: str) -> None:
    """The recent queries as small thumbnails, each with a button to go back to it."""
    known = item_index(catalog)
    earlier = [i for i in st.session_state.get(HISTORY_KEY, []) if i != current and i in known]
    if not earlier:
        return
    rows = catalog.iloc[known.get_indexer(earlier[::-1])].reset_index(drop=True)
    with st.expander(f"Recent queries ({len(rows)})", expanded=False):
        cells = st.columns(HISTORY_SIZE)
        for cell, (_, row) in zip(cells, rows.iterrows(), strict=False):
            with cell:
                st.image(thumb(row["thumb_file"]), caption=caption(row), width="stretch")
                st.button(
                    "↩ Back",
                    key=f"history_{row['item_id']}",
                    on_click=set_query,
                    args=(row["item_id"],),
                    width="stretch",
                )


def set_query(item_id: str) -> None:
    """Make `item_id` the query of the Search and Compare pages."""
    st.session_state["query_id"] = str(item_id)


def _random_query(catalog: pd.DataFrame) -> None:
    set_query(browse.random_item(catalog))


def _query_from_id() -> None:
    text = (st.session_state.get("query_id_text") or "").strip()
    if text:
        st.session_state["query_id_pending"] = text


def query_picker(
    catalog: pd.DataFrame, key: str, modes: Sequence[str] = ("Random", "Item id", "Browse")
) -> str:
    """Let the user choose the query item; returns its id (kept in session "query_id").

    Parameters
    ----------
    catalog : the catalog (item_id, label, thumb_file).
    key : prefix of this picker's widget keys (one picker per page).
    modes : the ways offered: "Random", "Item id", "Browse", and "Map" (the page handles
        map clicks itself; this only explains it).
    """
    ids = item_index(catalog)
    if st.session_state.get("query_id") not in ids:
        # A new session opens on a random item, so each visit shows another part of the
        # catalog.
        set_query(browse.random_item(catalog))
    pending = st.session_state.pop("query_id_pending", None)
    if pending is not None:
        if pending in ids:
            set_query(pending)
        else:
            st.error(f"item {pending!r} is not in the catalog ({len(ids):,} items); pick another")

    mode = st.radio("Pick the query", modes, horizontal=True, key=f"{key}_mode")
    if mode == "Random":
        st.button(
            "🎲 Another random item", key=f"{key}_random", on_click=_random_query, args=(catalog,)
        )
    elif mode == "Item id":
        st.text_input(
            "Item id (16 hex digits, as shown in tables and hovers)",
            key="query_id_text",
            on_change=_query_from_id,
        )
    elif mode == "Browse":
        labels = sorted(catalog["label"].dropna().astype(str).unique())
        c1, c2 = st.columns([3, 1])
        chosen = c1.multiselect("Labels", labels, key=f"{key}_browse_labels", placeholder="all")
        _, pages = browse.browse_page(catalog, chosen, 0, 18)
        page = c2.number_input("Page", 1, pages, 1, key=f"{key}_browse_page") - 1
        rows, _ = browse.browse_page(catalog, chosen, page, 18)
        thumbnail_grid(
            rows,
            [caption(r) for _, r in rows.iterrows()],
            pick=set_query,
            key=f"{key}_browse",
        )
    elif mode == "Map":
        st.caption("Click a point on the map below to make it the query.")
    return str(st.session_state["query_id"])


def query_card(row: pd.Series, precision: float | None, k: int, found: int) -> None:
    """The query's thumbnail, label, id and precision@k against its own label."""
    st.image(thumb(row["thumb_file"]), caption=f"Query · {caption(row)}", width="stretch")
    st.caption(f"`{row['item_id']}`")
    value = "n/a" if precision is None or np.isnan(precision) else f"{precision:.2f}"
    st.metric(f"Precision@{k}", value, help="Share of the k neighbours with the query's label.")
    if found < k:
        st.caption(f"Only {found} items in this strategy's pool.")


def pick_map(figure: Any, trace_ids: list, key: str, container: Any = None) -> Any:
    """A map where a click picks an item: draws `figure` and keeps its traces' item ids under
    `<key>_traces`, where `app.ui.selection` reads them on the rerun the click causes."""
    st.session_state[f"{key}_traces"] = trace_ids
    return (container or st).plotly_chart(
        figure, on_select="rerun", selection_mode="points", key=key, width="stretch"
    )


def lookalike_grid(items: pd.DataFrame, limit: int, key: str) -> None:
    """Thumbnails captioned by label, each with "find lookalikes" (clusters, selections)."""
    thumbnail_grid(
        items,
        [caption(r) for r in items[["label"]].to_dict("records")],
        limit=limit,
        pick=find_lookalikes,
        key=key,
    )

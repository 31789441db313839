"""Turns a Plotly selection event from `st.plotly_chart(on_select="rerun")` into item ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def selection_to_item_ids(
    event: Mapping[str, Any] | None, trace_item_ids: Sequence[Sequence[str] | None] | None = None
) -> list[str]:
    """The catalog items picked on a map, in the order the chart reports them, once each.

    Parameters
    ----------
    event : what `st.plotly_chart(..., on_select="rerun")` returns
        ({"selection": {"points": [...], "point_indices": [...], "box": [...],
        "lasso": [...]}}), its "selection" part alone, or None.
        Each point carries curve_number and point_index (or point_number), and customdata
        when the figure set it.
    trace_item_ids : item ids of each trace's points, in figure order (None for traces that
        are not catalog items, such as highlight markers and lines). Used when a point carries
        no customdata; a point of an unknown trace or past its trace's end is ignored.

    Returns
    -------
    Item ids (str); empty for no event or an empty selection.
    """
    if not event:
        return []
    selection = event.get("selection", event) if isinstance(event, Mapping) else None
    if not isinstance(selection, Mapping):
        return []
    points = selection.get("points") or []
    ids: list[str] = []
    seen: set[str] = set()
    for point in points:
        if not isinstance(point, Mapping):
            continue
        item = _point_item_id(point, trace_item_ids)
        if item is not None and item not in seen:
            seen.add(item)
            ids.append(item)
    return ids


def _point_item_id(
    point: Mapping[str, Any], trace_item_ids: Sequence[Sequence[str] | None] | None
) -> str | None:
    curve = point.get("curve_number", point.get("curveNumber"))
    # A trace the caller marked as not items (highlights) never yields an id, even when it
    # carries customdata.
    if (
        trace_item_ids is not None
        and curve is not None
        and (not 0 <= int(curve) < len(trace_item_ids) or trace_item_ids[int(curve)] is None)
    ):
        return None
    custom = point.get("customdata")
    if isinstance(custom, list | tuple):
        custom = custom[0] if custom else None
    if isinstance(custom, str) and custom:
        return custom
    if trace_item_ids is None or curve is None:
        return None
    index = point.get("point_index", point.get("point_number", point.get("pointIndex")))
    ids = trace_item_ids[int(curve)]
    if index is None or ids is None or not 0 <= int(index) < len(ids):
        return None
    return str(ids[int(index)])


def region_item_ids(
    event: Mapping[str, Any] | None, layer: Any, shown_labels: Sequence[str] = ()
) -> list[str] | None:
    """The items inside the boxes and lassos of a selection on a map drawn as an image
    (`plots.map_layer`), found by their coordinates over the whole map (the chart itself only
    holds a sample of points), in map row order; None when the event draws no region.

    Parameters
    ----------
    event : the chart's state, as for `selection_to_item_ids`.
    layer : the `plots.MapLayer` the chart was drawn from (coordinates, ids, labels).
    shown_labels : the label filter: items it greys out are not selectable, as on a small map.
    """
    import numpy as np

    from pipelines.explore.raster import selected_rows

    if not event:
        return None
    selection = event.get("selection", event) if isinstance(event, Mapping) else None
    if not isinstance(selection, Mapping):
        return None
    rows = selected_rows(layer.xs, layer.ys, selection)
    if rows is None:
        return None
    if len(shown_labels):
        rows = rows[np.isin(layer.labels[rows], [str(label) for label in shown_labels])]
    return [str(v) for v in layer.ids[rows]]


def kept_selection(
    event: Mapping[str, Any] | None,
    trace_item_ids: Sequence[Sequence[str] | None] | None,
    context: object,
    key: str,
    layer: Any = None,
    shown_labels: Sequence[str] = (),
) -> list[str]:
    """A map selection that survives redrawing the map (another colouring or label filter).

    Streamlit gives a chart whose figure changed a new, empty selection state. So the ids are
    kept in st.session_state[key], and replaced only when the chart's own selection changes
    while the figure's `context` (what changes the figure: colouring, filter) stays the same
    — a new box or lasso, or a double-click that clears it.

    Parameters
    ----------
    event : the chart's state (st.session_state[chart key]) from the previous run.
    trace_item_ids : the item ids per trace of the figure that produced `event`.
    context : anything equal between runs exactly when the figure is the same.
    key : session key holding {"ids", "event", "context"}.
    layer : the `plots.MapLayer` of a map drawn as an image, whose selection is read from
        its boxes and lassos (`region_item_ids`); None for a map of points.
    shown_labels : the label filter of a layer's map (filtered-out items are not selected).

    Returns
    -------
    The kept item ids (also `kept_ids(key)`).
    """
    import streamlit as st

    state = st.session_state.setdefault(key, {"ids": [], "event": [], "context": None})
    if layer is None:
        current = selection_to_item_ids(event, trace_item_ids)
    else:
        current = _region_once(event, layer, shown_labels, state)
    same_figure = context == state["context"]
    # A redrawn figure starts empty: that is not the user clearing the selection.
    if (same_figure and current != state["event"]) or (not same_figure and current):
        state["ids"] = current
    state["event"] = current
    state["context"] = context
    return list(state["ids"])


def _region_once(
    event: Mapping[str, Any] | None, layer: Any, shown_labels: Sequence[str], state: dict
) -> list[str]:
    """`region_item_ids`, remembered for the event that produced it: the chart re-reports
    its selection on every rerun, and a lasso over a million points costs ~0.5 s."""
    selection = (event or {}).get("selection", event) if isinstance(event, Mapping) else None
    regions = None
    if isinstance(selection, Mapping):
        regions = repr((selection.get("box"), selection.get("lasso"), tuple(shown_labels)))
    memo = state.get("region")
    if memo is not None and memo[0] == regions and memo[1] is layer:
        return memo[2]
    found = region_item_ids(event, layer, shown_labels) or []
    state["region"] = (regions, layer, found)
    return found


def kept_ids(key: str) -> list[str]:
    """The item ids `kept_selection` keeps under `key` (empty before any)."""
    import streamlit as st

    return list((st.session_state.get(key) or {}).get("ids", []))


def new_click(chart_key: str) -> str | None:
    """The item a user just clicked on the chart stored under `chart_key` (its traces' ids
    under `<chart_key>_traces`), once per new click; None otherwise.

    The chart keeps its selection across reruns, so an old click must not win over a later
    pick made elsewhere: each click is reported once.
    """
    import streamlit as st

    clicked = selection_to_item_ids(
        st.session_state.get(chart_key), st.session_state.get(f"{chart_key}_traces")
    )
    if clicked and clicked != st.session_state.get(f"{chart_key}_seen"):
        st.session_state[f"{chart_key}_seen"] = clicked
        return clicked[0]
    return None

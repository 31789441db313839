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

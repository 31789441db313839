"""Turns map points, neighbour tables and metrics into plotly figures (data in, figure out)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.ui.names import display_name
from pipelines.explore import raster
from pipelines.explore.raster import Raster

# Enough distinct colours for the 10 catalog classes and 10 clusters (plotly's "Plotly" set).
PALETTE = [
    "#636EFA",
    "#EF553B",
    "#00CC96",
    "#AB63FA",
    "#FFA15A",
    "#19D3F3",
    "#FF6692",
    "#B6E880",
    "#FF97FF",
    "#FECB52",
]
QUERY_COLOUR = "#111111"
NEIGHBOUR_COLOUR = "#D62728"
UPLOAD_COLOUR = "#FF7F0E"
SELECTED_COLOUR = "#111111"
# Points a label filter hides: drawn grey and small, so the rest keep their colours.
FILTERED_COLOUR = "#D3D3D3"
# Draw order inside a colour group: test points over validation over train, so the points a
# user evaluates are never hidden under the training set.
SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}
MAP_HEIGHT = 720
# Drag tools: the Map page selects (box by default, lasso on the toolbar); every other map
# zooms on drag, so a single click picks the point under it.
SELECT_DRAG = "select"
PICK_DRAG = "zoom"
# From this many items a map is drawn as an image under a sample of interactive points
# (`map_layer`). Below it every point is a WebGL marker, as always: at the default catalog's
# 3,781 items that is 0.3 MB a render and paints fast. At 100k items the scatter's JSON is
# 7 MB per rerun and Chromium paints 2.5x slower, so the crossover sits well between; 20k
# items (~1.5 MB) keeps every catalog up to a few times the default one on the exact path.
RASTER_MIN_ITEMS = 20_000
# Markers drawn over a large map's image, for hover photos and click-to-pick: a few times
# the default catalog's points, ~0.4 MB of JSON.
SAMPLE_POINTS = 4_000
# Rings drawn around a large map's selection at most (a sample of a bigger one): the
# selection's own list and counts below the map cover all of it.
SELECTED_LIMIT = 2_000


def _group_names(values: np.ndarray) -> list[str]:
    return sorted(set(values), key=lambda v: (len(v) if v.isdigit() else 0, v))


def _values(points: pd.DataFrame, column: str) -> np.ndarray:
    return points[column].fillna("").astype(str).replace("", "(none)").to_numpy()


def group_colours(points: pd.DataFrame, color_by: str) -> dict[str, str]:
    """One fixed colour per value of `color_by` over the whole map: a filter never changes a
    label's colour."""
    names = _group_names(_values(points, color_by))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def map_figure(
    points: pd.DataFrame,
    color_by: str = "label",
    *,
    query: str | None = None,
    neighbours: Sequence[str] = (),
    extra: Sequence[tuple[str, float, float]] = (),
    height: int = MAP_HEIGHT,
    title: str | None = None,
    shown_labels: Sequence[str] = (),
    selected: Sequence[str] = (),
    dragmode: str = PICK_DRAG,
    layer: MapLayer | None = None,
) -> tuple[go.Figure, list[list[str] | None]]:
    """A WebGL scatter of a map, one trace per colour group, with optional highlights.

    From RASTER_MIN_ITEMS points the map is drawn as an image instead (`map_layer`: every
    point binned into a PNG per colour group) under a sampled interactive scatter, so the
    browser receives a few hundred kB whatever the catalog's size; the highlights are drawn
    the same way on both paths.

    Parameters
    ----------
    points : item_id, x, y, label, split and the `color_by` column (see
        `pipelines.explore.browse.map_points`).
    color_by : column whose values colour the points ("label", "cluster", "split", ...).
        Each value keeps its colour whatever is filtered (`group_colours`).
    query : item id drawn as a black star, with lines to each of `neighbours`.
    neighbours : item ids drawn as red rings.
    extra : (name, x, y) of outside points (uploads) drawn as orange diamonds.
    height : figure height in pixels.
    title : figure title.
    shown_labels : when given, points with other labels are drawn grey underneath and are
        not selectable (a filter greys out; it never recolours).
    selected : item ids drawn with black rings (a selection kept across recolouring).
    dragmode : SELECT_DRAG on the page that selects, PICK_DRAG (a click picks) elsewhere.
    layer : the large map's image and sample, built once per map, colouring and filter
        (`app.ui.loaders.map_layer` caches it); built here when None and the map is large.

    Returns
    -------
    (figure, item ids of each trace in figure order; None for traces that are not
    selectable items). Every item trace carries its ids as customdata too.
    """
    highlighted = query is not None or len(neighbours) > 0 or len(extra) > 0
    if layer is None and len(points) >= RASTER_MIN_ITEMS:
        layer = map_layer(points, color_by, shown_labels)
    if layer is not None:
        return _layer_figure(
            layer, query, neighbours, extra, height, title, selected, dragmode, highlighted
        )
    ids = points["item_id"].to_numpy(dtype=object)
    labels = points["label"].fillna("").astype(str).to_numpy()
    xs, ys = points["x"].to_numpy(), points["y"].to_numpy()
    out = _Traces()
    keep = np.ones(len(points), bool)
    if len(shown_labels):
        keep = np.isin(labels, [str(label) for label in shown_labels])
        hidden = np.flatnonzero(~keep)
        marker = {"size": 4, "color": FILTERED_COLOUR, "opacity": 0.6}
        out.add(_markers(xs[hidden], ys[hidden], "filtered out", marker))
    _add_groups(out, points, color_by, keep, highlighted)

    position = {item: row for row, item in enumerate(ids)}
    rows = _Highlights(
        [position[s] for s in selected if s in position],
        [position[n] for n in neighbours if n in position],
        position.get(query) if query is not None else None,
    )
    _add_highlights(out, xs, ys, ids, labels, rows, extra)
    # One figure from the whole list, unvalidated: add_trace re-validates every earlier trace
    # each time, and validating 3,781-point arrays costs more than drawing them. The shapes
    # here are fixed; the page tests check the figure the browser receives.
    fig = go.Figure(data=out.traces, _validate=False)
    _map_layout(fig, height, title, dragmode)
    return fig, out.ids


@dataclass(frozen=True)
class MapLayer:
    """A large map drawn once: its image, the rows drawn as interactive points, and lookups
    (item id -> row, coordinates, labels) so a rerun never touches every item again."""

    raster: Raster
    sample: np.ndarray  # (s,) rows drawn as markers (hover, click), filtered-out rows left out
    # One marker trace per colour group of the sample, built once: (name, colour, xs, ys,
    # hover texts (None: a template names the label), item ids).
    groups: tuple[tuple[str, str, np.ndarray, np.ndarray, list[str] | None, list[str]], ...]
    index: pd.Index  # item id -> row (a hash index, so no dict of every item per rerun)
    ids: np.ndarray  # (n,) item ids
    xs: np.ndarray
    ys: np.ndarray
    labels: np.ndarray  # (n,) str

    def rows_of(self, items: Sequence[str]) -> np.ndarray:
        """Rows of `items` in order; unknown ids left out."""
        if len(items) == 0:
            return np.zeros(0, np.int64)
        rows = self.index.get_indexer([str(i) for i in items])
        return rows[rows >= 0]


def map_layer(
    points: pd.DataFrame,
    color_by: str = "label",
    shown_labels: Sequence[str] = (),
    sample_size: int = SAMPLE_POINTS,
) -> MapLayer:
    """Draw a large map once (`pipelines.explore.raster.rasterise`): every point binned into the
    image in its group's colour (points a label filter hides in grey, weighted low), and a seeded
    sample of `sample_size` shown points kept as markers for hover and click.

    Parameters
    ----------
    points : as for `map_figure`.
    color_by : the colouring column.
    shown_labels : the label filter (empty: all shown).
    sample_size : points drawn as markers.
    """
    ids = points["item_id"].astype(str).to_numpy(dtype=object)
    labels = points["label"].fillna("").astype(str).to_numpy()
    xs = points["x"].to_numpy(np.float32)
    ys = points["y"].to_numpy(np.float32)
    values = _values(points, color_by)
    colours = group_colours(points, color_by)
    names = list(colours)
    codes = pd.Index(names).get_indexer(values)
    keep = np.ones(len(points), bool)
    if len(shown_labels):
        keep = np.isin(labels, [str(label) for label in shown_labels])
    groups = np.where(keep, codes, len(names))  # the last group: filtered out, grey
    image = raster.rasterise(
        xs,
        ys,
        groups,
        [*colours.values(), FILTERED_COLOUR],
        weights=[1.0] * len(names) + [0.05],
    )
    shown = np.flatnonzero(keep)
    sample = shown[raster.sample_rows(codes[shown], sample_size)]
    if "split" in points.columns:  # test points over train points, as on a small map
        rank = points["split"].map(SPLIT_ORDER).fillna(0).to_numpy()[sample]
        sample = sample[np.argsort(rank, kind="stable")]
    groups = []
    for name, colour in colours.items():
        rows = sample[values[sample] == name]
        if len(rows):
            # Coloured by label, the trace's name is the label: a hover template (as on a
            # small map) saves a string per point.
            hover = None if color_by == "label" else [f"{labels[r]} · {ids[r]}" for r in rows]
            groups.append((name, colour, xs[rows], ys[rows], hover, [str(ids[r]) for r in rows]))
    return MapLayer(image, sample, tuple(groups), pd.Index(ids), ids, xs, ys, labels)


def _layer_figure(
    layer: MapLayer,
    query: str | None,
    neighbours: Sequence[str],
    extra: Sequence[tuple[str, float, float]],
    height: int,
    title: str | None,
    selected: Sequence[str],
    dragmode: str,
    highlighted: bool,
) -> tuple[go.Figure, list[list[str] | None]]:
    """`map_figure` of a large map: the layer's image under its sampled markers and the
    highlights."""
    out = _Traces()
    ids, labels = layer.ids, layer.labels
    for name, colour, xs, ys, hover, item_ids in layer.groups:
        marker = {"size": 5, "color": colour, "opacity": 0.35 if highlighted else 0.8}
        trace = _markers(xs, ys, name, marker, hover)
        if hover is None:
            trace.pop("hoverinfo")
            trace["hovertemplate"] = "%{fullData.name} · %{customdata}<extra></extra>"
        out.add(trace, item_ids, item_ids)
    q = layer.rows_of([query]) if query is not None else np.zeros(0, np.int64)
    chosen = layer.rows_of(selected)
    if len(chosen) > SELECTED_LIMIT:  # a ring per item of a huge selection is the whole map
        chosen = chosen[raster.sample_rows(np.zeros(len(chosen), np.int64), SELECTED_LIMIT)]
    rows = _Highlights(
        chosen.tolist(),
        layer.rows_of(neighbours).tolist(),
        int(q[0]) if len(q) else None,
    )
    _add_highlights(out, layer.xs, layer.ys, ids, labels, rows, extra)
    fig = go.Figure(data=out.traces, _validate=False)
    image = layer.raster
    (x0, x1), (y0, y1) = image.x_range, image.y_range
    fig.add_layout_image(
        source=image.data_uri(),
        xref="x",
        yref="y",
        x=x0,
        y=y1,
        sizex=x1 - x0,
        sizey=y1 - y0,
        xanchor="left",
        yanchor="top",
        sizing="stretch",
        layer="below",
        opacity=0.45 if highlighted else 1.0,
    )
    _map_layout(fig, height, title, dragmode)
    # A layout image does not count in autorange: the axes span the image.
    fig.update_xaxes(range=[x0, x1], showgrid=False, zeroline=False)
    fig.update_yaxes(range=[y0, y1], showgrid=False, zeroline=False)
    n = len(layer.xs)
    fig.add_annotation(
        text=f"{n:,} items drawn as an image; {len(layer.sample):,} of them are interactive",
        xref="paper",
        yref="paper",
        x=0,
        y=0,
        xanchor="left",
        yanchor="bottom",
        showarrow=False,
        font={"size": 11, "color": "#666"},
    )
    return fig, out.ids


@dataclass(frozen=True)
class _Highlights:
    """Rows of a map to highlight: a kept selection, the neighbours, the query."""

    selected: list[int]
    neighbours: list[int]
    query: int | None


def _add_highlights(
    out: _Traces,
    xs: np.ndarray,
    ys: np.ndarray,
    ids: Any,
    labels: np.ndarray,
    rows: _Highlights,
    extra: Sequence[tuple[str, float, float]],
) -> None:
    """Selection rings, query-to-neighbour lines, neighbour rings, the query star, uploads."""
    chosen, neighbour_rows, q = rows.selected, rows.neighbours, rows.query
    if chosen:
        ring = {
            "size": 10,
            "color": "rgba(0,0,0,0)",
            "line": {"color": SELECTED_COLOUR, "width": 1.5},
        }
        out.add(_markers(xs[chosen], ys[chosen], "selected", ring))
    if q is not None and neighbour_rows:
        out.add(_query_lines(xs, ys, q, neighbour_rows))
    if neighbour_rows:
        ring = {
            "size": 11,
            "color": "rgba(0,0,0,0)",
            "line": {"color": NEIGHBOUR_COLOUR, "width": 2},
        }
        hover = [f"#{i + 1} {labels[r]} · {ids[r]}" for i, r in enumerate(neighbour_rows)]
        trace = _markers(xs[neighbour_rows], ys[neighbour_rows], "neighbours", ring, hover)
        found = np.asarray([ids[r] for r in neighbour_rows], dtype=object)
        out.add(trace, [str(v) for v in found], found)
    if q is not None:
        star = {"size": 17, "symbol": "star", "color": QUERY_COLOUR}
        trace = _markers([xs[q]], [ys[q]], "query", star, [f"query: {labels[q]} · {ids[q]}"])
        out.add(trace, [str(ids[q])], [ids[q]])
    if extra:
        out.add(_uploads_trace(extra))


class _Traces:
    """The traces of a map in figure order, with the item ids of each (None: not items)."""

    def __init__(self) -> None:
        self.traces: list[dict] = []
        self.ids: list[list[str] | None] = []

    def add(self, trace: dict, ids: list[str] | None = None, customdata: Any = None) -> None:
        if customdata is not None:
            trace["customdata"] = customdata
        self.traces.append(trace)
        self.ids.append(ids)


def _ring(size: int, colour: str, width: float) -> dict:
    """A hollow circle marker (selections, neighbours)."""
    return {"size": size, "color": "rgba(0,0,0,0)", "line": {"color": colour, "width": width}}


def _markers(x: Any, y: Any, name: str, marker: dict, hover: list[str] | None = None) -> dict:
    """A WebGL marker trace; hover text when given, none otherwise."""
    trace = dict(type="scattergl", x=x, y=y, mode="markers", name=name, marker=marker)
    if hover is None:
        trace["hoverinfo"] = "skip"
    else:
        trace.update(hovertext=hover, hoverinfo="text")
    return trace


def _add_groups(
    out: _Traces, points: pd.DataFrame, color_by: str, keep: np.ndarray, highlighted: bool
) -> None:
    """One selectable trace per colour group (test points drawn over train points)."""
    ids = points["item_id"].to_numpy(dtype=object)
    labels = points["label"].fillna("").astype(str).to_numpy()
    xs, ys = points["x"].to_numpy(), points["y"].to_numpy()
    if "split" in points.columns:
        rank = points["split"].map(SPLIT_ORDER).fillna(0).to_numpy()
    else:
        rank = np.zeros(len(points))
    values = _values(points, color_by)
    colours = group_colours(points, color_by)
    for name in _group_names(values):
        rows = np.flatnonzero((values == name) & keep)
        if len(rows) == 0:
            continue
        rows = rows[np.argsort(rank[rows], kind="stable")]
        marker = {"size": 6, "color": colours[name], "opacity": 0.35 if highlighted else 0.8}
        trace = _markers(xs[rows], ys[rows], name, marker)
        # Coloured by label, the trace's name is the label: a template saves sending a hover
        # string per point (half of a 3,781-point map's payload).
        trace.pop("hoverinfo")
        if color_by == "label":
            trace["hovertemplate"] = "%{fullData.name} · %{customdata}<extra></extra>"
        else:
            trace.update(hovertext=[f"{labels[r]} · {ids[r]}" for r in rows], hoverinfo="text")
        out.add(trace, [str(v) for v in ids[rows]], ids[rows])


def _query_lines(xs: np.ndarray, ys: np.ndarray, q: int, rows: list[int]) -> dict:
    """Thin lines from the query to each neighbour, one trace with gaps between them."""
    line_x: list[float | None] = []
    line_y: list[float | None] = []
    for r in rows:
        line_x += [float(xs[q]), float(xs[r]), None]
        line_y += [float(ys[q]), float(ys[r]), None]
    return dict(
        type="scattergl",
        x=line_x,
        y=line_y,
        mode="lines",
        name="query → neighbours",
        line={"color": NEIGHBOUR_COLOUR, "width": 1},
        opacity=0.6,
        hoverinfo="skip",
        showlegend=False,
    )


def _uploads_trace(extra: Sequence[tuple[str, float, float]]) -> dict:
    """Uploaded photos placed on the map: named orange diamonds."""
    marker = {
        "size": 15,
        "symbol": "diamond",
        "color": UPLOAD_COLOUR,
        "line": {"color": "#000", "width": 1},
    }
    trace = _markers([e[1] for e in extra], [e[2] for e in extra], "uploads", marker)
    trace.update(
        mode="markers+text",
        text=[e[0] for e in extra],
        textposition="top center",
        hovertext=[f"upload: {e[0]}" for e in extra],
        hoverinfo="text",
    )
    return trace


def _map_layout(fig: go.Figure, height: int, title: str | None, dragmode: str) -> None:
    fig.update_layout(
        height=height,
        title=title,
        # The legend sits in a band above the plot, clear of the toolbar (top right).
        margin={"l": 10, "r": 10, "t": 80 if title else 50, "b": 10},
        legend={
            "itemsizing": "constant",
            "orientation": "h",
            "yanchor": "bottom",
            "y": 1.01,
            "xanchor": "left",
            "x": 0,
        },
        dragmode=dragmode,
        hovermode="closest",
        # A vertical toolbar down the right edge never covers the legend band on top.
        modebar={"orientation": "v"},
        # Keeps zoom and legend state across reruns of the same map.
        uirevision="map",
    )
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None, scaleanchor="x", scaleratio=1)


def photo_map_figure(
    cells: pd.DataFrame, image_uri: str, cols: int, rows: int, height: int = MAP_HEIGHT
) -> tuple[go.Figure, list[list[str] | None]]:
    """The photo map: the mosaic image under an invisible point per cell (at its centre), so
    a hover names the item and a click picks it.

    Parameters
    ----------
    cells : item_id, col, row, label (row 0 at the top).
    image_uri : the mosaic JPEG as a data: URI.
    cols, rows : the grid's size; the image spans x 0..cols, y 0..rows (y down).
    height : figure height in pixels.
    """
    ids = cells["item_id"].astype(str).to_numpy(dtype=object)
    labels = cells["label"].fillna("").astype(str).to_numpy()
    fig = go.Figure(
        data=[
            dict(
                type="scattergl",
                x=cells["col"].to_numpy() + 0.5,
                y=cells["row"].to_numpy() + 0.5,
                mode="markers",
                name="photos",
                customdata=ids,
                hovertext=[f"{label} · {item}" for label, item in zip(labels, ids, strict=True)],
                hoverinfo="text",
                marker={"size": 10, "color": "rgba(0,0,0,0.01)"},
                showlegend=False,
            )
        ],
        _validate=False,
    )
    fig.add_layout_image(
        source=image_uri,
        xref="x",
        yref="y",
        x=0,
        y=0,
        sizex=cols,
        sizey=rows,
        xanchor="left",
        yanchor="top",
        sizing="stretch",
        layer="below",
    )
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        dragmode=PICK_DRAG,
        hovermode="closest",
        hoverdistance=30,
        uirevision="photo-map",
        plot_bgcolor="#F5F5F5",
    )
    fig.update_xaxes(range=[0, cols], showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(
        range=[rows, 0],
        showticklabels=False,
        showgrid=False,
        zeroline=False,
        scaleanchor="x",
        scaleratio=1,
    )
    return fig, [list(ids)]


def _fitted_range(values: pd.Series, pad: float = 0.03) -> list[float]:
    """A y range around the data (within 0..1 plus the pad), so close lines are told apart."""
    if values.empty:
        return [0.0, 1.0]
    return [max(0.0, float(values.min()) - pad), min(1.0 + pad, float(values.max()) + pad)]


def precision_figure(metrics_long: pd.DataFrame, height: int = 380) -> go.Figure:
    """P@k against k: one panel per strategy, one line per extractor (display names, one
    colour each), on a y axis fitted to the values so the lines do not sit on each other."""
    rows = metrics_long[metrics_long["metric"].str.startswith("p@")].copy()
    rows["k"] = rows["metric"].str[2:].astype(int)
    strategies = sorted(rows["strategy"].unique()) or ["exact"]
    ks = sorted(rows["k"].unique())
    gap, n = 0.04, len(strategies)
    width = (1 - gap * (n - 1)) / n
    # Side-by-side panels laid out by hand: make_subplots costs ~50 ms a rerun.
    layout: dict = {
        "height": height,
        "title": {"text": "Precision@k by strategy"},
        "legend": {"orientation": "h", "yanchor": "top", "y": -0.22},
        "margin": {"t": 70, "b": 10},
        "annotations": [],
    }
    traces = []
    for s, strategy in enumerate(strategies):
        axis = "" if s == 0 else str(s + 1)
        left = s * (width + gap)
        layout[f"xaxis{axis}"] = {
            "domain": [left, left + width],
            "type": "log",
            "tickvals": ks,
            "title": {"text": "k"},
            "anchor": f"y{axis}",
        }
        layout[f"yaxis{axis}"] = {
            "range": _fitted_range(rows["value"]),
            "anchor": f"x{axis}",
            **({"title": {"text": "precision@k"}} if s == 0 else {"matches": "y"}),
            **({} if s == 0 else {"showticklabels": False}),
        }
        layout["annotations"].append(
            {
                "text": strategy,
                "x": left + width / 2,
                "y": 1.0,
                "xref": "paper",
                "yref": "paper",
                "yanchor": "bottom",
                "showarrow": False,
            }
        )
        for e, extractor in enumerate(sorted(rows["extractor"].unique())):
            name = display_name(extractor)
            group = rows[(rows["extractor"] == extractor) & (rows["strategy"] == strategy)]
            group = group.sort_values("k")
            traces.append(
                {
                    "type": "scatter",
                    "x": group["k"].tolist(),
                    "y": group["value"].tolist(),
                    "mode": "lines+markers",
                    "name": name,
                    "legendgroup": extractor,
                    "showlegend": s == 0,
                    "line": {"color": PALETTE[e % len(PALETTE)]},
                    "xaxis": f"x{axis}",
                    "yaxis": f"y{axis}",
                    "hovertemplate": f"{name} · {strategy}<br>P@%{{x}}: %{{y:.3f}}<extra></extra>",
                }
            )
    return go.Figure(data=traces, layout=layout, _validate=False)


def map_score_figure(metrics_long: pd.DataFrame, height: int = 380) -> go.Figure:
    """mAP@10 as grouped bars: strategy on x, one bar per extractor (display names)."""
    rows = metrics_long[metrics_long["metric"] == "map@10"]
    traces = [
        {
            "type": "bar",
            "x": group["strategy"].tolist(),
            "y": group["value"].tolist(),
            "name": display_name(str(extractor)),
            "marker": {"color": PALETTE[e % len(PALETTE)]},
            "text": [f"{v:.3f}" for v in group["value"]],
            "textposition": "outside",
        }
        for e, (extractor, group) in enumerate(rows.groupby("extractor", sort=True))
    ]
    layout = {
        "height": height,
        "barmode": "group",
        "title": {"text": "mAP@10 by extractor and strategy"},
        "yaxis": {"range": [0, 1.05]},
        "legend": {"orientation": "h", "yanchor": "top", "y": -0.15},
        "margin": {"t": 40, "b": 10},
    }
    return go.Figure(data=traces, layout=layout, _validate=False)


def per_class_figure(per_class: pd.DataFrame, strategy: str, height: int = 380) -> go.Figure:
    """Per-class P@10 of one strategy: label on x, one bar per extractor (display names)."""
    rows = per_class[per_class["strategy"] == strategy]
    traces = []
    for e, (extractor, group) in enumerate(rows.groupby("extractor", sort=True)):
        group = group.sort_values("label")
        traces.append(
            {
                "type": "bar",
                "x": group["label"].tolist(),
                "y": group["p@10"].tolist(),
                "name": display_name(str(extractor)),
                "marker": {"color": PALETTE[e % len(PALETTE)]},
            }
        )
    layout = {
        "height": height,
        "barmode": "group",
        "title": {"text": f"Per-class P@10 ({strategy} search)"},
        "yaxis": {"range": [0, 1]},
        "legend": {"orientation": "h", "yanchor": "top", "y": -0.2},
        "margin": {"t": 40, "b": 10},
    }
    return go.Figure(data=traces, layout=layout, _validate=False)


def composition_figure(composition: pd.DataFrame, height: int = 300) -> go.Figure:
    """A set of items' label counts as horizontal bars, most common on top."""
    rows = composition.iloc[::-1]
    fig = go.Figure(go.Bar(x=rows["count"], y=rows["label"], orientation="h"))
    fig.update_layout(height=height, title="Labels", margin={"t": 40, "b": 10, "l": 10})
    return fig

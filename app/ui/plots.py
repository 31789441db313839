"""Turns map points, neighbour tables and metrics into plotly figures (data in, figure out)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

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


def _groups(points: pd.DataFrame, color_by: str) -> list[tuple[str, np.ndarray]]:
    """(name, row positions) per colour group, in a stable sorted order."""
    values = points[color_by].fillna("").astype(str).replace("", "(none)").to_numpy()
    names = sorted(set(values), key=lambda v: (len(v) if v.isdigit() else 0, v))
    return [(name, np.flatnonzero(values == name)) for name in names]


def map_figure(
    points: pd.DataFrame,
    color_by: str = "label",
    *,
    query: str | None = None,
    neighbours: Sequence[str] = (),
    extra: Sequence[tuple[str, float, float]] = (),
    height: int = 520,
    title: str | None = None,
) -> tuple[go.Figure, list[list[str] | None]]:
    """A WebGL scatter of a map, one trace per colour group, with optional highlights.

    Parameters
    ----------
    points : item_id, x, y and the `color_by` column (see `pipelines.browse.map_points`).
    color_by : column whose values colour the points ("label", "cluster", "split", ...).
    query : item id drawn as a black star, with lines to each of `neighbours`.
    neighbours : item ids drawn as red rings.
    extra : (name, x, y) of outside points (uploads) drawn as orange diamonds.
    height : figure height in pixels.
    title : figure title.

    Returns
    -------
    (figure, item ids of each trace in figure order; None for highlight traces that are not
    selectable items). Every item trace carries its ids as customdata too.
    """
    fig = go.Figure()
    trace_ids: list[list[str] | None] = []
    highlighted = query is not None or len(neighbours) > 0 or len(extra) > 0
    ids = points["item_id"].to_numpy(dtype=object)
    labels = points["label"].fillna("").astype(str).to_numpy()
    xs, ys = points["x"].to_numpy(), points["y"].to_numpy()
    for i, (name, rows) in enumerate(_groups(points, color_by)):
        hover = [f"{labels[r]} · {ids[r]}" for r in rows]
        fig.add_trace(
            go.Scattergl(
                x=xs[rows],
                y=ys[rows],
                mode="markers",
                name=name,
                customdata=ids[rows],
                hovertext=hover,
                hoverinfo="text",
                marker={
                    "size": 5,
                    "color": PALETTE[i % len(PALETTE)],
                    "opacity": 0.35 if highlighted else 0.75,
                },
            )
        )
        trace_ids.append([str(v) for v in ids[rows]])

    position = {item: row for row, item in enumerate(ids)}
    neighbour_rows = [position[n] for n in neighbours if n in position]
    if query is not None and query in position and neighbour_rows:
        q = position[query]
        line_x: list[float | None] = []
        line_y: list[float | None] = []
        for r in neighbour_rows:
            line_x += [float(xs[q]), float(xs[r]), None]
            line_y += [float(ys[q]), float(ys[r]), None]
        fig.add_trace(
            go.Scattergl(
                x=line_x,
                y=line_y,
                mode="lines",
                name="query → neighbours",
                line={"color": NEIGHBOUR_COLOUR, "width": 1},
                opacity=0.6,
                hoverinfo="skip",
                showlegend=False,
            )
        )
        trace_ids.append(None)
    if neighbour_rows:
        fig.add_trace(
            go.Scattergl(
                x=xs[neighbour_rows],
                y=ys[neighbour_rows],
                mode="markers",
                name="neighbours",
                customdata=ids[neighbour_rows],
                hovertext=[
                    f"#{i + 1} {labels[r]} · {ids[r]}" for i, r in enumerate(neighbour_rows)
                ],
                hoverinfo="text",
                marker={
                    "size": 10,
                    "color": "rgba(0,0,0,0)",
                    "line": {"color": NEIGHBOUR_COLOUR, "width": 2},
                },
            )
        )
        trace_ids.append([str(ids[r]) for r in neighbour_rows])
    if query is not None and query in position:
        q = position[query]
        fig.add_trace(
            go.Scattergl(
                x=[xs[q]],
                y=[ys[q]],
                mode="markers",
                name="query",
                customdata=[ids[q]],
                hovertext=[f"query: {labels[q]} · {ids[q]}"],
                hoverinfo="text",
                marker={"size": 16, "symbol": "star", "color": QUERY_COLOUR},
            )
        )
        trace_ids.append([str(ids[q])])
    if extra:
        fig.add_trace(
            go.Scattergl(
                x=[e[1] for e in extra],
                y=[e[2] for e in extra],
                mode="markers+text",
                name="uploads",
                text=[e[0] for e in extra],
                textposition="top center",
                hovertext=[f"upload: {e[0]}" for e in extra],
                hoverinfo="text",
                marker={
                    "size": 15,
                    "symbol": "diamond",
                    "color": UPLOAD_COLOUR,
                    "line": {"color": "#000", "width": 1},
                },
            )
        )
        trace_ids.append(None)

    fig.update_layout(
        height=height,
        title=title,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        legend={"itemsizing": "constant"},
        dragmode="lasso",
        # Keeps zoom and legend state across reruns of the same map.
        uirevision="map",
    )
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None, scaleanchor="x", scaleratio=1)
    return fig, trace_ids


def precision_figure(metrics_long: pd.DataFrame, height: int = 360) -> go.Figure:
    """P@k against k, one line per extractor × strategy (from `browse.metrics_long`)."""
    fig = go.Figure()
    rows = metrics_long[metrics_long["metric"].str.startswith("p@")].copy()
    rows["k"] = rows["metric"].str[2:].astype(int)
    for (extractor, strategy), group in rows.groupby(["extractor", "strategy"], sort=True):
        group = group.sort_values("k")
        fig.add_trace(
            go.Scatter(
                x=group["k"],
                y=group["value"],
                mode="lines+markers",
                name=f"{extractor} / {strategy}",
                line={"dash": "solid" if extractor == "inception_v3" else "dot"},
            )
        )
    fig.update_layout(
        height=height,
        title="Precision@k by extractor and strategy",
        xaxis_title="k",
        yaxis_title="precision@k",
        yaxis_range=[0, 1],
        margin={"t": 40, "b": 10},
    )
    return fig


def map_score_figure(metrics_long: pd.DataFrame, height: int = 360) -> go.Figure:
    """mAP@10 as grouped bars: strategy on x, one bar per extractor."""
    rows = metrics_long[metrics_long["metric"] == "map@10"]
    fig = go.Figure()
    for extractor, group in rows.groupby("extractor", sort=True):
        fig.add_trace(
            go.Bar(
                x=group["strategy"],
                y=group["value"],
                name=extractor,
                text=[f"{v:.3f}" for v in group["value"]],
                textposition="outside",
            )
        )
    fig.update_layout(
        height=height,
        barmode="group",
        title="mAP@10 by extractor and strategy",
        yaxis_range=[0, 1.05],
        margin={"t": 40, "b": 10},
    )
    return fig


def per_class_figure(per_class: pd.DataFrame, strategy: str, height: int = 380) -> go.Figure:
    """Per-class P@10 of one strategy: label on x, one bar per extractor."""
    rows = per_class[per_class["strategy"] == strategy]
    fig = go.Figure()
    for extractor, group in rows.groupby("extractor", sort=True):
        group = group.sort_values("label")
        fig.add_trace(go.Bar(x=group["label"], y=group["p@10"], name=extractor))
    fig.update_layout(
        height=height,
        barmode="group",
        title=f"Per-class P@10 ({strategy} search)",
        yaxis_range=[0, 1],
        margin={"t": 40, "b": 10},
    )
    return fig


def composition_figure(composition: pd.DataFrame, height: int = 300) -> go.Figure:
    """A cluster's label counts as horizontal bars, most common on top."""
    rows = composition.iloc[::-1]
    fig = go.Figure(go.Bar(x=rows["count"], y=rows["label"], orientation="h"))
    fig.update_layout(
        height=height, title="Labels in this cluster", margin={"t": 40, "b": 10, "l": 10}
    )
    return fig

"""Photos on the maps: a hover over any point shows the item's photo, cut from the photo map's
mosaic (one image the browser already holds), beside the pointer; for a large catalog (a
tiled photo map, no single mosaic) the photo comes from the app server's photo route.

A 1-px iframe injects a small script into the page: it listens to every plotly
chart's hover events and moves one floating <div> whose background is the mosaic. Points
carry their item id as customdata (see `plots.map_figure`), which names the mosaic cell.
"""

from __future__ import annotations

import json

import streamlit as st

from app import routes
from app.ui import loaders
from pipelines.config import EXTRACTORS, Config

# Side of the hover preview, pixels (the mosaic's 48-px tiles, drawn at twice their size).
PREVIEW_SIZE = 144
# The floating preview's element id: browser tests look for it.
PREVIEW_ID = "lookalike-hover-photo"

_SCRIPT = """<script>
(function () {
  const doc = window.parent.document;
  const data = JSON.parse(document.getElementById("mosaic-data").textContent);
  const size = data.size;
  let tip = doc.getElementById(data.id);
  if (!tip) {
    tip = doc.createElement("div");
    tip.id = data.id;
    tip.setAttribute("role", "img");
    Object.assign(tip.style, {
      position: "fixed", zIndex: 100000, pointerEvents: "none", display: "none",
      width: size + "px", height: size + "px", border: "2px solid #333",
      borderRadius: "6px", boxShadow: "0 2px 10px rgba(0,0,0,.35)",
      backgroundColor: "#f5f5f5", backgroundRepeat: "no-repeat"
    });
    doc.body.appendChild(tip);
  }
  if (tip.dataset.sha !== data.sha && !data.photo) {
    tip.style.backgroundImage = "url(" + document.getElementById("mosaic-uri").textContent + ")";
    tip.style.backgroundSize = (data.cols * size) + "px " + (data.rows * size) + "px";
  }
  if (data.photo) {  // a large catalog: each photo from the app server's photo route
    tip.style.backgroundSize = "contain";
    tip.style.backgroundPosition = "center";
  }
  tip.dataset.sha = data.sha;
  const token = Math.random().toString(36).slice(2);
  function show(ev) {
    const point = ev.points && ev.points[0];
    if (!point) return;
    let item = point.customdata;
    if (Array.isArray(item)) item = item[0];
    if (data.photo) {
      tip.style.backgroundImage = 'url("' + data.photo + encodeURIComponent(item) + '.jpg")';
    } else {
      const cell = data.cells[item];
      if (!cell) { tip.style.display = "none"; return; }
      tip.style.backgroundPosition = (-cell[0] * size) + "px " + (-cell[1] * size) + "px";
    }
    const e = ev.event || {};
    const x = (e.clientX || 0) + 18, y = (e.clientY || 0) + 18;
    const w = doc.documentElement.clientWidth, h = doc.documentElement.clientHeight;
    tip.style.left = Math.min(x, w - size - 8) + "px";
    tip.style.top = Math.min(y, h - size - 8) + "px";
    tip.dataset.item = item;
    tip.style.display = "block";
  }
  function hide() { tip.style.display = "none"; }
  // A chart replaced or removed under the pointer (a rerun, another page) never sends
  // plotly_unhover: hide the photo when the pointer is not over a chart any more, and when
  // the chart that showed it has left the page.
  if (!doc.__lookalikeMove) {
    doc.__lookalikeMove = true;
    doc.addEventListener("mousemove", function (e) {
      const t = doc.getElementById(data.id);
      const onChart = e.target.closest && e.target.closest(".js-plotly-plot");
      if (t && t.style.display !== "none" && !onChart) t.style.display = "none";
    }, true);
  }
  function attach() {
    if (tip.style.display !== "none" && tip.__owner && !tip.__owner.isConnected) hide();
    doc.querySelectorAll(".js-plotly-plot").forEach(function (gd) {
      if (!gd.on || gd.__lookalikeHover === token) return;
      if (gd.__lookalikeHandlers && gd.removeListener) {
        gd.removeListener("plotly_hover", gd.__lookalikeHandlers[0]);
        gd.removeListener("plotly_unhover", gd.__lookalikeHandlers[1]);
      }
      const onHover = function (ev) { tip.__owner = gd; show(ev); };
      gd.on("plotly_hover", onHover);
      gd.on("plotly_unhover", hide);
      gd.__lookalikeHandlers = [onHover, hide];
      gd.__lookalikeHover = token;
    });
  }
  attach();
  setInterval(attach, 400);
})();
</script>"""


@st.cache_data(show_spinner=False, max_entries=4)
def _component_html(artifacts_dir: str, extractor: str, sha: str, linked: bool) -> str:
    """The hover script and its data for `extractor`'s mosaic (`sha`); `linked`: the image is
    named by this server's route, not inlined (`routes.mosaic_source`)."""
    mosaic = loaders.mosaic(Config(artifacts_dir=artifacts_dir), extractor)
    if mosaic is None:
        return ""
    source = routes.mosaic_source(extractor, mosaic)
    cells = mosaic["cells"]
    data = {
        "id": PREVIEW_ID,
        "size": PREVIEW_SIZE,
        "cols": mosaic["cols"],
        "rows": mosaic["rows"],
        "sha": mosaic["sha"],
        "cells": {
            item: [int(c), int(r)]
            for item, c, r in zip(cells["item_id"], cells["col"], cells["row"], strict=True)
        },
    }
    return (
        f'<script type="application/json" id="mosaic-data">{json.dumps(data)}</script>'
        f'<script type="text/plain" id="mosaic-uri">{source}</script>{_SCRIPT}'
    )


def _photo_route_html(photo_base: str) -> str:
    data = {"id": PREVIEW_ID, "size": PREVIEW_SIZE, "sha": photo_base, "photo": photo_base}
    return f'<script type="application/json" id="mosaic-data">{json.dumps(data)}</script>{_SCRIPT}'


def photo_hover(cfg: Config, extractor: str) -> None:
    """Show each item's photo when the pointer is over it on any map of this page. Uses the
    photo map of `extractor` (or of any extractor: every mosaic holds every item); a large
    catalog, whose photo map is tiled, gets each photo from the app server's photo route
    (`app/routes.py`). Does nothing before the mosaic stage ran."""
    for name in (extractor, *EXTRACTORS):
        mosaic = loaders.mosaic(cfg, name)
        if mosaic is not None:
            linked = routes.mosaic_source(name, mosaic) != mosaic["uri"]
            html = _component_html(str(cfg.artifacts_dir), name, mosaic["sha"], linked)
            # A 1-px iframe: the script needs a document of its own, not room on the page.
            st.iframe(html, height=1)
            return
    if any(cfg.mosaic_tiles_path(name).is_file() for name in EXTRACTORS):
        st.iframe(_photo_route_html(routes.photo_base(cfg)), height=1)

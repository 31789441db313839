"""The deep-zoom viewer of a large catalog's photo map: a Streamlit component (HTML and
JavaScript, no build step) that draws the tiles in view at the resolution the zoom needs,
fetched from the app server's tile route (`app/routes.py`), with the whole-map overview under
them while finer tiles arrive. Wheel or the buttons zoom, drag pans, double-click fits the
whole map; hovering a cell shows its photo, clicking it sends the cell back to the page.

For tests and the benchmark, the viewer's root element carries `data-level` (the level drawn),
`data-zoom-ms` (how long the last zoom step took until every tile in view had arrived) and
`data-picked` (the last cell clicked, "col/row"); the preview carries `data-item` and
`data-cell` of the photo it shows.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app.routes import PREFIX
from pipelines.explore.tiles import TilesIndex

# Side of the hover preview, pixels.
PREVIEW_SIZE = 144
ROOT_CLASS = "lk-deepzoom"

_CSS = """
.lk-deepzoom { position: relative; overflow: hidden; background: #f5f5f5; border-radius: 6px;
  cursor: grab; touch-action: none; user-select: none; width: 100%; }
.lk-deepzoom.lk-dragging { cursor: grabbing; }
.lk-tile { position: absolute; pointer-events: none; max-width: none; }
.lk-preview { position: absolute; display: none; z-index: 100000; pointer-events: none;
  background: #fff; border: 2px solid #333; border-radius: 6px; padding: 2px;
  box-shadow: 0 2px 10px rgba(0,0,0,.35); font: 12px sans-serif; color: #222; }
.lk-preview img { display: block; object-fit: contain; }
.lk-buttons { position: absolute; right: 8px; top: 8px; z-index: 100001; display: flex;
  gap: 4px; }
.lk-buttons button { width: 32px; height: 32px; font-size: 18px; border-radius: 4px;
  border: 1px solid #bbb; background: #fff; cursor: pointer; }
"""

_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const d = data;
  let root = parentElement.querySelector(".lk-deepzoom");
  if (!root) {
    root = document.createElement("div");
    root.className = "lk-deepzoom";
    root.setAttribute("role", "application");
    root.setAttribute("aria-label", "Photo map: wheel to zoom, drag to pan, click a photo");
    root.innerHTML =
      '<div class="lk-layer"></div>' +
      '<div class="lk-preview"><img alt=""><div class="lk-caption"></div></div>' +
      '<div class="lk-buttons"><button data-zoom="in" title="Zoom in">+</button>' +
      '<button data-zoom="out" title="Zoom out">&minus;</button>' +
      '<button data-zoom="fit" title="Whole map">&#x2922;</button></div>';
    parentElement.appendChild(root);
  }
  root.style.height = d.height + "px";
  const layer = root.querySelector(".lk-layer");
  const preview = root.querySelector(".lk-preview");
  const photo = preview.querySelector("img");
  const caption = preview.querySelector(".lk-caption");
  photo.style.width = photo.style.height = d.preview + "px";
  const M = d.levels - 1;
  const W = d.cols * d.cell, H = d.rows * d.cell;
  const size = () => [root.clientWidth || 800, root.clientHeight || d.height];
  const fit = () => {
    const [w, h] = size();
    const s = Math.min(w / W, h / H) * 0.98;
    return { s: s, ox: (w - W * s) / 2, oy: (h - H * s) / 2 };
  };
  // A new build or extractor starts from the whole map; a rerun keeps the view.
  if (!root.__view || root.__base !== d.base) {
    root.__view = fit();
    root.__base = d.base;
    root.__imgs = new Map();
    root.__pending = new Set();
    root.__zoomAt = performance.now();
    layer.replaceChildren();
  }
  const v = root.__view;
  const ratio = window.devicePixelRatio || 1;
  // The coarsest level whose pixels are not magnified on screen.
  const levelFor = (s) => Math.max(0, Math.min(M, M + Math.ceil(Math.log2(s * ratio) - 1e-9)));
  const tilesAt = (L) => {
    const scale = Math.pow(2, M - L);
    return [Math.max(1, Math.ceil(W / scale / d.tile)), Math.max(1, Math.ceil(H / scale / d.tile))];
  };
  function settle(key) {
    root.__pending.delete(key);
    if (root.__pending.size === 0 && root.__zoomAt !== null) {
      root.dataset.zoomMs = String(Math.round(performance.now() - root.__zoomAt));
      root.__zoomAt = null;
    }
  }
  function place(L, x, y, span, want) {
    const key = L + "/" + x + "_" + y;
    want.add(key);
    let img = root.__imgs.get(key);
    if (!img) {
      img = document.createElement("img");
      img.className = "lk-tile";
      img.dataset.level = String(L);
      img.draggable = false;
      img.alt = "";
      img.style.zIndex = String(L);
      root.__pending.add(key);
      img.onload = () => { img.classList.add("lk-loaded"); settle(key); };
      img.onerror = () => { img.style.visibility = "hidden"; settle(key); };  // no photos there
      img.src = d.base + "/" + key + ".jpg";
      layer.appendChild(img);
      root.__imgs.set(key, img);
    }
    img.style.left = (v.ox + x * span) + "px";
    img.style.top = (v.oy + y * span) + "px";
    img.style.width = img.style.height = span + "px";
  }
  function draw() {
    root.__frame = null;
    const [w, h] = size();
    const L = levelFor(v.s);
    const want = new Set();
    place(0, 0, 0, d.tile * Math.pow(2, M) * v.s, want);  // the overview, under the rest
    if (L > 0) {
      const span = d.tile * Math.pow(2, M - L) * v.s;
      const [nx, ny] = tilesAt(L);
      const x0 = Math.max(0, Math.floor(-v.ox / span));
      const x1 = Math.min(nx - 1, Math.floor((w - v.ox) / span));
      const y0 = Math.max(0, Math.floor(-v.oy / span));
      const y1 = Math.min(ny - 1, Math.floor((h - v.oy) / span));
      for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) place(L, x, y, span, want);
    }
    for (const [key, img] of root.__imgs) {
      if (!want.has(key)) { img.remove(); root.__imgs.delete(key); settle(key); }
    }
    root.dataset.level = String(L);
    if (root.__pending.size === 0 && root.__zoomAt !== null) settle("");
  }
  const schedule = () => { if (!root.__frame) root.__frame = requestAnimationFrame(draw); };
  function zoomAt(px, py, factor) {
    const least = fit().s / 2, most = 4;
    const s = Math.min(most, Math.max(least, v.s * factor));
    const f = s / v.s;
    if (f === 1) return;
    v.ox = px - (px - v.ox) * f;
    v.oy = py - (py - v.oy) * f;
    v.s = s;
    root.__zoomAt = performance.now();
    hide();  // the cell under the pointer changes with the view
    schedule();
  }
  const local = (e) => {
    const r = root.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  };
  const cellAt = (px, py) => {
    const col = Math.floor((px - v.ox) / v.s / d.cell);
    const row = Math.floor((py - v.oy) / v.s / d.cell);
    return col >= 0 && col < d.cols && row >= 0 && row < d.rows ? [col, row] : null;
  };
  let hovered = "";
  let timer = null;
  function hide() {
    preview.style.display = "none";
    hovered = "";
    delete preview.dataset.item;
    delete preview.dataset.cell;
  }
  function hover(px, py) {
    const cell = cellAt(px, py);
    const [w, h] = size();
    preview.style.left = Math.min(px + 18, w - d.preview - 12) + "px";
    preview.style.top = Math.min(py + 18, h - d.preview - 30) + "px";
    if (!cell) { hide(); return; }
    const key = cell[0] + "/" + cell[1];
    if (key === hovered) return;
    hide();  // another cell: never show the last one's photo while this one's loads
    hovered = key;
    clearTimeout(timer);
    timer = setTimeout(() => {
      fetch(d.cells + "/" + key + ".jpg").then((r) => {
        if (!r.ok || hovered !== key) { if (hovered === key) hide(); return null; }
        const item = r.headers.get("X-Item-Id") || "";
        const label = r.headers.get("X-Item-Label") || "";
        return r.blob().then((blob) => {
          if (hovered !== key) return;
          if (photo.src.startsWith("blob:")) URL.revokeObjectURL(photo.src);
          photo.src = URL.createObjectURL(blob);
          caption.textContent = label + " \\u00b7 " + item;
          preview.dataset.item = item;
          preview.dataset.cell = key;
          preview.style.display = "block";
        });
      }).catch(hide);
    }, 60);
  }
  let drag = null;
  function onDown(e) {
    if (e.button !== 0 || (e.target.closest && e.target.closest("button"))) return;
    drag = { x: e.clientX, y: e.clientY, ox: v.ox, oy: v.oy, moved: false };
  }
  function onMove(e) {
    const [px, py] = local(e);
    if (drag && (e.buttons & 1)) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 4) drag.moved = true;
      if (drag.moved) {
        root.classList.add("lk-dragging");
        v.ox = drag.ox + dx;
        v.oy = drag.oy + dy;
        hide();
        schedule();
        return;
      }
    }
    hover(px, py);
  }
  function onUp(e) {
    if (!drag) return;
    const was = drag;
    drag = null;
    root.classList.remove("lk-dragging");
    if (was.moved) return;
    const cell = cellAt(...local(e));
    if (!cell) return;
    root.dataset.picked = cell[0] + "/" + cell[1];
    setTriggerValue("picked", { col: cell[0], row: cell[1], at: Date.now() });
  }
  function onWheel(e) {
    e.preventDefault();
    const [px, py] = local(e);
    zoomAt(px, py, Math.pow(2, -e.deltaY / 300));
  }
  function onDouble(e) {
    if (e.target.closest && e.target.closest("button")) return;
    Object.assign(v, fit());
    hide();
    root.__zoomAt = performance.now();
    schedule();
  }
  function onButton(e) {
    const which = e.target.closest && e.target.closest("button");
    if (!which) return;
    e.stopPropagation();
    const [w, h] = size();
    if (which.dataset.zoom === "fit") onDouble(e);
    else zoomAt(w / 2, h / 2, which.dataset.zoom === "in" ? 2 : 0.5);
  }
  const listeners = [
    ["pointerdown", onDown], ["pointermove", onMove], ["pointerup", onUp],
    ["pointerleave", hide], ["wheel", onWheel], ["dblclick", onDouble], ["click", onButton],
  ];
  for (const [name, fn] of listeners) root.addEventListener(name, fn, { passive: false });
  draw();
  return () => {
    for (const [name, fn] of listeners) root.removeEventListener(name, fn);
    clearTimeout(timer);
  };
}
"""

_VIEWER = st.components.v2.component("lookalike.deep_zoom", css=_CSS, js=_JS)


def viewer_data(found: TilesIndex, extractor: str, height: int) -> dict[str, Any]:
    """What the viewer needs: the pyramid's shape and the URLs of its tiles and cell photos."""
    shape = found.shape
    return {
        "base": f"{PREFIX}/tiles/{extractor}/{found.key}",
        "cells": f"{PREFIX}/cell/{extractor}/{found.key}",
        "cols": shape.cols,
        "rows": shape.rows,
        "cell": shape.cell,
        "tile": shape.tile,
        "levels": shape.levels,
        "height": height,
        "preview": PREVIEW_SIZE,
    }


def deep_zoom(found: TilesIndex, extractor: str, height: int, key: str) -> tuple[int, int] | None:
    """Show the deep-zoom photo map; returns the (col, row) of a cell the user just clicked,
    else None."""
    result = _VIEWER(
        key=key,
        data=viewer_data(found, extractor, height),
        height=height,
        on_picked_change=lambda: None,
    )
    picked = getattr(result, "picked", None)
    if not isinstance(picked, dict):
        return None
    try:
        return int(picked["col"]), int(picked["row"])
    except (KeyError, TypeError, ValueError):
        return None

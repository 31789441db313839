"""The Health page's correction widgets: a "Fix" popover beside an item (relabel it, or drop it)
and the list of corrections with Undo. Every write goes through `pipelines.data.corrections`,
the engine the HTTP service, the shell and the Python API call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st

from pipelines import commands
from pipelines.config import Config
from pipelines.data import corrections
from pipelines.errors import LookalikeError

# The name typed once on the page goes with every correction made in this session.
WHO_KEY = "correction_who"
# Corrections listed with an Undo button; older ones are in the table under them.
LISTED = 30


def in_force(cfg: Config, catalog: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """item_id -> its correction in force (with `state`), read once per page run: the table is
    small and must never be stale, so it is not cached."""
    table = corrections.list_corrections(cfg, catalog)
    live = table[table["undone_at"].isna() & ~table["state"].str.startswith("superseded")]
    return {
        row["item_id"]: {**corrections.record(row), "state": row["state"]}
        for _, row in live.iterrows()
    }


def status_caption(row: pd.Series, correction: dict[str, Any] | None) -> str | None:
    """What a thumbnail says about corrections: the label the source gave a relabelled item,
    and the correction waiting for the next run."""
    parts = []
    if row.get("label_source") == corrections.CORRECTED:
        parts.append(f"relabelled from {row.get('original_label')!r}")
    if correction is not None and correction["state"] == "pending":
        parts.append(f"✏️ {correction['correction_id']}: {_change(correction)}, at the next run")
    return " · ".join(parts) or None


def fix_popover(
    cfg: Config,
    item_id: str,
    current: Any,
    suggested: Sequence[str],
    labels: Sequence[str],
    key: str,
) -> None:
    """A "✏️ Fix" popover: relabel the item (a suggested label first, any catalog label, or a
    typed one) or drop it, with a note; the correction is written at once and applies at the
    next run.

    Parameters
    ----------
    current : the item's label now (left out of the choices).
    suggested : labels offered first (the other item's label, the health stage's suggestion).
    labels : every catalog label, offered after the suggested ones.
    key : unique per item on the page; every widget key starts with it.
    """
    offered = dict.fromkeys([*suggested, *labels])
    known = [x for x in offered if isinstance(x, str) and x and x != current]
    with st.popover("✏️ Fix", width="stretch"):
        st.selectbox("New label", known, key=f"{key}_pick", index=0 if known else None)
        st.text_input("…or type a new label", key=f"{key}_typed")
        st.text_input("Note (optional)", key=f"{key}_note")
        relabel, drop = st.columns(2)
        relabel.button(
            "Relabel",
            key=f"{key}_relabel",
            on_click=_add,
            args=(cfg, item_id, "relabel", key),
            width="stretch",
        )
        drop.button(
            "Drop item",
            key=f"{key}_drop",
            on_click=_add,
            args=(cfg, item_id, "drop", key),
            width="stretch",
            help="Leave this item out of the catalog (a duplicate, an unwanted photo); undo "
            "brings it back.",
        )
        _result(key)


def corrections_section(cfg: Config, catalog: pd.DataFrame) -> None:
    """The "Corrections" section: who is correcting, every correction in force with Undo, and
    the undone ones (the audit trail)."""
    st.subheader("Corrections")
    st.caption(
        f"Corrections are kept beside the catalog ({cfg.corrections_path.name} in the artifacts "
        f"folder), never in your photos' folder or CSV. They apply at the next "
        f"`{commands.RUN}`: the item's label changes everywhere (map colours, clusters, "
        f"evaluation) without retraining; a dropped item leaves the catalog."
    )
    st.text_input(
        "Your name",
        key=WHO_KEY,
        placeholder=corrections.default_who(),
        help="Recorded with each correction and undo (default: the user running the app).",
    )
    table = corrections.list_corrections(cfg, catalog)
    if table.empty:
        st.info("No corrections yet — use ✏️ Fix beside an item above.")
        return
    live = table[table["undone_at"].isna()].iloc[::-1]
    done = table[table["undone_at"].notna()].iloc[::-1]
    st.markdown(
        f"**{len(live)} in force** ({(live['state'] == 'pending').sum()} waiting for the next "
        f"run) · {len(done)} undone"
    )
    for _, row in live.head(LISTED).iterrows():
        text, state, undo = st.columns([6, 2, 1])
        text.markdown(_line(corrections.record(row)))
        state.markdown(f"`{row['state']}`")
        undo.button(
            "Undo",
            key=f"undo_{row['correction_id']}",
            on_click=_undo,
            args=(cfg, row["correction_id"]),
            width="stretch",
        )
    _result("undo")
    if len(live) > LISTED or len(done):
        with st.expander(f"All {len(table)} corrections, undone ones included"):
            st.dataframe(table.iloc[::-1], hide_index=True, width="stretch")


def _line(correction: dict[str, Any]) -> str:
    """ "**c3** `0a1b…` 'dress' → 'hat' · ann, 2025-05-01 09:30 UTC · note"."""
    when = str(correction["when"]).replace("T", " ").replace("+00:00", " UTC")
    note = f" · {correction['note']}" if correction["note"] else ""
    return (
        f"**{correction['correction_id']}** `{correction['item_id']}` {_change(correction)} · "
        f"{correction['who']}, {when}{note}"
    )


def _change(correction: dict[str, Any]) -> str:
    if correction["action"] == "drop":
        return "drop"
    return f"{correction['previous_label']!r} → {correction['label']!r}"


def _who() -> str | None:
    return st.session_state.get(WHO_KEY) or None


def _add(cfg: Config, item_id: str, action: str, key: str) -> None:
    """Button callback: record the popover's correction; the outcome is shown on the rerun."""
    typed = (st.session_state.get(f"{key}_typed") or "").strip()
    label = (typed or st.session_state.get(f"{key}_pick")) if action == "relabel" else None
    try:
        made = corrections.add_correction(
            cfg, item_id, action, label, who=_who(), note=st.session_state.get(f"{key}_note", "")
        )
    except LookalikeError as err:
        st.session_state[f"{key}_result"] = ("error", str(err))
        return
    st.session_state[f"{key}_typed"] = ""
    st.session_state[f"{key}_note"] = ""
    st.session_state[f"{key}_result"] = (
        "success",
        f"{made['correction_id']}: {_change(made)} recorded — it applies at the next "
        f"`{commands.RUN}`.",
    )


def _undo(cfg: Config, correction_id: str) -> None:
    """Button callback: undo a correction; the outcome is shown on the rerun."""
    try:
        done = corrections.undo_correction(cfg, correction_id, who=_who())
    except LookalikeError as err:
        st.session_state["undo_result"] = ("error", str(err))
        return
    st.session_state["undo_result"] = (
        "success",
        f"{done['correction_id']} undone — the next `{commands.RUN}` takes it back out.",
    )


def _result(key: str) -> None:
    """The outcome of the last button of `key`, shown once."""
    found = st.session_state.pop(f"{key}_result", None)
    if found is None:
        return
    kind, text = found
    (st.success if kind == "success" else st.error)(text)
    if kind == "success":
        st.toast(text, icon="✏️")

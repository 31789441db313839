"""Label corrections and drops the user marks (Health page, HTTP, shell, Python): reads the catalog
to check ids; reads and writes artifacts/corrections.parquet (with a manifest), never the source.

A correction is one row: relabel an item (with its new label) or drop it (a duplicate or an
unwanted photo), with who made it, when (UTC), a note and the label it had then. Rows are never
deleted: an undo fills `undone_at` and `undone_by`, so the table is its own audit trail. The
catalog stage applies the active ones (`apply_corrections`) and keys its freshness on them
(`corrections_hash`), so a correction reaches every later artifact at the next
`python -m pipelines run` without retraining or re-embedding, and an undo takes it back out.

Per item, the latest correction that is not undone wins: relabel to "shoes", then to "hat", and
the item is a hat; undo the second and it is shoes again.
"""

from __future__ import annotations

import contextlib
import getpass
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from pipelines import commands
from pipelines.artifacts import sha256_json, write_manifest, write_parquet
from pipelines.config import Config
from pipelines.errors import LookalikeError

STAGE = "corrections"
ACTIONS = ("relabel", "drop")
# Every column is a string (or missing); `undone_at` stays empty until the correction is undone.
COLUMNS = [
    "correction_id",  # "c1", "c2", ... in the order they were made
    "item_id",
    "action",  # one of ACTIONS
    "label",  # the new label of a relabel; empty for a drop
    "previous_label",  # the item's label in the catalog when the correction was made
    "who",
    "when",  # UTC, ISO 8601
    "note",
    "undone_at",  # UTC, ISO 8601; empty while the correction is active
    "undone_by",
]
# Short enough to show in a caption or a legend; long enough for any category name.
MAX_LABEL_CHARS = 100
MAX_WHO_CHARS = 100
MAX_NOTE_CHARS = 1000
# What `apply_corrections` writes in `label_source`.
SOURCE, CORRECTED = "source", "correction"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnknownItemError(LookalikeError):
    """The item to correct is not in the current catalog (HTTP 404)."""


class UnknownCorrectionError(LookalikeError):
    """No correction has this id (HTTP 404)."""


class InvalidCorrectionError(LookalikeError):
    """The action, label, name or note cannot be used (HTTP 422)."""


# --------------------------------------------------------------------------- reading


def empty_corrections() -> pd.DataFrame:
    """The corrections table with no rows (its columns are `COLUMNS`)."""
    return pd.DataFrame({column: pd.Series([], dtype=object) for column in COLUMNS})


def read_corrections(config: Config) -> pd.DataFrame:
    """Every correction ever made, undone ones included, oldest first.

    Returns
    -------
    DataFrame with `COLUMNS`, every value a str or None; no rows when there is no
    corrections file yet.
    """
    path = config.corrections_path
    if not path.exists():
        return empty_corrections()
    try:
        table = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise LookalikeError(
            f"{path} cannot be read ({type(err).__name__}: {err}) — restore it from a backup, "
            f"or move it aside to start again with no corrections"
        ) from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise LookalikeError(
            f"{path} lacks the column(s) {', '.join(missing)} — it was not written by "
            f"Lookalike; move it aside to start again with no corrections"
        )
    return _plain(table[COLUMNS])


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    """Every column as Python str or None (parquet and pandas 3 give str dtype with NaN)."""
    return pd.DataFrame(
        {
            column: pd.Series([None if pd.isna(v) else str(v) for v in table[column]], dtype=object)
            for column in COLUMNS
        }
    )


def active_corrections(config: Config) -> pd.DataFrame:
    """The corrections in force: per item, the latest one that is not undone.

    Returns
    -------
    DataFrame with `COLUMNS`, at most one row per item, in the order they were made.
    """
    return effective(read_corrections(config))


def effective(corrections: pd.DataFrame) -> pd.DataFrame:
    """`active_corrections` of a corrections table already read."""
    live = corrections[corrections["undone_at"].isna()]
    return live.drop_duplicates("item_id", keep="last").reset_index(drop=True)


def corrections_hash(config: Config) -> str:
    """A hash of what the active corrections do to a catalog (item, action, label; not who,
    when or note), "none" when there are none: the catalog stage's freshness input, so a new
    correction or an undo makes the next run apply it."""
    active = active_corrections(config)
    if active.empty:
        return "none"
    rows = sorted(zip(active["item_id"], active["action"], active["label"], strict=True))
    return sha256_json([list(row) for row in rows])


def record(row: pd.Series | dict[str, Any]) -> dict[str, Any]:
    """One correction as a JSON-ready dict of `COLUMNS` (None for an empty value)."""
    return {column: None if pd.isna(row[column]) else str(row[column]) for column in COLUMNS}


# --------------------------------------------------------------------------- writing


def add_correction(
    config: Config,
    item_id: str,
    action: str,
    label: str | None = None,
    who: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Record a relabel or a drop of one catalog item; it applies at the next `run`.

    Parameters
    ----------
    config : where the catalog and the corrections live.
    item_id : an item of the current catalog (`config.catalog_path`).
    action : "relabel" (needs `label`) or "drop" (takes none).
    label : the item's new label (surrounding spaces are removed).
    who : who made it; default the operating-system user running this process.
    note : why (free text, may be empty).

    Returns
    -------
    The new correction (`record`): correction_id, item_id, action, label, previous_label,
    who, when, note, undone_at (None), undone_by (None).

    Raises
    ------
    InvalidCorrectionError : unknown action, missing or unusable label, too long a name/note,
        or a relabel to the label the item already has.
    UnknownItemError : `item_id` is not in the current catalog.
    LookalikeError : no catalog yet, or the same correction is already in force.
    """
    item_id = str(item_id).strip()
    label = _checked_label(action, label)
    who = _checked_who(who)
    note = _checked_text("note", note or "", MAX_NOTE_CHARS, one_line=False)
    catalog_labels = _catalog_labels(config)
    if item_id not in catalog_labels:
        raise UnknownItemError(
            f"no catalog item {item_id!r} ({len(catalog_labels):,} items) — take an id from "
            f"the Health page or a search result"
        )
    current = catalog_labels[item_id]
    with _locked(config):
        table = read_corrections(config)
        in_force = effective(table)
        mine = in_force[in_force["item_id"] == item_id]
        if not mine.empty:
            last = record(mine.iloc[-1])
            if last["action"] == action and last["label"] == label:
                raise LookalikeError(
                    f"item {item_id} is already marked {_what(last)} ({last['correction_id']} "
                    f"by {last['who']} at {last['when']}) — nothing to add; undo "
                    f"{last['correction_id']} first to record it again"
                )
        elif action == "relabel" and label == current:
            raise InvalidCorrectionError(
                f"item {item_id} is already labelled {label!r} — pick another label, or mark "
                f"nothing"
            )
        row = {
            "correction_id": f"c{len(table) + 1}",
            "item_id": item_id,
            "action": action,
            "label": label,
            "previous_label": current,
            "who": who,
            "when": now_utc(),
            "note": note,
            "undone_at": None,
            "undone_by": None,
        }
        _write(config, pd.concat([table, pd.DataFrame([row])], ignore_index=True))
    return row


def undo_correction(config: Config, correction_id: str, who: str | None = None) -> dict[str, Any]:
    """Undo a correction: it stays in the table (with when and by whom it was undone) and
    stops applying at the next `run`; an earlier correction of the same item that is still
    active applies again.

    Parameters
    ----------
    correction_id : its id ("c3").
    who : who undoes it; default the operating-system user.

    Returns
    -------
    The correction as it is now (`record`), with undone_at and undone_by filled.

    Raises
    ------
    UnknownCorrectionError : no correction has this id.
    LookalikeError : it was already undone.
    """
    correction_id = str(correction_id).strip()
    who = _checked_who(who)
    with _locked(config):
        table = read_corrections(config)
        rows = table.index[table["correction_id"] == correction_id]
        if len(rows) == 0:
            known = (
                f"ids {table['correction_id'].iat[0]} to {table['correction_id'].iat[-1]}"
                if len(table)
                else "there are none yet"
            )
            raise UnknownCorrectionError(
                f"no correction {correction_id!r} ({known}) — list them with "
                f"`{commands.CORRECTIONS} --list`"
            )
        row = rows[-1]
        if table.at[row, "undone_at"] is not None:
            raise LookalikeError(
                f"correction {correction_id} was already undone at {table.at[row, 'undone_at']} "
                f"by {table.at[row, 'undone_by']} — nothing to do"
            )
        table.loc[row, ["undone_at", "undone_by"]] = [now_utc(), who]
        _write(config, table)
        return record(table.loc[row])


def _write(config: Config, table: pd.DataFrame) -> None:
    """The whole table, atomically, then its manifest (counts and the active hash); readers use
    the table alone, so a kill between the two writes loses nothing."""
    path = config.corrections_path
    table = _plain(table)
    write_parquet(table, path)
    active = effective(table)
    write_manifest(
        path,
        STAGE,
        {},
        {},
        extra={
            "rows": len(table),
            "active": len(active),
            "relabels": int((active["action"] == "relabel").sum()),
            "drops": int((active["action"] == "drop").sum()),
        },
    )


@contextlib.contextmanager
def _locked(config: Config) -> Iterator[None]:
    """One writer at a time (the app, the service and the shell may all write): an exclusive
    lock on corrections.lock beside the table, held for one read-change-write."""
    lock_path = config.corrections_path.with_name("corrections.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; writes stay atomic
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- applying


def apply_corrections(catalog: pd.DataFrame, config: Config) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The catalog with the active corrections applied: relabelled items carry their new label,
    dropped items are gone. `catalog` is not changed.

    When at least one relabel applies, two columns are added: `original_label` (every row's
    label before corrections) and `label_source` ("source" or "correction"). Without any
    correction that applies, the catalog comes back unchanged (same columns, same content hash).
    A catalog that already carries `original_label` is corrected from it, so applying twice
    gives the same table.

    Parameters
    ----------
    catalog : the catalog table (item_id, label, ...), as the catalog stage builds it.
    config : where the corrections live.

    Returns
    -------
    (corrected catalog, row index reset when rows were dropped;
    summary {"relabelled": items relabelled, "dropped": items removed, "unknown_items": active
    corrections whose item is not in `catalog` (a photo since removed from the source),
    "unknown_ids": their item ids, sorted}).
    """
    active = active_corrections(config)
    ids = catalog["item_id"].astype(str)
    present = set(ids)
    unknown = sorted(set(active["item_id"]) - present)
    active = active[active["item_id"].isin(present)]
    relabels = dict(zip(*_pick(active, "relabel"), strict=True))
    drops = set(_pick(active, "drop")[0])
    summary = {
        "relabelled": len(relabels),
        "dropped": len(drops),
        "unknown_items": len(unknown),
        "unknown_ids": unknown,
    }
    out = catalog
    if "original_label" in out.columns:  # corrected before: start again from the source's labels
        out = out.assign(label=out["original_label"]).drop(
            columns=["original_label", "label_source"], errors="ignore"
        )
    if relabels:
        base = out["label"] if "label" in out.columns else pd.Series(pd.NA, out.index, "string")
        new = ids.map(relabels)
        corrected = new.notna().to_numpy()
        labels = base.astype(object).where(~corrected, new)
        out = out.assign(
            label=labels.astype(base.dtype),
            original_label=base,
            label_source=pd.Series(
                [CORRECTED if c else SOURCE for c in corrected], index=out.index, dtype=object
            ),
        )
    if drops:
        out = out[~ids.isin(drops).to_numpy()].reset_index(drop=True)
    return out, summary


def _pick(active: pd.DataFrame, action: str) -> tuple[list[str], list[str | None]]:
    chosen = active[active["action"] == action]
    return chosen["item_id"].tolist(), chosen["label"].tolist()


def correction_states(corrections: pd.DataFrame, catalog: pd.DataFrame | None) -> pd.DataFrame:
    """The corrections with a `state` column saying where each one stands against `catalog`
    (the catalog as last built; None when it cannot be read):

    - "applied": in force and the catalog shows it (relabelled there, or gone);
    - "pending": in force, applied at the next `python -m pipelines run`;
    - "superseded by cN": a later correction of the same item wins;
    - "undone".
    """
    winner = dict(zip(*_latest(corrections), strict=True))
    labels: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    if catalog is not None:
        ids = catalog["item_id"].astype(str)
        # Only the corrected items' rows (a dict of every item cost ~0.5 s per page run at 1M).
        keep = ids.isin(set(corrections["item_id"].astype(str))).to_numpy()
        ids, catalog = ids[keep], catalog[keep]
        given = catalog["label"] if "label" in catalog.columns else pd.Series(None, catalog.index)
        labels = dict(zip(ids, given, strict=True))
        if "label_source" in catalog.columns:
            sources = dict(zip(ids, catalog["label_source"], strict=True))
    states = []
    for row in corrections.itertuples(index=False):
        if row.undone_at is not None:
            states.append("undone")
        elif winner[row.item_id] != row.correction_id:
            states.append(f"superseded by {winner[row.item_id]}")
        elif catalog is None:
            states.append("pending")
        elif row.action == "drop":
            states.append("pending" if row.item_id in labels else "applied")
        else:
            shown = row.item_id in labels and labels[row.item_id] == row.label
            corrected = sources.get(row.item_id, CORRECTED) == CORRECTED
            states.append("applied" if shown and corrected else "pending")
    return corrections.assign(state=pd.Series(states, index=corrections.index, dtype=object))


def list_corrections(config: Config, catalog: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every correction, oldest first, with its `state` (see `correction_states`) against
    `catalog`, or against the built catalog (`config.catalog_path`) when not given: what the
    Health page, `GET /corrections`, the shell and the Python API list.

    Returns
    -------
    DataFrame with `COLUMNS` and `state`.
    """
    if catalog is None and config.catalog_path.exists():
        columns = pq.read_schema(config.catalog_path).names
        wanted = [c for c in ("item_id", "label", "label_source") if c in columns]
        catalog = pd.read_parquet(config.catalog_path, columns=wanted)
    return correction_states(read_corrections(config), catalog)


def _latest(corrections: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(item ids, the id of each one's correction in force)."""
    live = effective(corrections)
    return live["item_id"].tolist(), live["correction_id"].tolist()


# --------------------------------------------------------------------------- checks


def _checked_label(action: str, label: str | None) -> str | None:
    if action not in ACTIONS:
        raise InvalidCorrectionError(
            f"action must be one of {', '.join(ACTIONS)}; got {action!r} — relabel an item with "
            f"its new label, or drop it"
        )
    text = "" if label is None else str(label).strip()
    if action == "drop":
        if text:
            raise InvalidCorrectionError(
                f"a drop takes no label, got {text!r} — leave the label out, or relabel instead"
            )
        return None
    if not text:
        raise InvalidCorrectionError(
            "a relabel needs the new label, got an empty one — give the label the item should "
            "have (e.g. 'dress')"
        )
    return _checked_text("label", text, MAX_LABEL_CHARS)


def _checked_who(who: str | None) -> str:
    text = "" if who is None else str(who).strip()
    return _checked_text("who", text, MAX_WHO_CHARS) if text else default_who()


def _checked_text(name: str, text: str, limit: int, one_line: bool = True) -> str:
    text = str(text).strip()
    if len(text) > limit:
        raise InvalidCorrectionError(
            f"{name} must be at most {limit} characters, got {len(text)} — shorten it"
        )
    bad = _CONTROL.search(text.replace("\n", "").replace("\t", "") if not one_line else text)
    if bad:
        raise InvalidCorrectionError(
            f"{name} must be {'one line of ' if one_line else ''}printable text, got "
            f"{text[:40]!r} — remove the control characters"
        )
    return text


def _catalog_labels(config: Config) -> dict[str, Any]:
    """item_id -> label (None when unlabelled) of the current catalog."""
    path = config.catalog_path
    if not path.exists():
        raise LookalikeError(f"{path} is missing — build the catalog with `{commands.RUN}` first")
    columns = pq.read_schema(path).names
    table = pd.read_parquet(path, columns=[c for c in ("item_id", "label") if c in columns])
    labels = table["label"] if "label" in table.columns else pd.Series(None, table.index)
    return {
        str(i): None if pd.isna(v) else str(v)
        for i, v in zip(table["item_id"], labels, strict=True)
    }


def _what(correction: dict[str, Any]) -> str:
    """ "relabel → 'hat'" or "drop"."""
    if correction["action"] == "relabel":
        return f"relabel → {correction['label']!r}"
    return "drop"


def describe(correction: dict[str, Any]) -> str:
    """One line for people: "c3 relabel 0a1b... 'dress' → 'hat' by ann at 2025-...: note"."""
    change = (
        f"{correction['previous_label']!r} → {correction['label']!r}"
        if correction["action"] == "relabel"
        else f"(was {correction['previous_label']!r})"
    )
    text = (
        f"{correction['correction_id']} {correction['action']} {correction['item_id']} {change} "
        f"by {correction['who']} at {correction['when']}"
    )
    if correction.get("note"):
        text += f": {correction['note']}"
    if correction.get("undone_at"):
        text += f" [undone at {correction['undone_at']} by {correction['undone_by']}]"
    return text


def default_who() -> str:
    """The operating-system user running this process ("unknown" when it has no name)."""
    try:
        return getpass.getuser() or "unknown"
    except (KeyError, OSError):  # no $USER and no passwd entry (some containers)
        return "unknown"


def now_utc() -> str:
    """The time now in UTC, ISO 8601 to the second ("2025-05-01T09:30:00+00:00")."""
    return datetime.now(UTC).isoformat(timespec="seconds")

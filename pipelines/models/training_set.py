"""The training set: which catalog items the trained parts learnt from, and when to retrain.

The trained parts (the custom CNN, the metric head, the category classifier; the maps' UMAP fit
and the k-means centroids follow the models they are fitted on) are kept together: each keys
its freshness on this snapshot of (item_id, label, split), not on the catalog. Adding photos
to the catalog therefore leaves them as they are; the new photos are embedded with them.

The snapshot is renewed, and with it every trained part, when

* the user asks (`run --retrain`, or `--force` on a training stage);
* a label appears in the catalog's train split that training never saw: the classifier
  cannot predict it, and the metric head never placed it;
* more than `RETRAIN_CHANGED_SHARE` of the catalog's labelled train items are not in the
  snapshot, or more than that share of the snapshot left the catalog.

Why 0.25: a judgement, not a measured optimum. A merchandiser's daily 1 % never retrains (a
retrain of the custom CNN costs most of a first run), a catalog that changed by a quarter does.
Until then `status`, the app and `run` say how many items are new since training.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import artifacts, commands
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.stage import StageResult

STAGE = "training_set"
RETRAIN_CHANGED_SHARE = 0.25
COLUMNS = ["item_id", "label", "split"]


def snapshot_path(config: Config) -> Path:
    """models/training_set.parquet: the items the trained parts learnt from."""
    return config.models_dir / "training_set.parquet"


def _table(catalog: pd.DataFrame) -> pd.DataFrame:
    """(item_id, label, split) of a catalog, as strings ("" for missing), sorted by item_id."""
    out = pd.DataFrame({"item_id": catalog["item_id"].astype(str).to_numpy()})
    for column in ("label", "split"):
        values = catalog[column] if column in catalog else pd.Series(pd.NA, index=catalog.index)
        out[column] = values.astype("string").fillna("").to_numpy(dtype=object)
    return out.sort_values("item_id", kind="stable").reset_index(drop=True)


def _content(table: pd.DataFrame) -> str:
    """A hash of the snapshot's rows (not of the parquet bytes, which carry library metadata)."""
    digest = hashlib.sha256()
    for column in COLUMNS:
        digest.update("\x1f".join(table[column].tolist()).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()


def _train_items(table: pd.DataFrame) -> pd.DataFrame:
    """The rows training learns from: the train split (or no split), labelled when any are."""
    train = table[table["split"].isin(["train", ""])]
    labelled = train[train["label"] != ""]
    return labelled if labelled["label"].nunique() >= 2 else train


@dataclass(frozen=True)
class Drift:
    """How far the catalog moved from the training set.

    Attributes
    ----------
    trained : items in the training set (0 when nothing was trained yet).
    current : items in the catalog.
    added : catalog items the trained parts never saw (any split).
    removed : training-set items no longer in the catalog.
    changed_share : the larger of new train items / catalog train items and removed train
        items / training-set train items.
    unseen_labels : labels of the catalog that training never saw (the classifier cannot
        predict them; one with train items renews the training set).
    retrain_due : whether the policy renews the training set at the next `run`.
    reason : one line saying why (or why not).
    trained_at : when the training set was made (ISO time), None before the first training.
    """

    trained: int
    current: int
    added: int
    removed: int
    changed_share: float
    unseen_labels: tuple[str, ...]
    retrain_due: bool
    reason: str
    trained_at: str | None

    def summary(self) -> str:
        """One line for `run`, `status` and the app's sidebar."""
        if not self.trained:
            return "no models trained yet"
        unseen = (
            f"; labels training never saw: {', '.join(self.unseen_labels)}"
            if self.unseen_labels
            else ""
        )
        items = "item" if self.added == 1 else "items"
        return (
            f"{self.added:,} {items} added and {self.removed:,} removed since the models were "
            f"trained ({self.changed_share:.0%} of the train split; retrain past "
            f"{RETRAIN_CHANGED_SHARE:.0%}){unseen}"
        )


def read_snapshot(config: Config) -> pd.DataFrame | None:
    """The training set, or None when there is none (or it does not match its manifest)."""
    path = snapshot_path(config)
    if not artifacts.matches_manifest(path):
        return None
    return pd.read_parquet(path)


def drift(config: Config, catalog: pd.DataFrame, snapshot: pd.DataFrame | None = None) -> Drift:
    """How `catalog` differs from the saved training set, and whether the policy retrains."""
    snapshot = read_snapshot(config) if snapshot is None else snapshot
    table = _table(catalog)
    if snapshot is None:
        return Drift(0, len(table), len(table), 0, 1.0, (), True, "no training set yet", None)
    trained_ids = set(snapshot["item_id"])
    ids = set(table["item_id"])
    train_now, train_then = _train_items(table), _train_items(snapshot)
    new_train = int((~train_now["item_id"].isin(trained_ids)).sum())
    gone_train = int((~train_then["item_id"].isin(ids)).sum())
    share = max(new_train / max(len(train_now), 1), gone_train / max(len(train_then), 1))
    unseen = tuple(sorted(set(table["label"]) - set(snapshot["label"]) - {""}))
    unseen_train = sorted(set(unseen) & set(train_now["label"]))
    manifest = artifacts.read_manifest(snapshot_path(config)) or {}
    if unseen_train:
        due, reason = True, f"new label(s) in the train split: {', '.join(unseen_train)}"
    elif share > RETRAIN_CHANGED_SHARE:
        due, reason = (
            True,
            f"{share:.0%} of the train split changed (> {RETRAIN_CHANGED_SHARE:.0%})",
        )
    else:
        due, reason = False, "kept"
    return Drift(
        trained=len(snapshot),
        current=len(table),
        added=len(ids - trained_ids),
        removed=len(trained_ids - ids),
        changed_share=round(float(share), 4),
        unseen_labels=unseen,
        retrain_due=due,
        reason=reason,
        trained_at=manifest.get("created"),
    )


def ensure(config: Config, catalog: pd.DataFrame, retrain: bool = False) -> str:
    """The training set's content hash, renewing it from `catalog` first when asked
    (`retrain`), when there is none, or when the policy says so (`drift`).

    Every training stage calls this and keys its freshness on the returned hash, so renewing the
    snapshot retrains each of them once, and keeping it keeps them all.
    """
    path = snapshot_path(config)
    snapshot = read_snapshot(config)
    table = _table(catalog)
    content = _content(table)
    if snapshot is not None:
        kept = (artifacts.read_manifest(path) or {}).get("content")
        if kept == content or not (retrain or drift(config, catalog, snapshot).retrain_due):
            return str(kept)
    artifacts.write_parquet(table, path)
    artifacts.write_manifest(
        path,
        STAGE,
        {"policy_share": RETRAIN_CHANGED_SHARE},
        {},
        extra={"content": content, "rows": len(table), "at": time.time()},
    )
    return content


def snapshot_hash(config: Config) -> str:
    """The saved training set's content hash; a clear error before the first training."""
    manifest = artifacts.read_manifest(snapshot_path(config))
    if manifest is None or not artifacts.matches_manifest(snapshot_path(config), manifest):
        raise LookalikeError(
            f"{snapshot_path(config)} is missing — run `{commands.TRAIN}` or `{commands.RUN}`"
        )
    return str(manifest["content"])


def in_training_set(config: Config, catalog: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the catalog rows the trained parts learn from (all rows before any
    training set exists)."""
    snapshot = read_snapshot(config)
    if snapshot is None:
        return np.ones(len(catalog), dtype=bool)
    return catalog["item_id"].astype(str).isin(set(snapshot["item_id"])).to_numpy()


def describe(config: Config, catalog: pd.DataFrame) -> dict[str, Any]:
    """The drift as a dict (for `status`, the app and the run table), with what a retrain
    would cost: the last training's seconds from the trained parts' manifests."""
    d = drift(config, catalog)
    seconds = 0.0
    for path in (config.custom_cnn_path, config.head_path, config.categories_path):
        manifest = artifacts.read_manifest(path) or {}
        seconds += float(manifest.get("train_seconds") or manifest.get("seconds") or 0.0)
    return {
        "trained": d.trained,
        "current": d.current,
        "added": d.added,
        "removed": d.removed,
        "changed_share": d.changed_share,
        "unseen_labels": list(d.unseen_labels),
        "retrain_due": d.retrain_due,
        "reason": d.reason,
        "trained_at": d.trained_at,
        "retrain_seconds": round(seconds, 1) if seconds else None,
        "summary": d.summary(),
    }


def run_training_set(config: Config, retrain: bool = False) -> StageResult:
    """Stage: keep or renew the training set by the policy; says how far the catalog moved."""
    from pipelines.readers import read_catalog

    start = time.perf_counter()
    catalog, _ = read_catalog(config)
    before = (artifacts.read_manifest(snapshot_path(config)) or {}).get("content")
    d = drift(config, catalog)
    after = ensure(config, catalog, retrain=retrain)
    renewed = after != before
    if renewed:
        why = "asked (--retrain/--force)" if retrain and not d.retrain_due else d.reason
        items = "item" if len(catalog) == 1 else "items"
        note = f"renewed ({why}): the trained parts learn from {len(catalog):,} {items}"
    else:
        note = f"kept: {d.summary()}"
        if d.unseen_labels:
            note += f" — run `{commands.RUN} --retrain` to learn them"
    print(f"training set: {note}")
    return StageResult(
        STAGE,
        wrote=(snapshot_path(config),) if renewed else (),
        rows=len(catalog),
        seconds=time.perf_counter() - start,
        skipped=not renewed,
        note=note,
        details=describe(config, catalog),
    )

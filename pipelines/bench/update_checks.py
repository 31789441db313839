"""The checks of the update benchmark: reads two builds (before and after an update) and
reports what changed item by item — kept vectors bit for bit, kept map places, removed ids
left in any table, each new item's top-10 against a brute-force search — and their P@10."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Config

K = 10


def bit_identical(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) True where row i of `a` and of `b` hold the same bytes (float32 rows)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)).all(axis=1)


def brute_topk(vectors: np.ndarray, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k rows most cosine-similar to row `row` (itself left out), best first, and their
    similarities: every row compared in float64 (the vectors are unit rows)."""
    sims = np.asarray(vectors, dtype=np.float64) @ np.asarray(vectors[row], dtype=np.float64)
    sims[row] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return order, sims[order]


def child_checks(before: str, after: str, k: int = K) -> dict[str, Any]:
    """(child) Compare the build in `after` with the snapshot `before` of the build it
    updated; see `compare_builds`."""
    return compare_builds(Path(before), Path(after), k)


def compare_builds(before: Path, after: Path, k: int = K) -> dict[str, Any]:
    """What an update changed, item by item.

    Returns
    -------
    {"added", "gone", "kept": counts of item ids; per extractor: "vectors" (kept rows
    bit-identical), "map" (kept items unmoved, largest shift), "top10" (new items whose top-k
    from the engine's search, `Lookalike.similar_to`, equals a brute-force cosine top-k over
    the updated embeddings, in order and as a set; a miss only inside a tie is counted
    apart); "left_behind": removed ids still found in any table of `after`}.
    """
    from pipelines.api import Lookalike

    old = pd.read_parquet(before / "catalog.parquet")["item_id"].astype(str).to_numpy()
    new = pd.read_parquet(after / "catalog.parquet")["item_id"].astype(str).to_numpy()
    old_set, new_set = set(old), set(new)
    added = [i for i in new if i not in old_set]
    gone = sorted(old_set - new_set)
    kept = [i for i in new if i in old_set]
    out: dict[str, Any] = {"added": len(added), "gone": len(gone), "kept": len(kept)}
    old_row = {item: i for i, item in enumerate(old)}
    new_row = {item: i for i, item in enumerate(new)}
    engine = Lookalike.open(after)
    per: dict[str, Any] = {}
    for path in sorted((after / "embeddings").glob("*.npy")):
        name = path.stem
        if name.endswith(".items") or not (before / "embeddings" / path.name).exists():
            continue
        vb = np.load(before / "embeddings" / path.name, mmap_mode="r")
        va = np.load(path)
        rb = np.array([old_row[i] for i in kept], dtype=np.int64)
        ra = np.array([new_row[i] for i in kept], dtype=np.int64)
        same = bit_identical(vb[rb], va[ra]) if len(kept) else np.zeros(0, bool)
        part: dict[str, Any] = {
            "vectors": {"kept": len(kept), "identical": int(same.sum())},
            "map": _map_shift(before, after, name, kept),
        }
        top = {"queries": len(added), "same_order": 0, "same_set": 0, "tie_only": 0}
        for item in added:
            row = new_row[item]
            want, sims = brute_topk(va, row, k)
            got = engine.similar_to(item, k=k, extractor=name)["item_id"].astype(str).tolist()
            want_ids = new[want].tolist()
            top["same_order"] += got == want_ids
            top["same_set"] += set(got) == set(want_ids)
            if set(got) != set(want_ids):
                # A miss is a tie when every id in either list scores at least the k-th score
                # of the brute force less a float32 rounding.
                full = np.asarray(va, np.float64) @ np.asarray(va[row], np.float64)
                scores = [full[new_row[i]] for i in got]
                top["tie_only"] += bool(min(scores) >= sims[-1] - 1e-6)
        part["top10"] = top
        per[name] = part
    out["extractors"] = per
    out["left_behind"] = _left_behind(after, set(gone))
    return out


def _map_shift(before: Path, after: Path, name: str, kept: Sequence[str]) -> dict[str, Any]:
    """How many kept items kept their exact map position, and the largest shift."""
    b_path, a_path = before / "maps" / f"{name}.parquet", after / "maps" / f"{name}.parquet"
    if not (b_path.exists() and a_path.exists()):
        return {"missing": True}
    b = pd.read_parquet(b_path).assign(item_id=lambda t: t["item_id"].astype(str))
    a = pd.read_parquet(a_path).assign(item_id=lambda t: t["item_id"].astype(str))
    b, a = b.set_index("item_id").loc[list(kept)], a.set_index("item_id").loc[list(kept)]
    dx = a["x"].to_numpy() - b["x"].to_numpy()
    dy = a["y"].to_numpy() - b["y"].to_numpy()
    shift = np.hypot(dx, dy)
    return {
        "kept": len(kept),
        "unmoved": int((shift == 0).sum()),
        "max_shift": round(float(shift.max()), 6) if len(shift) else 0.0,
    }


def _left_behind(after: Path, gone: set[str]) -> dict[str, int]:
    """{table: removed ids it still holds} over every parquet table and embeddings' item-id
    file of `after` (columns whose name holds "item"); empty when every one is clean. The
    training set (models/training_set.parquet) is left out: it records what the kept models
    learned from, removed items included, until they are retrained."""
    from pipelines.models.training_set import snapshot_path

    found: dict[str, int] = {}
    if not gone:
        return found
    kept_training_set = snapshot_path(Config(artifacts_dir=after))
    for path in sorted(after.rglob("*.parquet")):
        if "bench" in path.relative_to(after).parts or path == kept_training_set:
            continue
        with contextlib.suppress(Exception):
            table = pd.read_parquet(path)
            for column in (c for c in table.columns if "item" in str(c)):
                hits = int(table[column].astype(str).isin(gone).sum())
                if hits:
                    found[f"{path.relative_to(after)}:{column}"] = hits
    for path in sorted((after / "embeddings").glob("*.items.npy")):
        ids = np.load(path).astype(str)
        hits = int(np.isin(ids, list(gone)).sum())
        if hits:
            found[str(path.relative_to(after))] = hits
    return found


def compare_p10(updated: Path, rebuilt: Path) -> dict[str, Any]:
    """Test P@10 (exact search) of each extractor in both builds' metrics.json."""
    a = json.loads((updated / "metrics.json").read_text())["results"]
    b = json.loads((rebuilt / "metrics.json").read_text())["results"]
    out = {}
    for name in a:
        if name in b:
            pa, pb = a[name]["exact"]["p@10"], b[name]["exact"]["p@10"]
            out[name] = {
                "updated": round(pa, 4),
                "rebuild": round(pb, 4),
                "diff": round(pa - pb, 4),
            }
    return out

"""Embeddings that survive a catalog update: each embeddings file carries the item ids of its
rows (`embeddings/<name>.items.npy`), so an update embeds only new photos and copies every
other row, bit for bit, from the previous file made by the same model with the same settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import artifacts
from pipelines.config import Config


def ids_path(config: Config, extractor: str) -> Path:
    """embeddings/<extractor>.items.npy: the item id of each row (fixed-width bytes)."""
    return config.embeddings_path(extractor).with_name(f"{extractor}.items.npy")


def write_embeddings(
    config: Config,
    extractor: str,
    vectors: np.ndarray,
    item_ids: np.ndarray,
    stage: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the rows' item ids, then the embeddings, then the manifest (which records the ids
    file's hash, so a run killed between the writes never pairs vectors with the wrong ids)."""
    ids = ids_path(config, extractor)
    artifacts.write_npy(np.asarray(item_ids).astype("S"), ids)
    out = config.embeddings_path(extractor)
    artifacts.write_npy(np.ascontiguousarray(vectors, dtype=np.float32), out)
    items = {"file": ids.name, "sha256": artifacts.sha256_file(ids)}
    return artifacts.write_manifest(
        out, stage, params, inputs, extra={**(extra or {}), "items": items}
    )


@dataclass(frozen=True)
class Previous:
    """The rows an update can keep: `vectors` of the previous file (memory-mapped) and, for each
    current catalog row, the previous row holding its vector (-1 for a new item)."""

    vectors: np.ndarray
    source: np.ndarray

    @property
    def new_rows(self) -> np.ndarray:
        """Current catalog rows that need embedding."""
        return np.flatnonzero(self.source < 0)

    @property
    def kept(self) -> int:
        return int((self.source >= 0).sum())

    def assemble(self, new_vectors: np.ndarray) -> np.ndarray:
        """The current catalog's embeddings: kept rows copied, `new_vectors` in `new_rows`."""
        out = np.empty((len(self.source), self.vectors.shape[1]), np.float32)
        keep = self.source >= 0
        out[keep] = self.vectors[self.source[keep]]
        out[~keep] = new_vectors
        return out


def previous_rows(
    config: Config,
    extractor: str,
    params: Mapping[str, Any],
    weights: str,
    item_ids: np.ndarray,
) -> Previous | None:
    """What the previous embeddings of `extractor` offer the current catalog (`item_ids` in
    row order), or None when there is nothing to keep: no previous file, a file that does not
    match its manifest, other settings or another model (`weights`), or no item in common."""
    out = config.embeddings_path(extractor)
    manifest = artifacts.read_manifest(out)
    if manifest is None or not artifacts.matches_manifest(out, manifest):
        return None
    same_model = (
        artifacts.sha256_json(manifest.get("params")) == artifacts.sha256_json(dict(params))
        and (manifest.get("inputs") or {}).get("weights") == weights
    )
    ids = ids_path(config, extractor)
    recorded = (manifest.get("items") or {}).get("sha256")
    if not same_model or not recorded or not ids.is_file():
        return None
    if artifacts.sha256_file(ids) != recorded:
        return None
    old_ids = np.load(ids, allow_pickle=False).astype(str)
    vectors = np.load(out, mmap_mode="r")
    if len(old_ids) != len(vectors):
        return None
    where = {item: row for row, item in enumerate(old_ids)}
    source = np.array([where.get(str(item), -1) for item in item_ids], dtype=np.int64)
    if not (source >= 0).any():
        return None
    return Previous(vectors, source)

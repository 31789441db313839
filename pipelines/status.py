"""What the artifacts folder holds: which files a page needs, which are missing, when they were
built, and the settings the app runs with. Reads manifests only; writes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.artifacts import read_manifest
from pipelines.config import EXTRACTORS, Config
from pipelines.errors import LookalikeError

CATALOG_PARTS = ("catalog", "embeddings", "maps", "clusters", "models", "metrics")


def app_config(config: Config | None = None) -> Config:
    """The settings the app runs with: `config` (default `Config()`, which honours
    $LOOKALIKE_ARTIFACTS) with the custom CNN's input size and width taken from the trained
    model's manifest, and InceptionV3's weights source from its embeddings' manifest, so live
    uploads are embedded exactly as the catalog was.

    Parameters
    ----------
    config : base settings; None builds `Config()`.

    Returns
    -------
    Config, unchanged when there is no trained model yet.
    """
    config = config or Config()
    manifest = read_manifest(config.custom_cnn_path) or {}
    changes = {}
    if isinstance(manifest.get("image_size"), int):
        changes["cnn_image_size"] = manifest["image_size"]
    if isinstance(manifest.get("embedding_dim"), int):
        changes["cnn_embedding_dim"] = manifest["embedding_dim"]
    embedded = read_manifest(config.embeddings_path("inception_v3")) or {}
    weights = (embedded.get("params") or {}).get("weights")
    if weights in ("fid", "keras"):
        changes["inception_weights"] = weights
    return config.replace(**changes) if changes else config


def required_paths(
    config: Config, parts: Sequence[str], extractors: Sequence[str] = EXTRACTORS
) -> list[Path]:
    """The artifact files a page needs.

    Parameters
    ----------
    config : where the artifacts live.
    parts : any of "catalog", "embeddings", "maps", "clusters", "models", "metrics".
    extractors : extractors whose per-extractor artifacts are needed.
    """
    unknown = [p for p in parts if p not in CATALOG_PARTS]
    if unknown:
        raise LookalikeError(
            f"unknown artifact part {unknown[0]!r}; valid parts: {', '.join(CATALOG_PARTS)}"
        )
    paths: list[Path] = []
    if "catalog" in parts:
        paths.append(config.catalog_path)
    for name in extractors:
        if "embeddings" in parts:
            paths.append(config.embeddings_path(name))
        if "maps" in parts:
            paths.append(config.map_path(name))
        if "clusters" in parts:
            paths.append(config.clusters_path(name))
    if "models" in parts:
        paths.append(config.inception_weights_path)
        paths.append(config.custom_cnn_path)
    if "metrics" in parts:
        paths.append(config.metrics_path)
    return paths


def missing_artifacts(
    config: Config, parts: Sequence[str], extractors: Sequence[str] = EXTRACTORS
) -> list[Path]:
    """The needed artifact files (see `required_paths`) that are absent or lack a manifest."""
    return [
        p
        for p in required_paths(config, parts, extractors)
        if not p.exists() or read_manifest(p) is None
    ]


def missing_paths(paths: Sequence[Path]) -> list[Path]:
    """The artifact files among `paths` that are absent or lack a manifest."""
    return [p for p in paths if not Path(p).exists() or read_manifest(p) is None]


def manifest_sha(path: Path) -> str:
    """The sha256 recorded in `path`'s manifest ("missing" when there is none): the cache key
    of everything loaded from it, so a rebuilt artifact is read again."""
    manifest = read_manifest(path) or {}
    return str(manifest.get("sha256") or "missing")


def artifacts_summary(config: Config) -> dict[str, Any]:
    """What the sidebar says about the artifacts: catalog rows and when they were built.

    Returns
    -------
    {"dir": str, "built": bool, "items": int | None, "catalog_created": str | None,
    "embeddings_created": {extractor: str | None}}
    """
    catalog = read_manifest(config.catalog_path) or {}
    rows = catalog.get("rows")
    if rows is None and config.catalog_path.exists():
        # Older manifests may not count rows; parquet metadata does, without reading the data.
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(config.catalog_path).metadata.num_rows
    return {
        "dir": str(config.artifacts_dir),
        "built": bool(catalog) and config.catalog_path.exists(),
        "items": None if rows is None else int(rows),
        "catalog_created": catalog.get("created"),
        "embeddings_created": {
            name: (read_manifest(config.embeddings_path(name)) or {}).get("created")
            for name in EXTRACTORS
        },
    }

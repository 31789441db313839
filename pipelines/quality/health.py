"""Catalog health stage: reads the catalog and each extractor's embeddings; writes per extractor
the near-duplicate pairs, the likely-mislabelled items and the outliers (artifacts/health/),
computed by `health_lists.py` (exactly) or `health_large.py` (a large catalog)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pipelines.artifacts import is_fresh, read_manifest, write_manifest, write_parquet
from pipelines.config import EXTRACTORS, Config, embeddings_key
from pipelines.explore.browse import HEALTH_KINDS
from pipelines.quality import health_large
from pipelines.quality.health_lists import health_tables
from pipelines.readers import load_saved_ann, read_catalog, read_embeddings
from pipelines.search.approximate import ANN_MIN_ITEMS, AnnIndex
from pipelines.stage import StageResult, per_extractor

STAGE = "health"


def run_health(
    config: Config, extractors: Sequence[str] = EXTRACTORS, force: bool = False
) -> StageResult:
    """Stage: the health lists of every extractor that has embeddings.

    Writes, each with a manifest: `config.health_path(name, "duplicates" | "mislabelled" |
    "outliers")`. The duplicates' manifest records `floor`, the similarity above which the
    list is complete. From `ANN_MIN_ITEMS` items the lists come through the approximate index
    (`quality/health_large.py`: duplicates within its lists, the other two on a sample; the
    manifests record "sampled"). Skipped when parameters and inputs are unchanged, unless `force`.
    An extractor without embeddings is skipped with a note (its stage did not run).

    Returns
    -------
    StageResult; details are {extractor: {"skipped", "duplicates", "mislabelled", "floor"}}.
    """
    began = time.perf_counter()
    catalog, catalog_hash = read_catalog(config)
    labels = catalog["label"].tolist() if "label" in catalog.columns else None
    ids = catalog["item_id"].astype(str).to_numpy()
    details: dict[str, dict[str, Any]] = {}
    wrote = []
    for name in dict.fromkeys(extractors):
        if not config.embeddings_path(name).exists():
            print(f"health {name}: no embeddings, skipped ({config.embeddings_path(name)})")
            continue
        large = len(ids) >= ANN_MIN_ITEMS
        vectors, vectors_hash = read_embeddings(config, name, n_rows=len(ids), map_large=large)
        params: dict[str, Any] = {
            "min_similarity": config.health_min_similarity,
            "max_pairs": config.health_max_pairs,
            "neighbors": config.health_neighbors,
        }
        if large:  # through the approximate index (quality/health_large.py)
            params.update(method="approximate", sample=health_large.SAMPLE)
        inputs = {"catalog": catalog_hash, embeddings_key(name): vectors_hash}
        paths = {kind: config.health_path(name, kind) for kind in HEALTH_KINDS}
        if not force and all(is_fresh(p, STAGE, params, inputs) for p in paths.values()):
            manifest = read_manifest(paths["duplicates"]) or {}
            details[name] = {"skipped": True, **{k: manifest.get(k) for k in _COUNTS}}
            print(f"health {name}: up to date, skipped")
            continue
        if large:
            ann = load_saved_ann(config, name, vectors, vectors_hash)
            if ann is None:
                print(f"health {name}: no saved approximate index, building one ...", flush=True)
                ann = AnnIndex.build(vectors, seed=config.seed)
            duplicates, mislabelled, outliers, record = health_large.health_tables_large(
                vectors, ann, ids, labels, config
            )
        else:
            duplicates, mislabelled, outliers, floor = health_tables(vectors, ids, labels, config)
            record = {"floor": floor}
        extra = {**record, "duplicates": len(duplicates), "mislabelled": len(mislabelled)}
        floor = record["floor"]
        for kind, table in zip(HEALTH_KINDS, (duplicates, mislabelled, outliers), strict=True):
            write_parquet(table, paths[kind])
            write_manifest(paths[kind], STAGE, params, inputs, extra)
            wrote.append(paths[kind])
        details[name] = {"skipped": False, **extra}
        print(
            f"health {name}: {len(duplicates)} near-duplicate pairs >= {floor:.3f}, "
            f"{len(mislabelled)} likely mislabelled"
        )
    note = ", ".join(
        f"{name} {d.get('duplicates')} pairs, {d.get('mislabelled')} mislabelled"
        for name, d in details.items()
    )
    return per_extractor(STAGE, details, len(ids), time.perf_counter() - began, wrote, note)


_COUNTS = ("floor", "duplicates", "mislabelled", "sampled")

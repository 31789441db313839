"""Neighbours stage: reads the embeddings (through `readers.load_index`) and writes every catalog
item's top-k neighbours to neighbours/<extractor>.parquet (or .csv) for nightly storefront
"more like this" lists."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from tqdm import tqdm

from pipelines import artifacts, commands
from pipelines.config import Config, embeddings_key
from pipelines.embedding.embed import ChunkWriter
from pipelines.errors import LookalikeError
from pipelines.readers import load_index
from pipelines.search.index import Index
from pipelines.stage import StageResult

STAGE = "neighbours"
FORMATS = ("parquet", "csv")
# Catalog rows per resumable part: a kill loses at most one part (a few seconds of work).
PART_ROWS = 4096
NEIGHBOUR_TABLE_COLUMNS = ("item_id", "rank", "neighbour_id", "similarity")


def check_format(fmt: str) -> str:
    """`fmt` when it is one of FORMATS; otherwise an error listing them."""
    if fmt not in FORMATS:
        raise LookalikeError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    return fmt


def write_neighbours(
    index: Index,
    out: Path,
    k: int,
    fmt: str = "parquet",
    key: str = "default",
    part_rows: int = PART_ROWS,
    force: bool = False,
    progress: bool = True,
) -> dict[str, float | int]:
    """Every row's top-k neighbours (itself excluded) in one blocked pass, written atomically.

    Parameters
    ----------
    index : the extractor's index; `Index.search_rows` does the work in blocks (matrix
        products, or the approximate index above its threshold).
    out : the table to write (`.parquet` or `.csv`).
    k : neighbours per item, 1 <= k < index.size.
    fmt : "parquet" or "csv".
    key : identity of the inputs; parts of another key are discarded, so a resumed run never
        mixes two builds.
    part_rows : catalog rows per resumable part.
    force : discard finished parts and start over.
    progress : show a tqdm bar.

    Returns
    -------
    {"rows": items, "searched": items searched in this call, "seconds": wall time of the
    search, "rows_per_s": searched / seconds}. Columns of the table: item_id, rank (1 = most
    similar), neighbour_id, similarity (float32 cosine); k rows per item.
    """
    check_format(fmt)
    n = index.size
    if not 1 <= k < n:
        raise LookalikeError(f"k must be between 1 and {n - 1} (catalog size - 1), got {k}")
    parts = ChunkWriter(out, key, n, part_rows, force)
    todo = parts.rows_todo()
    start = time.perf_counter()
    bar = tqdm(
        total=n,
        initial=n - len(todo),
        desc=f"neighbours {index.name}",
        unit="item",
        disable=not progress,
    )
    with bar:
        for lo in range(0, len(todo), part_rows):
            rows = todo[lo : lo + part_rows]
            found, sims = index.search_rows(index.row_vectors(rows), k, exclude_rows=rows)
            parts.add(found, sims)
            bar.update(len(rows))
    seconds = time.perf_counter() - start
    _write_table(parts, index.item_ids, k, out, fmt)
    parts.remove()
    return {
        "rows": n,
        "searched": len(todo),
        "seconds": round(seconds, 3),
        "rows_per_s": round(len(todo) / seconds, 1) if len(todo) and seconds > 0 else 0.0,
    }


def _write_table(parts: ChunkWriter, item_ids: np.ndarray, k: int, out: Path, fmt: str) -> None:
    """Stream the parts into one table, part by part: item ids stay dictionary-encoded (one
    copy of each id string), so memory follows one part, not the whole table."""
    dictionary = pa.array(np.asarray(item_ids, dtype=object).astype(str), pa.string())
    schema = pa.schema(
        [
            ("item_id", pa.dictionary(pa.int32(), pa.string())),
            ("rank", pa.int16()),
            ("neighbour_id", pa.dictionary(pa.int32(), pa.string())),
            ("similarity", pa.float32()),
        ]
    )
    with artifacts.atomic_path(out) as tmp:
        writer: pq.ParquetWriter | pa_csv.CSVWriter
        if fmt == "parquet":
            writer = pq.ParquetWriter(tmp, schema)
        else:
            plain = pa.schema([(f.name, _plain(f.type)) for f in schema])
            writer = pa_csv.CSVWriter(tmp, plain)
        with writer:
            for chunk, (lo, hi) in enumerate(parts.bounds):
                found = np.load(parts._file(chunk))
                sims = np.load(parts._file(chunk, ".probs"))
                rows = np.repeat(np.arange(lo, hi, dtype=np.int32), k)
                keep = found.reshape(-1) >= 0  # a short row (tiny pool) has -1 padding
                table = pa.table(
                    {
                        "item_id": pa.DictionaryArray.from_arrays(rows[keep], dictionary),
                        "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), hi - lo)[keep],
                        "neighbour_id": pa.DictionaryArray.from_arrays(
                            found.reshape(-1)[keep].astype(np.int32), dictionary
                        ),
                        "similarity": sims.reshape(-1)[keep].astype(np.float32),
                    },
                    schema=schema,
                )
                if fmt == "csv":
                    table = table.cast(plain)
                writer.write_table(table)


def _plain(kind: pa.DataType) -> pa.DataType:
    return pa.string() if pa.types.is_dictionary(kind) else kind


def run_neighbours(
    config: Config,
    extractors: list[str],
    k: int = 20,
    fmt: str = "parquet",
    force: bool = False,
    progress: bool = True,
) -> StageResult:
    """The neighbours stage: each extractor's top-k table, skipped when its embeddings, k and
    format are unchanged; resumable part by part when interrupted.

    Writes `config.neighbours_path(extractor, fmt)` and its manifest per extractor.
    """
    check_format(fmt)
    start = time.perf_counter()
    wrote: list[Path] = []
    details: dict[str, dict] = {}
    n = 0
    missing = [e for e in extractors if not config.embeddings_path(e).exists()]
    if len(missing) == len(extractors):
        raise LookalikeError(
            f"{config.embeddings_path(missing[0])} is missing — run `{commands.embed(missing[0])}`"
        )
    for extractor in extractors:
        if extractor in missing:  # say, a head this catalog has no labels for
            print(
                f"neighbours {extractor}: skipped, {config.embeddings_path(extractor)} is missing "
                f"— run `{commands.embed(extractor)}` to include it"
            )
            details[extractor] = {"skipped": True, "missing": True}
            continue
        index = load_index(config, extractor)
        n = index.size
        out = config.neighbours_path(extractor, fmt)
        params = {"extractor": extractor, "k": k, "format": fmt, "ann": index.approximate}
        inputs = {
            "catalog": artifacts.artifact_hash(config.catalog_path, commands.CATALOG),
            embeddings_key(extractor): artifacts.artifact_hash(
                config.embeddings_path(extractor), commands.embed(extractor)
            ),
        }
        if artifacts.is_fresh(out, STAGE, params, inputs) and not force:
            print(f"neighbours {extractor}: up to date ({n} items); nothing to do.")
            details[extractor] = {"skipped": True}
            continue
        key = artifacts.stage_key(STAGE, params, inputs)[:16]
        summary = write_neighbours(index, out, k, fmt, key=key, force=force, progress=progress)
        artifacts.write_manifest(out, STAGE, params, inputs, extra={"run": summary})
        print(f"neighbours {extractor}: {n} items x {k} -> {out} ({summary['rows_per_s']} items/s)")
        wrote.append(out)
        details[extractor] = summary
    return StageResult(
        STAGE,
        wrote=tuple(wrote),
        rows=n,
        seconds=time.perf_counter() - start,
        skipped=not wrote,
        details=details,
    )

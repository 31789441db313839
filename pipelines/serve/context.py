"""What every endpoint shares: the current `ServiceState`, the request checks, and the
one response shape of neighbours. Reads artifacts through the state; writes nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fastapi import HTTPException

from pipelines import commands
from pipelines.config import EXTRACTORS, STRATEGIES, Config
from pipelines.errors import LookalikeError
from pipelines.search.photos import PhotoSources
from pipelines.search.topk import check_k
from pipelines.serve.state import ServiceState, StateHolder


def error(status: int, detail: str) -> HTTPException:
    """An HTTP error whose body is `{"detail": detail}` (one line)."""
    return HTTPException(status_code=status, detail=detail)


def upload_status(problem: str) -> int:
    """HTTP status of an upload's problem, as `pipelines.search.photos` words it."""
    if "upload limit" in problem:
        return 413
    if "not a recognised image" in problem:
        return 415
    return 422  # empty, truncated or corrupt, too many pixels (decompression bomb)


@dataclass
class Service:
    """The service's settings and its hot-swapped state, with the checks every route uses."""

    config: Config
    holder: StateHolder
    embed_mode: str
    max_upload_bytes: int
    # The photo search's sources of the state being served, made on its first photo search.
    _sources: tuple[ServiceState, PhotoSources] | None = field(default=None, repr=False)
    _sources_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def state(self) -> ServiceState:
        """The state to answer from; 503 with the command to run while there is none."""
        current = self.holder.state
        if current is None:
            raise error(
                503,
                f"no usable artifacts in {self.config.artifacts_dir}: {self.holder.error} — "
                f"build them with `{commands.RUN}`",
            )
        return current

    def index_of(self, current: ServiceState, extractor: str) -> Any:
        """`extractor`'s index: 400 for an unknown name, 503 for one not built yet."""
        if extractor in EXTRACTORS and extractor not in current.indexes:
            raise error(
                503,
                f"the {extractor} embeddings are not built in {self.config.artifacts_dir} — run "
                f"`{commands.embed(extractor)}`; served: {', '.join(current.indexes)}",
            )
        if extractor not in current.indexes:
            raise error(
                400,
                f"unknown extractor {extractor!r}; valid extractors: {', '.join(current.indexes)}",
            )
        return current.indexes[extractor]

    def photo_sources(self, current: ServiceState) -> PhotoSources:
        """What `pipelines.search.photos.search_photos` reads for `current`: its catalog,
        indexes and models, with the colours, the category classifier and the far-from-catalog
        check read once per state (a rebuilt catalog gets new ones with its new state)."""
        with self._sources_lock:
            if self._sources is None or self._sources[0] is not current:
                self._sources = (current, _photo_sources(current))
            return self._sources[1]

    def checked(self, k: int, strategy: str) -> int:
        """`k` checked by the engine (422) and `strategy` by name (400)."""
        if strategy not in STRATEGIES:
            raise error(
                400, f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
            )
        try:
            return check_k(k, self.config.max_k)
        except LookalikeError as err:
            raise error(422, str(err)) from None


def _photo_sources(current: ServiceState) -> PhotoSources:
    from pipelines.data.colour import read_colours
    from pipelines.models.classify import load_category_model
    from pipelines.search.novelty import REFERENCE, far_check

    reference = current.indexes.get(REFERENCE)
    return PhotoSources(
        catalog=current.catalog,
        indexes=current.indexes,
        models=current.extractors,
        config=current.config,
        colours=read_colours(current.config, current.catalog["item_id"].to_numpy()),
        category_model=load_category_model(current.config),
        far=None if reference is None else far_check(reference),
    )


def diversity_keyword(diversity: float | None) -> dict[str, Any]:
    """The engine's diversity keyword, checked by the engine's own check (422 when invalid)."""
    if diversity is None:
        return {}
    from pipelines.search.diversity import check_diversity

    try:
        return {"diversity": check_diversity(diversity)}
    except LookalikeError as err:
        raise error(422, str(err)) from None


def row_of(current: ServiceState, item_id: str) -> int:
    row = current.row_of.get(item_id)
    if row is None:
        raise error(
            404,
            f"no catalog item {item_id!r} ({current.size} items) — list ids with the catalog, "
            "or take one from a search result",
        )
    return row


def thumb_url(item_id: str) -> str:
    return f"/thumbs/{item_id}"


def ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def engine(call: Callable[[], Any]) -> Any:
    """Run an engine call; its user-facing errors (stale artifacts, a strategy without data)
    become 409 with the engine's own message, which says how to fix them."""
    try:
        return call()
    except LookalikeError as err:
        raise error(409, str(err)) from None


def table_rows(current: ServiceState, table: pd.DataFrame) -> tuple[list[int], np.ndarray]:
    """A neighbours table's (catalog rows, similarities), best first, for `result_body`."""
    rows = [current.row_of[item_id] for item_id in table["item_id"]]
    return rows, table["similarity"].to_numpy(np.float64)


def result_body(
    current: ServiceState,
    query: str,
    extractor: str,
    strategy: str,
    k: int,
    start: float,
    rows: Sequence[int] | np.ndarray,
    similarities: Sequence[float] | np.ndarray,
    note: str | None,
) -> dict[str, Any]:
    """The response body of neighbours given as catalog rows and similarities, best first:
    each result is its catalog record (public columns), rank, similarity and thumbnail URL."""
    results = []
    for rank, (row, similarity) in enumerate(zip(rows, similarities, strict=True), start=1):
        record = current.records[int(row)]
        results.append(
            {
                **record,
                "rank": rank,
                "similarity": round(float(similarity), 6),
                "label": None if record.get("label") is None else str(record["label"]),
                "thumbnail_url": thumb_url(str(record["item_id"])),
            }
        )
    return {
        "query": query,
        "extractor": extractor,
        "strategy": strategy,
        "k": k,
        "took_ms": ms(start),
        "note": note or None,
        "results": results,
    }

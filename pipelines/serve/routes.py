"""The endpoints, in four groups, each added to the app by one function: the service's own
(/health, /extractors, /strategies), catalog items (/items, /similar, /thumbs), photos
(/search) and the catalog's label corrections (/corrections). Every answer comes from the
engine functions the app uses.

No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime,
and their annotations name values local to each add_* function."""

import hashlib
import os
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pipelines import commands
from pipelines.config import EXTRACTORS, STRATEGIES
from pipelines.data import corrections
from pipelines.data.images import ACCEPTED_TEXT
from pipelines.errors import LookalikeError
from pipelines.search import photos
from pipelines.search.index import SearchResult
from pipelines.search.similar import item_search, resolve_strategy
from pipelines.serve import models as m
from pipelines.serve.context import (
    Service,
    diversity_keyword,
    engine,
    error,
    ms,
    result_body,
    row_of,
    table_rows,
    thumb_url,
    upload_status,
)
from pipelines.serve.state import ServiceState

# Photos one POST /search may carry; the body limit covers them all together.
MAX_PHOTOS = 8
STRATEGY_TEXT = {
    "exact": "the whole catalog (the ANN index above 100k items)",
    "cluster": "only the query's k-means cluster",
    "category": "only items of the categories the query's category classifier is unsure "
    "between (classify stage)",
}
THUMB_CACHE = "public, max-age=86400"
RERANK_TEXT = (
    "true re-orders the nearest candidates by query expansion (pipelines.search.rerank); "
    "similarities stay cosines to the query"
)
# Query options both search routes take.
DiversityQuery = Annotated[
    float | None,
    Query(description="0 = plain nearest neighbours; up to 1 spreads out near-duplicates"),
]
RerankQuery = Annotated[bool, Query(description=RERANK_TEXT)]


def add_service_routes(app: FastAPI, svc: Service, protected: dict[str, Any]) -> None:
    """/health (open), /extractors and /strategies."""

    @app.get("/health", response_model=m.Health, tags=["service"])
    async def health() -> JSONResponse:
        """Whether the service can answer: artifacts, catalog size, build time, models, and
        the served catalog's drift since the models were trained."""
        current = svc.holder.state
        body = m.Health(
            ok=current is not None,
            artifacts=str(svc.config.artifacts_dir),
            artifacts_present=current is not None,
            catalog_size=0 if current is None else current.size,
            built=None if current is None else current.built,
            extractors_loaded=[] if current is None else sorted(current.extractors),
            reloads=svc.holder.reloads,
            error=svc.holder.error,
            embed_mode=svc.embed_mode,
            worker_pid=os.getpid(),
            drift=None if current is None else current.drift,
        )
        return JSONResponse(body.model_dump(), status_code=200 if current else 503)

    @app.get("/extractors", response_model=list[m.ExtractorInfo], tags=["catalog"], **protected)
    def extractors() -> list[m.ExtractorInfo]:
        """The extractors to search with, their strategies and whether photos can be used."""
        current = svc.state()
        return [
            m.ExtractorInfo(
                name=name,
                dim=index.dim,
                strategies=list(index.strategies),
                unavailable={s: r for s, r in index.unavailable.items() if s in STRATEGIES},
                approximate=index.approximate,
                model_loaded=name in current.extractors,
                model_error=current.model_errors.get(name),
            )
            for name, index in current.indexes.items()
        ]

    @app.get("/strategies", response_model=list[m.StrategyInfo], tags=["catalog"], **protected)
    def strategies() -> list[m.StrategyInfo]:
        """The search strategies; /extractors says which have their data built."""
        return [m.StrategyInfo(name=s, description=STRATEGY_TEXT.get(s, s)) for s in STRATEGIES]


def add_item_routes(app: FastAPI, svc: Service, protected: dict[str, Any]) -> None:
    """/items/{id}, /items/{id}/similar and /thumbs/{id}: catalog items by id only."""

    @app.get("/items/{item_id}", response_model=m.Item, tags=["catalog"], **protected)
    async def item(item_id: str) -> dict[str, Any]:
        """One catalog item: its public columns and thumbnail URL."""
        current = svc.state()
        return {**current.records[row_of(current, item_id)], "thumbnail_url": thumb_url(item_id)}

    @app.get("/items/{item_id}/similar", response_model=m.Neighbours, tags=["search"], **protected)
    async def similar(
        item_id: str,
        k: Annotated[int, Query(description=f"neighbours, 1 to {svc.config.max_k}")] = 10,
        extractor: Annotated[str, Query(description=" or ".join(EXTRACTORS))] = EXTRACTORS[0],
        strategy: Annotated[str, Query(description=", ".join(STRATEGIES))] = "exact",
        label: Annotated[str | None, Query(description="only neighbours with this label")] = None,
        diversity: DiversityQuery = None,
        rerank: RerankQuery = False,
    ) -> dict[str, Any]:
        """The k catalog items most similar to a catalog item (never the item itself)."""
        # On the event loop, not a worker thread: the whole request is ~1.5 ms of CPU, and the
        # two thread hops of a sync route (the endpoint, then its response validation) under
        # 16 clients waited on the GIL behind each other (p50 at 160 req/s 45 -> 24 ms at
        # load average 7; pipelines/bench/api_profile.py and the README's HTTP API section).
        start = time.perf_counter()
        current = svc.state()
        k = svc.checked(k, strategy)
        index = svc.index_of(current, extractor)
        row_of(current, item_id)
        if label is not None and label not in current.labels:
            raise error(400, f"unknown label {label!r}; valid labels: {', '.join(current.labels)}")
        extra = diversity_keyword(diversity)
        use, note = resolve_strategy(index, strategy)

        def answer() -> SearchResult:
            return engine(
                lambda: item_search(
                    index, current.catalog, item_id, k, use, label=label, rerank=rerank, **extra
                )
            )

        # Re-ranking goes to a worker thread: its first query builds the neighbour graph of
        # database-side augmentation (1-3 s at 3.8k items), which on the loop would stall
        # every other request, /health included, for that long.
        found = await run_in_threadpool(answer) if rerank else answer()
        body = result_body(
            current, item_id, extractor, use, k, start, found.rows, found.similarities, note
        )
        return {**body, "rerank": rerank}

    @app.get(
        "/thumbs/{item_id}",
        tags=["catalog"],
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 304: {"description": "not modified"}},
        **protected,
    )
    def thumb(item_id: str, request: Request) -> Response:
        """The item's JPEG thumbnail, with an ETag and a day of caching."""
        current = svc.state()
        row = row_of(current, item_id)
        # The path comes from the catalog row found by id, never from the request's text.
        path = Path(current.catalog["thumb_file"].iat[row])
        try:
            data = path.read_bytes()
        except OSError:
            raise error(
                404, f"the thumbnail of {item_id} is missing — rebuild with `{commands.CATALOG}`"
            ) from None
        etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
        headers = {"ETag": etag, "Cache-Control": THUMB_CACHE}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)


def add_photo_routes(app: FastAPI, svc: Service, protected: dict[str, Any]) -> None:
    """POST /search: photos in, neighbours per extractor and the set's top categories out."""

    @app.post("/search", response_model=m.SearchResponse, tags=["search"], **protected)
    def search(
        photo: Annotated[
            list[UploadFile], File(description=f"one to {MAX_PHOTOS} photos ({ACCEPTED_TEXT})")
        ],
        k: Annotated[int, Query(description=f"neighbours, 1 to {svc.config.max_k}")] = 10,
        extractor: Annotated[
            list[str] | None, Query(description="repeatable; default: every loaded extractor")
        ] = None,
        strategy: Annotated[str, Query(description=", ".join(STRATEGIES))] = "exact",
        diversity: DiversityQuery = None,
        rerank: RerankQuery = False,
        colour: Annotated[
            str | None, Query(description="only neighbours of this dominant colour")
        ] = None,
        label: Annotated[str | None, Query(description="only neighbours with this label")] = None,
    ) -> dict[str, Any]:
        """Photos -> predicted category (the category classifier) and neighbours per
        extractor; with several photos also the set's three most common categories. The
        search is `pipelines.search.photos.search_photos`, as in the app."""
        start = time.perf_counter()
        current = svc.state()
        k = svc.checked(k, strategy)
        extra = diversity_keyword(diversity)
        names = list(dict.fromkeys(extractor or current.extractors or current.indexes))
        for name in names:
            svc.index_of(current, name)
        for name in names:
            if name not in current.extractors:
                reason = current.model_errors.get(name, "not loaded")
                raise error(503, f"the {name} model cannot embed photos: {reason}")
        if len(photo) > MAX_PHOTOS:
            raise error(413, f"at most {MAX_PHOTOS} photos per request, got {len(photo)}")
        sources = svc.photo_sources(current)
        try:
            photos.check_search(sources, names, strategy, colour, label)
        except LookalikeError as err:
            raise error(400, str(err)) from None
        # Each read is bounded: one byte past the limit tells "too large".
        uploads = [
            (Path(p.filename or "").name or f"photo-{i}", p.file.read(svc.max_upload_bytes + 1))
            for i, p in enumerate(photo, start=1)
        ]
        results: list[photos.UploadResult] = engine(
            lambda: photos.search_photos(
                uploads, sources, k, names, strategy, rerank=rerank, colour=colour, label=label,
                max_bytes=svc.max_upload_bytes, **extra,
            )
        )  # fmt: skip
        if not any(r.error is None for r in results):
            first = results[0].error or "no usable photo"
            raise error(upload_status(first), first)
        summary = photos.category_summary(results, top=3)
        return {
            "took_ms": ms(start),
            "photos": [_photo(current, r, k, start, rerank) for r in results],
            "top_categories": summary.to_dict(orient="records"),
        }


def add_correction_routes(app: FastAPI, svc: Service, protected: dict[str, Any]) -> None:
    """GET and POST /corrections, DELETE /corrections/{id}: the label corrections and drops
    of `pipelines.data.corrections` (the Health page's), applied at the next `run`."""

    @app.get("/corrections", response_model=list[m.Correction], tags=["corrections"], **protected)
    def list_corrections() -> list[dict[str, Any]]:
        """Every correction, oldest first, undone ones included, with its state against the
        catalog being served."""
        return _corrections(svc)

    @app.post(
        "/corrections",
        response_model=m.Correction,
        status_code=201,
        tags=["corrections"],
        **protected,
    )
    def add_correction(body: m.CorrectionRequest) -> dict[str, Any]:
        """Mark a catalog item for a new label or to be dropped; it applies at the next
        `python -m pipelines run`, never in the source folder. Unknown item 404; bad action,
        label, who or note 422; the same correction already in force 409."""
        svc.state()  # 503 with the command to run while there is no catalog
        made = _corrected(
            lambda: corrections.add_correction(
                svc.config, body.item_id, body.action, body.label, body.who, body.note
            )
        )
        return _corrections(svc, made["correction_id"])[0]

    @app.delete(
        "/corrections/{correction_id}",
        response_model=m.Correction,
        tags=["corrections"],
        **protected,
    )
    def undo_correction(
        correction_id: str,
        who: Annotated[
            str | None, Query(description="who undoes it (default: the service's OS user)")
        ] = None,
    ) -> dict[str, Any]:
        """Undo a correction: it stays listed (undone_at, undone_by) and stops applying at the
        next run. Unknown id 404; already undone 409."""
        done = _corrected(lambda: corrections.undo_correction(svc.config, correction_id, who))
        return _corrections(svc, done["correction_id"])[0]


def _corrections(svc: Service, only: str | None = None) -> list[dict[str, Any]]:
    """The corrections (or the one with id `only`) with their state against the served
    catalog (the catalog on disk while nothing is served yet)."""
    current = svc.holder.state
    table = _corrected(
        lambda: corrections.list_corrections(
            svc.config, None if current is None else current.catalog
        )
    )
    if only is not None:
        table = table[table["correction_id"] == only]
    return [{**corrections.record(row), "state": row["state"]} for _, row in table.iterrows()]


def _corrected(call: Any) -> Any:
    """An engine call of `pipelines.data.corrections`, its errors as HTTP statuses with the
    engine's own message: unknown item or correction 404, unusable input 422, else 409."""
    try:
        return call()
    except (corrections.UnknownItemError, corrections.UnknownCorrectionError) as err:
        raise error(404, str(err)) from None
    except corrections.InvalidCorrectionError as err:
        raise error(422, str(err)) from None
    except LookalikeError as err:
        raise error(409, str(err)) from None


def _photo(
    current: ServiceState,
    result: photos.UploadResult,
    k: int,
    start: float,
    rerank: bool = False,
) -> m.PhotoResult:
    """One photo's answer: its category, notes and one neighbours body per extractor (whose
    note is that extractor's own notes: a strategy fallback, a filter that ran short)."""
    searches = []
    for name, table in result.neighbours.items():
        notes = [n.split(": ", 1)[1] for n in result.notes if n.startswith(f"{name}: ")]
        used = result.strategies[name]
        rows, sims = table_rows(current, table)
        body = result_body(current, result.name, name, used, k, start, rows, sims, "; ".join(notes))
        searches.append({**body, "rerank": rerank})
    return m.PhotoResult(
        name=result.name,
        category=result.category,
        confidence=result.confidence,
        error=result.error,
        searches=searches,
        probabilities=result.probabilities,
        searched_categories=result.searched_categories,
        category_model=result.category_model,
        notes=result.notes,
        warnings=result.warnings,
    )

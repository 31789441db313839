"""The HTTP endpoints: each reads the current `ServiceState` and calls the engine functions the
app uses (`pipelines.neighbours`, `pipelines.upload`); reads artifacts, writes nothing."""

import hashlib
import inspect
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from fastapi import FastAPI, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines import commands, upload
from pipelines.config import EXTRACTORS, STRATEGIES, Config
from pipelines.errors import LookalikeError
from pipelines.neighbours import item_neighbours, resolve_strategy
from pipelines.serve import models as m
from pipelines.serve.gate import EMBED_MODES
from pipelines.serve.guard import Guard
from pipelines.serve.state import RELOAD_INTERVAL_S, ServiceState, StateHolder
from pipelines.topk import check_k

# Photos one POST /search may carry; the body limit below covers them all together.
MAX_PHOTOS = 8
# Multipart framing around the photos (boundaries, part headers) allowed on top of the limit.
MULTIPART_SLACK = 64 * 1024
STRATEGY_TEXT = {
    "exact": "the whole catalog (the ANN index above 100k items)",
    "cluster": "only the query's k-means cluster",
    "category": "only items with the query's predicted category (custom CNN)",
}
THUMB_CACHE = "public, max-age=86400"
# Whether the engine's neighbour functions take the diversity keyword (added by another issue).
_DIVERSITY = "diversity" in inspect.signature(item_neighbours).parameters


def _error(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def _upload_status(problem: str) -> int:
    """HTTP status of an upload's problem, as `embed_upload` words it."""
    if "upload limit" in problem:
        return 413
    if "not a recognised image" in problem:
        return 415
    return 422  # empty, truncated or corrupt, too many pixels (decompression bomb)


def create_app(
    config: Config,
    api_key: str | None = None,
    embed_mode: str = "lock",
    load_extractors: bool = True,
    reload_interval: float = RELOAD_INTERVAL_S,
    max_upload_bytes: int = upload.MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The API over `config.artifacts_dir`.

    Parameters
    ----------
    config : the artifacts to serve.
    api_key : when set, every endpoint but /health (and the docs) needs `Authorization:
        Bearer <api_key>`.
    embed_mode : "lock" (one forward pass per model at a time) or "batch" (micro-batched).
    load_extractors : False skips the models: POST /search answers 503 (fast tests).
    reload_interval : seconds between manifest checks; 0 disables the watcher (tests call
        `app.state.holder.refresh()`).
    max_upload_bytes : largest photo; a request body may hold MAX_PHOTOS of them.
    """
    if embed_mode not in EMBED_MODES:
        raise LookalikeError(f"embed mode must be one of {', '.join(EMBED_MODES)}")
    holder = StateHolder(config, embed_mode, load_extractors, reload_interval)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202 - an async context manager
        holder.start_watching()
        yield
        holder.stop()

    app = FastAPI(
        title="Lookalike similar-items API",
        summary="More like this (catalog items) and shop the look (photos), on the same "
        "engine and artifacts as the Lookalike app.",
        version="1",
        lifespan=lifespan,
    )
    app.state.holder = holder
    # Documents the bearer key in /docs; the check itself is in Guard, before bodies are read.
    bearer = [] if api_key is None else [HTTPBearer(auto_error=False)]
    protected: dict[str, Any] = {"dependencies": []}
    if bearer:
        from fastapi import Security

        protected["dependencies"] = [Security(bearer[0])]
    max_body = MAX_PHOTOS * max_upload_bytes + MULTIPART_SLACK
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body)
    _install_error_handlers(app)

    def state() -> ServiceState:
        current = holder.state
        if current is None:
            raise _error(
                503,
                f"no usable artifacts in {config.artifacts_dir}: {holder.error} — "
                f"build them with `{commands.RUN}`",
            )
        return current

    def index_of(current: ServiceState, extractor: str) -> Any:
        if extractor in EXTRACTORS and extractor not in current.indexes:
            raise _error(
                503,
                f"the {extractor} embeddings are not built in {config.artifacts_dir} — run "
                f"`{commands.embed(extractor)}`; served: {', '.join(current.indexes)}",
            )
        if extractor not in current.indexes:
            raise _error(
                400,
                f"unknown extractor {extractor!r}; valid extractors: {', '.join(current.indexes)}",
            )
        return current.indexes[extractor]

    def checked(k: int, strategy: str) -> int:
        if strategy not in STRATEGIES:
            raise _error(
                400, f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
            )
        try:
            return check_k(k, config.max_k)
        except LookalikeError as err:
            raise _error(422, str(err)) from None

    @app.get("/health", response_model=m.Health, tags=["service"])
    async def health() -> JSONResponse:
        """Whether the service can answer: artifacts, catalog size, build time, models."""
        current = holder.state
        body = m.Health(
            ok=current is not None,
            artifacts=str(config.artifacts_dir),
            artifacts_present=current is not None,
            catalog_size=0 if current is None else current.size,
            built=None if current is None else current.built,
            extractors_loaded=[] if current is None else sorted(current.extractors),
            reloads=holder.reloads,
            error=holder.error,
            embed_mode=embed_mode,
        )
        return JSONResponse(body.model_dump(), status_code=200 if current else 503)

    @app.get("/extractors", response_model=list[m.ExtractorInfo], tags=["catalog"], **protected)
    def extractors() -> list[m.ExtractorInfo]:
        """The extractors to search with, their strategies and whether photos can be used."""
        current = state()
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

    @app.get("/items/{item_id}", response_model=m.Item, tags=["catalog"], **protected)
    async def item(item_id: str) -> dict[str, Any]:
        """One catalog item: its public columns and thumbnail URL."""
        current = state()
        return {**current.records[_row(current, item_id)], "thumbnail_url": _thumb_url(item_id)}

    @app.get("/items/{item_id}/similar", response_model=m.Neighbours, tags=["search"], **protected)
    def similar(
        item_id: str,
        k: Annotated[int, Query(description=f"neighbours, 1 to {config.max_k}")] = 10,
        extractor: Annotated[str, Query(description=" or ".join(EXTRACTORS))] = EXTRACTORS[0],
        strategy: Annotated[str, Query(description=", ".join(STRATEGIES))] = "exact",
        label: Annotated[str | None, Query(description="only neighbours with this label")] = None,
        diversity: Annotated[
            float | None,
            Query(description="0 = plain nearest neighbours; up to 1 spreads out near-duplicates"),
        ] = None,
    ) -> dict[str, Any]:
        """The k catalog items most similar to a catalog item (never the item itself)."""
        # A worker thread, not the event loop: the matrix product releases the GIL, so two
        # queries use both cores (BLAS runs one thread per query in the server, see run_server).
        start = time.perf_counter()
        current = state()
        k = checked(k, strategy)
        index = index_of(current, extractor)
        _row(current, item_id)
        if label is not None and label not in current.labels:
            raise _error(400, f"unknown label {label!r}; valid labels: {', '.join(current.labels)}")
        extra = _diversity(diversity)
        use, note = resolve_strategy(index, strategy)

        def search(width: int) -> pd.DataFrame:
            return item_neighbours(index, current.catalog, item_id, width, use, **extra)

        table = _engine(lambda: _filtered(search, k, label, index.size - 1, config.max_k))
        return _neighbours(current, item_id, extractor, use, k, start, table, note)

    @app.post("/search", response_model=m.SearchResponse, tags=["search"], **protected)
    def search(
        photo: Annotated[
            list[UploadFile], File(description=f"one to {MAX_PHOTOS} photos (jpg, png, webp)")
        ],
        k: Annotated[int, Query(description=f"neighbours, 1 to {config.max_k}")] = 10,
        extractor: Annotated[
            list[str] | None, Query(description="repeatable; default: every loaded extractor")
        ] = None,
        strategy: Annotated[str, Query(description=", ".join(STRATEGIES))] = "exact",
    ) -> dict[str, Any]:
        """Photos -> predicted category (custom CNN) and neighbours per extractor; with several
        photos also the set's three most common categories."""
        start = time.perf_counter()
        current = state()
        k = checked(k, strategy)
        names = list(dict.fromkeys(extractor or current.extractors or current.indexes))
        indexes = {name: index_of(current, name) for name in names}
        for name in names:
            if name not in current.extractors:
                reason = current.model_errors.get(name, "not loaded")
                raise _error(503, f"the {name} model cannot embed photos: {reason}")
        if len(photo) > MAX_PHOTOS:
            raise _error(413, f"at most {MAX_PHOTOS} photos per request, got {len(photo)}")
        models = {name: current.extractors[name] for name in names}
        results: list[upload.UploadResult] = []
        for i, part in enumerate(photo, start=1):
            name = Path(part.filename or "").name or f"photo-{i}"
            data = part.file.read(max_upload_bytes + 1)  # bounded: one byte tells "too large"
            results.append(_analyse(name, data, models, indexes, current, k, strategy))
        good = [r for r in results if r.error is None]
        if not good:
            first = results[0].error or "no usable photo"
            raise _error(_upload_status(first), first)
        photos = []
        for r in results:
            searches = []
            for name, table in r.neighbours.items():
                notes = [n.split(": ", 1)[1] for n in r.notes if n.startswith(f"{name}: ")]
                used = strategy if not notes else "exact"
                searches.append(
                    _neighbours(current, r.name, name, used, k, start, table, "; ".join(notes))
                )
            photos.append(
                m.PhotoResult(
                    name=r.name,
                    category=r.category,
                    confidence=r.confidence,
                    error=r.error,
                    searches=searches,
                )
            )
        summary = upload.category_summary(results, top=3)
        return {
            "took_ms": _ms(start),
            "photos": photos,
            "top_categories": summary.to_dict(orient="records"),
        }

    def _analyse(
        name: str,
        data: bytes,
        models: dict[str, Any],
        indexes: dict[str, Any],
        current: ServiceState,
        k: int,
        strategy: str,
    ) -> upload.UploadResult:
        try:
            embedding = upload.embed_upload(
                name, data, models, max_upload_bytes, max_pixels=current.config.max_pixels
            )
        except Exception as err:  # a decoder failure the engine did not word: still the photo's
            return upload.UploadResult(
                name, error=f"{name}: unreadable image ({type(err).__name__}: {err})"
            )
        return _engine(
            lambda: upload.analyse_upload(embedding, indexes, current.catalog, {}, k, strategy)
        )

    @app.get(
        "/thumbs/{item_id}",
        tags=["catalog"],
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 304: {"description": "not modified"}},
        **protected,
    )
    def thumb(item_id: str, request: Request) -> Response:
        """The item's JPEG thumbnail, with an ETag and a day of caching."""
        current = state()
        row = _row(current, item_id)
        # The path comes from the catalog row found by id, never from the request's text.
        path = Path(current.catalog["thumb_file"].iat[row])
        try:
            data = path.read_bytes()
        except OSError:
            raise _error(
                404, f"the thumbnail of {item_id} is missing — rebuild with `{commands.CATALOG}`"
            ) from None
        etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
        headers = {"ETag": etag, "Cache-Control": THUMB_CACHE}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    return app


def _diversity(diversity: float | None) -> dict[str, Any]:
    """The engine's diversity keyword, checked by the engine's own check (422 when invalid)."""
    if diversity is None:
        return {}
    if not _DIVERSITY:
        raise _error(400, "diversity is not supported by this engine version; omit it")
    from pipelines.diversity import check_diversity

    try:
        return {"diversity": check_diversity(diversity)}
    except LookalikeError as err:
        raise _error(422, str(err)) from None


def _row(current: ServiceState, item_id: str) -> int:
    row = current.row_of.get(item_id)
    if row is None:
        raise _error(
            404,
            f"no catalog item {item_id!r} ({current.size} items) — list ids with the catalog, "
            "or take one from a search result",
        )
    return row


def _thumb_url(item_id: str) -> str:
    return f"/thumbs/{item_id}"


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _engine(call: Callable[[], Any]) -> Any:
    """Run an engine call; its user-facing errors (stale artifacts, a strategy without data)
    become 409 with the engine's own message, which says how to fix them."""
    try:
        return call()
    except LookalikeError as err:
        raise _error(409, str(err)) from None


def _filtered(
    search: Callable[[int], pd.DataFrame], k: int, label: str | None, most: int, max_k: int
) -> pd.DataFrame:
    """`search(k)`, or with a label: the first k neighbours with that label, found by widening
    the engine's search (4k, 16k, ... up to the catalog) until k of them are in it."""
    if label is None:
        return search(k)
    width = min(most, max(4 * k, max_k))
    while True:
        table = search(width)
        hits = table[table["label"] == label]
        if len(hits) >= k or width >= most or len(table) < width:
            hits = hits.head(k).copy()
            hits["rank"] = range(1, len(hits) + 1)
            return hits
        width = min(most, width * 4)


def _neighbours(
    current: ServiceState,
    query: str,
    extractor: str,
    strategy: str,
    k: int,
    start: float,
    table: pd.DataFrame,
    note: str | None,
) -> dict[str, Any]:
    results = []
    for rank, item_id, similarity, label in zip(
        table["rank"], table["item_id"], table["similarity"], table["label"], strict=True
    ):
        row = current.row_of[item_id]
        results.append(
            {
                **current.records[row],
                "rank": int(rank),
                "item_id": item_id,
                "similarity": round(float(similarity), 6),
                "label": None if pd.isna(label) else str(label),
                "thumbnail_url": _thumb_url(item_id),
            }
        )
    return {
        "query": query,
        "extractor": extractor,
        "strategy": strategy,
        "k": k,
        "took_ms": _ms(start),
        "note": note or None,
        "results": results,
    }


def _install_error_handlers(app: FastAPI) -> None:
    """Every error body is `{"detail": "<one line>"}`; nothing a client sends gives a 500."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path"))
            given = error.get("input")
            shown = "" if isinstance(given, dict | list) else f", got {str(given)[:60]!r}"
            problems.append(f"{where}: {error.get('msg', 'invalid')}{shown}")
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, 422)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: still one JSON line, and the server keeps serving.
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); see the server log"}, 500
        )


def app_from_env() -> FastAPI:
    """An app for `uvicorn pipelines.serve.app:app_from_env --factory` (artifacts from
    $LOOKALIKE_ARTIFACTS, key from $LOOKALIKE_API_KEY)."""
    return create_app(Config(), api_key=os.environ.get("LOOKALIKE_API_KEY") or None)

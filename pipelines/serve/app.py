"""The FastAPI application over the artifacts: the key and body-size guard, one-line JSON
errors, and the four route groups of `pipelines.serve.routes`. Writes only the label
corrections (POST and DELETE /corrections, through `pipelines.data.corrections`)."""

import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.search import photos
from pipelines.serve.context import Service
from pipelines.serve.gate import EMBED_MODES
from pipelines.serve.guard import Guard
from pipelines.serve.routes import (
    MAX_PHOTOS,
    add_correction_routes,
    add_item_routes,
    add_photo_routes,
    add_service_routes,
)
from pipelines.serve.state import RELOAD_INTERVAL_S, StateHolder

# Multipart framing around the photos (boundaries, part headers) allowed on top of the limit.
MULTIPART_SLACK = 64 * 1024


def create_app(
    config: Config,
    api_key: str | None = None,
    embed_mode: str = "lock",
    load_extractors: bool = True,
    reload_interval: float = RELOAD_INTERVAL_S,
    max_upload_bytes: int = photos.MAX_UPLOAD_BYTES,
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

    svc = Service(config, holder, embed_mode, max_upload_bytes)
    add_service_routes(app, svc, protected)
    add_item_routes(app, svc, protected)
    add_photo_routes(app, svc, protected)
    add_correction_routes(app, svc, protected)
    return app


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

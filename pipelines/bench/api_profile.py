"""Where one GET /items/{id}/similar spends its time, in-process (no HTTP, no other client):
reads an artifacts folder, prints per-part p50/p95 in ms; writes nothing.

    python -m pipelines.bench.api_profile --artifacts /work/quiet-art [--n 400]

The parts nest: the exact search is inside `item_search` (search, exclusion, the k cut), which
is inside the route function (plus the response body), which is inside the ASGI app (plus query
parsing, middleware, pydantic response validation and JSON encoding). `item_neighbours` (the
same search as a DataFrame, what the app and the shell get) is timed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.config import Config
from pipelines.quality.metrics import latency_stats
from pipelines.search.similar import item_neighbours, item_search

EXTRACTORS = ("inception_v3", "custom_cnn")


def percentiles(fn: Callable[[], Any], n: int, warm: int = 30) -> tuple[float, float]:
    """p50 and p95 of `fn()` in ms over `n` calls, after `warm` unmeasured ones."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    stats = latency_stats(times)
    return stats["latency_ms_median"], stats["latency_ms_p95"]


def profile(artifacts: Path, n: int = 400) -> dict[str, tuple[float, float]]:
    """p50/p95 (ms) of each part of a similar request (k=10, exact, a random item and
    extractor per call) over the artifacts in `artifacts`."""
    from fastapi.routing import serialize_response

    from pipelines.serve import one_blas_thread_per_product
    from pipelines.serve.app import create_app
    from pipelines.serve.context import result_body

    app = create_app(Config(artifacts_dir=artifacts), load_extractors=False, reload_interval=0)
    one_blas_thread_per_product()  # as the server runs
    state = app.state.holder.state
    ids, rng = list(state.row_of), random.Random(0)
    route = next(r for r in app.routes if getattr(r, "path", "") == "/items/{item_id}/similar")
    loop = asyncio.new_event_loop()

    def pick() -> tuple[str, str]:
        return rng.choice(ids), rng.choice([e for e in EXTRACTORS if e in state.indexes])

    def search() -> None:
        item, name = pick()
        index = state.indexes[name]
        rows = index.rows_of([item])
        index.search(index.row_vectors(rows), 10, "exact", exclude_rows=rows)

    def found() -> Any:
        item, name = pick()
        return item_search(state.indexes[name], state.catalog, item, 10, "exact")

    def neighbours() -> Any:
        item, name = pick()
        return item_neighbours(state.indexes[name], state.catalog, item, 10, "exact")

    result = found()

    def body() -> Any:
        start = time.perf_counter()
        rows, sims = result.rows, result.similarities
        return result_body(state, "q", "e", "exact", 10, start, rows, sims, None)

    def endpoint() -> Any:
        item, name = pick()
        out = route.endpoint(
            item_id=item, k=10, extractor=name, strategy="exact", label=None, diversity=None
        )
        return loop.run_until_complete(out) if inspect.isawaitable(out) else out

    content = endpoint()

    def serialize() -> Any:
        call = serialize_response(field=route.response_field, response_content=content)
        return loop.run_until_complete(call)

    async def asgi(path: str, query: bytes) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", b"localhost")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return int(sent[0]["status"])

    def whole() -> None:
        item, name = pick()
        query = f"k=10&extractor={name}".encode()
        status = loop.run_until_complete(asgi(f"/items/{item}/similar", query))
        assert status == 200, status

    parts = {
        "Index.search (exact, k=10)": search,
        "item_search (the route's engine call)": found,
        "item_neighbours (as a DataFrame)": neighbours,
        "result_body (10 results)": body,
        "route function": endpoint,
        "serialize_response (pydantic)": serialize,
        "whole ASGI app, no HTTP": whole,
    }
    return {name: percentiles(fn, n) for name, fn in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Config().artifacts_dir)
    parser.add_argument("--n", type=int, default=400, help="timed calls per part")
    args = parser.parse_args()
    for name, (p50, p95) in profile(args.artifacts, args.n).items():
        print(f"{name:<40}p50 {p50:7.3f} ms   p95 {p95:7.3f} ms")


if __name__ == "__main__":
    main()

"""The similar-items HTTP API: reads the artifacts `run` wrote (through the same engine
functions as the app) and answers storefront queries; writes only the label corrections
(/corrections, through `pipelines.data.corrections`)."""

from __future__ import annotations

import base64
import os
import pickle
from typing import Any

from pipelines.config import Config

API_KEY_ENV = "LOOKALIKE_API_KEY"
# What `run_server` hands its workers (the pickled config and embed mode, base64): a worker
# is a fresh process that imports the app by name.
WORKER_CONFIG_ENV = "LOOKALIKE_SERVE_WORKER"


def run_server(
    config: Config,
    host: str = "127.0.0.1",
    port: int = 8000,
    embed_mode: str = "lock",
    workers: int = 1,
) -> None:
    """Serve the API with uvicorn until interrupted (binds loopback unless `host` says
    otherwise). With $LOOKALIKE_API_KEY set, every endpoint but /health needs
    `Authorization: Bearer <key>`. `workers` > 1 runs that many server processes on one port
    (uvicorn's supervisor), each with its own models and indexes: one Python process answers
    on one core at a time."""
    import uvicorn

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers > 1:
        os.environ[WORKER_CONFIG_ENV] = base64.b64encode(
            pickle.dumps((config, embed_mode))
        ).decode()
        print(f"serving {config.artifacts_dir} on http://{host}:{port} with {workers} workers")
        uvicorn.run(
            "pipelines.serve:worker_app",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
        )
        return

    from pipelines.serve.app import create_app

    app = create_app(config, api_key=os.environ.get(API_KEY_ENV) or None, embed_mode=embed_mode)
    one_blas_thread_per_product()
    print(f"serving {config.artifacts_dir} on http://{host}:{port} (docs at /docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def worker_app() -> Any:
    """(uvicorn's factory in each worker of `serve --workers N`) the app over the config and
    embed mode `run_server` left in $LOOKALIKE_SERVE_WORKER."""
    from pipelines.serve.app import create_app

    config, embed_mode = pickle.loads(base64.b64decode(os.environ[WORKER_CONFIG_ENV]))
    app = create_app(config, api_key=os.environ.get(API_KEY_ENV) or None, embed_mode=embed_mode)
    one_blas_thread_per_product()
    return app


def one_blas_thread_per_product() -> list[str]:
    """Limit every loaded BLAS library to one thread; returns each one's name and threads.

    Why: the server's parallelism is its concurrent requests, and on a busy 2-core machine a
    query's 2-thread product took ~3x longer than a 1-thread one (28 ms against 10 ms p50 on the
    3,781 x 2048 InceptionV3 matrix at load average 18). threadpoolctl only limits libraries
    already loaded, so this runs after the app (numpy, the models) is built: called before
    numpy was imported it limited nothing, and every InceptionV3 product woke two OpenBLAS
    threads (1.4 ms of server CPU per request more, p50 at 160 req/s 45 ms; see
    pipelines/bench/api_profile.py).
    """
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    return [
        f"{lib['internal_api']} {lib['num_threads']}"
        for lib in threadpool_info()
        if lib["user_api"] == "blas"
    ]

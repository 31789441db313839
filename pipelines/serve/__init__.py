"""The similar-items HTTP API: reads the artifacts `run` wrote (through the same engine
functions as the app) and answers storefront queries; writes only the label corrections
(/corrections, through `pipelines.data.corrections`)."""

from __future__ import annotations

import os

from pipelines.config import Config

API_KEY_ENV = "LOOKALIKE_API_KEY"


def run_server(
    config: Config, host: str = "127.0.0.1", port: int = 8000, embed_mode: str = "lock"
) -> None:
    """Serve the API with uvicorn until interrupted (binds loopback unless `host` says
    otherwise). With $LOOKALIKE_API_KEY set, every endpoint but /health needs
    `Authorization: Bearer <key>`."""
    import uvicorn

    from pipelines.serve.app import create_app

    app = create_app(config, api_key=os.environ.get(API_KEY_ENV) or None, embed_mode=embed_mode)
    one_blas_thread_per_product()
    print(f"serving {config.artifacts_dir} on http://{host}:{port} (docs at /docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


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

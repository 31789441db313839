"""Load benchmark of the HTTP API (`python -m pipelines bench --api`): starts the real server on
loopback over the artifacts, drives it with concurrent clients for a bounded time, and writes
latency percentiles, throughput, errors and server memory to bench/api.json."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from pipelines import artifacts, commands
from pipelines.bench.report import loadavg
from pipelines.config import REPO_ROOT, Config
from pipelines.errors import LookalikeError
from pipelines.readers import read_catalog

HOST = "127.0.0.1"  # loopback only: the benchmark never listens on or calls another address
# Hard cap on requests per phase, whatever the duration: the run is bounded in count and time.
MAX_REQUESTS = 50_000
# The photo search the target is stated for: one photo, both base extractors.
SEARCH_EXTRACTORS = ("inception_v3", "custom_cnn")
TARGETS = {"similar_p95_ms": 20.0, "search_p95_ms": 1500.0}


@dataclass
class Phase:
    """One timed phase: clients per endpoint, and what they measured."""

    name: str
    similar_clients: int
    search_clients: int
    seconds: float
    interval_s: float = 0.0  # 0: closed loop (next request as soon as one answers)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0  # the load generator's own CPU time over the phase
    server_cpu_s: float | None = None  # the server's (every worker's) CPU time over it

    def summary(self) -> dict[str, Any]:
        """Requests/s and p50/p95/p99 (ms) per endpoint, and the error counts."""
        out: dict[str, Any] = {
            "clients": {"similar": self.similar_clients, "search": self.search_clients},
            "paced_per_client_per_s": round(1 / self.interval_s, 2) if self.interval_s else None,
            "seconds": round(self.wall_s, 1),
            "errors": sum(self.errors.values()),
            "first_errors": self.first_errors[:3],
        }
        total = sum(len(times) for times in self.latencies.values())
        # On 2 shared cores the clients' CPU is CPU the server did not get.
        out["client_cpu_ms_per_request"] = (
            round(self.client_cpu_s / total * 1000, 3) if total else None
        )
        out["client_cpu_share_of_a_core"] = (
            round(self.client_cpu_s / self.wall_s, 3) if self.wall_s else None
        )
        if self.server_cpu_s is not None:
            out["server_cpu_ms_per_request"] = (
                round(self.server_cpu_s / total * 1000, 3) if total else None
            )
            out["server_cpu_share_of_a_core"] = (
                round(self.server_cpu_s / self.wall_s, 3) if self.wall_s else None
            )
        for endpoint, times in self.latencies.items():
            ms = np.asarray(times) * 1000
            out[endpoint] = {
                "requests": len(times),
                "per_s": round(len(times) / self.wall_s, 1) if self.wall_s else 0.0,
                "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
                "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
                "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
                "errors": self.errors.get(endpoint, 0),
            }
        out["requests_per_s"] = round(total / self.wall_s, 1) if self.wall_s else 0.0
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` and its descendants (a server's workers) in MB (Linux
    /proc)."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1]) / 1024
    for child in _children(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            total += rss_mb(child)
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and its live descendants (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for child in _children(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            total += cpu_seconds(child)
    return total


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


@contextmanager
def running_server(  # noqa: ANN201 - a context manager
    config: Config,
    embed_mode: str = "lock",
    timeout_s: float = 300.0,
    api_key: str | None = None,
    log_path: Path | None = None,
    workers: int = 1,
    overrides: Sequence[str] = (),
):
    """`python -m pipelines serve` on a free loopback port; yields (base URL, pid). Always
    stopped on exit. `api_key` sets LOOKALIKE_API_KEY for the server (unset by default);
    its output goes to `log_path` (default: the bench folder). With `workers` > 1 it is ready
    once every worker answers /health with its models loaded. `overrides` ("name=value") are
    passed to the server as `--set`, so it runs with the settings the benchmark was given."""
    port = _free_port()
    command = [sys.executable, "-m", "pipelines", "serve", "--host", HOST, "--port", str(port)]
    command += ["--artifacts", str(config.artifacts_dir), "--embed-mode", embed_mode]
    command += ["--workers", str(workers)]
    command += [part for override in overrides for part in ("--set", override)]
    env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_API_KEY"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if api_key is not None:
        env["LOOKALIKE_API_KEY"] = api_key
    log_path = log_path or config.bench_dir / f"api_server_{embed_mode}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
    base = f"http://{HOST}:{port}"
    answered: set[int] = set()  # the workers seen ready (each answers once its models loaded)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                raise LookalikeError(
                    f"the API server exited with {server.returncode}; see {log_path}"
                )
            if time.monotonic() > deadline:
                raise LookalikeError(f"the API server did not answer in {timeout_s:.0f} s")
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                if health.status_code == 200:
                    answered.add(int(health.json()["worker_pid"]))
                    if len(answered) >= workers:
                        break
                    time.sleep(0.05)  # ask again soon: another worker may answer
                    continue
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield base, server.pid
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class _Connection:
    """One keep-alive HTTP/1.1 connection (the standard library's: a fraction of httpx's CPU per
    request, which matters when the clients share the server's two cores)."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes = b"", headers=None) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request(method, path, body=body or None, headers=headers or {})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _multipart(name: str, data: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "lookalike-bench-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _client_loop(
    base: str,
    phase: Phase,
    lock: threading.Lock,
    stop: threading.Event,
    count: list[int],
    endpoint: str,
    call: Callable[[_Connection, random.Random], tuple[int, bytes]],
    seed: int,
    offset_s: float = 0.0,
) -> None:
    rng = random.Random(seed)
    conn = _Connection(base)
    next_at = time.perf_counter() + offset_s
    stop.wait(offset_s)
    try:
        while not stop.is_set():
            with lock:
                if count[0] >= MAX_REQUESTS:
                    return
                count[0] += 1
            if phase.interval_s:  # paced: one request per interval, whatever the latency
                next_at += phase.interval_s
            start = time.perf_counter()
            try:
                status, body = call(conn, rng)
                ok = status == 200
                problem = f"{endpoint}: HTTP {status} {body[:120]!r}"
            except (http.client.HTTPException, OSError) as err:
                ok, problem = False, f"{endpoint}: {type(err).__name__}: {err}"
            took = time.perf_counter() - start
            with lock:
                phase.latencies.setdefault(endpoint, []).append(took)
                if not ok:
                    phase.errors[endpoint] = phase.errors.get(endpoint, 0) + 1
                    phase.first_errors.append(problem)
            if phase.interval_s:
                stop.wait(max(0.0, next_at - time.perf_counter()))
    finally:
        conn.close()


def run_phase(
    base: str,
    phase: Phase,
    item_ids: list[str],
    photos: list[tuple[str, bytes]],
    server_pid: int | None = None,
) -> Phase:
    """Run `phase` against the server at `base` and fill in its measurements (the server's
    CPU too, given its process id)."""
    lock, stop, count = threading.Lock(), threading.Event(), [0]
    extractors = "&".join(f"extractor={e}" for e in SEARCH_EXTRACTORS)
    uploads = [_multipart(name, data) for name, data in photos]

    def similar(conn: _Connection, rng: random.Random) -> tuple[int, bytes]:
        item = rng.choice(item_ids)
        extractor = rng.choice(SEARCH_EXTRACTORS)
        return conn.request("GET", f"/items/{item}/similar?k=10&extractor={extractor}")

    def search(conn: _Connection, rng: random.Random) -> tuple[int, bytes]:
        body, headers = rng.choice(uploads)
        return conn.request("POST", f"/search?k=10&{extractors}", body, headers)

    clients = [("similar", similar)] * phase.similar_clients
    clients += [("search", search)] * phase.search_clients
    # Paced clients start spread over one interval: started together they sent 16 requests at
    # once every interval, and the p50 measured that burst's queue (~8 x a request's CPU), not
    # a steady 160 req/s.
    threads = [
        threading.Thread(
            target=_client_loop,
            args=(base, phase, lock, stop, count, endpoint, call, seed),
            kwargs={"offset_s": phase.interval_s * seed / len(clients)},
            daemon=True,
        )
        for seed, (endpoint, call) in enumerate(clients)
    ]
    cpu_start = time.process_time()
    server_start = None if server_pid is None else cpu_seconds(server_pid)
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    stop.wait(phase.seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    phase.wall_s = time.perf_counter() - start
    phase.client_cpu_s = time.process_time() - cpu_start
    if server_pid is not None and server_start is not None:
        phase.server_cpu_s = cpu_seconds(server_pid) - server_start
    return phase


def _inputs(config: Config, n_photos: int = 24) -> tuple[list[str], list[tuple[str, bytes]]]:
    """Catalog ids to ask about, and a few catalog photos to upload (a fixed random choice)."""
    catalog, _ = read_catalog(config)
    rng = random.Random(0)
    rows = rng.sample(range(len(catalog)), min(n_photos, len(catalog)))
    photos = [
        (Path(p).name, Path(p).read_bytes()) for p in catalog["path"].iloc[rows] if Path(p).exists()
    ]
    if not photos:
        raise LookalikeError("none of the catalog's photos can be read to upload")
    return catalog["item_id"].tolist(), photos


def run_loadtest(
    config: Config, quick: bool = False, workers: int = 1, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Load-test the API over `config.artifacts_dir` (the server with `workers` processes,
    started with the command's `--set` overrides) and write bench/api.json
    (api-workers<N>.json for N > 1).

    Phases (seconds; `quick` shortens every one to a few seconds):
    - similar: 16 clients asking GET /items/{id}/similar (target p95 <= 20 ms, 0 errors);
    - uploads, once per embed mode ("lock", "batch"): 4 clients posting one photo for both
      extractors (target p95 <= 1.5 s), which decides the better mode;
    - mixed: 16 clients, 12 similar and 4 search, for 30 s.
    The server's RSS is read before and after each server's phases.
    """
    missing = [p for p in (config.catalog_path,) if not p.exists()]
    if missing:
        raise LookalikeError(f"{missing[0]} is missing — run `{commands.RUN}` first")
    item_ids, photos = _inputs(config)
    seconds = {"similar": 15.0, "uploads": 20.0, "mixed": 30.0}
    if quick:
        seconds = {"similar": 4.0, "uploads": 6.0, "mixed": 6.0}
    report: dict[str, Any] = {
        "artifacts": str(config.artifacts_dir),
        "catalog_size": len(item_ids),
        "cpu_count": os.cpu_count(),
        "quick": quick,
        "workers": workers,
        "overrides": list(overrides),
        "targets": TARGETS,
        "phases": {},
        "servers": {},
    }
    for mode in ("lock", "batch"):
        with running_server(config, mode, workers=workers, overrides=overrides) as (base, pid):
            rss = {"start_mb": round(rss_mb(pid), 1)}
            print(f"api bench: server up in {mode} mode, RSS {rss['start_mb']:.0f} MB", flush=True)
            # A few warm-up calls so first-use costs (lazy imports, kernels) are not measured.
            warm = Phase("warm-up", 2, 1, 3.0)
            run_phase(base, warm, item_ids, photos)
            if mode == "lock":
                for phase in (
                    Phase("similar_16", 16, 0, seconds["similar"]),
                    Phase("similar_16_paced", 16, 0, seconds["similar"], interval_s=0.1),
                    Phase("mixed_16", 12, 4, seconds["mixed"]),
                ):
                    load = loadavg()
                    report["phases"][phase.name] = run_phase(
                        base, phase, item_ids, photos, pid
                    ).summary()
                    report["phases"][phase.name]["loadavg_before"] = load
                    print(f"api bench: {phase.name} done", flush=True)
            phase = Phase(f"uploads_4_{mode}", 0, 4, seconds["uploads"])
            load = loadavg()
            report["phases"][phase.name] = run_phase(base, phase, item_ids, photos, pid).summary()
            report["phases"][phase.name]["loadavg_before"] = load
            print(f"api bench: {phase.name} done", flush=True)
            rss["end_mb"] = round(rss_mb(pid), 1)
            report["servers"][mode] = rss
    report["loadavg_end"] = loadavg()
    lock, batch = (report["phases"][f"uploads_4_{m}"]["search"] for m in ("lock", "batch"))
    report["better_embed_mode"] = "batch" if batch["per_s"] > lock["per_s"] * 1.05 else "lock"
    path = config.bench_dir / ("api.json" if workers == 1 else f"api-workers{workers}.json")
    artifacts.write_json(report, path)
    print(format_report(report))
    print(f"wrote {path}")
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table: one line per phase and endpoint."""
    lines = [
        f"API load test on {report['catalog_size']} items, {report['cpu_count']} cores, "
        f"{report.get('workers', 1)} server process(es)" + (" (quick)" if report["quick"] else ""),
        f"{'phase':<18}{'endpoint':<10}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}",
    ]
    for name, phase in report["phases"].items():
        for endpoint in ("similar", "search"):
            if endpoint in phase:
                e = phase[endpoint]
                lines.append(
                    f"{name:<18}{endpoint:<10}{e['per_s']:>8}{e['p50_ms']:>9}{e['p95_ms']:>9}"
                    f"{e['p99_ms']:>9}{e['errors']:>8}"
                )
        if phase.get("loadavg_before"):
            lines.append(f"{'':<18}load average before: {phase['loadavg_before']}")
        if phase.get("server_cpu_ms_per_request") is not None:
            lines.append(
                f"{'':<18}CPU per request: server {phase['server_cpu_ms_per_request']} ms, "
                f"load generator {phase['client_cpu_ms_per_request']} ms"
            )
    for mode, rss in report["servers"].items():
        lines.append(f"server RSS ({mode}): {rss['start_mb']} MB -> {rss['end_mb']} MB")
    lines.append(f"better embed mode for 4 concurrent uploaders: {report['better_embed_mode']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(run_loadtest(Config(), quick=True), indent=2))

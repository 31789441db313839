"""A Ray session for the embed stage: Ray Data imported only when asked for, a cluster
address checked in seconds, and a quiet local Ray (or a joined cluster) for the length of a
block. Reads and writes nothing."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from pipelines.config import REPO_ROOT, Config
from pipelines.errors import LookalikeError

# The install line a missing-Ray error prints; the pin lives in requirements.txt.
RAY_INSTALL = "pip install 'ray[data]==2.60.0'"
# Seconds to wait for a cluster's address to accept a connection before giving up: ray.init
# itself retries an unreachable address for minutes without a word.
CONNECT_TIMEOUT_S = 5.0


def import_ray() -> Any:
    """The `ray` module with Ray Data, or a LookalikeError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate extra of the ray package
    except ImportError as err:
        raise LookalikeError(
            f"--engine ray needs Ray Data, which is not installed ({err}) — run "
            f"`{RAY_INSTALL}` (pinned in requirements.txt), or leave out --engine ray to use "
            f"the local engine"
        ) from err
    return ray


def preflight(address: str | None) -> None:
    """Fail in seconds, before any stage runs: Ray Data is installed, and `address` (when
    given) accepts connections. Raises LookalikeError with the fix."""
    import_ray()
    if address:
        _check_reachable(address)


def _check_reachable(address: str) -> None:
    """Refuse an address nothing listens on, quickly: ray.init would retry it for minutes."""
    if address == "auto":  # Ray looks for a cluster on this machine itself, and says so fast
        return
    host_port = address.removeprefix("ray://")
    host, sep, port = host_port.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LookalikeError(
            f"--address must be HOST:PORT of a Ray cluster's head (e.g. 10.0.0.5:6379, as "
            f"`ray start --head` prints), 'auto' or ray://HOST:PORT; got {address!r}"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise LookalikeError(
            f"cannot reach a Ray cluster at {address} ({err.strerror or err}) — start one with "
            f"`ray start --head` on the head node and pass the address it prints, check the "
            f"host, port and firewall, or leave out --address to start Ray on this machine"
        ) from err


def _tf_gpu_count() -> int:
    """GPUs TensorFlow sees on this machine; 0 without importing TF when only the CPU build
    (tensorflow-cpu) is installed."""
    try:
        metadata.version("tensorflow")  # the build that can use CUDA
    except metadata.PackageNotFoundError:
        return 0
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def _quiet(ray: Any) -> None:
    """No progress bars or execution plans from Ray Data: the stage prints its own bar."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True
    ctx.issue_detectors_config.detectors = []  # its hints go to the log, not the user
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _local_cpus(config: Config) -> int:
    """CPUs the local Ray offers: the machine's, and always one more than the actors take, so
    the decode tasks are never starved of a slot (the OS shares the cores between them)."""
    cores = os.cpu_count() or 2
    actors = config.ray_actors or 1
    return max(cores, actors * config.ray_actor_cpus + 1)


@contextlib.contextmanager
def ray_session(config: Config, address: str | None = None) -> Iterator[Any]:
    """Ray for the length of the block: joins `address`, starts a quiet local Ray without one,
    or reuses one this process already runs (then leaves it running). Yields the `ray` module.

    Only a Ray started here is shut down at the end, so callers (and tests) can keep one up
    across several calls.
    """
    ray = import_ray()
    if ray.is_initialized():
        _quiet(ray)
        yield ray
        return
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}
    common = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    if address:
        _check_reachable(address)
        try:
            # Workers on other nodes get this repo's `pipelines` package with the job.
            runtime_env = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}, "py_modules": [_package()]}
            ray.init(address=address, runtime_env=runtime_env, **common)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise LookalikeError(
                f"could not join the Ray cluster at {address} ({err}) — check that it runs Ray "
                f"{ray.__version__} (`ray status` on the head), or leave out --address to "
                f"start Ray on this machine"
            ) from err
    else:
        # address="local": always a new Ray of our own, never another user's on this machine.
        ray.init(
            address="local",
            num_cpus=_local_cpus(config),
            num_gpus=_tf_gpu_count(),
            runtime_env={"env_vars": env},
            **common,
        )
    try:
        _quiet(ray)
        yield ray
    finally:
        ray.shutdown()


def _package() -> Any:
    import pipelines

    return pipelines

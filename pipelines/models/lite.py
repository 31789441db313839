"""The live models as LiteRT (TensorFlow Lite) files: exported once from the Keras models,
then read and run without importing TensorFlow.

A process that answers uploads (the HTTP service, the app) needs each extractor's forward pass
and nothing else of TensorFlow. Importing TensorFlow took 3-4 s of a start here, reading
InceptionV3 into Keras 1.5-2.2 s and its first call ~1 s more; the same network as a LiteRT
file imports in 0.14 s, reads in 0.1 s and answers its first photo in 0.06 s (one photo then
takes ~60 ms on 2 cores). Its outputs are the Keras model's to float rounding (InceptionV3's
pooled vector within 1e-5 of a 6.0 maximum, the custom CNN's outputs within 1e-5): the same
neighbours (`tests/test_lite.py`).

Each file is an artifact beside the model it was exported from (`models/<name>.tflite` with a
manifest keyed by that model's sha256 and the exporting TensorFlow's version), written when
the pipeline embeds and rebuilt whenever it is stale, like every other artifact.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import artifacts, commands

STAGE = "lite_model"
# Threads of one interpreter's kernels (XNNPACK). One was slower here under load (bench --api:
# uploads beside similar traffic p95 918 ms against 736-920 ms with two).
THREADS = 2


class LiteModel:
    """A LiteRT model with Keras's calling convention: `predict_on_batch(x)` returns its outputs
    in the exported Keras model's order. Calls are serialised (an interpreter holds its tensors
    between calls), so one instance can be shared by threads."""

    def __init__(self, path: Path, threads: int = THREADS) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        signature = self._interpreter.get_signature_list()["serving_default"]
        (self._input,) = signature["inputs"]
        # Keras's outputs are exported as output_0, output_1, ... in its order.
        self._outputs = sorted(signature["outputs"], key=lambda k: int(k.rsplit("_", 1)[1]))
        self._runner = self._interpreter.get_signature_runner()
        self._lock = threading.Lock()

    def predict_on_batch(self, x: np.ndarray) -> list[np.ndarray]:
        """(n, ...) float32 inputs -> the model's outputs, each (n, ...) float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            out = self._runner(**{self._input: x})
            return [np.array(out[name]) for name in self._outputs]


def read_or_export(path: Path, inputs: Mapping[str, str], keras_model: Callable[[], Any]) -> Any:
    """The LiteRT model at `path` when it was exported from these `inputs` (the Keras model's
    hash) by this TensorFlow; else exported now from `keras_model()` (which imports
    TensorFlow: ~15 s for InceptionV3, once), then read. Where the file cannot be written (a
    read-only artifacts folder) the Keras model itself is returned, with a warning: the same
    outputs, at TensorFlow's start-up cost."""
    if artifacts.is_fresh(path, STAGE, _params(), inputs):
        try:
            return LiteModel(path)
        except (ValueError, RuntimeError):  # an unreadable file is exported again
            pass
    model = keras_model()
    try:
        export(model, path, inputs)
    except OSError as err:
        print(
            f"warning: cannot write the live model {path} ({err}); running the Keras model "
            f"instead — run `{commands.RUN}` with a writable artifacts folder to export it",
            file=sys.stderr,
        )
        return model
    return LiteModel(path)


def export(model: Any, path: Path, inputs: Mapping[str, str]) -> dict[str, Any]:
    """Convert the Keras `model` to a LiteRT file at `path` (written atomically, then its
    manifest); returns the manifest. Raises OSError when it cannot be written."""
    import tensorflow as tf

    start = time.perf_counter()
    # Keras prints the whole signature of the graph it hands the converter: not for users.
    with contextlib.redirect_stdout(io.StringIO()):
        blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with artifacts.atomic_path(path) as tmp:
        Path(tmp).write_bytes(blob)
    extra = {"seconds": round(time.perf_counter() - start, 1)}
    return artifacts.write_manifest(path, STAGE, _params(), inputs, extra=extra)


def _params() -> dict[str, Any]:
    """What an exported file depends on besides its Keras model: the converter's version."""
    tensorflow = _version("tensorflow-cpu", "tensorflow")
    return {"tensorflow": tensorflow, "litert": _version("ai-edge-litert")}


def _version(*names: str) -> str | None:
    """The installed version of the first of these distributions that is installed."""
    from importlib.metadata import PackageNotFoundError, version

    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None

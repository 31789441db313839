"""How concurrent uploads share one model per extractor: a lock (one forward pass at a time)
or a micro-batcher (concurrent uploads' pixels stacked into one forward pass). Reads and
writes nothing."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

EMBED_MODES = ("lock", "batch")
# Micro-batching: the longest a first upload waits for company, and the largest batch.
BATCH_WINDOW_S = 0.005
BATCH_MAX = 4


class MicroBatcher:
    """Runs `fn` on stacked inputs from many threads: each caller's (b, ...) array joins a
    batch collected for up to `window_s` (or `max_batch` callers), and gets its own slice of
    the result back. `fn` returns an array or a tuple of arrays (None entries stay None)."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], Any],
        window_s: float = BATCH_WINDOW_S,
        max_batch: int = BATCH_MAX,
        name: str = "batcher",
    ) -> None:
        self.fn = fn
        self.window_s = window_s
        self.max_batch = max_batch
        self.batches: list[int] = []  # size of each batch run, for the benchmark
        self._queue: queue.Queue[tuple[np.ndarray, Future]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def __call__(self, inputs: np.ndarray) -> Any:
        """`fn(inputs)`, computed in a batch with whatever else arrived meanwhile."""
        future: Future = Future()
        self._queue.put((inputs, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            items = [self._queue.get()]
            try:
                while len(items) < self.max_batch:
                    items.append(self._queue.get(timeout=self.window_s))
            except queue.Empty:
                pass
            self._run(items)

    def bucket(self, n: int) -> int:
        """The padded size of a batch of n: the next power of two (at most `max_batch`). Few
        distinct shapes mean few traces of the model's compiled predict step; every new batch
        size would otherwise cost a retrace of seconds."""
        size = 1
        while size < n:
            size *= 2
        return max(n, min(size, self.max_batch))

    def _run(self, items: list[tuple[np.ndarray, Future]]) -> None:
        sizes = [len(x) for x, _ in items]
        batch = np.concatenate([x for x, _ in items])
        pad = self.bucket(len(batch)) - len(batch)
        if pad:
            batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
        try:
            out = self.fn(batch)
        except Exception as err:  # every waiting caller sees the model's error
            for _, future in items:
                future.set_exception(err)
            return
        self.batches.append(len(items))
        bounds = np.cumsum([0, *sizes])
        for (_, future), lo, hi in zip(items, bounds[:-1], bounds[1:], strict=True):
            if isinstance(out, tuple):
                future.set_result(tuple(None if o is None else o[lo:hi] for o in out))
            else:
                future.set_result(out[lo:hi])


class GatedExtractor:
    """An extractor whose forward passes go through a lock or a micro-batcher; every other
    attribute is the wrapped extractor's, so `pipelines.search.photos.embed_upload` uses it
    as is."""

    _FORWARDS = ("embed_arrays", "embed_and_classify", "embed_with_maps")

    def __init__(self, extractor: Any, mode: str = "lock") -> None:
        if mode not in EMBED_MODES:
            raise ValueError(f"embed mode must be one of {', '.join(EMBED_MODES)}; got {mode!r}")
        self._inner = extractor
        self.mode = mode
        self._gates: dict[str, Callable[[np.ndarray], Any]] = {}
        lock = threading.Lock()
        for name in self._FORWARDS:
            fn = getattr(extractor, name, None)
            if fn is None:
                continue
            if mode == "batch":
                self._gates[name] = MicroBatcher(fn, name=f"{extractor.name}.{name}")
            else:
                self._gates[name] = _locked(fn, lock)

    def __getattr__(self, name: str) -> Any:
        gates = self.__dict__.get("_gates", {})
        if name in gates:
            return gates[name]
        return getattr(self.__dict__["_inner"], name)

    def warm_up(self, blank: np.ndarray) -> None:
        """Trace every padded batch size once (batch mode), so no request pays for it."""
        for gate in self._gates.values():
            if isinstance(gate, MicroBatcher):
                size = 1
                while size <= gate.max_batch:
                    gate.fn(np.repeat(blank[:1], size, axis=0))
                    size *= 2

    @property
    def inner(self) -> Any:
        """The wrapped extractor."""
        return self._inner


def _locked(fn: Callable[[np.ndarray], Any], lock: threading.Lock) -> Callable[[np.ndarray], Any]:
    def call(inputs: np.ndarray) -> Any:
        with lock:
            return fn(inputs)

    return call

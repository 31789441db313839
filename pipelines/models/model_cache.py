"""One loaded model per model file in a process, shared by every extractor that runs it.

The metric head runs InceptionV3 exactly as the `inception_v3` extractor does (and, when it
fuses the custom CNN, the CNN as `custom_cnn` does), so a service or an app that loads all
three extractors built InceptionV3 twice: 2.0 s to build it and load its weights plus 0.9 s
for its first call, each time (measured on the default build; the whole start was ~11 s).

Keyed by what the file's manifest records (its sha256 and, for the custom CNN, its
descriptor's), so a retrained or re-converted model is loaded anew and two folders holding the
same weights share one model. At most MAX_MODELS are kept (least recently used dropped): a
process that opens many builds (the tests) does not keep every one.

A Keras model is safe to call from several threads once built (each call runs the same traced
function on its own tensors); each extractor's gate still bounds how many calls run at once.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pipelines.artifacts import matches_manifest, read_manifest

T = TypeVar("T")

MAX_MODELS = 4
# Reentrant: loading a live model may export it from the Keras model, itself loaded here.
_LOCK = threading.RLock()
_LOADED: OrderedDict[tuple[str, str], Any] = OrderedDict()


def shared(path: Path, load: Callable[[], T]) -> T:
    """What `load` returns for the model file at `path`, loaded once per content of the file
    (what its manifest records) in this process; a file without a manifest, or whose bytes are
    not the ones it records, is loaded every time."""
    manifest = read_manifest(path) or {}
    if not manifest.get("sha256") or not matches_manifest(path, manifest):
        return load()  # nothing to key on, or bytes other than recorded: loaded as they are
    content = json.dumps([manifest["sha256"], manifest.get("descriptor")], sort_keys=True)
    key = (Path(path).name, content)
    with _LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
        loaded = load()
        _LOADED[key] = loaded
        while len(_LOADED) > MAX_MODELS:
            _LOADED.popitem(last=False)
        return loaded


def clear() -> None:
    """Forget every loaded model (the models go once nothing else holds them)."""
    with _LOCK:
        _LOADED.clear()

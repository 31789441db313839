"""What the service answers from: the catalog, one index and one model per extractor, built
from the artifacts folder and swapped whole when `run` rewrites it. Reads artifacts only."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines import commands, status
from pipelines.artifacts import read_manifest
from pipelines.config import EXTRACTORS, Config
from pipelines.consistency import BuildStamp, UpdateInProgress, build_stamp, updating_message
from pipelines.errors import LookalikeError
from pipelines.readers import load_index, read_catalog
from pipelines.search.index import Index
from pipelines.serve.gate import GatedExtractor

# Seconds between two looks at the manifests: a rebuilt artifact is served within this.
RELOAD_INTERVAL_S = 2.0
# Catalog columns never sent to clients: server file paths (thumbnail_url replaces them).
HIDDEN_COLUMNS = ("path", "thumb", "thumb_file")


def weights_key(config: Config, extractor: str) -> str:
    """The weights id the extractor's embeddings were made with (from their manifest; reading
    it never loads or converts a model), "missing" when they are not built."""
    inputs = (read_manifest(config.embeddings_path(extractor)) or {}).get("inputs", {})
    return str(inputs.get("weights", "missing"))


@dataclass(frozen=True)
class ServiceState:
    """One consistent view of the artifacts; never mutated after it is built."""

    config: Config
    catalog: pd.DataFrame  # with absolute `thumb_file`
    row_of: dict[str, int]  # item_id -> catalog row
    indexes: dict[str, Index]
    extractors: dict[str, Any]  # GatedExtractor per extractor whose model loaded
    model_errors: dict[str, str]  # extractor -> why its model is not loaded
    records: list[dict[str, Any]]  # JSON-ready public catalog columns per row
    labels: tuple[str, ...]
    key: tuple[str, ...]
    model_key: tuple[str, ...]
    built: str  # catalog manifest's created time
    drift: dict[str, Any] | None = None  # `status.drift`: the catalog since the models' training
    loaded_at: float = field(default_factory=time.time)

    @property
    def size(self) -> int:
        """Catalog items."""
        return len(self.catalog)


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def _records(catalog: pd.DataFrame) -> list[dict[str, Any]]:
    public = catalog.drop(columns=[c for c in HIDDEN_COLUMNS if c in catalog.columns])
    return [
        {str(k): _json_value(v) for k, v in row.items()} for row in public.to_dict(orient="records")
    ]


def load_models(
    config: Config, mode: str, extractors: list[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """One warmed-up model per extractor, gated for concurrent use; and why any did not load."""
    from pipelines.models.extractors import get_extractor

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    models: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in extractors:
        try:
            extractor = get_extractor(name, config, live=True)
            # One call on a blank image builds and traces the model: the first upload is fast.
            blank = np.zeros((1, extractor.input_size, extractor.input_size, 3), np.uint8)
            if hasattr(extractor, "embed_and_classify") and extractor.class_names:
                extractor.embed_and_classify(blank)
            else:
                extractor.embed_arrays(blank)
            if config.garment_crop and callable(getattr(extractor, "embed_with_maps", None)):
                extractor.embed_with_maps(blank)  # the upload's first pass: garment map
            models[name] = GatedExtractor(extractor, mode)
            models[name].warm_up(blank)
        except (LookalikeError, OSError, ValueError) as err:
            errors[name] = str(err)
    return models, errors


def build_state(
    config: Config,
    mode: str = "lock",
    previous: ServiceState | None = None,
    load_extractors: bool = True,
    stamp: BuildStamp | None = None,
) -> ServiceState:
    """Read everything the service needs from `config.artifacts_dir` into a new state.

    Parameters
    ----------
    config : where the artifacts live (custom CNN settings are taken from its manifest).
    mode : "lock" or "batch", see `pipelines.serve.gate`.
    previous : the state being replaced; its models are kept when their files are unchanged,
        so there is only ever one model per extractor in memory.
    load_extractors : False skips the models (uploads then answer 503).
    stamp : the build to load (`consistency.build_stamp` of the app config), taken now when
        None; the state is built only from exactly that build.

    Raises
    ------
    LookalikeError when an artifact is missing; UpdateInProgress when the folder is between
    two builds, or moved on to another while it was being read.
    """
    config = status.app_config(config)
    stamp = build_stamp(config) if stamp is None else stamp
    if not stamp.consistent:
        raise UpdateInProgress(stamp.note())
    if status.missing_artifacts(config, ("catalog",)):
        raise LookalikeError(f"{config.catalog_path} is missing — run `{commands.RUN}`")
    # Extractors whose embeddings were not built (say a head that needs labels) are left out.
    served = [n for n in EXTRACTORS if not status.missing_artifacts(config, ("embeddings",), [n])]
    if not served:
        raise LookalikeError(
            f"no embeddings in {config.artifacts_dir / 'embeddings'} — run `{commands.RUN}`"
        )
    catalog, _ = read_catalog(config)
    indexes = {name: load_index(config, name) for name in served}
    for index in indexes.values():
        if index.approximate:  # build the ANN index now, not in the first request
            index.ann_index()
    catalog = catalog.assign(thumb_file=[str(config.artifacts_dir / t) for t in catalog["thumb"]])
    if "label" not in catalog.columns:
        catalog["label"] = None
    model_key = (
        *(weights_key(config, n) for n in served),
        str((config.cnn_image_size, config.cnn_embedding_dim, config.inception_weights)),
    )
    models: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if load_extractors:
        if previous is not None and previous.extractors and previous.model_key == model_key:
            models, errors = previous.extractors, previous.model_errors
        else:
            models, errors = load_models(config, mode, served)
    else:
        errors = {name: "models were not loaded (load_extractors=False)" for name in served}
    labels = sorted({str(v) for v in catalog["label"].dropna()})
    try:
        drift = status.drift(config, catalog)
    except (LookalikeError, OSError, ValueError, KeyError):
        drift = None  # no training set yet, or one being written: /health says nothing
    # Everything above came from one build only if no file changed while it was read (every
    # rewrite changes a manifest's sha256 or a file's bytes against it).
    if build_stamp(config).key != stamp.key:
        raise UpdateInProgress(updating_message("the artifacts changed while they were loaded"))
    return ServiceState(
        config=config,
        catalog=catalog,
        row_of={item: row for row, item in enumerate(catalog["item_id"])},
        indexes=indexes,
        extractors=models,
        model_errors=errors,
        records=_records(catalog),
        labels=tuple(labels),
        key=stamp.key,
        model_key=model_key,
        built=str((read_manifest(config.catalog_path) or {}).get("created", "")),
        drift=drift,
    )


class StateHolder:
    """The one reference to the current state. Requests read `current`; a rebuild builds a
    complete new state on the side and then swaps the reference (one assignment), so a
    request sees the old state or the new one, never a mix.

    Parameters
    ----------
    config : the artifacts to serve.
    mode : embed mode of the models ("lock" or "batch").
    load_extractors : load the models (False for tests that need no uploads).
    reload_interval : seconds between manifest checks by the background watcher; 0 starts no
        watcher (call `refresh` yourself).
    """

    def __init__(
        self,
        config: Config,
        mode: str = "lock",
        load_extractors: bool = True,
        reload_interval: float = RELOAD_INTERVAL_S,
    ) -> None:
        self.config = config
        self.mode = mode
        self.load_extractors = load_extractors
        self.reload_interval = reload_interval
        self.state: ServiceState | None = None
        self.error: str | None = None  # why the latest build failed (served state kept)
        self.reloads = 0
        self._build_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Rebuild and swap when the artifacts' manifests changed; True when it swapped.

        A failed build (missing files, an update half-way: `consistency.build_stamp`) keeps
        serving the previous state and records the reason in `error`.
        """
        with self._build_lock:
            current = self.state
            stamp = build_stamp(status.app_config(self.config))
            if current is not None and stamp.key == current.key:
                return False
            try:
                new = build_state(self.config, self.mode, current, self.load_extractors, stamp)
            except (LookalikeError, OSError, ValueError, KeyError) as err:
                self.error = str(err)
                return False
            self.error = None
            self.state = new  # the swap: a single reference assignment
            self.reloads += current is not None
            return True

    def start_watching(self) -> None:
        """Check the manifests every `reload_interval` seconds in a daemon thread."""
        if self.reload_interval <= 0 or self._watcher is not None:
            return

        def watch() -> None:
            while not self._stop.wait(self.reload_interval):
                self.refresh()

        self._watcher = threading.Thread(target=watch, name="artifact-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop the watcher thread."""
        self._stop.set()

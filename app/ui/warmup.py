"""Builds the upload models in a background thread as soon as the app starts, so the first
upload does not wait for them; and shows honest progress when it still has to.

One build per process and set of model files: every session shares the result through
`loaders.extractor`'s st.cache_resource.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field

import streamlit as st

from app.ui import loaders
from app.ui.names import display_name
from pipelines import status
from pipelines.config import Config
from pipelines.search import novelty


@dataclass
class Build:
    """The state of one background build (read by any session, written by its thread)."""

    names: tuple[str, ...]
    done: int = 0
    current: str = ""
    started: float = field(default_factory=time.monotonic)
    finished: bool = False
    error: str | None = None

    @property
    def fraction(self) -> float:
        return self.done / max(1, len(self.names))

    def describe(self) -> str:
        """ "Loading InceptionV3 (ImageNet): model 1 of 2, 6 s so far" or the outcome."""
        if self.error:
            return f"Preparing the models failed: {self.error}"
        seconds = time.monotonic() - self.started
        if self.finished:
            return f"Models ready ({len(self.names)} loaded in {seconds:.0f} s)"
        return (
            f"Loading {self.current}: model {self.done + 1} of {len(self.names)}, "
            f"{seconds:.0f} s so far"
        )


# Session key: False leaves the upload models unbuilt until a page needs them (the app's
# timing harness, app/timing.py, times the pages without them).
WARM_KEY = "warm_models"
_LOCK = threading.Lock()
_BUILDS: dict[tuple[str, ...], Build] = {}


def _key(cfg: Config) -> tuple[str, ...]:
    return (str(cfg.artifacts_dir), *(loaders.model_sha(cfg, n) for n in _names(cfg)))


def _names(cfg: Config) -> tuple[str, ...]:
    """The extractors the Upload page embeds with (`loaders.extractors`): those built."""
    return tuple(cfg.extractors_built())


def _run(cfg: Config, build: Build) -> None:
    # A lower priority for this thread (and the TensorFlow threads it starts): the pages
    # the user is browsing meanwhile come first.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    try:
        for name in build.names:
            build.current = display_name(name)
            loaders.extractor(cfg, name)
            build.done += 1
    except Exception as err:  # shown on the Upload page, which then loads them itself
        build.error = str(err)
    finally:
        build.finished = True


def start(cfg: Config, in_session: bool = True) -> Build | None:
    """Start building the upload models in the background (once per process and model
    files); returns the build, or None when the models are not built yet or this session
    asked for no background build (st.session_state[WARM_KEY] False). `in_session` False:
    called as the server starts (app/server.py), before any session exists."""
    if in_session and not st.session_state.get(WARM_KEY, True):
        return None
    if status.missing_artifacts(cfg, ("models",)):
        return None
    key = _key(cfg)
    with _LOCK:
        build = _BUILDS.get(key)
        if build is None:
            build = Build(_names(cfg))
            _BUILDS[key] = build
            threading.Thread(
                target=_run, args=(cfg, build), name="lookalike-model-warmup", daemon=True
            ).start()
    return build


# Pages' shared data read in the background, once per process and build (see `warm_pages`).
_PAGES: dict[tuple[str, ...], threading.Thread] = {}


def _read_pages(cfg: Config, extractor: str) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    with contextlib.suppress(Exception):  # a page that needs a missing part says so itself
        loaders.catalog(cfg)
        loaders.index(cfg, extractor)
        loaders.map_points(cfg, extractor)
        loaders.map_layer(cfg, extractor)
        loaders.cluster_overview(cfg, extractor)
        if novelty.REFERENCE in cfg.extractors_built():
            loaders.far_check(cfg, novelty.REFERENCE)


def warm_pages(cfg: Config) -> threading.Thread | None:
    """Read, in a background thread at low priority, what the pages' first renders share:
    the catalog, the search index, map and cluster overview of the extractor the sidebar
    opens on, and the Upload page's far-from-catalog check. Once per process and build; the
    thread, or None before the catalog is built. At 1M items this is what made Search's and
    Clusters' first renders take seconds: the first visitor no longer pays for it."""
    from app.ui import widgets
    from pipelines.explore import browse

    if status.missing_artifacts(cfg, ("catalog",)):
        return None
    offered = cfg.extractors_built()
    best = browse.best_extractor(loaders.metrics(cfg), offered)
    if not offered:
        return None
    extractor = widgets.default_extractor(offered, best)
    key = (str(cfg.artifacts_dir), extractor, *loaders.build(cfg)[0].key)  # the pinned build
    with _LOCK:
        thread = _PAGES.get(key)
        if thread is None:
            thread = threading.Thread(
                target=_read_pages, args=(cfg, extractor), name="lookalike-page-warmup", daemon=True
            )
            _PAGES[key] = thread
            thread.start()
    return thread


def started(cfg: Config) -> Build | None:
    """The background build this process started for `cfg`'s model files, if any."""
    key = _key(cfg)
    with _LOCK:
        return _BUILDS.get(key)


def wait(cfg: Config) -> None:
    """Block until the background build is over, showing its progress (model n of m, seconds
    so far) in place; returns at once when it is over or was never started."""
    build = start(cfg)
    if build is None or build.finished:
        return
    bar = st.progress(build.fraction, text=build.describe())
    while not build.finished:
        time.sleep(0.25)
        bar.progress(build.fraction, text=build.describe())
    bar.empty()


def note(cfg: Config) -> None:
    """One caption on the models' state, for a page where the user is choosing a file."""
    build = start(cfg)
    if build is not None:
        st.caption(build.describe())

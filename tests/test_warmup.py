"""The app's background read of what the pages' first renders share (`warmup.warm_pages`):
the extractor the sidebar opens on is read once per process and build, before a page asks."""

from __future__ import annotations

import pytest

from pipelines.config import Config


def test_warm_pages_reads_the_opening_extractors_index_once(
    built: Config, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    from app.ui import loaders, warmup, widgets
    from pipelines.explore import browse
    from pipelines.search import novelty

    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(built.artifacts_dir))
    monkeypatch.setattr(warmup, "_PAGES", {})
    reads: list[str] = []
    real = loaders.load_index
    monkeypatch.setattr(
        loaders, "load_index", lambda cfg, name: reads.append(name) or real(cfg, name)
    )
    offered = built.extractors_built()
    opening = widgets.default_extractor(
        offered, browse.best_extractor(loaders.metrics(built), offered)
    )

    thread = warmup.warm_pages(built)
    assert thread is not None
    thread.join(120)
    assert not thread.is_alive()
    assert reads[0] == opening and set(reads) <= {opening, novelty.REFERENCE}
    assert warmup.warm_pages(built) is thread  # once per process and build
    # A page that now asks for the index gets the one already read.
    before = len(reads)
    loaders.index(built, opening)
    assert len(reads) == before


def test_warm_pages_waits_for_a_catalog(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.ui import warmup

    monkeypatch.setattr(warmup, "_PAGES", {})
    assert warmup.warm_pages(Config(artifacts_dir=tmp_path / "empty")) is None

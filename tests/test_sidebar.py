"""The sidebar opens on the extractor the build's own evaluation ranks best (exact search,
P@10 in metrics.json), says why, and falls back to InceptionV3 without an evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pipelines.artifacts import write_manifest
from pipelines.config import EXTRACTORS, REPO_ROOT, Config
from pipelines.explore.browse import best_extractor
from tests.conftest import blobs, write_vector_artifacts

APP = str(REPO_ROOT / "app" / "streamlit_app.py")


def _build(root: Path, extractors: tuple[str, ...], scores: dict[str, dict[str, float]] | None):
    """A catalog with vectors for `extractors` and, unless None, a metrics.json whose exact
    (and cluster) P@10 per extractor are `scores`."""
    config = Config(artifacts_dir=root / "artifacts")
    vectors, labels = blobs((4, 4), d=8)
    write_vector_artifacts(config, {name: vectors for name in extractors}, labels=labels)
    if scores is not None:
        results = {
            name: {strategy: {"p@10": value} for strategy, value in by_strategy.items()}
            for name, by_strategy in scores.items()
        }
        config.metrics_path.write_text(json.dumps({"labels": True, "results": results}))
        write_manifest(config.metrics_path, "evaluate", {}, {})
    return config


def _open(config: Config, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("LOOKALIKE_ARTIFACTS", str(config.artifacts_dir))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _opened_on(at: AppTest) -> str:
    box = at.selectbox(key="sidebar_extractor")
    assert box.value == at.session_state["extractor"]
    return box.value


def _why(at: AppTest) -> list[str]:
    return [c.value for c in at.sidebar.caption if c.value.startswith("Opens on")]


@pytest.mark.parametrize(
    ("scores", "expected", "caption"),
    [
        (
            # The cluster strategy's higher score does not count: exact search ranks.
            {
                "inception_v3": {"exact": 0.80, "cluster": 0.99},
                "custom_cnn": {"exact": 0.85},
                "inception_head": {"exact": 0.93},
            },
            "inception_head",
            "Opens on Metric head (InceptionV3 + CNN): best P@10 (0.93) in this build's evaluation",
        ),
        (
            {
                "inception_v3": {"exact": 0.80},
                "custom_cnn": {"exact": 0.91},
                "inception_head": {"exact": 0.88},
            },
            "custom_cnn",
            "Opens on Custom CNN (trained): best P@10 (0.91) in this build's evaluation",
        ),
    ],
)
def test_the_sidebar_opens_on_the_best_extractor_of_the_evaluation(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clear_caches: None,
    scores: dict,
    expected: str,
    caption: str,
) -> None:
    at = _open(_build(tmp_path, EXTRACTORS, scores), monkeypatch)
    assert _opened_on(at) == expected
    assert _why(at) == [caption]
    # The user's own choice then stays, on this page and the next.
    other = next(name for name in EXTRACTORS if name != expected)
    at.selectbox(key="sidebar_extractor").set_value(other).run()
    at.switch_page("app_pages/search.py").run()
    assert _opened_on(at) == other


def test_without_an_evaluation_the_sidebar_opens_on_inception_v3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    at = _open(_build(tmp_path, EXTRACTORS, None), monkeypatch)
    assert _opened_on(at) == "inception_v3"
    assert _why(at) == []


def test_the_best_is_taken_among_the_extractors_this_build_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clear_caches: None
) -> None:
    # The head scored best in an older evaluation but has no embeddings in this build.
    scores = {"inception_v3": {"exact": 0.80}, "custom_cnn": {"exact": 0.84}}
    scores["inception_head"] = {"exact": 0.93}
    at = _open(_build(tmp_path, ("inception_v3", "custom_cnn"), scores), monkeypatch)
    assert _opened_on(at) == "custom_cnn"
    why = "Opens on Custom CNN (trained): best P@10 (0.84) in this build's evaluation"
    assert _why(at) == [why]


def test_best_extractor_reads_exact_p_at_10_and_skips_what_was_not_scored() -> None:
    metrics = {
        "results": {
            "inception_v3": {"exact": {"p@10": 0.7}},
            "custom_cnn": {"exact": {"skipped": "no model"}},
            "inception_head": {"exact": {"p@10": float("nan")}, "cluster": {"p@10": 0.9}},
        }
    }
    assert best_extractor(metrics, EXTRACTORS) == ("inception_v3", 0.7)
    assert best_extractor({"labels": False, "message": "no labels"}, EXTRACTORS) is None
    assert best_extractor(None, EXTRACTORS) is None
    even = {"exact": {"p@10": 0.8}}
    tie = {"results": {"custom_cnn": even, "inception_v3": even}}
    assert best_extractor(tie, EXTRACTORS)[0] == "inception_v3"  # the first offered on a tie
    assert np.isclose(best_extractor(metrics, EXTRACTORS, "cluster")[1], 0.9)

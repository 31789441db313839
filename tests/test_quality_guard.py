"""A guard on retrieval quality on real photos: the default catalog (clothing-small, 3,781
photos) built through the real stages into a temporary folder, then evaluated by the
`evaluate` stage with the README's protocol: the 372 test photos are the queries, the 3,409
train and validation photos the gallery, a neighbour is relevant when it has the query's
label, P@10.

Only what needs no CNN training is built (catalog, InceptionV3 embedding, the metric head,
the category classifier, k-means clusters): about 3 minutes on 2 quiet cores by the README's
stage times, most of it the InceptionV3 embedding (at load average 7-8 here: 25 minutes).
Each P@10 must stay within 0.02 of its stated number:
- InceptionV3 exact 0.801, cluster 0.803, category 0.876 (the README's results table; this
  build measured 0.801, 0.803 and 0.878);
- the metric head without the custom CNN's share (`head_cnn_share=0`): exact 0.916, category
  0.922. The README's head (0.930 / 0.932) fuses the CNN's vector, which needs the CNN
  trained (9 minutes), so this protocol's numbers were measured here on 6 Dec 2026 (commit
  bbdfce6).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import DEFAULT_SOURCE, Config

pytestmark = pytest.mark.slow

# (extractor, strategy) -> P@10 stated for this protocol (see the module docstring).
STATED = {
    ("inception_v3", "exact"): 0.801,
    ("inception_v3", "cluster"): 0.803,
    ("inception_v3", "category"): 0.876,
    ("inception_head", "exact"): 0.916,
    ("inception_head", "category"): 0.922,
}
# How far below its stated number a P@10 may fall before the guard fails.
TOLERANCE = 0.02


def test_precision_at_10_on_the_default_catalog(tmp_path: Path) -> None:
    from pipelines.data.catalog import run_catalog
    from pipelines.embedding.embed import run_embed
    from pipelines.explore.clusters import run_clusters
    from pipelines.models.classify import run_classify
    from pipelines.models.head import run_embed_head, run_train_head
    from pipelines.quality.evaluate import run_evaluate

    # No copy-retrieval queries: that metric re-embeds altered photos and is not guarded here.
    config = Config(
        artifacts_dir=tmp_path / "artifacts",
        source=DEFAULT_SOURCE,
        # The protocol's head as measured (before issue 25's shifted views and shares).
        head_cnn_share=0.0,
        head_raw_share=0.4,
        train_views=False,
        eval_copy_queries=0,
    )
    run_catalog(config, progress=False)
    run_embed(config, "inception_v3", progress=False)
    run_train_head(config)
    run_embed_head(config)
    run_classify(config)
    run_clusters(config, ["inception_v3"])
    extractors = sorted({name for name, _ in STATED})
    strategies = sorted({strategy for _, strategy in STATED})
    metrics = run_evaluate(config, extractors, strategies).details

    assert metrics["protocol"] == "372 test queries against 3409 train+validation items"
    measured = {
        (name, strategy): metrics["results"][name][strategy].get("p@10")
        for name, strategy in STATED
    }
    print({f"{name}/{strategy}": value for (name, strategy), value in measured.items()})
    fallen = {
        key: (value, STATED[key])
        for key, value in measured.items()
        if value is None or value < STATED[key] - TOLERANCE
    }
    assert not fallen, f"P@10 (measured, stated) fell more than {TOLERANCE}: {fallen}"

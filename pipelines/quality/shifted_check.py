"""The shifted-domain check of every extractor x strategy: reads the artifacts and the vectors
`python -m pipelines.quality.shifted` cached for shifted copies; prints P@10 tables. Writes nothing.

Three settings, each a query split against train photos: "plain" (originals against
originals), "shifted queries" (shifted copies against the originals) and "shifted gallery"
(originals against shifted copies of 60 train photos per class). Clusters and categories of
shifted photos come from their own vectors, exactly as for an upload.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import STRATEGIES, Config
from pipelines.models.classify import load_category_model, search_categories
from pipelines.search.index import Index


def _vectors(cache: Path, transform: str, split: str, extractor: str, head) -> tuple:  # noqa: ANN001
    """(rows, vectors) of the cached shifted copies; the head's come from its bases."""
    stem = cache / f"{transform}_{split}"
    rows = np.load(f"{stem}_inception_v3_rows.npy")
    if extractor == "inception_head":
        inc = np.load(f"{stem}_inception_v3.npy")
        cnn = np.load(f"{stem}_custom_cnn.npy") if head.cnn_share > 0 else None
        return rows, head.apply(inc, cnn)
    return rows, np.load(f"{stem}_{extractor}.npy")


def _search_sets(config: Config, vectors: dict[str, np.ndarray]) -> np.ndarray:
    model = load_category_model(config)
    probs = model.probabilities(vectors)
    return search_categories(
        probs, model.classes, config.category_cover, config.category_exact_below
    )


def precision_table(config: Config, cache: Path, split: str) -> pd.DataFrame:
    from pipelines.models.head import load_head

    catalog = pd.read_parquet(config.catalog_path)
    labels = catalog["label"].to_numpy(dtype=object)
    train = np.flatnonzero(catalog["split"].to_numpy() == "train")
    head = load_head(config)
    model = load_category_model(config)
    stored = {e: np.load(config.embeddings_path(e)) for e in config.extractors_built()}
    shifted = {}
    for e in stored:
        shifted[(e, "q")] = _vectors(cache, "shift", split, e, head)
        shifted[(e, "g")] = _vectors(cache, "shift", "train", e, head)
    out = []
    for name in stored:
        centroids = np.load(config.centroids_path(name))
        q_rows = shifted[(name, "q")][0]
        g_rows = shifted[(name, "g")][0]
        settings = {
            "plain": (stored[name][q_rows], q_rows, stored[name][train], train, stored, stored),
            "shifted queries": (
                shifted[(name, "q")][1], q_rows, stored[name][train], train,
                {e: shifted[(e, "q")][1] for e in model.features}, stored,
            ),
            "shifted gallery": (
                stored[name][q_rows], q_rows, shifted[(name, "g")][1], g_rows,
                stored, {e: shifted[(e, "g")][1] for e in model.features},
            ),
        }  # fmt: skip
        for setting, (q, qr, g, gr, q_src, g_src) in settings.items():
            q_feat = {e: (v if setting == "shifted queries" else v[qr]) for e, v in q_src.items()}
            g_feat = {e: (v if setting == "shifted gallery" else v[gr]) for e, v in g_src.items()}
            g_probs = model.probabilities(g_feat)
            g_sets = search_categories(
                g_probs, model.classes, config.category_cover, config.category_exact_below
            )
            index = Index(
                g,
                [str(r) for r in gr],
                clusters=np.argmax(g @ centroids.T, axis=1),
                centroids=centroids,
                categories=model.classes[g_probs.argmax(axis=1)].astype(object),
                category_queries=g_sets,
                cluster_width=config.cluster_search_width,
            )
            q_sets = search_categories(
                model.probabilities(q_feat), model.classes, config.category_cover,
                config.category_exact_below,
            )  # fmt: skip
            for strategy in STRATEGIES:
                found, _ = index.search_rows(
                    q, 10, strategy, query_categories=q_sets if strategy == "category" else None
                )
                hit = (found >= 0) & (labels[gr][np.maximum(found, 0)] == labels[qr][:, None])
                out.append(
                    {"extractor": name, "setting": setting, "strategy": strategy,
                     "p@10": float(hit.mean())}
                )  # fmt: skip
    table = pd.DataFrame(out).pivot_table(
        index=["extractor", "setting"], columns="strategy", values="p@10"
    )
    table["worst gap"] = table[["cluster", "category"]].min(axis=1) - table["exact"]
    return table[["exact", "cluster", "category", "worst gap"]]


def category_accuracy(config: Config, cache: Path, split: str) -> dict[str, float]:
    """The category classifier's accuracy on the split's photos and on their shifted copies."""
    catalog = pd.read_parquet(config.catalog_path)
    labels = catalog["label"].astype(str).to_numpy()
    model = load_category_model(config)
    rows = np.load(cache / f"shift_{split}_inception_v3_rows.npy")
    shifted = {e: np.load(cache / f"shift_{split}_{e}.npy") for e in model.features}
    stored = {e: np.load(config.embeddings_path(e))[rows] for e in model.features}
    out = {}
    for setting, vectors in (("photos", stored), ("shifted copies", shifted)):
        predicted = model.classes[model.probabilities(vectors).argmax(axis=1)]
        out[setting] = float((predicted == labels[rows]).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--set", nargs="*", default=[], help="NAME=VALUE overrides")
    args = parser.parse_args()
    changes = {}
    for item in args.set:
        key, value = item.split("=", 1)
        changes[key] = type(getattr(Config(), key))(value)
    config = Config(artifacts_dir=args.artifacts).replace(**changes)
    with pd.option_context("display.width", 120, "display.precision", 3):
        print(precision_table(config, args.cache, args.split))
    accuracy = category_accuracy(config, args.cache, args.split)
    print("category accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))


if __name__ == "__main__":
    main()

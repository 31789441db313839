"""The category classifier for the `category` strategy and uploads: reads the embeddings and
labels, fits candidate classifiers on train, keeps the best on validation, writes
models/category_model.npz and categories.parquet (predicted category, confidence, and the
categories each item's category search covers).

Candidates are multinomial logistic regressions on an extractor's stored vectors: InceptionV3's
when it was embedded, the custom CNN's otherwise (`FEATURE_SETS`); the custom CNN's own
softmax head is the reference (its validation accuracy is in its manifest). The test split
never chooses anything.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines import artifacts, commands
from pipelines.config import Config, embeddings_key
from pipelines.errors import LookalikeError
from pipelines.search.index import SEPARATOR, WHOLE_CATALOG
from pipelines.stage import StageResult

STAGE = "classify"
VERSION = "logreg-2"
# Feature sets (each a tuple of extractors whose unit vectors are put side by side) in order of
# preference, the most robust to other kinds of photo first: the first whose vectors exist is
# fitted. Validation accuracy on the catalog's photos / on their shifted copies (shrunk to
# 60x80, JPEG 50, on a plain background; README "Shifted check"), 112 px CNN of 48 epochs:
# InceptionV3 0.894 / 0.349, InceptionV3 + custom CNN 0.900 / 0.217, custom CNN 0.859 / 0.117.
# The CNN learned the catalog's photos, so its vector misleads the classifier on any other kind
# (the category strategy then fell 0.028 below exact search on the shifted gallery); it is used
# only without InceptionV3.
FEATURE_SETS: tuple[tuple[str, ...], ...] = (("inception_v3",), ("custom_cnn",))
# Inverse regularisation strengths tried on standardised features. With shifted views, on
# validation (accuracy on photos / on their views / on the shifted check's copies): C 0.003
# 0.886 / 0.622 / 0.551, 0.01 0.886 / 0.628 / 0.548, 0.02 0.880 / 0.616 / 0.537, 0.05 0.877 /
# 0.607 / 0.540, 0.1 0.871 / 0.610; without views 0.05 gave 0.894 / - / 0.346.
C_VALUES = (0.01, 0.05)


# The extractor whose vectors shifted views have (pipelines/models/views.py).
VIEWS_BASE = "inception_v3"


@dataclass(frozen=True)
class ViewVectors:
    """InceptionV3 vectors of shifted views of fit and validation rows, with their labels."""

    fit: np.ndarray
    fit_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray


@dataclass(frozen=True)
class CategoryModel:
    """A linear softmax classifier over standardised, concatenated extractor vectors."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (classes, d)
    intercept: np.ndarray  # (classes,)
    classes: np.ndarray  # (classes,) str

    @property
    def name(self) -> str:
        return "logistic regression on " + " + ".join(self.features)

    def probabilities(self, vectors: Mapping[str, np.ndarray]) -> np.ndarray:
        """{extractor: (n, d) or (d,)} -> (n, classes) probabilities."""
        x = np.hstack([np.atleast_2d(np.asarray(vectors[f], np.float64)) for f in self.features])
        logits = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def save(self, path) -> None:  # noqa: ANN001
        arrays = {k: np.asarray(v) for k, v in self.__dict__.items()}
        arrays["features"] = np.asarray(self.features, dtype=str)
        arrays["classes"] = np.asarray(self.classes, dtype=str)
        with artifacts.atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path) -> CategoryModel:  # noqa: ANN001
        with np.load(path, allow_pickle=False) as data:
            values = {k: data[k] for k in data.files}
        values["features"] = tuple(str(f) for f in values["features"])
        return cls(**values)


def search_categories(
    probs: np.ndarray, classes: Sequence[str], cover: float, exact_below: float
) -> np.ndarray:
    """(n,) the categories each query's category search covers, from its probabilities.

    The top categories until their probabilities add up to `cover`, joined by "|"; "*" (the
    whole catalog) when even the top one is below `exact_below`.
    """
    classes = np.asarray(classes, dtype=object)
    order = np.argsort(-probs, axis=1, kind="stable")
    out = []
    for row, idx in zip(probs, order, strict=True):
        if row[idx[0]] < exact_below:
            out.append(WHOLE_CATALOG)
            continue
        n = int(np.searchsorted(np.cumsum(row[idx]), cover - 1e-9)) + 1
        out.append(SEPARATOR.join(sorted(classes[idx[: max(1, n)]])))
    return np.asarray(out, dtype=object)


def fit_logreg(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> tuple[np.ndarray, ...]:
    """(mean, scale, coef, intercept, classes) of a logistic regression on standardised x."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    model = LogisticRegression(C=c, max_iter=300, random_state=seed)
    model.fit((x - mean) / scale, y)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:
        # scikit-learn keeps one row for two classes (the second's log-odds); the softmax in
        # `probabilities` needs a row per class: [0, w] gives the same probabilities.
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    return mean, scale, coef, intercept, model.classes_.astype(str)


def choose_model(
    vectors: Mapping[str, np.ndarray],
    labels: np.ndarray,
    fit: np.ndarray,
    val: np.ndarray,
    seed: int,
    feature_sets: Sequence[tuple[str, ...]] = FEATURE_SETS,
    c_values: Sequence[float] = C_VALUES,
    views: ViewVectors | None = None,
) -> tuple[CategoryModel, list[dict[str, Any]]]:
    """Fit every feature set x C on `fit` rows, keep the best validation accuracy.

    With `views`, a feature set of InceptionV3 alone also fits on the fit rows' shifted views,
    and is scored by the mean of its accuracy on the validation rows and on their views.

    Returns the chosen model (fitted on `fit` rows only) and one {"features", "C",
    "val_accuracy", ["val_shifted_accuracy",] "chosen"} per candidate.
    """
    trials: list[dict[str, Any]] = []
    best: tuple[float, CategoryModel, dict[str, Any]] | None = None
    for features in feature_sets:
        if not all(f in vectors for f in features):
            continue
        x = np.hstack([vectors[f] for f in features]).astype(np.float64)
        x_fit, y_fit = x[fit], labels[fit]
        shifted = views if views is not None and features == (VIEWS_BASE,) else None
        if shifted is not None:
            x_fit = np.vstack([x_fit, shifted.fit.astype(np.float64)])
            y_fit = np.concatenate([y_fit, shifted.fit_labels])
        for c in c_values:
            model = CategoryModel(features, *fit_logreg(x_fit, y_fit, c, seed))
            acc = None
            if val.any():
                probs = model.probabilities({f: vectors[f][val] for f in features})
                acc = float((model.classes[probs.argmax(axis=1)] == labels[val]).mean())
            trial = {"features": list(features), "C": c, "val_accuracy": acc, "chosen": False}
            score = -1.0 if acc is None else acc
            if shifted is not None and len(shifted.val) and acc is not None:
                probs = model.probabilities({VIEWS_BASE: shifted.val})
                on_views = float((model.classes[probs.argmax(axis=1)] == shifted.val_labels).mean())
                trial["val_shifted_accuracy"] = on_views
                score = (acc + on_views) / 2
            trials.append(trial)
            if best is None or score > best[0]:
                best = (score, model, trial)
    if best is None:
        raise ValueError("no feature set has all its vectors")
    best[2]["chosen"] = True
    return best[1], trials


def candidate_sets(available: set[str] | frozenset[str]) -> tuple[tuple[str, ...], ...]:
    """The feature sets to fit: the first of `FEATURE_SETS` whose extractors are all in
    `available` (those with stored vectors), or none."""
    for features in FEATURE_SETS:
        if set(features) <= set(available):
            return (features,)
    return ()


def run_classify(config: Config, force: bool = False) -> StageResult:
    """Stage: choose the category classifier on validation; write categories.parquet and the
    model. A catalog without labels keeps the custom CNN's categories (if any)."""
    from pipelines.models import training_set, views
    from pipelines.models.train_data import split_rows
    from pipelines.readers import model_id, read_catalog

    start = time.perf_counter()
    catalog, catalog_sha = read_catalog(config)
    fit, val, labelled = split_rows(catalog, config.seed)
    if not labelled:
        note = "no labels: no classifier to choose"
        return StageResult(STAGE, seconds=time.perf_counter() - start, skipped=True, note=note)
    built = {f for fs in FEATURE_SETS for f in fs if config.embeddings_path(f).exists()}
    feature_sets = candidate_sets(built)
    if not feature_sets:
        raise LookalikeError(
            "the category classifier learns from InceptionV3 or custom CNN vectors and neither "
            f"is embedded — run `{commands.embed()}` first"
        )
    # The model keys on the training set and the models of its vectors, so added photos are
    # predicted by the kept classifier; the table keys on the vectors themselves too.
    snapshot = training_set.ensure(config, catalog, retrain=force)
    model_inputs = {"training_set": snapshot}
    vectors, inputs = {}, {"catalog": catalog_sha}
    for name in sorted({f for fs in feature_sets for f in fs}):
        path = config.embeddings_path(name)
        inputs[embeddings_key(name)] = artifacts.artifact_hash(path, commands.embed(name))
        model_inputs[f"model/{name}"] = model_id(config, name)
        vectors[name] = np.load(path).astype(np.float32)
    if config.train_views and VIEWS_BASE in vectors:
        model_inputs[views.STAGE] = artifacts.artifact_hash(views.views_path(config), commands.RUN)
    inputs.update(model_inputs)
    params = {
        "version": VERSION,
        "feature_sets": [list(f) for f in feature_sets],
        "C": list(C_VALUES),
        "cover": config.category_cover,
        "exact_below": config.category_exact_below,
        "seed": config.seed,
        "views": config.train_views,
    }
    out = config.categories_path
    fresh = artifacts.is_fresh(out, STAGE, params, inputs) and config.category_model_path.exists()
    if fresh and not force:
        manifest = artifacts.read_manifest(out) or {}
        print(f"classify: up to date ({manifest.get('model')})")
        return StageResult(STAGE, rows=len(catalog), seconds=time.perf_counter() - start,
                           skipped=True, note=_note(manifest), details=manifest)  # fmt: skip
    model_path = config.category_model_path
    kept = (
        not force
        and artifacts.is_fresh(model_path, STAGE, params, model_inputs)
        and (artifacts.read_manifest(model_path) or {}).get("trials")
    )
    if kept:
        model = CategoryModel.load(model_path)
        trials = (artifacts.read_manifest(model_path) or {})["trials"]
    else:
        known = training_set.in_training_set(config, catalog)
        fit, val = fit & known, val & known
        labels = catalog["label"].astype("string").fillna("").to_numpy().astype(object)
        val = val & np.isin(labels, labels[fit])
        shifted = None
        if config.train_views and VIEWS_BASE in vectors:
            saved = views.load_views(config, catalog)
            (fit_rows, fit_x), (val_rows, val_x) = saved.of(fit), saved.of(val)
            shifted = ViewVectors(fit_x, labels[fit_rows], val_x, labels[val_rows])
        model, trials = choose_model(
            vectors, labels, fit, val, config.seed, feature_sets, views=shifted
        )
    probs = model.probabilities(vectors)
    table = pd.DataFrame(
        {
            "item_id": catalog["item_id"].to_numpy(),
            "predicted": model.classes[probs.argmax(axis=1)].astype(object),
            "confidence": probs.max(axis=1).astype(np.float32),
            "search": search_categories(
                probs, model.classes, config.category_cover, config.category_exact_below
            ),
        }
    )
    if not kept:
        model.save(model_path)
    artifacts.write_parquet(table, out)
    cnn = artifacts.read_manifest(config.custom_cnn_path) or {}
    chosen = next(t for t in trials if t["chosen"])
    extra = {
        "model": model.name,
        "C": chosen["C"],
        "val_accuracy": chosen["val_accuracy"],
        "custom_cnn_head_val_accuracy": cnn.get("best_val_accuracy"),
        "trials": trials,
    }
    if not kept:
        artifacts.write_manifest(model_path, STAGE, params, model_inputs, extra=extra)
    manifest = artifacts.write_manifest(out, STAGE, params, inputs, extra=extra)
    unseen = sorted(set(catalog["label"].dropna().astype(str)) - set(map(str, model.classes)))
    if unseen:
        # Labels the kept classifier never learnt: their items get another category, so say so.
        print(
            f"classify: the classifier cannot predict {', '.join(unseen)} (labels added since "
            f"it was trained) — run `{commands.RUN} --retrain` to learn them"
        )
    print(f"classify: {_note(manifest)}{' (kept model)' if kept else ''} -> {out}")
    return StageResult(
        STAGE,
        wrote=(out, config.category_model_path),
        rows=len(catalog),
        seconds=time.perf_counter() - start,
        note=_note(manifest),
        details=manifest,
    )


def _note(manifest: dict[str, Any]) -> str:
    acc = manifest.get("val_accuracy")
    return f"{manifest.get('model')}" + (f", val accuracy {acc:.3f}" if acc is not None else "")


def load_category_model(config: Config) -> CategoryModel | None:
    """The chosen classifier, or None before the classify stage has run."""
    path = config.category_model_path
    return CategoryModel.load(path) if path.is_file() else None

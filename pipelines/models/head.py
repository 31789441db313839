"""The metric-learned head: reads InceptionV3 (and custom CNN) vectors and labels, trains two
dense layers with a metric loss, and writes models/inception_head.npz (arrays) and
embeddings/inception_head.npy.

The head's vector is a fusion of unit vectors side by side, weighted so that its cosine is
w_l cos_learned + w_r cos_raw + w_c cos_cnn: the learned head on InceptionV3 (w_l = 1 - w_r -
w_c), the raw InceptionV3 vector reduced by PCA (w_r = `head_raw_share`) and the custom CNN's
vector (w_c = `head_cnn_share`). The learned part sorts by kind of garment; the raw part keeps
what a category loss forgets (colour, pattern), which copy retrieval and colour agreement
measure; the CNN adds what it sees better (dresses, shorts). Weights chosen on validation.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines import artifacts, commands
from pipelines.config import Config, embeddings_key
from pipelines.errors import LookalikeError
from pipelines.quality.metrics import gallery_precision
from pipelines.stage import StageResult

STAGE = "train"
EXTRACTOR = "inception_head"
BASE = "inception_v3"
CNN = "custom_cnn"
# Bumped when the head's architecture or training changes: a saved head goes stale.
HEAD_VERSION = "head-2-numpy"
# Width of the raw part (PCA of the InceptionV3 vectors fitted on train).
RAW_DIMS = 256
# The head learns on the top INPUT_DIMS principal components of the train vectors (4x less
# work than all 2048 dims, same validation P@10); the projection is folded into the first
# layer afterwards, so the saved head takes the 2048-d vectors.
INPUT_DIMS = 512
# Normalised softmax: cosine logits times this scale (a temperature of 1/16).
NORM_SOFTMAX_SCALE = 16.0
# Supervised contrastive temperature.
SUPCON_TEMPERATURE = 0.1
BATCH = 256
# Feature-space augmentation while training: dropout on the input vector.
INPUT_DROPOUT = 0.2
# Validation P@k used to keep the best epoch.
SELECT_K = 10
# With shifted views (pipelines/models/views.py): the extra weight of "same photo" positives in
# the supervised contrastive loss, and the share of the epoch score that is the validation
# views' P@10 against the fit photos (the rest is the validation photos' own P@10).
ITEM_WEIGHT = 1.0
# Likeness (issue 25): a same-label positive that also shares the item's dominant colour
# (stage colours) weighs 1 + COLOUR_WEIGHT times as much, so within a kind the head puts
# photos of one colour together. Validation P@10 photos / shifted queries / shifted gallery
# and colour@10: 0 0.914 / 0.653 / 0.815, 0.526; 1 0.913 / 0.649 / 0.814, 0.540; 3 0.912 /
# 0.643 / 0.808, 0.561; 5 0.905 / 0.656 / 0.792, 0.559; 10 0.910 / 0.664 / 0.798, 0.577. 3 is
# the largest whose three P@10s stay within 0.01 of 0.
COLOUR_WEIGHT = 3.0
SHIFT_SELECT_SHARE = 0.5


@dataclass(frozen=True)
class ShiftedViews:
    """Vectors of shifted views for training: `fit_of[i]` is the fit row (an index into the
    fit vectors) view i was made from; validation views come with their labels."""

    fit_vectors: np.ndarray
    fit_of: np.ndarray
    val_vectors: np.ndarray
    val_labels: np.ndarray


def no_labels_note() -> str:
    return (
        f"{EXTRACTOR} skipped: the catalog has no labels to learn from (it needs a label per "
        f"photo); the other extractors work without them"
    )


@dataclass(frozen=True)
class Head:
    """The arrays of a trained head; `apply` maps (n, 2048) vectors to (n, dim) unit rows."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    raw_mean: np.ndarray
    raw_axes: np.ndarray  # (2048, RAW_DIMS)
    raw_share: float
    cnn_share: float = 0.0
    cnn_dim: int = 0

    @property
    def dim(self) -> int:
        raw = self.raw_axes.shape[1] if self.raw_share > 0 else 0
        return int(self.w2.shape[1] + raw + (self.cnn_dim if self.cnn_share > 0 else 0))

    def learned(self, x: np.ndarray) -> np.ndarray:
        hidden = np.maximum(np.asarray(x, np.float32) @ self.w1 + self.b1, 0.0)
        return _unit(hidden @ self.w2 + self.b2)

    def apply(self, x: np.ndarray, cnn: np.ndarray | None = None) -> np.ndarray:
        """(n, 2048) InceptionV3 unit vectors (and (n, cnn_dim) custom CNN unit vectors when
        `cnn_share` > 0) -> (n, dim) float32 unit rows."""
        x = np.asarray(x, np.float32)
        learned = self.learned(x)
        if self.raw_share <= 0 and self.cnn_share <= 0:
            return learned
        parts = [np.sqrt(1 - self.raw_share - self.cnn_share) * learned]
        if self.raw_share > 0:
            parts.append(np.sqrt(self.raw_share) * _unit((x - self.raw_mean) @ self.raw_axes))
        if self.cnn_share > 0:
            if cnn is None:
                raise LookalikeError("this head fuses the custom CNN's vector: pass `cnn`")
            parts.append(np.sqrt(self.cnn_share) * _unit(np.asarray(cnn, np.float32)))
        return np.hstack(parts).astype(np.float32)

    def save(self, path) -> None:  # noqa: ANN001
        with artifacts.atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **{k: np.asarray(v) for k, v in self.__dict__.items()})

    @classmethod
    def load(cls, path) -> Head:  # noqa: ANN001
        with np.load(path, allow_pickle=False) as data:
            values = {k: data[k] for k in data.files}
        values["raw_share"] = float(values["raw_share"])
        values["cnn_share"] = float(values.get("cnn_share", 0.0))
        values["cnn_dim"] = int(values.get("cnn_dim", 0))
        return cls(**values)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def raw_axes(x: np.ndarray, dims: int = RAW_DIMS) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top principal axes (d, dims) of `x`, signs fixed so reruns agree."""
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    axes = vt[: min(dims, len(vt))].T
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    return mean.astype(np.float32), (axes * np.where(signs == 0, 1, signs)).astype(np.float32)


def _loss_and_grads(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    loss: str,
    classes: int,
    items: np.ndarray | None = None,
    looks: np.ndarray | None = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """The metric loss of one batch and its gradients (plain numpy backpropagation).

    Forward: h = relu(x W1 + b1), z = h W2 + b2, u = z / |z|. "norm_softmax" is a softmax
    over the scaled cosines between u and one learned proxy per class (label smoothing 0.1);
    "supcon" is the supervised contrastive loss over the batch (every other item of the same
    class a positive; with `items`, rows of one photo, a photo and its shifted views, are
    positives of weight 1 + ITEM_WEIGHT).
    """
    w1, b1, w2, b2 = params["w1"], params["b1"], params["w2"], params["b2"]
    pre = x @ w1 + b1
    h = np.maximum(pre, 0.0)
    z = h @ w2 + b2
    norm = np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    u = z / norm
    n = len(x)
    grads: dict[str, np.ndarray] = {}
    if loss == "norm_softmax":
        proxies = params["proxies"]
        p_norm = np.maximum(np.linalg.norm(proxies, axis=1, keepdims=True), 1e-12)
        p = proxies / p_norm
        logits = NORM_SOFTMAX_SCALE * u @ p.T
        logits -= logits.max(axis=1, keepdims=True)
        soft = np.exp(logits)
        soft /= soft.sum(axis=1, keepdims=True)
        target = np.full((n, classes), 0.1 / classes)
        target[np.arange(n), y] += 0.9
        value = float(-(target * np.log(soft + 1e-12)).sum(axis=1).mean())
        d_logits = (soft - target) / n
        d_u = NORM_SOFTMAX_SCALE * d_logits @ p
        d_p = NORM_SOFTMAX_SCALE * d_logits.T @ u
        grads["proxies"] = (d_p - p * (p * d_p).sum(axis=1, keepdims=True)) / p_norm
    else:
        sims = u @ u.T / SUPCON_TEMPERATURE
        np.fill_diagonal(sims, -1e9)
        sims -= sims.max(axis=1, keepdims=True)
        soft = np.exp(sims)
        soft /= soft.sum(axis=1, keepdims=True)
        same = (y[:, None] == y[None, :]).astype(np.float64)
        if items is not None:
            same += ITEM_WEIGHT * (items[:, None] == items[None, :])
        if looks is not None:
            same *= 1 + COLOUR_WEIGHT * (looks[:, None] == looks[None, :])
        np.fill_diagonal(same, 0.0)
        count = np.maximum(same.sum(axis=1, keepdims=True), 1.0)
        log_prob = np.log(soft + 1e-30)
        value = float(-((same * log_prob).sum(axis=1, keepdims=True) / count).mean())
        d_sims = (soft - same / count) / n  # d loss / d sims_ij
        np.fill_diagonal(d_sims, 0.0)
        d_u = (d_sims + d_sims.T) @ u / SUPCON_TEMPERATURE
    d_z = (d_u - u * (u * d_u).sum(axis=1, keepdims=True)) / norm
    grads["w2"] = h.T @ d_z
    grads["b2"] = d_z.sum(axis=0)
    d_pre = (d_z @ w2.T) * (pre > 0)
    grads["w1"] = x.T @ d_pre
    grads["b1"] = d_pre.sum(axis=0)
    return value, grads


def train_head(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: Config,
    loss: str | None = None,
    views: ShiftedViews | None = None,
    colours: np.ndarray | None = None,
) -> tuple[Head, list[dict[str, float]]]:
    """Train the head on unit InceptionV3 vectors; keep the epoch with the best validation P@10.

    Plain numpy (Adam, seeded minibatches and input dropout): a few seconds on 2 cores, no
    TensorFlow, and the same result on every run.

    Parameters
    ----------
    x_fit, y_fit : (n, d) train vectors and their integer labels 0..c-1.
    x_val, y_val : validation vectors and labels (queries against the train vectors); with
        none, the last epoch is kept.
    config : head_* settings and `seed`.
    loss : "norm_softmax" or "supcon"; default `config.head_loss`.
    views : shifted views of some fit rows (trained on beside their photos, in the same
        batch) and of validation rows (the epoch score is then SHIFT_SELECT_SHARE their P@10
        against the fit rows, the rest the validation rows' own).
    colours : (n,) integer dominant-colour code of each fit row; same-label positives of one
        colour then weigh 1 + COLOUR_WEIGHT (see there).

    Returns (head, history): one {"epoch", "loss", "val_p@10"[, "val_shifted_p@10"]} per epoch.
    """
    loss = loss or config.head_loss
    rng = np.random.default_rng(config.seed)
    x_raw = np.asarray(x_fit, np.float32)
    y_fit = np.asarray(y_fit)
    mean, axes = raw_axes(x_raw, max(INPUT_DIMS, RAW_DIMS))
    x_fit = (x_raw - mean) @ axes
    x_val_p = (np.asarray(x_val, np.float32) - mean) @ axes
    n, d = x_fit.shape
    classes = int(y_fit.max()) + 1
    if views is not None:
        view_x = (np.asarray(views.fit_vectors, np.float32) - mean) @ axes
        view_val = (np.asarray(views.val_vectors, np.float32) - mean) @ axes
        views_of = [np.flatnonzero(views.fit_of == i) for i in range(n)]
    hidden, dim = config.head_hidden, config.head_dim

    def glorot(rows: int, cols: int) -> np.ndarray:
        limit = np.sqrt(6.0 / (rows + cols))
        return rng.uniform(-limit, limit, (rows, cols))

    params = {
        "w1": glorot(d, hidden),
        "b1": np.zeros(hidden),
        "w2": glorot(hidden, dim),
        "b2": np.zeros(dim),
    }
    if loss == "norm_softmax":
        params["proxies"] = rng.normal(size=(classes, dim))
    params = {k: v.astype(np.float32) for k, v in params.items()}
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    beta1, beta2, lr = 0.9, 0.999, config.head_learning_rate
    history: list[dict[str, float]] = []
    best: tuple[float, list[np.ndarray]] | None = None
    step = 0
    for epoch in range(config.head_epochs):
        order = rng.permutation(n)
        losses = []
        for start in range(0, n, BATCH):
            idx = order[start : start + BATCH]
            if len(idx) < 2:
                continue
            x, y, items = x_fit[idx], y_fit[idx], None
            looks = None if colours is None else colours[idx]
            if views is not None:
                extra = np.concatenate([views_of[i] for i in idx])
                x = np.vstack([x, view_x[extra]])
                y = np.concatenate([y, y_fit[views.fit_of[extra]]])
                items = np.concatenate([idx, views.fit_of[extra]])
                if colours is not None:
                    looks = colours[items]
            keep = rng.random(x.shape) > INPUT_DROPOUT
            x = np.where(keep, x / (1 - INPUT_DROPOUT), 0.0)
            value, grads = _loss_and_grads(
                params, x.astype(np.float32), y, loss, classes, items, looks
            )
            losses.append(value)
            step += 1
            for key, grad in grads.items():
                m, v = moments[key]
                m *= beta1
                m += (1 - beta1) * grad
                v *= beta2
                v += (1 - beta2) * grad**2
                m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
                params[key] -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        weights = [params[k].astype(np.float32) for k in ("w1", "b1", "w2", "b2")]
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        if len(x_val):
            probe = Head(*weights, np.zeros(d, np.float32), np.zeros((d, 1), np.float32), 0.0)
            gallery = probe.apply(x_fit)
            score = gallery_precision(probe.apply(x_val_p), y_val, gallery, y_fit, min(SELECT_K, n))
            record["val_p@10"] = score
            if views is not None and len(view_val):
                shifted = gallery_precision(
                    probe.apply(view_val), views.val_labels, gallery, y_fit, min(SELECT_K, n)
                )
                record["val_shifted_p@10"] = shifted
                score = (1 - SHIFT_SELECT_SHARE) * score + SHIFT_SELECT_SHARE * shifted
                record["val_score"] = score
            if best is None or score > best[0]:
                best = (score, weights)
        history.append(record)
    w1, b1, w2, b2 = best[1] if best is not None else weights
    # Fold the projection into the first layer: (x - mean) @ axes @ w1 + b1.
    w1_full = (axes @ w1).astype(np.float32)
    b1_full = (b1 - mean @ w1_full).astype(np.float32)
    raw = axes[:, :RAW_DIMS]
    return Head(w1_full, b1_full, w2, b2, mean, raw, float(config.head_raw_share)), history


# --------------------------------------------------------------------------- stages


def head_params(config: Config) -> dict[str, Any]:
    return {
        "version": HEAD_VERSION,
        "loss": config.head_loss,
        "hidden": config.head_hidden,
        "dim": config.head_dim,
        "epochs": config.head_epochs,
        "learning_rate": config.head_learning_rate,
        "raw_share": config.head_raw_share,
        "cnn_share": config.head_cnn_share,
        "raw_dims": RAW_DIMS,
        "seed": config.seed,
        "views": config.train_views,
        "item_weight": ITEM_WEIGHT,
        "colour_weight": COLOUR_WEIGHT,
        "shift_select_share": SHIFT_SELECT_SHARE,
    }


def labelled_rows(catalog: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(fit, validation, labelled) as the custom CNN's training splits them."""
    from pipelines.models.train_data import split_rows

    return split_rows(catalog, seed)


def run_train_head(config: Config, force: bool = False) -> StageResult:
    """Stage: fit the head on the train split's InceptionV3 vectors, choose its epoch on
    validation. Skipped (with a note) for a catalog without labels."""
    from pipelines.data.colour import VERSION as COLOUR_RULE
    from pipelines.data.colour import read_colours
    from pipelines.models import training_set, views
    from pipelines.readers import model_id, read_catalog, read_embeddings

    start = time.perf_counter()
    catalog, _ = read_catalog(config)
    fit, val, labelled = labelled_rows(catalog, config.seed)
    if not labelled:
        note = no_labels_note()
        print(note)
        return StageResult(STAGE, seconds=time.perf_counter() - start, skipped=True, note=note)
    # Learns from the training set's rows only, keyed on that set and the models of the vectors
    # (not on the vectors' bytes, which change whenever photos are added).
    snapshot = training_set.ensure(config, catalog, retrain=force)
    known = training_set.in_training_set(config, catalog)
    fit, val = fit & known, val & known
    vectors, _ = read_embeddings(config, BASE, n_rows=len(catalog))
    path = config.head_path
    params = head_params(config)
    inputs = {
        "training_set": snapshot,
        f"model/{BASE}": model_id(config, BASE),
    }
    if config.head_cnn_share > 0:
        cnn, _ = read_embeddings(config, CNN, n_rows=len(catalog))
        inputs[f"model/{CNN}"] = model_id(config, CNN)
    if config.train_views:
        inputs[views.STAGE] = artifacts.artifact_hash(views.views_path(config), commands.RUN)
    colour_names = read_colours(config, catalog["item_id"].astype(str).to_numpy())
    if colour_names is not None:
        # An item's colour is a function of its photo (its id is the photo's content hash) and
        # of the colour rule, so the training set and the rule's version key the colours the
        # head learns from: photos added or removed leave the head as it is, like the rest.
        inputs["colour_rule"] = COLOUR_RULE
    if not force and artifacts.is_fresh(path, STAGE, params, inputs):
        manifest = artifacts.read_manifest(path) or {}
        print(f"{path} is up to date; use --force to retrain")
        return StageResult(
            STAGE,
            rows=manifest.get("n_train"),
            seconds=time.perf_counter() - start,
            skipped=True,
            note=_note(manifest),
            details=manifest,
        )
    labels = catalog["label"].astype("string").fillna("").to_numpy()
    class_names = sorted(set(labels[fit].tolist()))
    code = {name: i for i, name in enumerate(class_names)}
    val = val & np.isin(labels, class_names)
    y = np.array([code.get(v, -1) for v in labels])
    shifted = None
    if config.train_views:
        saved = views.load_views(config, catalog)
        fit_rows = np.flatnonzero(fit)
        view_rows, view_vectors = saved.of(fit)
        val_rows, val_vectors = saved.of(val)
        shifted = ShiftedViews(
            view_vectors, np.searchsorted(fit_rows, view_rows), val_vectors, y[val_rows]
        )
    colours = None if colour_names is None else pd.factorize(colour_names)[0][fit]
    head, history = train_head(
        vectors[fit], y[fit], vectors[val], y[val], config, views=shifted, colours=colours
    )
    if config.head_cnn_share > 0:
        head = dataclasses.replace(head, cnn_share=config.head_cnn_share, cnn_dim=cnn.shape[1])
    head.save(path)
    scores = [h["val_p@10"] for h in history if "val_p@10" in h]
    raw_val = (
        gallery_precision(vectors[val], y[val], vectors[fit], y[fit], SELECT_K)
        if val.any()
        else None
    )
    extra = {
        "class_names": class_names,
        "dim": head.dim,
        "n_train": int(fit.sum()),
        "n_validation": int(val.sum()),
        "best_val_p@10": max(scores) if scores else None,
        "best_epoch": int(np.argmax(scores)) + 1 if scores else None,
        "raw_val_p@10": raw_val,
        "history": history,
        "seconds": round(time.perf_counter() - start, 1),
    }
    manifest = artifacts.write_manifest(path, STAGE, params, inputs, extra=extra)
    print(f"{EXTRACTOR}: {_note(manifest)} -> {path}")
    return StageResult(
        STAGE,
        wrote=(path,),
        rows=int(fit.sum()),
        seconds=time.perf_counter() - start,
        note=_note(manifest),
        details=manifest,
    )


def _note(manifest: dict[str, Any]) -> str:
    best, raw = manifest.get("best_val_p@10"), manifest.get("raw_val_p@10")
    if best is None:
        return "head trained (no validation rows)"
    return f"head val P@10 (learned part) {best:.3f} vs raw InceptionV3 {raw:.3f}"


def load_head(config: Config) -> Head:
    """The saved head; a clear error when it is missing."""
    path = config.head_path
    if not path.is_file():
        raise LookalikeError(
            f"{path} is missing — run `{commands.RUN}` (the head trains after the InceptionV3 "
            f"embedding; it needs a labelled catalog)"
        )
    return Head.load(path)


def run_embed_head(config: Config, force: bool = False) -> StageResult:
    """Stage: embeddings/inception_head.npy = the head applied to the InceptionV3 vectors (no
    image is decoded again). Skipped for a catalog without labels."""
    from pipelines.embedding import reuse
    from pipelines.readers import model_id, read_catalog, read_embeddings

    start = time.perf_counter()
    catalog, catalog_sha = read_catalog(config)
    if not config.head_path.is_file() and not labelled_rows(catalog, config.seed)[2]:
        note = no_labels_note()
        print(note)
        return StageResult("embed", seconds=time.perf_counter() - start, skipped=True, note=note)
    vectors, vectors_sha = read_embeddings(config, BASE, n_rows=len(catalog))
    out = config.embeddings_path(EXTRACTOR)
    head_sha = artifacts.artifact_hash(config.head_path, commands.RUN)
    head = load_head(config)
    # The models of the vectors it fuses: a retrained custom CNN can leave the head's file
    # bit for bit the same (the learned part reads InceptionV3 only), yet every fused row moves.
    bases = [BASE, CNN] if head.cnn_share > 0 else [BASE]
    params = {
        "extractor": EXTRACTOR,
        "from": BASE,
        "version": HEAD_VERSION,
        "models": {name: model_id(config, name) for name in bases},
    }
    inputs = {"catalog": catalog_sha, "weights": head_sha, embeddings_key(BASE): vectors_sha}
    cnn = None
    if head.cnn_share > 0:
        cnn, inputs[embeddings_key(CNN)] = read_embeddings(config, CNN, n_rows=len(catalog))
    if not force and artifacts.is_fresh(out, "embed", params, inputs):
        print(f"embed {EXTRACTOR}: up to date ({len(catalog)} rows); nothing to do.")
        return StageResult("embed", rows=len(catalog), seconds=time.perf_counter() - start,
                           skipped=True, details={"extractor": EXTRACTOR})  # fmt: skip
    item_ids = catalog["item_id"].astype(str).to_numpy()
    # An update applies the head to the new items only; kept rows are copied bit for bit.
    previous = None if force else reuse.previous_rows(config, EXTRACTOR, params, head_sha, item_ids)
    if previous is not None:
        rows = previous.new_rows
        embeddings = previous.assemble(
            head.apply(vectors[rows], None if cnn is None else cnn[rows])
            if len(rows)
            else np.zeros((0, head.dim), np.float32)
        )
        what = f"update: {len(rows)} new, {previous.kept} kept"
    else:
        embeddings = head.apply(vectors, cnn)
        what = f"{len(catalog)} rows x {head.dim} dims from {BASE}"
    reuse.write_embeddings(
        config, EXTRACTOR, embeddings, item_ids, "embed", params, inputs, extra={"dim": head.dim}
    )
    seconds = time.perf_counter() - start
    print(f"embed {EXTRACTOR}: {what}, {seconds:.1f} s")
    return StageResult(
        "embed",
        wrote=(out,),
        rows=len(catalog),
        seconds=seconds,
        note=what,
        details={"extractor": EXTRACTOR},
    )

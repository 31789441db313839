"""The metric-learned head: reads InceptionV3 vectors and labels, trains two dense layers with a
metric loss, and writes models/inception_head.npz (arrays) and embeddings/inception_head.npy.

The head's vector is a fusion: the learned unit vector (weight 1 - s) beside the raw
InceptionV3 vector reduced by PCA (weight s = `head_raw_share`), both unit length, so their
cosine is (1 - s) cos_head + s cos_raw. The learned part sorts by kind of garment; the raw part
keeps what a category loss forgets (colour, pattern), which copy retrieval and colour
agreement measure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines import artifacts, commands
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.stage import StageResult

STAGE = "train"
EXTRACTOR = "inception_head"
BASE = "inception_v3"
# Bumped when the head's architecture or training changes: a saved head goes stale.
HEAD_VERSION = "head-1"
# Width of the raw part (PCA of the InceptionV3 vectors fitted on train).
RAW_DIMS = 256
# Normalised softmax: cosine logits times this scale (a temperature of 1/16).
NORM_SOFTMAX_SCALE = 16.0
# Supervised contrastive temperature.
SUPCON_TEMPERATURE = 0.1
BATCH = 256
# Feature-space augmentation while training: dropout on the input vector.
INPUT_DROPOUT = 0.2
# Validation P@k used to keep the best epoch.
SELECT_K = 10


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

    @property
    def dim(self) -> int:
        return int(self.w2.shape[1] + (self.raw_axes.shape[1] if self.raw_share > 0 else 0))

    def learned(self, x: np.ndarray) -> np.ndarray:
        hidden = np.maximum(np.asarray(x, np.float32) @ self.w1 + self.b1, 0.0)
        return _unit(hidden @ self.w2 + self.b2)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(n, 2048) InceptionV3 unit vectors -> (n, dim) float32 unit rows."""
        x = np.asarray(x, np.float32)
        learned = self.learned(x)
        if self.raw_share <= 0:
            return learned
        raw = _unit((x - self.raw_mean) @ self.raw_axes)
        return np.hstack(
            [np.sqrt(1 - self.raw_share) * learned, np.sqrt(self.raw_share) * raw]
        ).astype(np.float32)

    def save(self, path) -> None:  # noqa: ANN001
        with artifacts.atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **{k: np.asarray(v) for k, v in self.__dict__.items()})

    @classmethod
    def load(cls, path) -> Head:  # noqa: ANN001
        with np.load(path, allow_pickle=False) as data:
            values = {k: data[k] for k in data.files}
        values["raw_share"] = float(values["raw_share"])
        return cls(**values)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def precision_at_k(queries: np.ndarray, q_labels, gallery: np.ndarray, g_labels, k: int) -> float:  # noqa: ANN001
    """Mean P@k of unit `queries` searched (exact cosine) in unit `gallery` (no overlap)."""
    sims = queries @ gallery.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return float((np.asarray(g_labels)[top] == np.asarray(q_labels)[:, None]).mean())


def raw_axes(x: np.ndarray, dims: int = RAW_DIMS) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top principal axes (d, dims) of `x`, signs fixed so reruns agree."""
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    axes = vt[: min(dims, len(vt))].T
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    return mean.astype(np.float32), (axes * np.where(signs == 0, 1, signs)).astype(np.float32)


def train_head(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: Config,
    loss: str | None = None,
) -> tuple[Head, list[dict[str, float]]]:
    """Train the head on unit InceptionV3 vectors; keep the epoch with the best validation P@10.

    Parameters
    ----------
    x_fit, y_fit : (n, d) train vectors and their integer labels 0..c-1.
    x_val, y_val : validation vectors and labels (queries against the train vectors); with
        none, the last epoch is kept.
    config : head_* settings and `seed`.
    loss : "norm_softmax" or "supcon"; default `config.head_loss`.

    Returns (head, history): one {"epoch", "loss", "val_p@10"} per epoch.
    """
    import tensorflow as tf

    loss = loss or config.head_loss
    tf.keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n, d = x_fit.shape
    classes = int(y_fit.max()) + 1
    hidden, dim = config.head_hidden, config.head_dim
    glorot = tf.keras.initializers.GlorotUniform
    w1 = tf.Variable(glorot(seed=config.seed)((d, hidden)))
    b1 = tf.Variable(tf.zeros(hidden))
    w2 = tf.Variable(glorot(seed=config.seed + 1)((hidden, dim)))
    b2 = tf.Variable(tf.zeros(dim))
    proxies = tf.Variable(tf.random.stateless_normal((classes, dim), seed=[config.seed, 7]))
    variables = [w1, b1, w2, b2] + ([proxies] if loss == "norm_softmax" else [])
    optimizer = tf.keras.optimizers.Adam(config.head_learning_rate)
    x_all = tf.constant(x_fit, tf.float32)
    y_all = tf.constant(y_fit, tf.int32)

    def embed(x, step):  # noqa: ANN001, ANN202
        keep = tf.random.stateless_uniform(tf.shape(x), seed=[config.seed, step]) > INPUT_DROPOUT
        x = tf.where(keep, x / (1 - INPUT_DROPOUT), 0.0)
        return tf.math.l2_normalize(tf.nn.relu(x @ w1 + b1) @ w2 + b2, axis=1)

    @tf.function
    def train_step(x, y, step):  # noqa: ANN001, ANN202
        with tf.GradientTape() as tape:
            z = embed(x, step)
            if loss == "norm_softmax":
                p = tf.math.l2_normalize(proxies, axis=1)
                logits = NORM_SOFTMAX_SCALE * z @ tf.transpose(p)
                onehot = tf.one_hot(y, classes) * 0.9 + 0.1 / classes
                value = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(onehot, logits))
            else:  # supervised contrastive (Khosla et al. 2020), one view per item
                sims = z @ tf.transpose(z) / SUPCON_TEMPERATURE
                eye = tf.eye(tf.shape(z)[0])
                sims = sims - 1e9 * eye
                same = tf.cast(tf.equal(y[:, None], y[None, :]), tf.float32) * (1 - eye)
                log_prob = sims - tf.reduce_logsumexp(sims, axis=1, keepdims=True)
                count = tf.maximum(tf.reduce_sum(same, axis=1), 1.0)
                value = -tf.reduce_mean(tf.reduce_sum(same * log_prob, axis=1) / count)
        grads = tape.gradient(value, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return value

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
            value = train_step(tf.gather(x_all, idx), tf.gather(y_all, idx), tf.constant(step))
            losses.append(float(value))
            step += 1
        weights = [v.numpy() for v in (w1, b1, w2, b2)]
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        if len(x_val):
            probe = Head(*weights, np.zeros(d, np.float32), np.zeros((d, 1), np.float32), 0.0)
            score = precision_at_k(
                probe.apply(x_val), y_val, probe.apply(x_fit), y_fit, min(SELECT_K, n)
            )
            record["val_p@10"] = score
            if best is None or score > best[0]:
                best = (score, weights)
        history.append(record)
    chosen = best[1] if best is not None else [v.numpy() for v in (w1, b1, w2, b2)]
    mean, axes = raw_axes(x_fit)
    return Head(*chosen, mean, axes, float(config.head_raw_share)), history


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
        "raw_dims": RAW_DIMS,
        "seed": config.seed,
    }


def labelled_rows(catalog: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(fit, validation, labelled) as the custom CNN's training splits them."""
    from pipelines.train_data import split_rows

    return split_rows(catalog, seed)


def run_train_head(config: Config, force: bool = False) -> StageResult:
    """Stage: fit the head on the train split's InceptionV3 vectors, choose its epoch on
    validation. Skipped (with a note) for a catalog without labels."""
    from pipelines.readers import read_catalog, read_embeddings

    start = time.perf_counter()
    catalog, catalog_sha = read_catalog(config)
    fit, val, labelled = labelled_rows(catalog, config.seed)
    if not labelled:
        note = no_labels_note()
        print(note)
        return StageResult(STAGE, seconds=time.perf_counter() - start, skipped=True, note=note)
    vectors, vectors_sha = read_embeddings(config, BASE, n_rows=len(catalog))
    path = config.head_path
    params = head_params(config)
    inputs = {"catalog": catalog_sha, f"embeddings/{BASE}": vectors_sha}
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
    head, history = train_head(vectors[fit], y[fit], vectors[val], y[val], config)
    head.save(path)
    scores = [h["val_p@10"] for h in history if "val_p@10" in h]
    raw_val = (
        precision_at_k(vectors[val], y[val], vectors[fit], y[fit], SELECT_K) if val.any() else None
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
    from pipelines.readers import read_catalog, read_embeddings

    start = time.perf_counter()
    catalog, catalog_sha = read_catalog(config)
    if not config.head_path.is_file() and not labelled_rows(catalog, config.seed)[2]:
        note = no_labels_note()
        print(note)
        return StageResult("embed", seconds=time.perf_counter() - start, skipped=True, note=note)
    vectors, vectors_sha = read_embeddings(config, BASE, n_rows=len(catalog))
    out = config.embeddings_path(EXTRACTOR)
    head_sha = artifacts.artifact_hash(config.head_path, commands.RUN)
    params = {"extractor": EXTRACTOR, "from": BASE, "version": HEAD_VERSION}
    inputs = {"catalog": catalog_sha, "weights": head_sha, f"embeddings/{BASE}": vectors_sha}
    if not force and artifacts.is_fresh(out, "embed", params, inputs):
        print(f"embed {EXTRACTOR}: up to date ({len(catalog)} rows); nothing to do.")
        return StageResult("embed", rows=len(catalog), seconds=time.perf_counter() - start,
                           skipped=True, details={"extractor": EXTRACTOR})  # fmt: skip
    head = load_head(config)
    embeddings = head.apply(vectors)
    artifacts.write_npy(embeddings, out)
    artifacts.write_manifest(out, "embed", params, inputs, extra={"dim": head.dim})
    seconds = time.perf_counter() - start
    print(f"embed {EXTRACTOR}: {len(catalog)} rows x {head.dim} dims from {BASE}, {seconds:.1f} s")
    return StageResult(
        "embed", wrote=(out,), rows=len(catalog), seconds=seconds, details={"extractor": EXTRACTOR}
    )

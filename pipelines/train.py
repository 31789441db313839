"""Reads the catalog, trains the custom CNN; writes models/custom_cnn.keras, history, manifest.

A labelled catalog trains a classifier whose L2-normalised `embedding` layer is the retrieval
vector; a catalog without labels trains a convolutional autoencoder instead, whose pooled
bottleneck (projected to the embedding width by PCA) is the vector.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import layers

from pipelines.artifacts import (
    artifact_hash,
    is_fresh,
    read_manifest,
    sha256_file,
    write_json,
    write_manifest,
)
from pipelines.catalog import bbox_of
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.images import ImageError, load_array

STAGE = "train"
MODEL_FILE = "custom_cnn.keras"
HISTORY_FILE = "custom_cnn.history.json"
CATALOG_COMMAND = "python -m pipelines catalog"
TRAIN_COMMAND = "python -m pipelines train"

# Bumped whenever the architecture, augmentation or schedule changes, so a saved model made
# by older code is retrained rather than reported as up to date.
ARCHITECTURE_VERSION = "resnet-lite-1"

# Images per training step: 64 keeps 2 CPU cores busy (bigger batches gave no more images/s)
# and batch-norm statistics stable.
TRAIN_BATCH = 64
# Residual stages after the stride-4 stem; each halves the map. 128 px -> 8x8x256 at the end.
STEM_WIDTH = 32
STAGE_WIDTHS = (64, 128, 256)
# Dropout on the pooled features before the embedding layer (training only).
DROPOUT = 0.3
# Batch-norm running statistics follow the weights within ~10 steps: with only ~50 steps an
# epoch, Keras's default 0.99 lags so far behind that validation accuracy swings wildly.
BN_MOMENTUM = 0.9
LABEL_SMOOTHING = 0.1
WEIGHT_DECAY = 0.05
# Fraction of the schedule spent warming the learning rate up from zero.
WARMUP_FRACTION = 0.05
# Share of train held out (per class) when the catalog has no validation split.
HOLDOUT_FRACTION = 0.1
# Augmentation strengths: crop side in [CROP_MIN, 1] of the image, colour changes of +-JITTER.
CROP_MIN = 0.75
JITTER = 0.15
# Decoding threads: Pillow releases the GIL while decoding, so threads beat processes here.
DECODE_THREADS = 8


@dataclass
class TrainedModel:
    """What one training run produced: the inference model and how it got there."""

    model: keras.Model  # outputs [embedding, probs] (classifier) or [embedding] (autoencoder)
    kind: str  # "classifier" or "autoencoder"
    class_names: list[str]
    history: list[dict[str, float]]  # one dict per epoch
    best_val_accuracy: float | None
    best_val_loss: float | None
    epochs_run: int
    train_seconds: float
    n_train: int
    n_validation: int
    stopped_by: str  # "epochs", "early_stopping" or "time_budget"
    precision: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


# --------------------------------------------------------------------------- models


def _conv_bn_relu(x, filters: int, dtype: str, *, strides: int = 1, relu: bool = True):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, dtype=dtype)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, dtype=dtype)(x)
    return layers.ReLU(dtype=dtype)(x) if relu else x


def _residual_block(x, filters: int, dtype: str):
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, dtype=dtype)(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, dtype=dtype)(shortcut)
    y = _conv_bn_relu(x, filters, dtype)
    y = _conv_bn_relu(y, filters, dtype, relu=False)
    return layers.ReLU(dtype=dtype)(layers.Add(dtype=dtype)([y, shortcut]))


def _encoder(inputs, dtype: str):
    """(S, S, 3) in 0-255 -> (S/16, S/16, STAGE_WIDTHS[-1]) feature map."""
    # The model owns its preprocessing: callers feed raw pixel values as float32.
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale", dtype=dtype)(inputs)
    x = _conv_bn_relu(x, STEM_WIDTH, dtype, strides=2)
    # Pooling early keeps most of the compute at 1/4 resolution, where clothing shape and
    # texture are still clear but convolutions cost 16x less than at full size.
    x = layers.MaxPooling2D(2, padding="same", dtype=dtype)(x)
    for i, width in enumerate(STAGE_WIDTHS):
        if i:
            x = layers.MaxPooling2D(2, padding="same", dtype=dtype)(x)
        x = _residual_block(x, width, dtype)
    return x


def _embedding_head(features, config: Config, dropout: float = 0.0):
    """Pooled features -> dense -> unit length: the `embedding` output used for retrieval."""
    x = layers.GlobalAveragePooling2D(name="pool", dtype="float32")(features)
    if dropout:
        x = layers.Dropout(dropout, name="pool_dropout", dtype="float32")(x)
    x = layers.Dense(config.cnn_embedding_dim, name="embedding_dense", dtype="float32")(x)
    return layers.UnitNormalization(name="embedding", dtype="float32")(x)


def _build_classifier(n_classes: int, config: Config, dtype: str) -> keras.Model:
    size = config.cnn_image_size
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    features = _encoder(inputs, dtype)
    embedding = _embedding_head(features, config, DROPOUT)
    # Softmax over a linear map of the unit vector: classes become directions on the sphere,
    # which is exactly what cosine retrieval on the embedding compares.
    probs = layers.Dense(n_classes, activation="softmax", name="category", dtype="float32")(
        embedding
    )
    return keras.Model(inputs, [embedding, probs], name="custom_cnn")


def build_classifier(n_classes: int, config: Config) -> keras.Model:
    """The custom CNN classifier, float32, untrained.

    Parameters
    ----------
    n_classes:
        Width of the softmax head (>= 2).
    config:
        `cnn_image_size` (S) and `cnn_embedding_dim` (D) shape the model.

    Returns
    -------
    keras.Model
        Input (batch, S, S, 3) float32 pixel values in 0-255 (rescaled inside the model).
        Outputs [embedding (batch, D) unit-length float32, category (batch, n_classes) probs].
    """
    if n_classes < 2:
        raise LookalikeError(f"a classifier needs at least 2 classes, got {n_classes}")
    return _build_classifier(n_classes, config, "float32")


def _build_autoencoder(config: Config, dtype: str) -> keras.Model:
    size = config.cnn_image_size
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    features = _encoder(inputs, dtype)
    embedding = _embedding_head(features, config)
    x = features
    for width in (*reversed(STAGE_WIDTHS[:-1]), STEM_WIDTH, 16):
        x = layers.UpSampling2D(2, dtype=dtype)(x)
        x = _conv_bn_relu(x, width, dtype)
    x = layers.Conv2D(3, 3, padding="same", dtype="float32")(x)
    if x.shape[1] != size:
        # "same" pooling rounds odd sizes up, so the decoder can overshoot; resize back.
        x = layers.Resizing(size, size, dtype="float32")(x)
    reconstruction = layers.Activation("sigmoid", name="reconstruction", dtype="float32")(x)
    return keras.Model(inputs, [embedding, reconstruction], name="custom_cnn_autoencoder")


def build_autoencoder(config: Config) -> keras.Model:
    """The convolutional autoencoder for unlabelled catalogs, float32, untrained.

    Returns
    -------
    keras.Model
        Input (batch, S, S, 3) float32 in 0-255. Outputs [embedding (batch, D) unit-length,
        reconstruction (batch, S, S, 3) in 0-1]. The encoder's bottleneck is globally pooled
        and projected by the dense layer `embedding_dense` (fitted by PCA after training).
    """
    return _build_autoencoder(config, "float32")


def _training_precision() -> str:
    """bfloat16 compute where the CPU has native bf16 units (about twice as fast), else float32.

    Only training uses it: the saved model is float32, so inference is the same everywhere.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "float32"


# --------------------------------------------------------------------------- data


def decode_catalog(
    catalog: pd.DataFrame, size: int, max_pixels: int, *, desc: str = "decoding"
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode every row through `load_array` (cropped to its bbox when set), in threads.

    Returns
    -------
    pixels:
        (n_ok, size, size, 3) uint8, in catalog order.
    ok:
        (len(catalog),) bool, which rows decoded.
    skipped:
        (path, reason) of each row that did not; these are reported, never silently dropped.
    """
    from tqdm.auto import tqdm

    rows = catalog.to_dict("records")

    def load(row: dict[str, Any]) -> np.ndarray | str:
        try:
            return load_array(row["path"], size, bbox=bbox_of(row), max_pixels=max_pixels)
        except ImageError as err:
            return err.reason

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        results = list(tqdm(pool.map(load, rows), total=len(rows), desc=desc, unit="img"))
    ok = np.array([not isinstance(r, str) for r in results], dtype=bool)
    skipped = [
        (str(row["path"]), r) for row, r in zip(rows, results, strict=True) if isinstance(r, str)
    ]
    for path, reason in skipped:
        print(f"skipped {path}: {reason}")
    arrays = [r for r in results if not isinstance(r, str)]
    pixels = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return pixels, ok, skipped


def _holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a seeded, stratified `fraction` of rows (at least 1 of each class of 2+)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for value in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == value)
        if len(idx) < 2:
            continue
        n = max(1, int(round(fraction * len(idx))))
        mask[rng.permutation(idx)[:n]] = True
    return mask


def split_rows(catalog: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Which catalog rows train and which validate.

    Rows in split "train" (or with no split) fit; rows in "validation" validate; "test" rows
    are never touched. Labelled catalogs use labelled rows only. Without validation rows, a
    seeded 10% of the fit rows (stratified by label when there are labels) is held out.

    Returns (fit_mask, validation_mask, labelled).
    """
    labels = catalog["label"] if "label" in catalog else pd.Series(pd.NA, index=catalog.index)
    split = catalog["split"] if "split" in catalog else pd.Series(pd.NA, index=catalog.index)
    has_label = labels.notna().to_numpy()
    labelled = labels[has_label].nunique() >= 2
    usable = has_label if labelled else np.ones(len(catalog), dtype=bool)
    split_values = split.astype("string").fillna("train").to_numpy()
    fit = usable & (split_values == "train")
    val = usable & (split_values == "validation")
    if not val.any():
        keys = labels.astype("string").fillna("").to_numpy()[fit] if labelled else None
        if keys is None:
            keys = np.zeros(int(fit.sum()), dtype=int)
        held = _holdout(keys, HOLDOUT_FRACTION, seed)
        fit_idx = np.flatnonzero(fit)
        val = np.zeros(len(catalog), dtype=bool)
        val[fit_idx[held]] = True
        fit[fit_idx[held]] = False
    return fit, val, bool(labelled)


def _augment_batch(images: tf.Tensor) -> tf.Tensor:
    """Random crop (resized back), horizontal flip and colour jitter on a float 0-255 batch.

    Crop and flip are one `crop_and_resize` per batch (a box with x1 > x2 samples a mirrored
    crop), so augmentation costs little next to the training step on 2 cores. The random ops
    take no op seed on purpose: with one, all of them would draw the same numbers; the global
    seed set by `keras.utils.set_random_seed` makes the sequence repeatable.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    side = tf.random.uniform([batch], CROP_MIN, 1.0)
    aspect = tf.exp(tf.random.uniform([batch], -0.1, 0.1))
    h = tf.minimum(side * aspect, 1.0)
    w = tf.minimum(side / aspect, 1.0)
    y1 = tf.random.uniform([batch]) * (1.0 - h)
    x1 = tf.random.uniform([batch]) * (1.0 - w)
    flip = tf.random.uniform([batch]) < 0.5
    left = tf.where(flip, x1 + w, x1)
    right = tf.where(flip, x1, x1 + w)
    boxes = tf.stack([y1, left, y1 + h, right], axis=1)
    images = tf.image.crop_and_resize(images, boxes, tf.range(batch), tf.stack([height, width]))

    def factor(spread: float) -> tf.Tensor:
        return tf.random.uniform([batch, 1, 1, 1], 1.0 - spread, 1.0 + spread)

    gray = tf.reduce_mean(images, axis=-1, keepdims=True)
    images = gray + (images - gray) * factor(JITTER)  # saturation
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = mean + (images - mean) * factor(JITTER)  # contrast
    images = images + 255.0 * (factor(JITTER) - 1.0)  # brightness
    return tf.clip_by_value(images, 0.0, 255.0)


def _dataset(
    pixels: np.ndarray, targets: np.ndarray | None, *, train: bool, seed: int
) -> tf.data.Dataset:
    """Batches of (float32 images, targets); an autoencoder's target is its (augmented) input."""
    ds = tf.data.Dataset.from_tensor_slices(pixels if targets is None else (pixels, targets))
    if train:
        ds = ds.shuffle(len(pixels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(TRAIN_BATCH)

    def prepare(*batch):
        images = tf.cast(batch[0], tf.float32)
        if train:
            images = _augment_batch(images)
        if targets is None:
            return images, images / 255.0
        return images, batch[1]

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- training loop


class _Schedule(keras.callbacks.Callback):
    """Warm-up then cosine decay, over whichever ends first: the epochs or the time budget.

    Progress is max(step / total steps, elapsed / budget), so on a slow or busy machine the
    learning rate still anneals before the budget stops training instead of being cut off at
    its peak. Also stops training after the epoch that passes the budget, and records the
    learning rate and wall time of each epoch.
    """

    def __init__(self, base_lr: float, epochs: int, steps_per_epoch: int, budget_s: float):
        super().__init__()
        self.base_lr = base_lr
        self.total_steps = max(1, epochs * steps_per_epoch)
        self.warmup_steps = max(1, int(WARMUP_FRACTION * self.total_steps))
        self.budget_s = budget_s
        self.step = 0
        self.start = 0.0
        self.epoch_start = 0.0
        self.out_of_time = False

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.monotonic()

    def on_train_batch_begin(self, batch, logs=None):
        elapsed = time.monotonic() - self.start
        progress = min(1.0, max(self.step / self.total_steps, elapsed / self.budget_s))
        warmup = min(1.0, (self.step + 1) / self.warmup_steps)
        lr = self.base_lr * warmup * 0.5 * (1.0 + math.cos(math.pi * progress))
        self.model.optimizer.learning_rate.assign(lr)
        self.step += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())
            logs["epoch_seconds"] = time.monotonic() - self.epoch_start
        if time.monotonic() - self.start > self.budget_s:
            print(f"time budget of {self.budget_s:.0f}s reached after epoch {epoch + 1}; stopping")
            self.out_of_time = True
            self.model.stop_training = True


def _optimizer(config: Config) -> keras.optimizers.Optimizer:
    optimizer = keras.optimizers.AdamW(
        learning_rate=config.cnn_learning_rate, weight_decay=WEIGHT_DECAY
    )
    # Decay shrinks weights towards zero; batch-norm scales/offsets and biases should not be.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def _fit(
    train_model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None,
    steps_per_epoch: int,
    config: Config,
    monitor: str,
) -> tuple[list[dict[str, float]], str]:
    schedule = _Schedule(
        config.cnn_learning_rate, config.cnn_epochs, steps_per_epoch, config.cnn_time_budget_s
    )
    mode = "max" if "accuracy" in monitor else "min"
    stopper = keras.callbacks.EarlyStopping(
        monitor=monitor, mode=mode, patience=config.cnn_patience, restore_best_weights=True
    )
    history = train_model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.cnn_epochs,
        callbacks=[schedule, stopper],
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=2,
    )
    epochs = [
        {"epoch": i + 1, **{k: float(v[i]) for k, v in history.history.items()}}
        for i in range(len(history.epoch))
    ]
    if schedule.out_of_time:
        stopped_by = "time_budget"
    elif stopper.stopped_epoch > 0:
        stopped_by = "early_stopping"
    else:
        stopped_by = "epochs"
    return epochs, stopped_by


def _train_classifier(
    pixels: np.ndarray,
    labels: np.ndarray,
    fit: np.ndarray,
    val: np.ndarray,
    config: Config,
    precision: str,
) -> tuple[keras.Model, list[str], list[dict[str, float]], str]:
    class_names = sorted(set(labels[fit].tolist()))
    index = {name: i for i, name in enumerate(class_names)}
    # A validation photo of a class train never saw cannot be classified; leave it out.
    val = val & np.isin(labels, class_names)
    y = np.array([index.get(v, -1) for v in labels], dtype=np.int32)
    onehot = np.eye(len(class_names), dtype=np.float32)[np.clip(y, 0, None)]

    model = _build_classifier(len(class_names), config, precision)
    train_model = keras.Model(model.input, model.outputs[1])
    train_model.compile(
        optimizer=_optimizer(config),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    seed = config.seed
    train_ds = _dataset(pixels[fit], onehot[fit], train=True, seed=seed)
    val_ds = _dataset(pixels[val], onehot[val], train=False, seed=seed) if val.any() else None
    steps = math.ceil(fit.sum() / TRAIN_BATCH)
    monitor = "val_accuracy" if val_ds is not None else "accuracy"
    history, stopped_by = _fit(train_model, train_ds, val_ds, steps, config, monitor)

    inference = build_classifier(len(class_names), config)
    inference.set_weights(model.get_weights())
    return inference, class_names, history, stopped_by


def _fit_pca_projection(model: keras.Model, pixels: np.ndarray, config: Config) -> None:
    """Set `embedding_dense` to the PCA of the pooled bottleneck over the training images.

    Reconstruction loss never trains the dense layer; PCA makes it keep the directions along
    which the catalog's pooled features vary most, rather than a random projection.
    """
    pooled = keras.Model(model.input, model.get_layer("pool").output)
    feats = pooled.predict(pixels.astype(np.float32), batch_size=TRAIN_BATCH, verbose=0)
    mean = feats.mean(axis=0)
    _, _, vt = np.linalg.svd(feats - mean, full_matrices=False)
    dim = config.cnn_embedding_dim
    kernel = np.zeros((feats.shape[1], dim), dtype=np.float32)
    k = min(dim, vt.shape[0])
    kernel[:, :k] = vt[:k].T
    # Signs of principal axes are arbitrary; fix them so reruns give comparable vectors.
    signs = np.sign(kernel[np.abs(kernel).argmax(axis=0), np.arange(dim)])
    kernel *= np.where(signs == 0, 1.0, signs)
    bias = -(mean @ kernel)
    model.get_layer("embedding_dense").set_weights([kernel, bias.astype(np.float32)])


def _train_autoencoder(
    pixels: np.ndarray, fit: np.ndarray, val: np.ndarray, config: Config, precision: str
) -> tuple[keras.Model, list[dict[str, float]], str]:
    model = _build_autoencoder(config, precision)
    train_model = keras.Model(model.input, model.outputs[1])
    train_model.compile(optimizer=_optimizer(config), loss="mse")
    train_ds = _dataset(pixels[fit], None, train=True, seed=config.seed)
    val_ds = _dataset(pixels[val], None, train=False, seed=config.seed) if val.any() else None
    steps = math.ceil(fit.sum() / TRAIN_BATCH)
    monitor = "val_loss" if val_ds is not None else "loss"
    history, stopped_by = _fit(train_model, train_ds, val_ds, steps, config, monitor)

    full = build_autoencoder(config)
    full.set_weights(model.get_weights())
    _fit_pca_projection(full, pixels[fit], config)
    inference = keras.Model(full.input, full.get_layer("embedding").output, name="custom_cnn")
    return inference, history, stopped_by


def train_custom_cnn(catalog: pd.DataFrame, config: Config) -> TrainedModel:
    """Decode the catalog once, then train the classifier (or the autoencoder without labels).

    Parameters
    ----------
    catalog:
        The catalog table (`path`, `label`, `split`, optional `bbox_*` columns).
    config:
        The cnn_* settings, `seed` and `max_pixels` are used.

    Returns
    -------
    TrainedModel
        With the float32 inference model; see `build_classifier` / `build_autoencoder`.
    """
    keras.utils.set_random_seed(config.seed)
    fit, val, labelled = split_rows(catalog, config.seed)
    used = fit | val
    if not fit.any():
        raise LookalikeError(
            f"the catalog has no rows to train on ({len(catalog)} rows, none in split 'train' "
            f"or without a split) — rebuild it with `{CATALOG_COMMAND}`"
        )
    size = config.cnn_image_size
    pixels, ok, skipped = decode_catalog(
        catalog[used], size, config.max_pixels, desc=f"decoding at {size}px"
    )
    # Keep only the rows that decoded, in the same order as `pixels`.
    keep = np.flatnonzero(used)[ok]
    fit, val = fit[keep], val[keep]
    if not fit.any():
        raise LookalikeError(f"none of the {int(used.sum())} training images could be decoded")
    precision = _training_precision()
    print(
        f"training the custom CNN ({'classifier' if labelled else 'autoencoder'}) on "
        f"{int(fit.sum())} images, validating on {int(val.sum())}, {size}px, {precision}"
    )
    start = time.monotonic()
    class_names: list[str] = []
    if labelled:
        labels = catalog["label"].astype("string").fillna("").to_numpy()[keep]
        model, class_names, history, stopped_by = _train_classifier(
            pixels, labels, fit, val, config, precision
        )
        kind = "classifier"
    else:
        model, history, stopped_by = _train_autoencoder(pixels, fit, val, config, precision)
        kind = "autoencoder"
    seconds = time.monotonic() - start
    val_acc = [e["val_accuracy"] for e in history if "val_accuracy" in e]
    val_loss = [e["val_loss"] for e in history if "val_loss" in e]
    return TrainedModel(
        model=model,
        kind=kind,
        class_names=class_names,
        history=history,
        best_val_accuracy=max(val_acc) if val_acc else None,
        best_val_loss=min(val_loss) if val_loss else None,
        epochs_run=len(history),
        train_seconds=round(seconds, 1),
        n_train=int(fit.sum()),
        n_validation=int(val.sum()),
        stopped_by=stopped_by,
        precision=precision,
        skipped=skipped,
    )


# --------------------------------------------------------------------------- stage


def model_path(config: Config) -> Path:
    """Where the stage writes the model: `models_dir / custom_cnn.keras`."""
    return config.models_dir / MODEL_FILE


def train_params(config: Config) -> dict[str, Any]:
    """The settings that define a trained model (its manifest's params and freshness key)."""
    return {
        "architecture": ARCHITECTURE_VERSION,
        "cnn_image_size": config.cnn_image_size,
        "cnn_embedding_dim": config.cnn_embedding_dim,
        "cnn_epochs": config.cnn_epochs,
        "cnn_patience": config.cnn_patience,
        "cnn_learning_rate": config.cnn_learning_rate,
        "cnn_time_budget_s": config.cnn_time_budget_s,
        "seed": config.seed,
    }


def save_custom_cnn(trained: TrainedModel, config: Config, catalog_sha256: str) -> dict[str, Any]:
    """Write the model (atomically), its per-epoch history and manifest; returns the manifest."""
    path = model_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keras insists on the .keras suffix, so the temporary name keeps it.
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        trained.model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    write_json(
        {
            "kind": trained.kind,
            "stopped_by": trained.stopped_by,
            "epochs": trained.history,
        },
        config.models_dir / HISTORY_FILE,
    )
    extra = {
        "kind": trained.kind,
        "class_names": trained.class_names,
        "image_size": config.cnn_image_size,
        "embedding_dim": config.cnn_embedding_dim,
        "input": "float32 (batch, S, S, 3) pixel values 0-255 from images.load_array",
        "outputs": ["embedding", "category"] if trained.kind == "classifier" else ["embedding"],
        "best_val_accuracy": trained.best_val_accuracy,
        "best_val_loss": trained.best_val_loss,
        "epochs_run": trained.epochs_run,
        "stopped_by": trained.stopped_by,
        "train_seconds": trained.train_seconds,
        "n_train": trained.n_train,
        "n_validation": trained.n_validation,
        "n_skipped": len(trained.skipped),
        "train_precision": trained.precision,
        "history": HISTORY_FILE,
    }
    return write_manifest(
        path, STAGE, train_params(config), {"catalog": catalog_sha256}, extra=extra
    )


def run_train(config: Config, force: bool = False) -> dict[str, Any]:
    """Stage: train the custom CNN on the catalog unless the saved model is up to date.

    Reads `config.catalog_path`; writes `models/custom_cnn.keras`, `custom_cnn.history.json`
    and `custom_cnn.manifest.json`. Returns the model's manifest.
    """
    catalog_sha = artifact_hash(config.catalog_path, CATALOG_COMMAND)
    path = model_path(config)
    params = train_params(config)
    inputs = {"catalog": catalog_sha}
    if not force and is_fresh(path, STAGE, params, inputs):
        manifest = read_manifest(path) or {}
        print(f"{path} is up to date ({manifest.get('kind')}); use --force to retrain")
        return manifest
    # The manifest's hash is of the file as it was written; a catalog rewritten since then
    # (without its manifest) must not be trained on under the old hash.
    if sha256_file(config.catalog_path) != catalog_sha:
        raise LookalikeError(
            f"{config.catalog_path} changed after its manifest was written — "
            f"rerun `{CATALOG_COMMAND}`"
        )
    catalog = pd.read_parquet(config.catalog_path)
    trained = train_custom_cnn(catalog, config)
    manifest = save_custom_cnn(trained, config, catalog_sha)
    acc = trained.best_val_accuracy
    print(
        f"trained {trained.kind} in {trained.train_seconds:.0f}s, {trained.epochs_run} epochs "
        f"(stopped by {trained.stopped_by})"
        + (f", best val accuracy {acc:.3f}" if acc is not None else "")
        + (f", best val loss {trained.best_val_loss:.4f}" if acc is None else "")
        + f" -> {path}"
    )
    return manifest


def load_custom_cnn(config: Config) -> tuple[keras.Model, dict[str, Any]]:
    """The saved custom CNN for inference, and its manifest.

    The model takes float32 (batch, S, S, 3) pixels in 0-255 (`images.load_array(...)` cast to
    float32) and returns [embedding, probs] (classifier) or [embedding] (autoencoder); S is
    `manifest["image_size"]`, the class order `manifest["class_names"]`.
    """
    path = model_path(config)
    manifest = read_manifest(path)
    if not path.is_file() or manifest is None:
        raise LookalikeError(f"{path} is missing — run `{TRAIN_COMMAND}` first")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:  # a broken file of any kind has one fix
        raise LookalikeError(
            f"{path} cannot be loaded ({type(err).__name__}: {err}) — rerun "
            f"`{TRAIN_COMMAND} --force`"
        ) from err
    return model, manifest

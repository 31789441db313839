"""Reads the catalog, trains the custom CNN; writes models/custom_cnn.keras, history, manifest.

A labelled catalog trains a classifier whose L2-normalised `embedding` layer is the retrieval
vector; a catalog without labels trains a convolutional autoencoder instead, whose pooled
bottleneck (projected to the embedding width by PCA) is the vector.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pipelines import commands
from pipelines.artifacts import (
    artifact_hash,
    atomic_path,
    is_fresh,
    read_manifest,
    sha256_file,
    write_json,
    write_manifest,
)
from pipelines.config import Config
from pipelines.data import pixel_cache
from pipelines.errors import LookalikeError
from pipelines.models import training_set
from pipelines.models.cnn import (
    autoencoder_model,
    build_autoencoder,
    build_classifier,
    classifier_model,
    training_precision,
)
from pipelines.models.cnn_descriptor import (
    Descriptor,
    feature_model,
    fit_descriptor,
    pooled_features,
)
from pipelines.models.train_data import TRAIN_BATCH, split_rows, training_dataset
from pipelines.stage import StageResult

STAGE = "train"

# Bumped whenever the architecture, augmentation or schedule changes, so a saved model made
# by older code is retrained rather than reported as up to date.
ARCHITECTURE_VERSION = "resnet-lite-5-shifted-views"

LABEL_SMOOTHING = 0.1
WEIGHT_DECAY = 0.05
# Fraction of the schedule spent warming the learning rate up from zero.
WARMUP_FRACTION = 0.05


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
    descriptor: Descriptor | None = None  # a classifier's appearance descriptor


# --------------------------------------------------------------------------- training loop


class _Schedule(keras.callbacks.Callback):
    """Warm-up then cosine decay over the epochs (steps), never over wall time: a busy
    machine trains the same model, only later. The time budget is a safety limit: training
    stops after the epoch that passes it (recorded as "time_budget"). Also records the
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
        progress = min(1.0, self.step / self.total_steps)
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
        steps_per_epoch=steps_per_epoch,  # the training stream repeats without end
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

    model = classifier_model(len(class_names), config, precision)
    train_model = keras.Model(model.input, model.outputs[1])
    train_model.compile(
        optimizer=_optimizer(config),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    seed = config.seed
    train_ds = training_dataset(pixels[fit], onehot[fit], train=True, seed=seed)
    val_ds = (
        training_dataset(pixels[val], onehot[val], train=False, seed=seed) if val.any() else None
    )
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
    model = autoencoder_model(config, precision)
    train_model = keras.Model(model.input, model.outputs[1])
    train_model.compile(optimizer=_optimizer(config), loss="mse")
    train_ds = training_dataset(pixels[fit], None, train=True, seed=config.seed)
    val_ds = (
        training_dataset(pixels[val], None, train=False, seed=config.seed) if val.any() else None
    )
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
    # Deterministic kernels: with seeded, stateless augmentation and an epoch-bound schedule,
    # the same settings give the same model on a quiet or a busy machine.
    tf.config.experimental.enable_op_determinism()
    fit, val, labelled = split_rows(catalog, config.seed)
    used = fit | val
    if not fit.any():
        raise LookalikeError(
            f"the catalog has no rows to train on ({len(catalog)} rows, none in split 'train' "
            f"or without a split) — rebuild it with `{commands.CATALOG}`"
        )
    size = config.cnn_image_size
    # Every row, decoded once and cached for the embed stage (pipelines/data/pixel_cache.py).
    cached = pixel_cache.catalog_pixels(config, catalog, size)
    failed = np.flatnonzero(~cached.ok)
    skipped = [s for row, s in zip(failed, cached.skipped, strict=True) if used[row]]
    keep = np.flatnonzero(used & cached.ok)
    pixels = cached.pixels[keep]
    fit, val = fit[keep], val[keep]
    if not fit.any():
        raise LookalikeError(f"none of the {int(used.sum())} training images could be decoded")
    precision = training_precision()
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
        # Whitening statistics of the train photos only: validation and test stay unseen.
        descriptor = None
        if config.cnn_appearance_share > 0:
            _, _, parts = pooled_features(feature_model(model), pixels[fit])
            descriptor = fit_descriptor(parts, config.cnn_appearance_share)
    else:
        model, history, stopped_by = _train_autoencoder(pixels, fit, val, config, precision)
        kind = "autoencoder"
        descriptor = None
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
        descriptor=descriptor,
    )


# --------------------------------------------------------------------------- stage


def train_params(config: Config) -> dict[str, Any]:
    """The settings that define a trained model (its manifest's params and freshness key)."""
    return {
        "architecture": ARCHITECTURE_VERSION,
        "cnn_image_size": config.cnn_image_size,
        "cnn_embedding_dim": config.cnn_embedding_dim,
        "cnn_epochs": config.cnn_epochs,
        "cnn_patience": config.cnn_patience,
        "cnn_learning_rate": config.cnn_learning_rate,
        "cnn_appearance_share": config.cnn_appearance_share,
        "cnn_time_budget_s": config.cnn_time_budget_s,
        "seed": config.seed,
    }


def save_custom_cnn(trained: TrainedModel, config: Config, training_set: str) -> dict[str, Any]:
    """Write the model (atomically), its per-epoch history and manifest; returns the manifest.

    `training_set` is the content hash of the items it learnt from (`training_set.ensure`)."""
    path = config.custom_cnn_path
    with atomic_path(path) as tmp:
        trained.model.save(tmp)
    vector_dim = config.cnn_embedding_dim
    if trained.descriptor is not None:
        trained.descriptor.save(config.custom_cnn_descriptor_path)
        vector_dim += trained.descriptor.dim
    else:
        config.custom_cnn_descriptor_path.unlink(missing_ok=True)
    write_json(
        {
            "kind": trained.kind,
            "stopped_by": trained.stopped_by,
            "epochs": trained.history,
        },
        config.custom_cnn_history_path,
    )
    extra = {
        "kind": trained.kind,
        "class_names": trained.class_names,
        "image_size": config.cnn_image_size,
        "embedding_dim": config.cnn_embedding_dim,
        "vector_dim": vector_dim,
        "descriptor": (
            {
                "file": config.custom_cnn_descriptor_path.name,
                "sha256": sha256_file(config.custom_cnn_descriptor_path),
                "appearance_share": trained.descriptor.share,
            }
            if trained.descriptor is not None
            else None
        ),
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
        "history": config.custom_cnn_history_path.name,
    }
    return write_manifest(
        path, STAGE, train_params(config), {"training_set": training_set}, extra=extra
    )


def run_train(config: Config, force: bool = False) -> StageResult:
    """Stage: train the custom CNN on the catalog unless the saved model is up to date.

    Reads `config.catalog_path`; writes `models/custom_cnn.keras`, `custom_cnn.history.json`
    and `custom_cnn.manifest.json`. The result's details are the model's manifest.
    """
    start = time.perf_counter()
    catalog_sha = artifact_hash(config.catalog_path, commands.CATALOG)
    catalog = pd.read_parquet(config.catalog_path)
    # Keyed on the training set, not the catalog: photos added since training are embedded
    # with this model until the retrain policy (or --force) renews the set.
    snapshot = training_set.ensure(config, catalog, retrain=force)
    path = config.custom_cnn_path
    params = train_params(config)
    inputs = {"training_set": snapshot}
    if not force and is_fresh(path, STAGE, params, inputs):
        manifest = read_manifest(path) or {}
        print(f"{path} is up to date ({manifest.get('kind')}); use --force to retrain")
        return _train_result(manifest, (), start, skipped=True)
    # The manifest's hash is of the file as it was written; a catalog rewritten since then
    # (without its manifest) must not be trained on under the old hash.
    if sha256_file(config.catalog_path) != catalog_sha:
        raise LookalikeError(
            f"{config.catalog_path} changed after its manifest was written — "
            f"rerun `{commands.CATALOG}`"
        )
    catalog = catalog[training_set.in_training_set(config, catalog)].reset_index(drop=True)
    trained = train_custom_cnn(catalog, config)
    manifest = save_custom_cnn(trained, config, snapshot)
    acc = trained.best_val_accuracy
    print(
        f"trained {trained.kind} in {trained.train_seconds:.0f}s, {trained.epochs_run} epochs "
        f"(stopped by {trained.stopped_by})"
        + (f", best val accuracy {acc:.3f}" if acc is not None else "")
        + (f", best val loss {trained.best_val_loss:.4f}" if acc is None else "")
        + f" -> {path}"
    )
    wrote = (path, config.custom_cnn_history_path)
    if trained.descriptor is not None:
        wrote += (config.custom_cnn_descriptor_path,)
    return _train_result(manifest, wrote, start)


def _train_result(
    manifest: dict[str, Any], wrote: tuple[Path, ...], start: float, skipped: bool = False
) -> StageResult:
    acc = manifest.get("best_val_accuracy")
    note = str(manifest.get("kind") or "")
    if acc is not None:
        note += f", val accuracy {acc:.3f}"
    return StageResult(
        STAGE,
        wrote=wrote,
        rows=manifest.get("n_train"),
        seconds=time.perf_counter() - start,
        skipped=skipped,
        note=note,
        details=manifest,
    )


def load_custom_cnn(config: Config) -> tuple[keras.Model, dict[str, Any]]:
    """The saved custom CNN for inference, and its manifest.

    The model takes float32 (batch, S, S, 3) pixels in 0-255 (`images.load_array(...)` cast to
    float32) and returns [embedding, probs] (classifier) or [embedding] (autoencoder); S is
    `manifest["image_size"]`, the class order `manifest["class_names"]`.
    """
    path = config.custom_cnn_path
    manifest = read_manifest(path)
    if not path.is_file() or manifest is None:
        raise LookalikeError(f"{path} is missing — run `{commands.TRAIN}` first")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:  # a broken file of any kind has one fix
        raise LookalikeError(
            f"{path} cannot be loaded ({type(err).__name__}: {err}) — rerun "
            f"`{commands.TRAIN} --force`"
        ) from err
    return model, manifest

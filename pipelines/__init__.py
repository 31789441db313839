"""Lookalike engine: pure stages from image folders to embeddings, maps, clusters and metrics."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) would bury the stages' own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

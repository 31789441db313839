"""Lookalike engine: pure stages from image folders to embeddings, maps, clusters and metrics."""

"""Search: the exact and approximate indexes, top-k, re-ranking, diversity, neighbour tables, the
neighbours and ann stages, and photo search."""

"""What the explorer draws: UMAP maps, k-means clusters, photo mosaics, rasters and the tables the
app browses."""

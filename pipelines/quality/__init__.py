"""How good the results are: retrieval metrics, the evaluate stage, likeness and shifted checks,
catalog health."""

"""The feature extractors and everything trained: InceptionV3's weights, the custom CNN, the metric
head, the category classifier."""

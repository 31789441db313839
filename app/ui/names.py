"""The names the app shows for extractors and search strategies (registry name -> label);
read by the sidebar, the plots' titles and the upload models' progress."""

from __future__ import annotations

EXTRACTOR_NAMES = {
    "inception_v3": "InceptionV3 (ImageNet)",
    "custom_cnn": "Custom CNN (trained)",
    "inception_head": "Metric head (InceptionV3 + CNN)",
}
STRATEGY_NAMES = {
    "exact": "exact (whole catalog)",
    "cluster": "cluster (query's nearest k-means clusters)",
    "category": "category (predicted; wider when unsure)",
}


def display_name(extractor: str) -> str:
    """The extractor's name as the sidebar shows it ("InceptionV3 (ImageNet)"); an unknown
    name as it is."""
    return EXTRACTOR_NAMES.get(extractor, extractor)

"""FID/KID: feature extractors, cached real statistics, the metric and folder/generator evaluation."""

from genface.metrics.extractors import FeatureExtractor, build_extractor
from genface.metrics.fidkid import FIDKID
from genface.metrics.scoring import evaluate_folders, evaluate_generator
from genface.metrics.stats import RealStats, compute_real_stats, load_or_compute_real_stats

__all__ = [
    "FIDKID",
    "FeatureExtractor",
    "RealStats",
    "build_extractor",
    "compute_real_stats",
    "evaluate_folders",
    "evaluate_generator",
    "load_or_compute_real_stats",
]

"""Offline image-quality evaluation: feature extractor, metrics, data-set classifier, optional Inception.

- `features`: EffNetLite0Features (ImageNet EfficientNet-Lite0 from a wheel; 1280-d), extract_features.
- `metrics`: frechet_distance, kernel_distance (KID), precision_recall (k-NN, k=3), inception_score,
  class_accuracy -- numpy/torch only.
- `classifier`: ClassifierNet, train_classifier, load_classifier, predict_probs.
- `inception`: true FID/IS with a user-supplied torch-fidelity weights file (never downloaded).
The end-to-end entry point is `coarse2fine.eval.samples.evaluate_images`.
"""
from coarse2fine.eval.classifier import ClassifierNet, load_classifier, predict_probs, train_classifier
from coarse2fine.eval.features import DEFAULT_FEATURE_RESOLUTION, EffNetLite0Features, extract_features
from coarse2fine.eval.metrics import (class_accuracy, feature_stats, frechet_distance,
                                      frechet_distance_from_features, inception_score, kernel_distance,
                                      precision_recall)

__all__ = ["ClassifierNet", "DEFAULT_FEATURE_RESOLUTION", "EffNetLite0Features", "class_accuracy",
           "extract_features", "feature_stats", "frechet_distance", "frechet_distance_from_features",
           "inception_score", "kernel_distance", "load_classifier", "precision_recall", "predict_probs",
           "train_classifier"]

"""Feature-level OOD baselines on the cached DLSR features (no labels needed).

A thin re-export: the code lives in `dlsr_jax.detectors.mahalanobis` (one Gaussian, optional
shrinkage) and `dlsr_jax.detectors.knn` (cosine KNN of Sun et al.). Convention: a score is
HIGHER for more OOD-looking inputs.
"""

from __future__ import annotations

from dlsr_jax.detectors.knn import KNN_NORM_EPS, KNNModel, fit_knn, knn_score
from dlsr_jax.detectors.mahalanobis import (LEDOIT_WOLF, MahalanobisModel, Shrinkage,
                                            fit_mahalanobis, mahalanobis_score)

__all__ = ["KNN_NORM_EPS", "KNNModel", "LEDOIT_WOLF", "MahalanobisModel", "Shrinkage", "fit_knn",
           "fit_mahalanobis", "knn_score", "mahalanobis_score"]

"""Figures of OOD results (matplotlib, Agg backend): AUROC vs k; ROC curves and histograms."""

from __future__ import annotations

import os
from typing import Mapping, Optional

import numpy as np

from dlsr_jax.evaluation import metrics as metrics_lib
from dlsr_jax.evaluation import table


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_auroc_vs_k(results: Mapping, path: str) -> str:
  """AUROC against k for every k-dependent score (the paper's Fig. 4): one panel
  per score type, one line per OOD set, the average in black."""
  plt = _pyplot()
  scores = [s for s, by_k in results["metrics"].items() if table.NO_K not in by_k]
  if not scores:
    raise ValueError("no k-dependent scores to plot")
  ncols = min(4, len(scores))
  nrows = -(-len(scores) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
  for ax in axes.flat[len(scores):]:
    ax.set_visible(False)
  for ax, score in zip(axes.flat, scores):
    by_k = results["metrics"][score]
    ks = sorted(by_k, key=int)
    for name in by_k[ks[0]]:
      if name.startswith("group:"):
        continue
      vals = [100 * by_k[k][name]["auroc"] for k in ks]
      style = dict(color="k", lw=2.2) if name == "average" else dict(lw=1.0, alpha=0.8)
      ax.plot([int(k) for k in ks], vals, marker="o", ms=3, label=name, **style)
    ax.set(title=table.SCORE_TITLES.get(score, score), xlabel="k (noise level)", ylabel="AUROC (%)")
    ax.grid(alpha=0.3)
  axes.flat[len(scores) - 1].legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_roc_and_histograms(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray],
                            path: str, title: Optional[str] = None) -> str:
  """One PNG: ROC curves (left) and score histograms ID vs each OOD set (right)."""
  plt = _pyplot()
  from sklearn.metrics import roc_curve

  fig, (ax_roc, ax_hist) = plt.subplots(1, 2, figsize=(12, 4.8))
  lo = min(np.min(id_scores), *(np.min(s) for s in ood_scores.values()))
  hi = max(np.max(id_scores), *(np.max(s) for s in ood_scores.values()))
  bins = np.linspace(lo, hi, 60)
  ax_hist.hist(id_scores, bins=bins, density=True, alpha=0.6, label="ID", color="k")
  for name, s in ood_scores.items():
    labels = np.r_[np.zeros(len(id_scores)), np.ones(len(s))]
    fpr, tpr, _ = roc_curve(labels, np.r_[id_scores, s])
    auc = metrics_lib.auroc(id_scores, s)
    ax_roc.plot(fpr, tpr, label=f"{name} (AUROC {100 * auc:.1f})")
    ax_hist.hist(s, bins=bins, density=True, alpha=0.4, histtype="stepfilled", label=name)
  ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax_roc.set(xlabel="false positive rate (ID flagged OOD)", ylabel="true positive rate (OOD caught)",
             title="ROC (OOD positive)")
  ax_roc.legend(fontsize=8, loc="lower right")
  ax_hist.set(xlabel="score (higher = more OOD)", ylabel="density", title="score histograms")
  ax_hist.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path

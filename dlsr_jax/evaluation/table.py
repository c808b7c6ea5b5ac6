"""The results schema: metrics per score type, k and OOD set; seed means; CSV rows.

`results` layout (what `experiments.evaluate` writes to results.json):
  {"id_set": str, "ood_sets": [str], "ks": [int],
   "metrics": {score: {str(k): {ood_set | "average": {metric: float}}}},
   "settings": {...}, "timing": {...}}
Metric values are fractions; tables print percentages.
"""

from __future__ import annotations

from typing import Collection, Mapping, Optional, Sequence

import numpy as np

from dlsr_jax.evaluation import metrics as metrics_lib

METRIC_COLUMNS = (
    ("auroc", "AUROC"),
    ("aupr_in", "AUPR-In"),
    ("aupr_out", "AUPR-Out"),
    ("fpr95_id_positive", "FPR95 (ID+)"),
    ("fpr95_ood_positive", "FPR95 (OOD+)"),
)
SCORE_TITLES = {"mse": "DLSR-MSE", "mfsim": "DLSR-MFsim", "lr_mse": "DLSR-LR (MSE)",
                "lr_mfsim": "DLSR-LR (MFsim)", "mahalanobis": "Mahalanobis",
                "knn": "KNN (cosine)", "ae_mse": "AutoEncoder-MSE",
                "ae_mfsim": "AutoEncoder-MFsim", "last_mse": "Last layer only-MSE",
                "last_mfsim": "Last layer only-MFsim"}


NO_K = "-"   # the "k" key of scores that do not depend on a noise level (baselines)



def _mean_rows(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def metrics_table(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray],
                  groups: Optional[Mapping[str, Sequence[str]]] = None
                  ) -> dict[str, dict[str, float]]:
  """{ood set: metrics} for one score array per set, then "group:<name>" averages
  over each group's sets, then the "average" row over all sets."""
  if not ood_scores:
    raise ValueError("no OOD sets to evaluate")
  rows = {name: metrics_lib.compute_all(id_scores, s) for name, s in ood_scores.items()}
  per_set = list(rows.values())
  for g, members in (groups or {}).items():
    missing = [m for m in members if m not in ood_scores]
    if missing or not members:
      raise ValueError(f"OOD group {g!r} names unknown sets {missing} "
                       f"(known: {sorted(ood_scores)})")
    rows[f"group:{g}"] = _mean_rows([rows[m] for m in members])
  rows["average"] = _mean_rows(per_set)
  return rows


def all_metrics(id_scores: Mapping[str, np.ndarray], ood_scores: Mapping[str, Mapping[str, np.ndarray]],
                ks: Sequence[int], groups: Optional[Mapping[str, Sequence[str]]] = None,
                k_free: Collection[str] = ()) -> dict:
  """Metrics for every score type and k.

  Which scores depend on k is said, never guessed from array shapes: with a
  single k a baseline's [1, N] array has the shape of a k-dependent score.

  Args:
    id_scores: {score type: [K, N_id]}; a k-free score (named in `k_free`) is [1, N_id].
    ood_scores: {ood set: {score type: [K or 1, N_ood]}}.
    ks: the K noise levels.
    groups: optional {group: [ood set, ...]} averaged as "group:<name>" rows.
    k_free: score types that do not depend on k (baselines): keyed "-", never a k.

  Returns:
    {score type: {str(k) or "-": {ood set | "group:g" | "average": metrics}}}.
  """
  out = {}
  for score, id_arr in id_scores.items():
    out[score] = {}
    labels = [NO_K] if score in k_free else [str(int(k)) for k in ks]
    if id_arr.shape[0] != len(labels):
      kind = "a k-free score" if score in k_free else f"a score at {len(ks)} k values"
      raise ValueError(f"score {score!r} has {id_arr.shape[0]} rows; as {kind} it needs "
                       f"{len(labels)}")
    for j, label in enumerate(labels):
      per_set = {name: s[score][j] for name, s in ood_scores.items()}
      out[score][label] = metrics_table(id_arr[j], per_set, groups)
  return out


def mean_and_std(runs: Sequence[Mapping]) -> tuple[dict, dict]:
  """Mean and standard deviation (ddof 0) of several runs' `all_metrics` dicts.

  Every run must have the same scores, ks, sets and metrics (e.g. one LFDN per
  seed scored on the same features).
  """
  if not runs:
    raise ValueError("no runs to average")

  def walk(nodes):
    first = nodes[0]
    if not isinstance(first, Mapping):
      vals = np.asarray(nodes, np.float64)
      return float(vals.mean()), float(vals.std())
    if any(set(n) != set(first) for n in nodes):
      raise ValueError("runs differ in their scores, ks, sets or metrics: "
                       f"{sorted(first)} vs {[sorted(n) for n in nodes if set(n) != set(first)]}")
    pairs = {k: walk([n[k] for n in nodes]) for k in first}
    return ({k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()})

  return walk(list(runs))


def csv_rows(results: Mapping) -> list[dict]:
  """Flat rows (score, k, ood_set, metrics...) of a results dict."""
  rows = []
  std = results.get("metrics_std")
  for score, by_k in results["metrics"].items():
    for k, sets in by_k.items():
      for name, m in sets.items():
        row = {"score": score, "k": k, "ood_set": name, **m}
        if std is not None:
          row.update({f"{c}_std": v for c, v in std[score][k][name].items()})
        rows.append(row)
  return rows

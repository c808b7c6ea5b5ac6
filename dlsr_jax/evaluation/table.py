"""The results schema: metrics per score type, k and OOD set; seed means; CSV rows.

`results` layout (what `experiments.evaluate` writes to results.json):
  {"id_set": str, "ood_sets": {name: source}, "ks": [int],
   "metrics": {key: {str(k) | "-": {ood_set | "group:g" | "average": {metric: float}}}},
   "rows": {key: {"row", "detector", "net", "score"}},   # one key per row and score
   "accuracy": {net: ID test top-1}, "settings": {...}, "timing": {...}}
A key is a row's score ("mse", "knn", "head_msp", "ae_mse"; see `result_keys`); "-" marks a
score that does not depend on a noise level k. Metric values are fractions; tables print
percentages.
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
SCORE_TITLES = {"msp": "MSP", "odin": "ODIN", "energy": "Energy", "maxlogit": "Max logit",
                "mse": "DLSR-MSE", "mfsim": "DLSR-MFsim", "lr_mse": "DLSR-LR (MSE)",
                "lr_mfsim": "DLSR-LR (MFsim)", "mahalanobis": "Mahalanobis",
                "knn": "KNN (cosine)", "ae_mse": "AutoEncoder-MSE",
                "ae_mfsim": "AutoEncoder-MFsim", "last_mse": "Last layer only-MSE",
                "last_mfsim": "Last layer only-MFsim"}


# Shown after METRIC_COLUMNS where the results have them (the openood_* protocols); the
# step-wise AUPR columns are then titled as such (`metric_columns`).
TRAPEZOID_COLUMNS = (
    ("aupr_in_trapezoid", "AUPR-In (trapezoid)"),
    ("aupr_out_trapezoid", "AUPR-Out (trapezoid)"),
)
NO_K = "-"   # the "k" key of scores that do not depend on a noise level (baselines)



def _mean_rows(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def metric_columns(results: Mapping) -> tuple[tuple[str, str], ...]:
  """(metric, title) of the report's tables: METRIC_COLUMNS, plus TRAPEZOID_COLUMNS (and the
  step-wise AUPRs titled "(step)") when the results hold the trapezoidal AUPRs."""
  first = next((m for by_k in results.get("metrics", {}).values() for by_set in by_k.values()
                for m in by_set.values()), {})
  if not all(c in first for c, _ in TRAPEZOID_COLUMNS):
    return METRIC_COLUMNS
  step = tuple((c, f"{t} (step)" if c in ("aupr_in", "aupr_out") else t)
               for c, t in METRIC_COLUMNS)
  return step + TRAPEZOID_COLUMNS


def metrics_table(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray],
                  groups: Optional[Mapping[str, Sequence[str]]] = None, *,
                  trapezoid: bool = False) -> dict[str, dict[str, float]]:
  """{ood set: metrics} for one score array per set, then "group:<name>" averages
  over each group's sets, then the "average" row over all sets (`trapezoid`: with the
  trapezoidal AUPRs too)."""
  if not ood_scores:
    raise ValueError("no OOD sets to evaluate")
  rows = {name: metrics_lib.compute_all(id_scores, s, trapezoid=trapezoid)
          for name, s in ood_scores.items()}
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
  """Flat rows of a results dict: (net, detector, score, k, ood_set, metrics...) with row
  metadata (`results["rows"]`), else (score, k, ood_set, metrics...); k is "" when k-free."""
  rows = []
  std = results.get("metrics_std")
  meta = results.get("rows")
  for score, by_k in results["metrics"].items():
    for k, sets in by_k.items():
      for name, m in sets.items():
        if meta is None:
          row = {"score": score, "k": k, "ood_set": name, **m}
        else:
          r = meta[score]
          row = {"net": r.get("net", ""), "detector": r["row"], "type": r["detector"],
                 "score": r["score"], "key": score, "k": "" if k == NO_K else k,
                 "ood_set": name, **m}
        if std is not None:
          row.update({f"{c}_std": v for c, v in std[score][k][name].items()})
        rows.append(row)
  return rows


# ------------------------------------------------------------- detector rows --
def split_score(name: str) -> tuple[str, Optional[int]]:
  """"mse@3" -> ("mse", 3); "knn" -> ("knn", None)."""
  base, sep, k = name.partition("@")
  if sep and not k.lstrip("-").isdigit():
    raise ValueError(f"score name {name!r}: the part after '@' must be an int k")
  return base, (int(k) if sep else None)


def result_keys(row: str, detector_type: str, names: Sequence[str]) -> dict[str, str]:
  """{base score name: results key} of one row's scores.

  A row with one k-free score is keyed by the row name ("knn", "head_msp"); a row with
  several scores by the score names ("mse", "lr_mfsim") when the row is named after its
  type, else by "<row>_<score>" ("ae_mse").
  """
  parsed = [split_score(n) for n in names]
  bases = list(dict.fromkeys(b for b, _ in parsed))
  if len(bases) == 1 and all(k is None for _, k in parsed):
    return {bases[0]: row}
  return {b: b if row == detector_type else f"{row}_{b}" for b in bases}


def row_metrics(scores: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
                id_set: str, groups: Optional[Mapping[str, Sequence[str]]] = None, *,
                trapezoid: bool = False) -> dict:
  """Metrics of every results key and k.

  Args:
    scores: {key: {str(k) or NO_K: {set name: [N]}}}; `id_set` names the ID test set.
    groups: optional {group: [ood set, ...]} averaged as "group:<name>" rows.
    trapezoid: also the trapezoidal AUPRs (`metrics.TRAPEZOID_NAMES`).

  Returns:
    {key: {str(k) or "-": {ood set | "group:g" | "average": metrics}}}.
  """
  return {key: {k: metrics_table(by_set[id_set],
                                 {n: s for n, s in by_set.items() if n != id_set}, groups,
                                 trapezoid=trapezoid)
                for k, by_set in by_k.items()}
          for key, by_k in scores.items()}


def score_title(results: Mapping, key: str) -> str:
  """A key's title: "DLSR-MSE", or "KNN [knn on backbone]" for a configured row."""
  meta = results.get("rows", {}).get(key)
  base = meta["score"] if meta else key
  title = SCORE_TITLES.get(base, base)
  net = meta.get("net", "backbone") if meta else "backbone"
  if meta and (meta["row"] != meta["detector"] or net != "backbone"):
    title += (f" [{meta['row']}: {meta['detector']}" + ("" if "net" not in meta
                                                        else f" on {meta['net']}") + "]")
  return title

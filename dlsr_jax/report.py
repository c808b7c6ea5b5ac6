"""Tables, JSON and figures of OOD results.

`results` layout (what `experiments.evaluate` writes to results.json):
  {"id_set": str, "ood_sets": [str], "ks": [int],
   "metrics": {score: {str(k): {ood_set | "average": {metric: float}}}},
   "settings": {...}, "timing": {...}}
Metric values are fractions; tables print percentages.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Collection, Mapping, Optional, Sequence

import numpy as np

from dlsr_jax import metrics as metrics_lib

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


def markdown(results: Mapping) -> str:
  """A Markdown report: one table per score type and k (percentages)."""
  lines = [f"# OOD results: ID = `{results['id_set']}`", ""]
  for key, val in results.get("settings", {}).items():
    lines.append(f"- {key}: `{val}`")
  lines += ["", "AUROC, AUPR-In, AUPR-Out in %; higher is better. FPR95 in %, lower is "
            "better: (ID+) = OOD accepted at 95% ID kept (DLSR release); (OOD+) = ID "
            "rejected at 95% OOD caught (OpenOOD v1.5). AUPR = average precision.", ""]
  std = results.get("metrics_std")
  if std is not None:
    lines += [f"Mean +- standard deviation over {len(results.get('seeds', []))} training "
              f"seeds {results.get('seeds', '')}.", ""]
  header = "| OOD set | " + " | ".join(t for _, t in METRIC_COLUMNS) + " |"
  rule = "|---|" + "---:|" * len(METRIC_COLUMNS)
  for score, by_k in results["metrics"].items():
    for k, rows in by_k.items():
      title = SCORE_TITLES.get(score, score) + ("" if k == NO_K else f", k = {k}")
      lines += [f"## {title}", "", header, rule]
      for name, m in rows.items():
        if name == "average":
          label = "**Average**"
        elif name.startswith("group:"):
          label = f"*Average {name[6:]}*"
        else:
          label = f"`{name}`"
        sd = std[score][k][name] if std is not None else None
        lines.append(f"| {label} | " + " | ".join(_cell(m[c], sd and sd[c])
                                                  for c, _ in METRIC_COLUMNS) + " |")
      lines.append("")
  summary = summary_table(results)
  if summary:
    lines += ["## Average AUROC (%) by score and k", "", summary, ""]
  return "\n".join(lines)


def _cell(value: float, std: Optional[float] = None) -> str:
  """A percentage, with its standard deviation when there is one."""
  return f"{100 * value:.2f}" if std is None else f"{100 * value:.2f} ± {100 * std:.2f}"


def summary_table(results: Mapping) -> str:
  """Average AUROC per score type (rows) and k (columns)."""
  by_score = results["metrics"]
  if not by_score:
    return ""
  ks = list(dict.fromkeys(k for by_k in by_score.values() for k in by_k))
  lines = ["| score | " + " | ".join("k-free" if k == NO_K else f"k={k}" for k in ks) + " |",
           "|---|" + "---:|" * len(ks)]
  for score, by_k in by_score.items():
    std = results.get("metrics_std", {}).get(score)
    cells = [_cell(by_k[k]["average"]["auroc"], std and std[k]["average"]["auroc"])
             if k in by_k else "" for k in ks]
    lines.append(f"| {SCORE_TITLES.get(score, score)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_results(results: Mapping, outdir: str, stem: str = "results") -> dict[str, str]:
  """Writes `<stem>.json` and `<stem>.md`; returns their paths."""
  os.makedirs(outdir, exist_ok=True)
  paths = {ext: os.path.join(outdir, f"{stem}.{ext}") for ext in ("json", "md", "csv")}
  with open(paths["json"], "w") as f:
    json.dump(results, f, indent=2, sort_keys=False)
  with open(paths["md"], "w") as f:
    f.write(markdown(results))
  rows = csv_rows(results)
  with open(paths["csv"], "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return paths


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_auroc_vs_k(results: Mapping, path: str) -> str:
  """AUROC against k for every k-dependent score (the paper's Fig. 4): one panel
  per score type, one line per OOD set, the average in black."""
  plt = _pyplot()
  scores = [s for s, by_k in results["metrics"].items() if NO_K not in by_k]
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
    ax.set(title=SCORE_TITLES.get(score, score), xlabel="k (noise level)", ylabel="AUROC (%)")
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

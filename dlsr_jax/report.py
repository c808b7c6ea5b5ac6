"""Tables, JSON and figures of OOD results.

`results` layout (what `experiments.evaluate` writes to results.json):
  {"id_set": str, "ood_sets": [str], "ks": [int],
   "metrics": {score: {str(k): {ood_set | "average": {metric: float}}}},
   "settings": {...}, "timing": {...}}
Metric values are fractions; tables print percentages.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

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
                "lr_mfsim": "DLSR-LR (MFsim)"}


def metrics_table(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray]
                  ) -> dict[str, dict[str, float]]:
  """{ood set: metrics} for one score array per set, plus the "average" row."""
  if not ood_scores:
    raise ValueError("no OOD sets to evaluate")
  rows = {name: metrics_lib.compute_all(id_scores, s) for name, s in ood_scores.items()}
  keys = next(iter(rows.values())).keys()
  rows["average"] = {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}
  return rows


def all_metrics(id_scores: Mapping[str, np.ndarray], ood_scores: Mapping[str, Mapping[str, np.ndarray]],
                ks: Sequence[int]) -> dict:
  """Metrics for every score type and k.

  Args:
    id_scores: {score type: [K, N_id]}.
    ood_scores: {ood set: {score type: [K, N_ood]}}.
    ks: the K noise levels.

  Returns:
    {score type: {str(k): {ood set | "average": metrics}}}.
  """
  out = {}
  for score, id_arr in id_scores.items():
    out[score] = {}
    for j, k in enumerate(ks):
      per_set = {name: s[score][j] for name, s in ood_scores.items()}
      out[score][str(int(k))] = metrics_table(id_arr[j], per_set)
  return out


def markdown(results: Mapping) -> str:
  """A Markdown report: one table per score type and k (percentages)."""
  lines = [f"# OOD results: ID = `{results['id_set']}`", ""]
  for key, val in results.get("settings", {}).items():
    lines.append(f"- {key}: `{val}`")
  lines += ["", "AUROC, AUPR-In, AUPR-Out in %; higher is better. FPR95 in %, lower is "
            "better: (ID+) = OOD accepted at 95% ID kept (DLSR release); (OOD+) = ID "
            "rejected at 95% OOD caught (OpenOOD v1.5). AUPR = average precision.", ""]
  header = "| OOD set | " + " | ".join(t for _, t in METRIC_COLUMNS) + " |"
  rule = "|---|" + "---:|" * len(METRIC_COLUMNS)
  for score, by_k in results["metrics"].items():
    for k, rows in by_k.items():
      lines += [f"## {SCORE_TITLES.get(score, score)}, k = {k}", "", header, rule]
      for name, m in rows.items():
        label = "**Average**" if name == "average" else f"`{name}`"
        lines.append(f"| {label} | " + " | ".join(f"{100 * m[c]:.2f}" for c, _ in METRIC_COLUMNS)
                     + " |")
      lines.append("")
  summary = summary_table(results)
  if summary:
    lines += ["## Average AUROC (%) by score and k", "", summary, ""]
  return "\n".join(lines)


def summary_table(results: Mapping) -> str:
  """Average AUROC per score type (rows) and k (columns)."""
  by_score = results["metrics"]
  if not by_score:
    return ""
  ks = list(next(iter(by_score.values())).keys())
  lines = ["| score | " + " | ".join(f"k={k}" for k in ks) + " |",
           "|---|" + "---:|" * len(ks)]
  for score, by_k in by_score.items():
    cells = [f"{100 * by_k[k]['average']['auroc']:.2f}" if k in by_k else "" for k in ks]
    lines.append(f"| {SCORE_TITLES.get(score, score)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_results(results: Mapping, outdir: str, stem: str = "results") -> dict[str, str]:
  """Writes `<stem>.json` and `<stem>.md`; returns their paths."""
  os.makedirs(outdir, exist_ok=True)
  paths = {"json": os.path.join(outdir, f"{stem}.json"), "md": os.path.join(outdir, f"{stem}.md")}
  with open(paths["json"], "w") as f:
    json.dump(results, f, indent=2, sort_keys=False)
  with open(paths["md"], "w") as f:
    f.write(markdown(results))
  return paths


def plot_roc_and_histograms(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray],
                            path: str, title: Optional[str] = None) -> str:
  """One PNG: ROC curves (left) and score histograms ID vs each OOD set (right)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
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

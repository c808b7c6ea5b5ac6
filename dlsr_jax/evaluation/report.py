"""Reports of OOD results: `<stem>.json`, `.csv` and `.md` (the layout is `table`'s)."""

from __future__ import annotations

import csv
import functools
import json
import os
from typing import Mapping, Optional

from dlsr_jax.evaluation import table

__all__ = ["OPENOOD_COLUMNS", "has_near_far", "markdown", "openood_rows", "overview_table",
           "result_files", "summary_table", "write_results"]

# OpenOOD v1.5's leaderboard columns (https://zjysteven.github.io/OpenOOD/), then ours.
OPENOOD_COLUMNS = ("Training", "Postprocessor", "Near-OOD AUROC", "Far-OOD AUROC",
                   "ID Accuracy", "Near-OOD FPR@95", "Far-OOD FPR@95", "Model Arch.",
                   "Seeds", "Net", "Row", "Score", "k")
_TRAINING = {"cross_entropy": "CrossEntropy", "outlier_exposure": "OE",
             "confidence_branch": "ConfBranch", "unleashing_mask": "UM"}


def markdown(results: Mapping) -> str:
  """A Markdown report: one table per score type and k (percentages)."""
  lines = [f"# OOD results: ID = `{results['id_set']}`", ""]
  for key, val in results.get("settings", {}).items():
    lines.append(f"- {key}: `{val}`")
  lines += ["", "AUROC, AUPR-In, AUPR-Out in %; higher is better. FPR95 in %, lower is "
            "better: (ID+) = OOD accepted at 95% ID kept (DLSR release); (OOD+) = ID "
            "rejected at 95% OOD caught (OpenOOD v1.5). AUPR = average precision (step-wise); "
            "(trapezoid) = the trapezoidal area OpenOOD's evaluator reports.", ""]
  std = results.get("metrics_std")
  acc = {n: a for n, a in results.get("accuracy", {}).items() if a is not None}
  if acc:
    lines += ["ID test top-1 accuracy of the classifier nets: " + ", ".join(
        f"`{n}` {100 * a:.2f}%" for n, a in acc.items()), ""]
  if results.get("warnings"):
    lines += ["**Warnings** (these numbers may mislead):", "",
              *[f"- {w}" for w in results["warnings"]], ""]
  if "rows" in results:
    lines += ["## Every row: AUROC (%) per OOD set", "", overview_table(results), ""]
  if std is not None:
    lines += [f"Mean +- standard deviation over {len(results.get('seeds', []))} training "
              f"seeds {results.get('seeds', '')}.", ""]
  columns = table.metric_columns(results)
  header = "| OOD set | " + " | ".join(t for _, t in columns) + " |"
  rule = "|---|" + "---:|" * len(columns)
  for score, by_k in results["metrics"].items():
    for k, rows in by_k.items():
      title = table.score_title(results, score) + ("" if k == table.NO_K else f", k = {k}")
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
                                                  for c, _ in columns) + " |")
      lines.append("")
  summary = summary_table(results)
  if summary:
    lines += ["## Average AUROC (%) by score and k", "", summary, ""]
  return "\n".join(lines)


def overview_table(results: Mapping) -> str:
  """ONE table: a line per (net, row, score, k); AUROC per OOD set, average, FPR95 (ID+)."""
  std = results.get("metrics_std")
  first = next(iter(results["metrics"].values()))
  sets = [n for n in next(iter(first.values())) if n != "average"]
  lines = ["| net | row | score | k | " + " | ".join(f"`{n}`" for n in sets)
           + " | **average** | FPR95 (ID+) |", "|---|---|---|---:|" + "---:|" * (len(sets) + 2)]
  for key, by_k in results["metrics"].items():
    meta = results["rows"][key]
    for k, rows in by_k.items():
      sd = std[key][k] if std is not None else None
      cells = [_cell(rows[n]["auroc"], sd and sd[n]["auroc"]) for n in sets + ["average"]]
      cells.append(_cell(rows["average"]["fpr95_id_positive"],
                         sd and sd["average"]["fpr95_id_positive"]))
      lines.append(f"| {meta.get('net', '')} | {meta['row']} | {meta['score']} | "
                   f"{'' if k == table.NO_K else k} | " + " | ".join(cells) + " |")
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
  lines = ["| score | " + " | ".join("k-free" if k == table.NO_K else f"k={k}" for k in ks) + " |",
           "|---|" + "---:|" * len(ks)]
  for score, by_k in by_score.items():
    std = results.get("metrics_std", {}).get(score)
    cells = [_cell(by_k[k]["average"]["auroc"], std and std[k]["average"]["auroc"])
             if k in by_k else "" for k in ks]
    lines.append(f"| {table.score_title(results, score)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def has_near_far(results: Mapping) -> bool:
  """True for results with "near" and "far" OOD groups (OpenOOD's protocols)."""
  groups = results.get("groups") or {}
  return "near" in groups and "far" in groups


def _pm(mean: Optional[float], std: Optional[float]) -> str:
  """OpenOOD's "mean ± std" cell in percent ("" when unknown)."""
  if mean is None:
    return ""
  return f"{100 * mean:.2f} ± {100 * (std or 0.0):.2f}"


def _group_cell(sets: Mapping, std: Mapping, group: str, metric: str) -> str:
  return _pm(sets[f"group:{group}"][metric], std.get(f"group:{group}", {}).get(metric))


def openood_rows(results: Mapping) -> list[dict]:
  """One OpenOOD leaderboard line per (row, score, k) of results with near / far groups.

  Near / Far-OOD AUROC and FPR@95 (OpenOOD's convention, OOD positive:
  "fpr95_ood_positive") are the group averages; cells are "mean ± std" in percent over
  `results["seeds"]` (std 0.00 for rows that train nothing or a single run; "Seeds" says how
  many runs). Training is the objective the net was trained with here (OpenOOD's names:
  CrossEntropy, OE, ...), "pretrained" for a net used as loaded, "frozen backbone" for rows
  on the backbone.
  """
  if not has_near_far(results):
    raise ValueError(f"openood_rows: the results have groups {sorted(results.get('groups') or {})}"
                     f"; OpenOOD's format needs 'near' and 'far'")
  std = results.get("metrics_std")
  nets = results.get("nets") or {}
  accuracy = results.get("accuracy") or {}
  n_seeds = len(results.get("seeds") or []) or 1
  out = []
  for key, by_k in results["metrics"].items():
    meta = (results.get("rows") or {}).get(key, {"row": key, "score": key, "detector": key})
    net = meta.get("net", "")
    info = nets.get(net, {})
    objective = info.get("objective") or ""
    training = (_TRAINING.get(objective, objective) if objective else
                "pretrained" if info else "frozen backbone" if net in ("", "backbone") else "")
    for k, sets in by_k.items():
      sd = std[key][k] if std is not None else {}
      cell = functools.partial(_group_cell, sets, sd)
      name = meta["row"] + ("" if meta.get("score") in (meta["row"], meta.get("detector"))
                            else f":{meta['score']}") + ("" if k == table.NO_K else f"@k={k}")
      out.append({"Training": training, "Postprocessor": name,
                  "Near-OOD AUROC": cell("near", "auroc"), "Far-OOD AUROC": cell("far", "auroc"),
                  "ID Accuracy": _pm(accuracy.get(net), 0.0),
                  "Near-OOD FPR@95": cell("near", "fpr95_ood_positive"),
                  "Far-OOD FPR@95": cell("far", "fpr95_ood_positive"),
                  "Model Arch.": info.get("model", "backbone" if not info else ""),
                  "Seeds": n_seeds if std is not None else 1, "Net": net, "Row": meta["row"],
                  "Score": meta.get("score", key), "k": "" if k == table.NO_K else k})
  return out


def result_files(results: Mapping, stem: str = "results") -> list[str]:
  """The file names `write_results` writes for these results."""
  files = [f"{stem}.{e}" for e in ("json", "md", "csv")]
  return files + ([f"{stem}_openood.csv"] if has_near_far(results) else [])


def write_results(results: Mapping, outdir: str, stem: str = "results") -> dict[str, str]:
  """Writes `<stem>.json`, `.md`, `.csv` and, for results with near / far groups, OpenOOD's
  leaderboard format `<stem>_openood.csv` (`openood_rows`); returns their paths."""
  os.makedirs(outdir, exist_ok=True)
  paths = {ext: os.path.join(outdir, f"{stem}.{ext}") for ext in ("json", "md", "csv")}
  if has_near_far(results):
    paths["openood_csv"] = os.path.join(outdir, f"{stem}_openood.csv")
    with open(paths["openood_csv"], "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(OPENOOD_COLUMNS))
      writer.writeheader()
      writer.writerows(openood_rows(results))
  with open(paths["json"], "w") as f:
    json.dump(results, f, indent=2, sort_keys=False)
  with open(paths["md"], "w") as f:
    f.write(markdown(results))
  rows = table.csv_rows(results)
  with open(paths["csv"], "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return paths

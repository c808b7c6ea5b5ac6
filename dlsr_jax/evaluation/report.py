"""Reports of OOD results: `<stem>.json`, `.csv` and `.md` (the layout is `table`'s)."""

from __future__ import annotations

import csv
import json
import os
from typing import Mapping, Optional

from dlsr_jax.evaluation import table

__all__ = ["markdown", "overview_table", "summary_table", "write_results"]


def markdown(results: Mapping) -> str:
  """A Markdown report: one table per score type and k (percentages)."""
  lines = [f"# OOD results: ID = `{results['id_set']}`", ""]
  for key, val in results.get("settings", {}).items():
    lines.append(f"- {key}: `{val}`")
  lines += ["", "AUROC, AUPR-In, AUPR-Out in %; higher is better. FPR95 in %, lower is "
            "better: (ID+) = OOD accepted at 95% ID kept (DLSR release); (OOD+) = ID "
            "rejected at 95% OOD caught (OpenOOD v1.5). AUPR = average precision.", ""]
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
  header = "| OOD set | " + " | ".join(t for _, t in table.METRIC_COLUMNS) + " |"
  rule = "|---|" + "---:|" * len(table.METRIC_COLUMNS)
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
                                                  for c, _ in table.METRIC_COLUMNS) + " |")
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


def write_results(results: Mapping, outdir: str, stem: str = "results") -> dict[str, str]:
  """Writes `<stem>.json` and `<stem>.md`; returns their paths."""
  os.makedirs(outdir, exist_ok=True)
  paths = {ext: os.path.join(outdir, f"{stem}.{ext}") for ext in ("json", "md", "csv")}
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

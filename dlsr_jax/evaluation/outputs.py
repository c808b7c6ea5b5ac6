"""An evaluation's output folder: which files it writes, and moving an earlier evaluation's
aside so that outputs never mix runs.

`set_aside_previous(outdir)` moves the `OUTPUT_FILES` found in `outdir` and in its `seed_*`
folders to `<outdir>/previous/<timestamp>/` (never deletes); `write_results` writes
results.{json,md,csv} listing every file of the set, `write_search` a tuning's search.json.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import time
from typing import Mapping, Optional

from absl import logging

from dlsr_jax.evaluation import report, table

# Every file an evaluation writes, in its output folder and in each SEED_DIRS folder of it
# (one per seed). An earlier evaluation's are moved to PREVIOUS_DIR/<timestamp>/ first.
OUTPUT_FILES = ("results.json", "results.md", "results.csv", "results_openood.csv",
                "scores.npz", "roc_hist_*.png", "auroc_vs_k.png", "search.json")
SEED_DIRS = "seed_*"
PREVIOUS_DIR = "previous"
SEARCH_FILE = "search.json"


def write_search(search: Mapping, outdir: str) -> str:
  """search.json: per tuned row, its validation sets, grid, chosen values and every candidate
  with its validation metrics (ID-val vs OOD-val; never a test set)."""
  path = os.path.join(outdir, SEARCH_FILE)
  os.makedirs(outdir, exist_ok=True)
  with open(path, "w") as f:
    json.dump({"rows": dict(search)}, f, indent=2)
  logging.info("wrote %s", path)
  return path


def write_results(results: dict, outdir: str, files: list[str]) -> list[str]:
  """results.{json,md,csv} with `files` and themselves listed in results["files"]."""
  results["files"] = sorted([*report.result_files(results), *files])
  paths = report.write_results(results, outdir)
  logging.info("wrote %s", paths)
  return results["files"]


def over_seeds(per_seed: list[dict], seeds) -> dict:
  """One results dict for several seeds' (`per_seed`, in `seeds` order): the first's, with
  "seeds" and the mean of the metrics over seeds ("metrics") beside their standard deviation
  ("metrics_std")."""
  results = dict(per_seed[0])
  results["seeds"] = list(seeds)
  results["metrics"], results["metrics_std"] = table.mean_and_std(
      [r["metrics"] for r in per_seed])
  return results


def previous_outputs(outdir: str) -> list[str]:
  """The `OUTPUT_FILES` in `outdir` and in its `SEED_DIRS` folders (relative paths)."""
  if not os.path.isdir(outdir):
    return []
  found = []
  subs = [""] + sorted(d for d in os.listdir(outdir) if fnmatch.fnmatch(d, SEED_DIRS)
                       and os.path.isdir(os.path.join(outdir, d)))
  for sub in subs:
    for name in sorted(os.listdir(os.path.join(outdir, sub))):
      rel = os.path.join(sub, name)
      if (os.path.isfile(os.path.join(outdir, rel))
          and any(fnmatch.fnmatch(name, p) for p in OUTPUT_FILES)):
        found.append(rel)
  return found


def set_aside_previous(outdir: str) -> Optional[str]:
  """Moves an earlier evaluation's outputs to `<outdir>/previous/<timestamp>/` (never deletes).

  Returns that folder, or None if there was nothing to move.
  """
  files = previous_outputs(outdir)
  if not files:
    return None
  stamp = time.strftime("%Y%m%d-%H%M%S")
  dest, n = os.path.join(outdir, PREVIOUS_DIR, stamp), 1
  while os.path.exists(dest):
    n += 1
    dest = os.path.join(outdir, PREVIOUS_DIR, f"{stamp}_{n}")
  for rel in files:
    os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
    os.replace(os.path.join(outdir, rel), os.path.join(dest, rel))
  for sub in {os.path.dirname(rel) for rel in files if os.path.dirname(rel)}:
    with contextlib.suppress(OSError):   # only if nothing else is in it
      os.rmdir(os.path.join(outdir, sub))
  logging.warning("moved the %d files of the previous evaluation in %s to %s", len(files),
                  outdir, dest)
  return dest

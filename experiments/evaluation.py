"""Evaluation: every configured detector row fitted once, every set scored, ONE table.

`run_evaluate` builds the plan (`build.build` checks every net and row first), restores the
trained nets, fits each row once on the ID train arrays of its net, scores the ID test set and
every OOD set, and writes results.{json,md,csv}, scores.npz and ROC PNGs. Arrays are computed
once per (net, set) through `arrays.ArrayStore`. The config is validated and checked against
the workdir's record (`experiments.workdir`) before any extraction. Outputs never mix runs:
an earlier evaluation's files in the output folder (`OUTPUT_FILES`, there and in its seed_*/
folders) are moved to `<outdir>/previous/<timestamp>/` before the new ones are written, and
results.json lists every file of its set ("files").
The LFDN-only helpers of the benchmark scripts (`load_feature_sets`, `dlsr_scores`,
`baseline_scores`, ...) are re-exported from `experiments.lfdn_scores`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import time
from typing import Mapping, Optional

import jax
import numpy as np
from absl import logging

from dlsr_jax import evaluation as evaluation_lib
from dlsr_jax.evaluation import report, table
from experiments import arrays, build, pipeline, runner, validate
from experiments import workdir as workdir_lib
from experiments.lfdn_scores import (assemble_results, baseline_scores,  # noqa: F401
                                     dlsr_scores, load_feature_sets, merge_scores,
                                     score_sets_with_params)
from experiments.pipeline import ood_sources, parse_groups  # noqa: F401

# Every file an evaluation writes, in its output folder and in each SEED_DIRS folder of it
# (with `c.seeds`). An earlier evaluation's are moved to PREVIOUS_DIR/<timestamp>/ first.
OUTPUT_FILES = ("results.json", "results.md", "results.csv", "results_openood.csv",
                "scores.npz", "roc_hist_*.png", "auroc_vs_k.png", "search.json")
SEED_DIRS = "seed_*"
PREVIOUS_DIR = "previous"


class _Arrays(Mapping):
  """The arrays of one (net, data set) as lazy `SetArrays`: each is computed (or read from
  the caches) when a detector first reads it."""

  def __init__(self, store: arrays.ArrayStore, net: str, set_name: str, keys: tuple[str, ...]):
    self._store, self._net, self._set, self._keys = store, net, set_name, tuple(keys)

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self._keys:
      raise KeyError(key)
    return self._store.get(self._net, self._set, [key])[key]

  def __iter__(self):
    return iter(self._keys)

  def __len__(self) -> int:
    return len(self._keys)


def evaluate_row(c, plan: build.Plan, row: build.RowSpec, store: arrays.ArrayStore,
                 workdir: str, seed: Optional[int]) -> evaluation_lib.Results:
  """One row through `dlsr_jax.evaluation.evaluate`: fitted on the ID train arrays of its net,
  the ID test set and every OOD set scored."""
  set_names = ["id", *ood_sources(c)]
  with runner.row_detector(c, plan, row, store, workdir, seed) as det:
    res = evaluation_lib.evaluate(
        {row.name: det}, _Arrays(store, row.net, "train", row.fit_reads),
        {s: _Arrays(store, row.net, s, row.reads) for s in set_names},
        key=jax.random.key(c.eval.seed), id_set="id", groups=parse_groups(c))
  for key, meta in res.rows.items():
    res.rows[key] = {"row": row.name, "detector": row.type, "net": row.net,
                     "score": meta["score"]}
  return res


def _score_all(c, plan: build.Plan, store, workdir: str, seed: Optional[int],
               fixed: dict) -> evaluation_lib.Results:
  """Results of every row for one seed; rows that train nothing are evaluated once (`fixed`)."""
  for row in plan.rows.values():
    if row.trains or row.name not in fixed:
      fixed[row.name] = evaluate_row(c, plan, row, store, workdir, seed)
  return evaluation_lib.Results.combine([fixed[r] for r in plan.rows])


def write_results(results: dict, outdir: str, files: list[str]) -> list[str]:
  """results.{json,md,csv} with `files` and themselves listed in results["files"]."""
  results["files"] = sorted([*report.result_files(results), *files])
  paths = report.write_results(results, outdir)
  logging.info("wrote %s", paths)
  return results["files"]


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


def run_evaluate(c, workdir: str, outdir: Optional[str] = None) -> dict:
  """Fits every row once, scores the ID test set and every OOD set, writes ONE table.

  With `c.seeds`, each training row (DLSR) has one LFDN per seed (`<workdir>/<row>/seed_<s>/`);
  each seed's table goes to `<outdir>/seed_<s>/` and the top-level results hold the mean over
  seeds with the standard deviation beside it (rows that train nothing: std 0).
  """
  outdir = outdir or workdir
  if not ood_sources(c):
    raise ValueError("no OOD sets configured: set --config.data.extra_ood=NAME=SOURCE")
  parse_groups(c)
  validate.validate_config(c)                               # before any extraction
  workdir_lib.check_config(c, workdir, for_eval=True)      # trained with these settings?
  plan = build.build(c)
  runner.require_trained(plan, workdir)
  store = arrays.ArrayStore(c, workdir, runner.sources(c))
  nets = runner.prepare_nets(plan, workdir, store, build.needed_nets(plan))
  accuracy = {n: arrays.accuracy(store, n) for n in nets}
  settings = pipeline.settings_summary(c, store.backbone, pipeline.feature_boundaries(
      c, store.backbone)) if any(r.net == build.BACKBONE for r in plan.rows.values()) else {}
  settings["rows"] = {r.name: f"{r.type} on {r.net}" for r in plan.rows.values()}
  per_seed, fixed, files, moved = [], {}, [], None
  for seed in plan.seeds or (None,):
    res = _score_all(c, plan, store, workdir, seed, fixed)
    extra = {"id_set": c.data.test, "ood_sets": ood_sources(c), "nets": nets,
             "accuracy": accuracy, "settings": settings,
             "timing": {**store.timing, "rows": res.timing}}
    results = res.to_dict(**extra)
    if not per_seed and jax.process_index() == 0:
      moved = set_aside_previous(outdir)          # before this evaluation writes anything
    sub = "" if seed is None else f"seed_{seed}"
    if jax.process_index() == 0:
      written = res.write(os.path.join(outdir, sub), plots=c.eval.plots, **extra)
      files += [os.path.join(sub, f) for f in written]
      results["files"] = written
    per_seed.append(results)
  if plan.seeds:
    results = dict(per_seed[0])
    results["seeds"] = list(plan.seeds)
    results["metrics"], results["metrics_std"] = table.mean_and_std(
        [r["metrics"] for r in per_seed])
    if jax.process_index() == 0:
      files = write_results(results, outdir, files)
      logging.info("mean +- std over seeds %s in %s", results["seeds"], outdir)
  logging.info("this evaluation's %d files are in %s (listed in its results.json)%s",
               len(files), outdir, f"; the previous evaluation's in {moved}" if moved else "")
  return results

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
import zlib
from typing import Any, Optional

import jax
import numpy as np
from absl import logging

from dlsr_jax.evaluation import plots, report, table
from experiments import arrays, build, pipeline, runner, validate
from experiments import workdir as workdir_lib
from experiments.lfdn_scores import (assemble_results, baseline_scores,  # noqa: F401
                                     dlsr_scores, load_feature_sets, merge_scores,
                                     score_sets_with_params)
from experiments.pipeline import ood_sources, parse_groups  # noqa: F401

Scores = dict[str, dict[str, dict[str, np.ndarray]]]   # {key: {k | "-": {set: [N]}}}

# Every file an evaluation writes, in its output folder and in each SEED_DIRS folder of it
# (with `c.seeds`). An earlier evaluation's are moved to PREVIOUS_DIR/<timestamp>/ first.
OUTPUT_FILES = ("results.json", "results.md", "results.csv", "scores.npz", "roc_hist_*.png",
                "auroc_vs_k.png")
SEED_DIRS = "seed_*"
PREVIOUS_DIR = "previous"


def set_key(key: jax.Array, name: str) -> jax.Array:
  # Each set draws its own noise (keyed on the set name and the example id), so a set
  # scored against a copy of itself under another name gives AUROC ~0.5, not exactly 0.5.
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def score_row(c, row: build.RowSpec, det, state: Any, store: arrays.ArrayStore,
              set_names: list[str]) -> tuple[Scores, dict, dict]:
  """(scores, {key: row metadata}, timing) of one fitted row on every set."""
  eval_key = jax.random.key(c.eval.seed)
  inputs = {s: store.get(row.net, s, row.reads) for s in set_names}   # not timed: cached
  t0, n = time.time(), 0
  per_set = {}
  for s in set_names:
    per_set[s] = det.score(state, inputs[s], set_key(eval_key, s))
    n += len(next(iter(per_set[s].values())))
  dt = time.time() - t0
  names = list(per_set[set_names[0]])
  keys = table.result_keys(row.name, row.type, names)
  scores: Scores = {}
  meta = {}
  for name in names:
    base, k = table.split_score(name)
    key = keys[base]
    label = table.NO_K if k is None else str(k)
    scores.setdefault(key, {})[label] = {s: np.asarray(per_set[s][name]) for s in set_names}
    meta[key] = {"row": row.name, "detector": row.type, "net": row.net, "score": base}
  timing = {"score_s": round(dt, 3), "images_per_s": round(n / max(dt, 1e-9), 1)}
  return scores, meta, timing


def _score_all(c, plan: build.Plan, store, workdir: str, seed: Optional[int],
               fixed: dict) -> tuple[Scores, dict, dict]:
  """Scores of every row for one seed; rows that train nothing are fitted once (`fixed`)."""
  set_names = ["id", *ood_sources(c)]
  scores: Scores = {}
  meta, timing = {}, {}
  for row in plan.rows.values():
    if row.trains or row.name not in fixed:
      t0 = time.time()
      det, state = runner.fit_row(c, plan, row, store, workdir, seed)
      fit_s = round(time.time() - t0, 3)
      fixed[row.name] = score_row(c, row, det, state, store, set_names) + (fit_s,)
    s, m, t, fit_s = fixed[row.name]
    dup = set(s) & set(scores)
    if dup:
      raise ValueError(f"rows give the same results keys {sorted(dup)}: rename a row")
    scores.update(s)
    meta.update(m)
    timing[row.name] = {"fit_s": fit_s, **t}
  return scores, meta, timing


def assemble(c, plan: build.Plan, scores: Scores, meta: dict, extra: dict) -> dict:
  """The results dict (schema: `dlsr_jax.evaluation.table`)."""
  ks = sorted({int(k) for by_k in scores.values() for k in by_k if k != table.NO_K})
  return {"id_set": c.data.test, "ood_sets": ood_sources(c), "groups": parse_groups(c),
          "ks": ks, "rows": meta,
          "metrics": table.row_metrics(scores, "id", parse_groups(c)), **extra}


def write_outputs(results: dict, scores: Scores, outdir: str,
                  plots_too: bool = True) -> list[str]:
  """results.{json,md,csv}, scores.npz ("<set>/<key>": [K or 1, N]) and the PNG figures.

  Returns the files written (relative to `outdir`), also listed in results.json ("files").
  """
  if jax.process_index() != 0:
    return []
  os.makedirs(outdir, exist_ok=True)
  flat = {f"{s}/{key}": np.stack([by_k[k][s] for k in by_k])
          for key, by_k in scores.items() for s in next(iter(by_k.values()))}
  np.savez(os.path.join(outdir, "scores.npz"), ks=np.asarray(results["ks"]), **flat)
  files = ["scores.npz"]
  if plots_too:
    ood = list(results["ood_sets"])
    for key, by_k in results["metrics"].items():
      best = max(by_k, key=lambda k: by_k[k]["average"]["auroc"])
      title = table.score_title(results, key) + ("" if best == table.NO_K else f", k = {best}")
      plots.plot_roc_and_histograms(scores[key][best]["id"],
                                    {n: scores[key][best][n] for n in ood},
                                    os.path.join(outdir, f"roc_hist_{key}.png"),
                                    title=f"{title}, ID = {results['id_set']}")
      files.append(f"roc_hist_{key}.png")
    if any(table.NO_K not in by_k for by_k in results["metrics"].values()):
      plots.plot_auroc_vs_k(results, os.path.join(outdir, "auroc_vs_k.png"))
      files.append("auroc_vs_k.png")
  return write_results(results, outdir, files)


def write_results(results: dict, outdir: str, files: list[str]) -> list[str]:
  """results.{json,md,csv} with `files` and themselves listed in results["files"]."""
  results["files"] = sorted([*(f"results.{e}" for e in ("json", "md", "csv")), *files])
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
    scores, meta, row_timing = _score_all(c, plan, store, workdir, seed, fixed)
    extra = {"nets": nets, "accuracy": accuracy, "settings": settings,
             "timing": {**store.timing, "rows": row_timing}}
    results = assemble(c, plan, scores, meta, extra)
    if not per_seed and jax.process_index() == 0:
      moved = set_aside_previous(outdir)          # before this evaluation writes anything
    sub = "" if seed is None else f"seed_{seed}"
    files += [os.path.join(sub, f) for f in write_outputs(
        results, scores, os.path.join(outdir, sub), plots_too=c.eval.plots)]
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

"""Evaluation of a plan: every detector row fitted once, every set scored, ONE table.

`evaluate_plan` (called by `experiments.run.evaluate`, which checks the config, the
workdir's record and the data first) restores the trained nets, fits each row once on the ID
train arrays of its net, scores the ID test set and every OOD set, and writes
results.{json,md,csv}, scores.npz and ROC PNGs. Arrays are computed once per (net, set)
through `dlsr_jax.evaluation.arrays.ArrayStore`.
Outputs never mix runs (`dlsr_jax.evaluation.outputs`): an earlier evaluation's files in the
output folder (`OUTPUT_FILES`, there and in its seed_*/ folders) are moved to
`<outdir>/previous/<timestamp>/` before the new ones are written, and results.json lists every
file of its set ("files").
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Mapping, Optional

import jax
from absl import logging

from dlsr_jax import evaluation as evaluation_lib
from dlsr_jax.evaluation import arrays, outputs
from dlsr_jax.evaluation import inputs as inputs_lib
from dlsr_jax.evaluation import rows as rows_lib
from dlsr_jax.evaluation import tune as tune_lib
from experiments import plan as plan_lib
from experiments import runner
from experiments.configs import datasets

SEARCH_KEY = "search"   # a tuned row's search record in its metadata, until written


def add_validation_sources(plan: plan_lib.Plan, store: arrays.ArrayStore) -> None:
  """Registers data.val (unless a holdout of data.train) and data.ood_val with the store."""
  val, ood_val = plan.data.val, plan.data.ood_val
  if val and datasets.parse_holdout(val) is None:
    store.sources[arrays.VAL] = val
  if ood_val:
    store.sources[arrays.OOD_VAL] = ood_val


def _holdout(plan: plan_lib.Plan):
  """n -> (train rows, val rows) of data.train when data.val is a holdout of it, else None."""
  fraction = datasets.parse_holdout(plan.data.val)
  return None if fraction is None else lambda n: datasets.holdout_rows(n, fraction)


def _fit_arrays(plan: plan_lib.Plan, store, row: rows_lib.RowSpec) -> Mapping:
  return arrays.fit_arrays(store, row.net, row.fit_set, row.fit_reads, row.trains,
                           _holdout(plan))


def tune_row(plan: plan_lib.Plan, row: rows_lib.RowSpec, store: arrays.ArrayStore
             ) -> tuple[rows_lib.RowSpec, dict]:
  """A tuned row's settings chosen on data.val vs data.ood_val (never a test set; checked by
  `build.check_validation_sets`); returns the row with them and its search record."""
  net = store.nets.get(row.net) if "net" in row.context else None
  keys = tuple(dict.fromkeys((*row.reads, *row.fit_reads)))
  best, search = tune_lib.tune_and_record(
      row.type, row.grid, _fit_arrays(plan, store, row),
      arrays.split_arrays(store, row.net, arrays.VAL, keys, _holdout(plan)),
      arrays.StoreArrays(store, row.net, arrays.OOD_VAL, keys),
      key=jax.random.key(plan.eval_seed), net=net, settings=row.settings)
  record = {"type": row.type, "net": row.net, "fit_set": row.fit_set,
            "id_val": plan.data.val, "ood_val": plan.data.ood_val, **search}
  logging.info("row %s: tuned %s on %s vs %s: %s", row.name, row.type, plan.data.val,
               plan.data.ood_val, record["chosen"])
  return dataclasses.replace(row, settings=best), record


def evaluate_row(plan: plan_lib.Plan, row: rows_lib.RowSpec, store: arrays.ArrayStore,
                 workdir: str, seed: Optional[int],
                 notes: Optional[list[str]] = None) -> evaluation_lib.Results:
  """One row through `dlsr_jax.evaluation.evaluate`: fitted on the ID train arrays of its net
  (data.val for the types OpenOOD fits on ID val, when the protocol names one), the ID test
  set and every OOD set scored. A tuned row first chooses its settings (`tune_row`); its
  search record rides in the row's metadata as "search" until `evaluate_plan` takes it out
  for search.json. The warnings it raises (e.g. N <= C features, a one-image set) are logged
  and appended to `notes` ("<row>: <message>") for the results."""
  set_names = ["id", *plan.data.ood]
  record = None
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if row.tune:
      row, record = tune_row(plan, row, store)
    with runner.row_detector(plan, row, store, workdir, seed, restore_only=True) as det:
      res = evaluation_lib.evaluate(
          {row.name: det}, _fit_arrays(plan, store, row),
          {s: arrays.StoreArrays(store, row.net, s, row.reads) for s in set_names},
          key=jax.random.key(plan.eval_seed), id_set="id",
          groups={g: list(m) for g, m in plan.data.groups.items()},
          trapezoid_aupr=plan.trapezoid_aupr)
  for message in dict.fromkeys(str(w.message) for w in caught):
    logging.warning("row %s: %s", row.name, message)
    if notes is not None:
      notes.append(f"{row.name}: {message}")
  for key, meta in res.rows.items():
    res.rows[key] = {"row": row.name, "detector": row.type, "net": row.net,
                     "score": meta["score"],
                     **({"fit_set": row.fit_set} if row.fit_set != "train" else {}),
                     **({"tuned": record["chosen"], "settings": record["settings"],
                         SEARCH_KEY: record} if record else {})}
  return res


def _score_all(plan: plan_lib.Plan, store, workdir: str, seed: Optional[int],
               fixed: dict, notes: Optional[dict] = None) -> evaluation_lib.Results:
  """Results of every row for one seed; rows that train nothing are evaluated once (`fixed`);
  `notes`: {row: its warnings}."""
  for row in plan.rows.values():
    if row.trains or row.name not in fixed:
      row_notes = []
      fixed[row.name] = evaluate_row(plan, row, store, workdir, seed, row_notes)
      if notes is not None:
        notes[row.name] = row_notes
  return evaluation_lib.Results.combine([fixed[r] for r in plan.rows])


def evaluate_plan(plan: plan_lib.Plan, workdir: str, outdir: str, own_outdir: bool) -> dict:
  """Fits every row once, scores the ID test set and every OOD set, writes ONE table into
  `outdir`, once `experiments.run.evaluate` has checked everything: restores (never trains).

  With `plan.seeds`, each training row (DLSR) has one LFDN per seed
  (`<workdir>/<row>/seed_<s>/`); each seed's table goes to `<outdir>/seed_<s>/` and the
  top-level results hold the mean over seeds with the standard deviation beside it (rows that
  train nothing: std 0). With an output folder of its own (`own_outdir`) and no configured
  cache_dir, new cache entries go to <outdir>/feature_cache (the workdir's cache is still
  read): nothing is written into the workdir.
  """
  own_cache = own_outdir and not plan.inputs.cache_dir
  store = inputs_lib.array_store(plan.inputs, workdir, plan.data.sources(),
                               write_to=os.path.join(outdir, "feature_cache") if own_cache
                               else None)
  add_validation_sources(plan, store)
  runner.check_labels(plan, store, plan_lib.needed_nets(plan))
  nets = runner.prepare_nets(plan, workdir, store, plan_lib.needed_nets(plan), restore_only=True,
                             tests=plan.data.test_sets())
  accuracy = {n: arrays.accuracy(store, n) for n in nets}
  settings = inputs_lib.settings_summary(plan.inputs, plan.summary, store.backbone) if any(
      r.net == arrays.BACKBONE for r in plan.rows.values()) else {}
  settings["rows"] = {r.name: f"{r.type} on {r.net}" for r in plan.rows.values()}
  per_seed, fixed, files, moved, notes, search = [], {}, [], None, {}, {}
  for seed in plan.seeds or (None,):
    res = _score_all(plan, store, workdir, seed, fixed, notes)
    for meta in res.rows.values():        # tuned rows' searches: search.json, not results
      if SEARCH_KEY in meta:
        search[meta["row"]] = meta.pop(SEARCH_KEY)
    extra = {"id_set": plan.data.test, "ood_sets": dict(plan.data.ood), "nets": nets,
             "accuracy": accuracy, "settings": settings,
             "timing": {**store.timing, "rows": res.timing}}
    warned = [w for r in plan.rows for w in notes.get(r, [])]
    if warned:
      extra["warnings"] = warned
    results = res.to_dict(**extra)
    if not per_seed and jax.process_index() == 0:
      moved = outputs.set_aside_previous(outdir)   # before this evaluation writes anything
      if search:
        outputs.write_search(search, outdir)
        files.append(outputs.SEARCH_FILE)
    sub = "" if seed is None else f"seed_{seed}"
    if jax.process_index() == 0:
      written = res.write(os.path.join(outdir, sub), plots=plan.plots,
                          also=[outputs.SEARCH_FILE] if search and seed is None else [], **extra)
      files += [p for p in (os.path.join(sub, f) for f in written) if p not in files]
      results["files"] = written
    per_seed.append(results)
  if plan.seeds:
    results = outputs.over_seeds(per_seed, plan.seeds)
    if jax.process_index() == 0:
      files = outputs.write_results(results, outdir, files)
      logging.info("mean +- std over seeds %s in %s", results["seeds"], outdir)
  logging.info("this evaluation's %d files are in %s (listed in its results.json)%s",
               len(files), outdir, f"; the previous evaluation's in {moved}" if moved else "")
  return results

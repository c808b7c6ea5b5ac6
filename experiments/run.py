"""The experiments' commands over a config, one call each: for the absl mains, the benchmarks
and Python users.

  from experiments import run
  run.setup()                                    # JAX flags, multi-host, logs (once)
  run.train(c, "/tmp/wd")                        # every net and training row (resumable)
  results = run.evaluate(c, "/tmp/wd")           # one table of every row
  run.extract(c, "/tmp/wd")                      # the feature cache of every data set

`c` is an experiment config (`experiments/configs/*.py`), checked and read once by
`build.validate_config` into a `plan.Plan`; `train` and `evaluate` also take that Plan
(`plan = build.validate_config(c)`), then nothing reads the config again.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
from absl import logging

from dlsr_jax import features
from dlsr_jax.detectors.base import FeatureLayout
from dlsr_jax.evaluation import inputs as inputs_lib
from dlsr_jax.training import workdir as workdir_lib
from experiments import build, evaluation, launch, runner
from experiments import plan as plan_lib
from experiments import workdir as record_lib


def setup(multihost: Optional[bool] = None) -> None:
  """Process setup, first in every main (`launch.setup`: JAX flags, multi-host, logs)."""
  launch.setup(multihost)


def _plan(c) -> plan_lib.Plan:
  return c if isinstance(c, plan_lib.Plan) else build.validate_config(c)


def train(c, workdir: str) -> plan_lib.Plan:
  """Trains every classifier net and every training detector row of `c` in `workdir`.

  `c`: a config, built once into its plan (`build.validate_config`: every problem of `c` in
  one error), or that plan. Counts the images of its data sources (checking the batch sizes), then locks `workdir`, checks and
  records config.json, then trains (`runner.run_train`); each run resumes from its latest
  checkpoint, a finished one is restored.
  """
  plan = _plan(c)
  if jax.process_index() == 0:
    workdir_lib.check_writable(workdir, hint=": use another --workdir")
  with workdir_lib.lock(workdir):
    record_lib.check_config(plan.record, workdir)
    runner.check_sources(plan, with_ood=False)   # under the lock, before the record
    record_lib.record_config(plan.record, workdir)
    return runner.run_train(plan, workdir)


def evaluate(c, workdir: str, outdir: Optional[str] = None) -> dict:
  """Fits every row once, scores every set and writes one table (into `outdir`, default
  `workdir`); returns the results dict.

  `c`: a config (built once into its plan) or that plan. Every check comes before any
  extraction: the config (OOD sets, groups of known sets), the output
  folder, the workdir's record (trained with these settings?), every data source (a typo
  fails now) and the checkpoints. A workdir that a training run holds is refused; with an
  output folder of its own the evaluation only checks the lock, writing nothing at all into
  the workdir.
  """
  own_outdir = bool(outdir) and os.path.abspath(outdir) != os.path.abspath(workdir)
  outdir = outdir or workdir
  plan = _plan(c)
  plan_lib.check_evaluable(plan)
  if jax.process_index() == 0:
    workdir_lib.check_writable(outdir, "output folder", "" if own_outdir else
                               ": give --outdir=<a writable folder>")
  record_lib.check_config(plan.record, workdir, for_eval=True)
  runner.check_sources(plan)
  runner.require_trained(plan, workdir)
  with workdir_lib.lock(workdir, read_only=own_outdir):
    return evaluation.evaluate_plan(plan, workdir, outdir, own_outdir)


def extract(c, workdir: str) -> list[tuple[str, dict]]:
  """Extracts (or reads from the cache) the features of every configured data set (`c`: a
  config or its Plan); returns [(source, {"shape", **timing})]."""
  plan = c if isinstance(c, plan_lib.Plan) else None
  inputs, data = (plan.inputs, plan.data) if plan else (build.inputs(c), build.data_plan(c))
  backbone = inputs_lib.load_backbone(inputs)
  cache = features.FeatureCache(inputs_lib.cache_dir(inputs, workdir))
  out = [(src, inputs_lib.source_features(inputs, backbone, src, cache))
         for src in [data.train, data.test, *[s for _, s in sorted(data.ood.items())]]]
  logging.info("cache: %s", cache.directory)
  return [(src, {"shape": tuple(z.shape), **info}) for src, (z, _, info) in out]


def feature_layout(c) -> FeatureLayout:
  """The levels of config `c`'s "features" array, by name (checked against its backbone)."""
  return build.feature_layout(c)


def settings_summary(c, backbone) -> dict:
  """The results' settings line of config `c` with `backbone` (what `evaluate` reports)."""
  return inputs_lib.settings_summary(build.inputs(c), build.lfdn_summary(c), backbone)

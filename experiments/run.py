"""The experiments' commands over a config, one call each: for the absl mains, the benchmarks
and Python users.

  from experiments import run
  run.setup()                                    # JAX flags, multi-host, logs (once)
  run.train(c, "/tmp/wd")                        # every net and training row (resumable)
  results = run.evaluate(c, "/tmp/wd")           # one table of every row
  run.extract(c, "/tmp/wd")                      # the feature cache of every data set

`c` is an experiment config (`experiments/configs/*.py`); `build.build` checks it first.
"""

from __future__ import annotations

from typing import Optional

import jax
from absl import logging

from dlsr_jax import features
from dlsr_jax.training import workdir as workdir_lib
from experiments import build, evaluation, launch, runner


def setup(multihost: Optional[bool] = None) -> None:
  """Process setup, first in every main (`launch.setup`: JAX flags, multi-host, logs)."""
  launch.setup(multihost)


def train(c, workdir: str):
  """Trains every classifier net and every training detector row of `c` in `workdir`.

  Validates `c` and counts the images of its data sources (checking the batch sizes), then
  locks `workdir`, checks and records config.json, then trains (`runner.run_train`); each
  run resumes from its latest checkpoint, a finished one is restored.
  """
  plan = build.validate_config(c)
  if jax.process_index() == 0:
    workdir_lib.check_writable(workdir, hint=": use another --workdir")
  with workdir_lib.lock(workdir):
    build.check_config(c, workdir)
    runner.check_sources(c, plan, with_ood=False)   # under the lock, before the record
    build.write_config(c, workdir)
    return runner.run_train(c, workdir, plan)


def evaluate(c, workdir: str, outdir: Optional[str] = None) -> dict:
  """Fits every row once, scores every set and writes one table (into `outdir`, default
  `workdir`); returns the results dict."""
  return evaluation.run_evaluate(c, workdir, outdir)


def extract(c, workdir: str) -> list[tuple[str, dict]]:
  """Extracts (or reads from the cache) the features of every configured data set;
  returns [(source, {"shape", **timing})]."""
  backbone = build.load_backbone(c)
  cache = features.FeatureCache(build.cache_dir(c, workdir))
  data = build.data_plan(c)
  out = []
  for src in [data.train, data.test, *[s for _, s in sorted(data.ood.items())]]:
    z, _, info = build.source_features(c, backbone, src, cache)
    out.append((src, {"shape": tuple(z.shape), **info}))
  logging.info("cache: %s", cache.directory)
  return out

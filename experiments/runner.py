"""Training and fitting what a `plan_lib.Plan` names: classifier nets, then detector rows.

Each classifier / head net trains (or resumes, or is restored when finished) in
`<workdir>/<net>/`, in `init_from` order; each detector row whose fit trains (DLSR) lives in
`<workdir>/<row>/` (`<workdir>/<row>/seed_<s>/` with `c.seeds`). `experiments.train` and
`experiments.evaluate` run the same code: a finished run is restored, not retrained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Iterator, Mapping, Optional

import jax
from absl import logging

from dlsr_jax import evaluation
from dlsr_jax.detectors.base import Detector
from dlsr_jax.evaluation import arrays, checks
from dlsr_jax.evaluation import inputs as inputs_lib
from dlsr_jax.evaluation import rows as rows_lib
from dlsr_jax.training import classifier, loop, metrics_writer
from dlsr_jax.training import workdir as workdir_lib
from experiments import plan as plan_lib
from experiments import workdir as record_lib


def check_sources(plan: plan_lib.Plan, with_ood: bool = True) -> dict[str, int]:
  """Counts the images of every data source (no decoding) and checks the training batch
  sizes against them, before any record, extraction or training (`checks`: messages name
  the config key). Returns {set name: number of images}."""
  counts = checks.count_sources(plan.data.sources(with_ood), plan.data.keys,
                                lambda source: inputs_lib.count_source(plan.inputs, source))
  nets = [n for n in (plan_lib.needed_nets(plan) if with_ood else plan.nets)
          if plan.nets[n].trains]
  sizes = {f"c.nets.{n}.batch_size": plan.nets[n].recipe["batch_size"] for n in nets}
  sizes.update({f"c.detectors.{r.name}.batch_size (train.batch_size)": r.settings["batch_size"]
                for r in plan.rows.values() if r.trains and r.settings.get("batch_size")
                is not None})
  checks.check_batch_sizes(sizes, counts["train"], plan.data.train)
  return counts


def check_labels(plan: plan_lib.Plan, store: arrays.ArrayStore,
                 names: Optional[list[str]] = None) -> None:
  """Every net that trains with labels and every row that fits on them needs labels of
  data.train in 0..num_classes-1; checked once the set is loaded, before any training."""
  nets = [n for n in (plan.nets if names is None else names)
          if plan.nets[n].kind != arrays.BACKBONE and plan.nets[n].trains]
  rows = [r.name for r in plan.rows.values() if "labels" in r.fit_reads]
  if nets or rows:
    checks.check_labels(store.get(arrays.BACKBONE, "train", ["labels"])["labels"],
                        plan.data.train, [f"net {n}" for n in nets] + [f"row {r}" for r in rows],
                        {n: (int(plan.nets[n].recipe["num_classes"]), f"c.nets.{n}.num_classes")
                         for n in nets})


def net_workdir(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


def row_workdir(workdir: str, row: str, seed: Optional[int]) -> str:
  base = os.path.join(workdir, row)
  return base if seed is None else os.path.join(base, f"seed_{seed}")


def _has_checkpoint(wd: str) -> bool:
  d = os.path.join(wd, "checkpoints")
  return os.path.isdir(d) and bool(os.listdir(d))


def require_trained(plan: plan_lib.Plan, workdir: str) -> None:
  """Raises FileNotFoundError naming every net / row that `experiments.train` must train."""
  missing = [net_workdir(workdir, n) for n in plan_lib.needed_nets(plan)
             if plan.nets[n].trains and not _has_checkpoint(net_workdir(workdir, n))]
  for row in plan.rows.values():
    if row.trains:
      missing += [row_workdir(workdir, row.name, s) for s in (plan.seeds or (None,))
                  if not _has_checkpoint(row_workdir(workdir, row.name, s))]
  if missing:
    raise FileNotFoundError(f"no checkpoint in {missing}: run experiments.train with this "
                            "--workdir first")


def prepare_nets(plan: plan_lib.Plan, workdir: str, store: arrays.ArrayStore,
                 names: Optional[list[str]] = None, restore_only: bool = False,
                 tests: Mapping[str, tuple[str, str]] = ()) -> dict[str, dict]:
  """Trains / resumes / restores the classifier and head nets; adds them to `store`.

  Args:
    names: the nets to prepare, in training order (default: every net of the plan).
    restore_only: evaluation: restore finished runs only (nothing is trained or written).
    tests: `plan.data.test_sets()`: a training stream must hold none of them.

  Returns:
    {net: {"model", "kind", "weights"}} for the results.
  """
  info = {}
  for name in plan.nets if names is None else names:
    spec = plan.nets[name]
    if spec.kind == arrays.BACKBONE:
      continue
    net = classifier.placeholder_net(spec, plan.layout)
    if spec.init_from:
      net = dataclasses.replace(net, params=store.nets[spec.init_from].params)
    t0 = time.time()
    if spec.trains:
      x = store.get(arrays.BACKBONE, "train",
                    ["features" if spec.kind == "head" else "images"]).popitem()[1]
      y = store.get(arrays.BACKBONE, "train", ["labels"])["labels"]
      wd = net_workdir(workdir, name)
      logging.info("net %s: %s in %s", name,
                   "restoring" if restore_only else "training / restoring", wd)
      try:
        net = classifier.train_classifier(net, x, y, spec.recipe, wd,
                                          streams=_streams(store, name, spec, tests, x),
                                          restore_only=restore_only)
      except loop.Diverged as e:   # the net's own key, not the LFDN's optim.learning_rate
        raise e.with_advice(
            f"Lower c.nets.{name}.learning_rate (now {spec.recipe['learning_rate']}; "
            f"--config.nets.{name}.learning_rate=...) before re-running: it may change in "
            "this workdir.") from None
    store.add_net(name, spec.kind, net)
    info[name] = {"model": spec.model, "kind": spec.kind,
                  "weights": spec.weights or (f"net {spec.init_from}" if spec.init_from
                                              else net.weights_id),
                  "epochs": int(spec.recipe["epochs"]),
                  "objective": spec.recipe["objective"] if spec.trains else "",
                  "seconds": round(time.time() - t0, 3)}
  return info


def _streams(store: arrays.ArrayStore, name: str, spec: classifier.NetSpec,
             tests: Mapping[str, tuple[str, str]], x_in=None) -> dict[str, dict]:
  """The objective's other streams (e.g. the outlier images) of net `name`, loaded from their
  sources; each is checked to hold no test set's images (and the image shape of `x_in`)."""
  out = {}
  for stream, (source, _) in classifier.stream_sources(spec.recipe).items():
    set_name = stream_set(name, stream)
    store.sources[set_name] = source
    images = store.get(arrays.BACKBONE, set_name, ["images"])["images"]
    if x_in is not None and images.shape[1:] != x_in.shape[1:]:
      raise ValueError(f"c.nets.{name}: {stream} {source!r} has images of shape "
                       f"{images.shape[1:]}, the ID training images {x_in.shape[1:]}")
    checks.check_not_a_test_set(store, tests, f"c.nets.{name}.{stream}", source, images)
    out[stream] = {"x": images}
  return out


def check_streams(plan: plan_lib.Plan, store: arrays.ArrayStore,
                  tests: Mapping[str, tuple[str, str]]) -> None:
  """Loads every training net's extra streams (e.g. OE's outliers) and checks that none holds
  a test set's images, before any net trains."""
  for name, spec in plan.nets.items():
    if spec.trains:
      _streams(store, name, spec, tests)


def stream_set(net: str, stream: str) -> str:
  """The data-set name under which a net's extra training stream is loaded."""
  return f"{net}.{stream}"


def fit_key(plan: plan_lib.Plan, row: str) -> jax.Array:
  return evaluation.fit_key(jax.random.key(plan.eval_seed), row)


@contextlib.contextmanager
def row_detector(plan: plan_lib.Plan, row: rows_lib.RowSpec, store: arrays.ArrayStore,
                 workdir: str, seed: Optional[int], restore_only: bool = False
                 ) -> Iterator[Detector]:
  """A row's detector with its trained net; a row whose fit trains (DLSR) gets its workdir
  (with the config record) and a metrics writer, flushed when the context ends.
  `restore_only` (evaluation): the row's fit only restores its finished run; no record, no
  metrics writer, nothing written."""
  wd = row_workdir(workdir, row.name, seed) if row.trains else None
  writer = None
  if wd is not None and not restore_only:
    record_lib.record_config(plan_lib.seed_record(plan.record, seed), wd)
    writer = metrics_writer.create(wd)
  try:
    yield rows_lib.make_detector(row, plan.layout, net=store.nets.get(row.net), workdir=wd,
                                 seed=plan.seed if seed is None else seed,
                                 write_metrics=writer and writer.write_scalars,
                                 restore_only=restore_only)
  finally:
    if writer is not None:
      writer.close()


def fit_row(plan: plan_lib.Plan, row: rows_lib.RowSpec, store: arrays.ArrayStore, workdir: str,
            seed: Optional[int]) -> tuple[Detector, Any]:
  """Makes a row's detector (with its trained net) and fits it on the ID train arrays."""
  with row_detector(plan, row, store, workdir, seed) as det:
    state = det.fit(store.get(row.net, "train", row.fit_reads), fit_key(plan, row.name))
  return det, state


def run_train(plan: plan_lib.Plan, workdir: str) -> plan_lib.Plan:
  """Trains every classifier net (init_from order) and every training row of `plan`; the
  caller (`experiments.run.train`) has checked its sources and recorded its config."""
  store = inputs_lib.array_store(plan.inputs, workdir, plan.data.sources(with_ood=False),
                               shard_train=True)
  check_labels(plan, store)
  check_streams(plan, store, plan.data.test_sets())
  info = prepare_nets(plan, workdir, store, tests=plan.data.test_sets())
  if info and jax.process_index() == 0:
    workdir_lib.append_run(workdir, info)
  for row in plan.rows.values():
    if row.trains:
      for seed in plan.seeds or (None,):
        logging.info("row %s: training in %s", row.name, row_workdir(workdir, row.name, seed))
        fit_row(plan, row, store, workdir, seed)
  return plan

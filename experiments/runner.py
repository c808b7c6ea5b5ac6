"""Training and fitting what a `build.Plan` names: classifier nets, then detector rows.

Each classifier / head net trains (or resumes, or is restored when finished) in
`<workdir>/<net>/`, in `init_from` order; each detector row whose fit trains (DLSR) lives in
`<workdir>/<row>/` (`<workdir>/<row>/seed_<s>/` with `c.seeds`). `experiments.train` and
`experiments.evaluate` run the same code: a finished run is restored, not retrained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Iterator, Optional

import jax
from absl import logging

from dlsr_jax import evaluation
from dlsr_jax.detectors.base import Detector
from dlsr_jax.training import metrics_writer
from experiments import arrays, build, classifiers, pipeline


def sources(c, with_ood: bool = True) -> dict[str, str]:
  """{"train": ID train source, "id": ID test source, OOD set: source, ...}."""
  out = {"train": c.data.train, "id": c.data.test}
  if with_ood:
    out.update(pipeline.ood_sources(c))
  return out


def net_workdir(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


def row_workdir(workdir: str, row: str, seed: Optional[int]) -> str:
  base = os.path.join(workdir, row)
  return base if seed is None else os.path.join(base, f"seed_{seed}")


def _has_checkpoint(wd: str) -> bool:
  d = os.path.join(wd, "checkpoints")
  return os.path.isdir(d) and bool(os.listdir(d))


def require_trained(plan: build.Plan, workdir: str) -> None:
  """Raises FileNotFoundError naming every net / row that `experiments.train` must train."""
  missing = [net_workdir(workdir, n) for n in build.needed_nets(plan)
             if plan.nets[n].trains and not _has_checkpoint(net_workdir(workdir, n))]
  for row in plan.rows.values():
    if row.trains:
      missing += [row_workdir(workdir, row.name, s) for s in (plan.seeds or (None,))
                  if not _has_checkpoint(row_workdir(workdir, row.name, s))]
  if missing:
    raise FileNotFoundError(f"no checkpoint in {missing}: run experiments.train with this "
                            "--workdir first")


def prepare_nets(plan: build.Plan, workdir: str, store: arrays.ArrayStore,
                 names: Optional[list[str]] = None) -> dict[str, dict]:
  """Trains / resumes / restores the classifier and head nets; adds them to `store`.

  Args:
    names: the nets to prepare, in training order (default: every net of the plan).

  Returns:
    {net: {"model", "kind", "weights"}} for the results.
  """
  info = {}
  for name in plan.nets if names is None else names:
    spec = plan.nets[name]
    if spec.kind == build.BACKBONE:
      continue
    net = build.placeholder_net(spec, plan.layout)
    if spec.init_from:
      net = dataclasses.replace(net, params=store.nets[spec.init_from].params)
    t0 = time.time()
    if spec.trains:
      x = store.get(build.BACKBONE, "train",
                    ["features" if spec.kind == "head" else "images"]).popitem()[1]
      y = store.get(build.BACKBONE, "train", ["labels"])["labels"]
      wd = net_workdir(workdir, name)
      logging.info("net %s: training / restoring in %s", name, wd)
      net = classifiers.train_classifier(net, x, y, spec.recipe, wd,
                                         streams=_streams(store, name, spec, x))
    store.add_net(name, spec.kind, net)
    info[name] = {"model": spec.model, "kind": spec.kind,
                  "weights": spec.weights or (f"net {spec.init_from}" if spec.init_from
                                              else net.weights_id),
                  "epochs": int(spec.recipe["epochs"]),
                  "objective": spec.recipe["objective"] if spec.trains else "",
                  "seconds": round(time.time() - t0, 3)}
  return info


def _streams(store: arrays.ArrayStore, name: str, spec: build.NetSpec,
             x_in) -> dict[str, dict]:
  """The objective's other streams (e.g. the outlier images), loaded from their sources."""
  out = {}
  for stream, (source, _) in classifiers.stream_sources(spec.recipe).items():
    set_name = stream_set(name, stream)
    store.sources[set_name] = source
    images = store.get(build.BACKBONE, set_name, ["images"])["images"]
    if images.shape[1:] != x_in.shape[1:]:
      raise ValueError(f"c.nets.{name}: {stream} {source!r} has images of shape "
                       f"{images.shape[1:]}, the ID training images {x_in.shape[1:]}")
    out[stream] = {"x": images}
  return out


def stream_set(net: str, stream: str) -> str:
  """The data-set name under which a net's extra training stream is loaded."""
  return f"{net}.{stream}"


def fit_key(c, row: str) -> jax.Array:
  return evaluation.fit_key(jax.random.key(c.eval.seed), row)


@contextlib.contextmanager
def row_detector(c, plan: build.Plan, row: build.RowSpec, store: arrays.ArrayStore,
                 workdir: str, seed: Optional[int]) -> Iterator[Detector]:
  """A row's detector with its trained net; a row whose fit trains (DLSR) gets its workdir
  (with the config record) and a metrics writer, flushed when the context ends."""
  wd = row_workdir(workdir, row.name, seed) if row.trains else None
  writer = None
  if wd is not None:
    cs = c if seed is None else _with_seed(c, seed)
    pipeline.write_config(cs, wd)
    writer = metrics_writer.create(wd)
  try:
    yield build.make_detector(row, plan, net=store.nets.get(row.net), workdir=wd,
                              seed=c.seed if seed is None else seed,
                              write_metrics=writer and writer.write_scalars)
  finally:
    if writer is not None:
      writer.close()


def fit_row(c, plan: build.Plan, row: build.RowSpec, store: arrays.ArrayStore, workdir: str,
            seed: Optional[int]) -> tuple[Detector, Any]:
  """Makes a row's detector (with its trained net) and fits it on the ID train arrays."""
  with row_detector(c, plan, row, store, workdir, seed) as det:
    state = det.fit(store.get(row.net, "train", row.fit_reads), fit_key(c, row.name))
  return det, state


def _with_seed(c, seed: int):
  cs = c.copy_and_resolve_references()
  with cs.unlocked():
    cs.seed, cs.seeds = seed, ()
  return cs


def record_run(workdir: str, info: dict) -> None:
  """Appends this call's nets (objective, wall seconds to train or restore) to train_runs.json."""
  path = os.path.join(workdir, "train_runs.json")
  runs = []
  if os.path.exists(path):
    with open(path) as f:
      runs = json.load(f)
  runs.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "nets": info})
  with open(path + ".tmp", "w") as f:
    json.dump(runs, f, indent=2)
  os.replace(path + ".tmp", path)


def run_train(c, workdir: str) -> build.Plan:
  """Trains every classifier net (init_from order) and every training row of `c`."""
  plan = build.build(c)
  pipeline.write_config(c, workdir)
  store = arrays.ArrayStore(c, workdir, sources(c, with_ood=False), shard_train=True)
  info = prepare_nets(plan, workdir, store)
  if info and jax.process_index() == 0:
    record_run(workdir, info)
  for row in plan.rows.values():
    if row.trains:
      for seed in plan.seeds or (None,):
        logging.info("row %s: training in %s", row.name, row_workdir(workdir, row.name, seed))
        fit_row(c, plan, row, store, workdir, seed)
  return plan

"""The plan of a run as frozen dataclasses, and the checks of its nets.

`Plan` holds every net (`dlsr_jax.training.classifier.NetSpec`, in training order), every
selected detector row (`dlsr_jax.evaluation.rows.RowSpec`, checked there), the data sets
(`Data`) and the run's plain settings: what the runner and the evaluation read. The functions
here check plain blocks (dicts), never a ConfigDict: `build.build` reads the config and calls
them. Each net's kind, model, weights file and `init_from` (known, no cycle).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from dlsr_jax import models
from dlsr_jax.detectors.base import FeatureLayout
from dlsr_jax.evaluation import rows as rows_lib
from dlsr_jax.training import classifier
from experiments.configs import datasets

_NET_KEYS = ("kind", "weights", "init_from")


@dataclasses.dataclass(frozen=True)
class Data:
  """The data sets of a run, by source string.

  Attributes:
    train, test: the ID training and test sources (data.train, data.test).
    ood: {OOD set: source} (data.ood, then data.extra_ood).
    keys: {set name ("train", "id", OOD set): the config key naming it} (for messages).
    groups: {group: [OOD set, ...]} as configured (checked by `parse_groups`).
    val, ood_val: the validation sources ("" = none; val may be "holdout:F").
  """
  train: str = ""
  test: str = ""
  ood: Mapping[str, str] = dataclasses.field(default_factory=dict)
  keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
  groups: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  val: str = ""
  ood_val: str = ""

  def sources(self, with_ood: bool = True) -> dict[str, str]:
    """{"train": ID train source, "id": ID test source, OOD set: source, ...}."""
    return {"train": self.train, "id": self.test, **(self.ood if with_ood else {})}

  def test_sets(self) -> dict[str, tuple[str, str]]:
    """{test set name: (the config key naming it, its source)}: the ID test and OOD sets."""
    return {n: (self.keys[n], s) for n, s in self.sources().items() if n != "train"}


@dataclasses.dataclass(frozen=True)
class Plan:
  """Every net (in training order, the backbone first), every selected row, the data sets and
  the run's plain settings: everything the runner and the evaluation read of a config.

  Attributes:
    seed: the LFDN seed of a run without `seeds`; eval_seed: the evaluation key's seed.
    plots, trapezoid_aupr: eval.plots, eval.trapezoid_aupr.
    cache_dir: the config's cache_dir ("" = <workdir>/feature_cache).
    record: the config as a plain nested dict (what config.json records).
  """
  nets: Mapping[str, classifier.NetSpec]
  rows: Mapping[str, rows_lib.RowSpec]
  layout: FeatureLayout
  seeds: tuple[int, ...]
  data: Data = Data()
  seed: int = 0
  eval_seed: int = 0
  plots: bool = True
  trapezoid_aupr: bool = False
  cache_dir: str = ""
  record: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def plain(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(plain(v) for v in value)
  return value


def needed_nets(plan: Plan) -> list[str]:
  """The nets the selected rows read, with their init_from ancestors, in training order."""
  need = set()
  for row in plan.rows.values():
    name = row.net
    while name and name not in need:
      need.add(name)
      name = plan.nets[name].init_from
  return [n for n in plan.nets if n in need]


def net_spec(name: str, block: Mapping[str, Any]) -> classifier.NetSpec:
  kind = block.get("kind", "")
  if kind not in ("classifier", "head"):
    raise ValueError(f"c.nets.{name}: kind must be 'classifier' or 'head', got {kind!r}")
  model = block.get("model", "")
  if model not in models.names():
    raise ValueError(f"c.nets.{name}: unknown model {model!r}; valid: "
                     f"{', '.join(models.names())}")
  recipe = {k: v for k, v in block.items() if k not in _NET_KEYS}
  weights = str(block.get("weights", "") or "")
  try:
    recipe = classifier.net_config(**recipe, init_from=weights)
  except ValueError as e:
    raise ValueError(f"c.nets.{name}: {e}") from None
  if weights and not os.path.isfile(weights):
    raise FileNotFoundError(f"c.nets.{name}: weights file not found: {weights}")
  for stream, (source, _) in classifier.stream_sources(recipe).items():
    try:
      datasets.check_source(source)
    except ValueError as e:
      raise ValueError(f"c.nets.{name}.{stream}: {e}") from None
    scheme, path = source.split(":", 1)
    if scheme in ("npz", "folder") and not os.path.exists(path):
      raise FileNotFoundError(f"c.nets.{name}.{stream}: {path} not found ({source!r})")
  if recipe["objective"] != "cross_entropy" and not recipe["epochs"]:
    raise ValueError(f"c.nets.{name}: objective {recipe['objective']!r} with epochs=0 trains "
                     "nothing; set epochs")
  try:
    classifier.check_numbers(recipe)
  except ValueError as e:
    raise ValueError(f"c.nets.{name}.{e}") from None
  return classifier.NetSpec(name=name, kind=kind, model=model, weights=weights,
                 init_from=str(block.get("init_from", "") or ""), recipe=recipe)


def check_net(name: str, spec: classifier.NetSpec, layout: FeatureLayout) -> None:
  """Loads the net's starting weights and constructs its optimizer and objective, so that a
  wrong model, weights file or objective setting fails now, naming `c.nets.<name>.<key>`."""
  heads = [m for m in models.names() if m.endswith("_head")]
  if (spec.kind == "head") != (spec.model in heads):
    raise ValueError(f"c.nets.{name}.kind = {spec.kind!r} does not fit model {spec.model!r}: "
                     f"a head on the backbone features is one of {heads} (kind='head'), an "
                     "image classifier any other model (kind='classifier')")
  try:
    net = classifier.placeholder_net(spec, layout)
  except (ValueError, TypeError, KeyError, OSError) as e:
    key = "weights" if spec.weights else "model"
    raise ValueError(f"c.nets.{name}.{key}: {spec.weights or spec.model!r} cannot be loaded "
                     f"as a {spec.model} with num_classes={spec.recipe['num_classes']}: "
                     f"{type(e).__name__}: {e}") from None
  if not spec.trains:
    return
  try:
    classifier.check_objective(spec.recipe, net)
  except (ValueError, TypeError) as e:
    raise ValueError(f"c.nets.{name} (objective {spec.recipe['objective']!r}): {e}") from None


def training_order(specs: Mapping[str, classifier.NetSpec]) -> list[str]:
  order, seen = [], set()

  def visit(name, path):
    if name in seen:
      return
    if name in path:
      raise ValueError(f"c.nets: init_from cycle {' -> '.join(path + (name,))}")
    src = specs[name].init_from
    if src:
      if src not in specs:
        raise ValueError(f"c.nets.{name}: init_from {src!r} is not a configured net; "
                         f"configured nets: {sorted(specs)}")
      if specs[src].model != specs[name].model:
        raise ValueError(f"c.nets.{name}: init_from {src!r} is a {specs[src].model}, "
                         f"not a {specs[name].model}")
      classes = (specs[src].recipe["num_classes"], specs[name].recipe["num_classes"])
      if classes[0] != classes[1]:
        raise ValueError(f"c.nets.{name}.num_classes = {classes[1]}: init_from {src!r} has "
                         f"num_classes = {classes[0]}")
      visit(src, path + (name,))
    seen.add(name)
    order.append(name)

  for name in specs:
    visit(name, ())
  return order

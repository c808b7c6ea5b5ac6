"""The plan of a run as frozen dataclasses: what the runner and the evaluation read.

`Plan` holds every net (`dlsr_jax.training.classifier.NetSpec`, in training order; checked by
`classifier.net_spec`), every selected detector row (`dlsr_jax.evaluation.rows.RowSpec`;
checked by `rows.row_spec`), the data sets (`Data`), how images, the backbone and the feature
cache are loaded (`dlsr_jax.evaluation.inputs.Inputs`) and the run's plain settings.
`build.build` reads the config, calls the checks and fills these in.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from dlsr_jax.detectors.base import FeatureLayout
from dlsr_jax.evaluation import rows as rows_lib
from dlsr_jax.evaluation.inputs import Inputs
from dlsr_jax.training import classifier


@dataclasses.dataclass(frozen=True)
class Data:
  """The data sets of a run, by source string.

  Attributes:
    train, test: the ID training and test sources (data.train, data.test).
    ood: {OOD set: source} (data.ood, then data.extra_ood).
    keys: {set name ("train", "id", OOD set): the config key naming it} (for messages).
    groups: {group: (OOD set, ...)} as configured (checked by `check_evaluable`).
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
    inputs: how images, the backbone and the feature cache are loaded.
    record: the config as a plain nested dict (what config.json records).
    summary: the LFDN settings of the results' settings line (`settings_summary`).
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
  inputs: Inputs = Inputs()
  record: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  summary: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def plain(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(plain(v) for v in value)
  return value


def check_evaluable(plan: Plan) -> None:
  """What an evaluation needs beyond `build`'s checks: an OOD set, groups of known sets."""
  if not plan.data.ood:
    raise ValueError("no OOD sets configured: set --config.data.extra_ood=NAME=SOURCE")
  for g, members in plan.data.groups.items():
    unknown = [m for m in members if m not in plan.data.ood]
    if unknown or not members:
      raise ValueError(f"data.groups.{g} = {','.join(members)!r} names unknown OOD sets "
                       f"{unknown}; configured sets: {sorted(plan.data.ood)}")


def needed_nets(plan: Plan) -> list[str]:
  """The nets the selected rows read, with their init_from ancestors, in training order."""
  need = set()
  for row in plan.rows.values():
    name = row.net
    while name and name not in need:
      need.add(name)
      name = plan.nets[name].init_from
  return [n for n in plan.nets if n in need]


def seed_record(record: Mapping, seed: Optional[int]) -> dict:
  """A config record (`config_record`) for one of its `seeds`: `seed = seed`, no `seeds` (a
  seed run's record); the record itself when `seed` is None."""
  return dict(record) if seed is None else {**record, "seed": seed, "seeds": []}

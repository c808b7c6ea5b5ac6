"""Detector rows: a named detector of `dlsr_jax.detectors` on one net, checked before any work.

`row_spec(name, block, nets, layout, prefix)` checks a plain dict of a row's settings (its
`type`, a module of `dlsr_jax.detectors`; its `net`, the backbone or one of `nets`; `tune`,
`grid` and the detector's own settings) by constructing the detector once, and returns its
`RowSpec`: what it reads, the context arguments its module's `make` takes (`net`, `layout`,
`workdir`, `seed`, `write_metrics`, `restore_only`; filled in by `make_detector`) and whether
it is tuned. Messages name the row as `<prefix>.<name>` (the experiments: "c.detectors").
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from typing import Any, Iterable, Mapping, Optional

from dlsr_jax import detectors
from dlsr_jax.detectors.base import CONTEXT_ARGS, Detector, FeatureLayout
from dlsr_jax.evaluation import table
from dlsr_jax.evaluation import tune as tune_lib
from dlsr_jax.evaluation.arrays import BACKBONE
from dlsr_jax.models.net import Net
from dlsr_jax.training.classifier import PROVIDES, NetSpec, placeholder_net, provides

TUNED_SUFFIX = "@tuned"   # the name of a row's twin tuned by `--config.eval.tune`


@dataclasses.dataclass(frozen=True)
class RowSpec:
  """One detector row: its type, net, settings and what it reads."""
  name: str
  type: str
  net: str
  settings: Mapping[str, Any]
  reads: tuple[str, ...]
  fit_reads: tuple[str, ...]
  context: tuple[str, ...]
  score_names: Optional[tuple[str, ...]] = None   # when the detector declares them
  # True: settings chosen on data.val vs data.ood_val; False: not; None: not, and no
  # "<row>@tuned" twin from eval.tune (the row's tune=False).
  tune: Optional[bool] = False
  grid: Optional[Any] = None                 # its grid (None: the type's default grid)
  fit_set: str = "train"                     # "val": fitted on data.val (OpenOOD's ID-val fits)

  @property
  def trains(self) -> bool:
    """True for detectors whose fit trains a network in a workdir of their own (DLSR)."""
    return "workdir" in self.context


def make_detector(row: RowSpec, layout: FeatureLayout, *, net: Optional[Net] = None,
                  workdir: Optional[str] = None, seed: int = 0,
                  write_metrics=None, restore_only: bool = False) -> Detector:
  """Constructs a row's detector with its context arguments (`restore_only`: evaluation)."""
  context = {"net": net, "layout": layout, "workdir": workdir, "seed": seed,
             "write_metrics": write_metrics, "restore_only": restore_only}
  return detectors.make(row.type, **row.settings, **{k: context[k] for k in row.context})


def row_spec(name: str, block: Mapping[str, Any], nets: Mapping[str, NetSpec],
             layout: FeatureLayout, prefix: str) -> RowSpec:
  """The checked `RowSpec` of row `name` (`block`: its plain settings; `nets`: the configured
  nets by name, the backbone excluded)."""
  block = dict(block)
  type_, net = block.pop("type", name), block.pop("net", BACKBONE)
  tune, grid = block.pop("tune", None), block.pop("grid", None)
  types = detectors.available()
  if type_ not in types:
    raise ValueError(f"{prefix}.{name}: unknown detector type {type_!r}; available "
                     f"(modules of dlsr_jax.detectors): {', '.join(types)}")
  if net != BACKBONE and net not in nets:
    raise ValueError(f"{prefix}.{name}: unknown net {net!r}; configured nets: "
                     f"{[BACKBONE, *nets]}")
  module = importlib.import_module(f"dlsr_jax.detectors.{type_}")
  params = inspect.signature(module.make).parameters
  context = tuple(a for a in CONTEXT_ARGS if a in params)
  clash = sorted(set(block) & set(CONTEXT_ARGS))
  if clash:
    raise ValueError(f"{prefix}.{name}: {clash} are set by the evaluation, not the config")
  if "net" in context and net == BACKBONE:
    raise ValueError(f"{prefix}.{name}: detector {type_!r} runs a classifier; set net= "
                     f"one of the configured nets {sorted(nets)}")
  spec = RowSpec(name, type_, net, block, (), (), context)
  try:
    det = make_detector(spec, layout, workdir=os.path.join("unused", name),
                        net=placeholder_net(nets[net], layout) if "net" in context else None)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{prefix}.{name} ({type_}): {e}") from None
  kind = BACKBONE if net == BACKBONE else nets[net].kind
  provided = PROVIDES[kind] if net == BACKBONE else provides(nets[net])
  missing = [a for a in (*det.reads, *det.fit_reads) if a not in provided]
  if missing:
    raise ValueError(f"{prefix}.{name}: detector {type_!r} reads {sorted(set(missing))}, "
                     f"which net {net!r} ({kind}) does not provide (it provides "
                     f"{', '.join(provided)}); set net= a classifier or head net"
                     + (" trained with an objective that provides them"
                        if net != BACKBONE else ""))
  spec = dataclasses.replace(spec, reads=det.reads, fit_reads=det.fit_reads,
                             score_names=det.score_names)
  if tune is not None and not isinstance(tune, bool):
    raise ValueError(f"{prefix}.{name}.tune must be True or False, got {tune!r}")
  if tune or (grid is not None and tune is None):   # tune= / grid= tune this row in place
    spec = tuned_spec(spec, nets, layout, prefix, grid, name)
  elif tune is False:
    spec = dataclasses.replace(spec, tune=None)       # never tuned (not even by eval.tune)
  return spec


def check_result_keys(rows: Iterable[RowSpec], prefix: str) -> None:
  """Two rows must not give the same results key: known from the score names a detector
  declares (DLSR: "mse", "lr_mse", ... when the row is named after its type), else the row's
  name (one score)."""
  owner = {}
  for row in rows:
    keys = (table.result_keys(row.name, row.type, row.score_names).values()
            if row.score_names else [row.name])
    for key in dict.fromkeys(keys):
      if key in owner:
        raise ValueError(f"{prefix}.{row.name} and {prefix}.{owner[key]} both give the "
                         f"results key {key!r}: rename one of the rows")
      owner[key] = row.name


def tuned_spec(spec: RowSpec, nets: Mapping[str, NetSpec], layout: FeatureLayout, prefix: str,
               grid: Any = None, name: Optional[str] = None) -> RowSpec:
  """`spec` tuned (as row `name`), its grid checked: every candidate's settings are
  constructed once (a type that trains, like DLSR, cannot be tuned)."""
  name = name or spec.name
  if "workdir" in spec.context or "layout" in spec.context:
    raise ValueError(f"{prefix}.{name}: detector {spec.type!r} trains in its fit; it "
                     "cannot be tuned (tune= / grid=)")
  net = placeholder_net(nets[spec.net], layout) if "net" in spec.context else None
  try:
    cands = tune_lib.candidates(spec.type, grid, spec.settings, net=net)
    for c in cands:
      detectors.make(spec.type, **c, **({"net": net} if net is not None else {}))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{prefix}.{name}.grid ({spec.type}): {e}") from None
  return dataclasses.replace(spec, name=name, tune=True, grid=grid)


def tunable(spec: RowSpec, nets: Mapping[str, NetSpec], layout: FeatureLayout) -> bool:
  """Whether a run-wide tuning (`--config.eval.tune`) gives this row a "<row>@tuned" twin: a
  row not tuned already nor set tune=False, of a type that does not train, whose grid has 2+
  candidates."""
  if spec.tune is not False or "workdir" in spec.context or "layout" in spec.context:
    return False
  net = placeholder_net(nets[spec.net], layout) if "net" in spec.context else None
  return len(tune_lib.candidates(spec.type, None, spec.settings, net=net)) > 1

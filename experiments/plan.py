"""The plan of a run as frozen dataclasses, and the checks of its nets and detector rows.

`Plan` holds every net (`NetSpec`, in training order), every selected detector row
(`RowSpec`), the data sets (`Data`) and the run's plain settings: what the runner and the
evaluation read. The functions here check plain blocks (dicts), never a ConfigDict:
`build.build` reads the config and calls them. Each net's kind, model, weights file and
`init_from` (known, no cycle); each detector row's type (a module of `dlsr_jax.detectors`),
net (the backbone or a configured net), settings (by constructing the detector once) and the
arrays it reads (a detector reading "logits" needs a classifier or head net). Detector types
are found by module name; the context arguments a module's `make` takes (`net`, `layout`,
`workdir`, `seed`, `write_metrics`) are filled in by `make_detector`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from typing import Any, Mapping, Optional

from dlsr_jax import detectors, models
from dlsr_jax.detectors.base import CONTEXT_ARGS, Detector, FeatureLayout
from dlsr_jax.evaluation.arrays import BACKBONE
from dlsr_jax.models.net import Net
from dlsr_jax.objectives import base as objectives
from dlsr_jax.training import classifier
from experiments.configs import datasets

# The arrays each kind of net provides per data set.
PROVIDES = {
    "backbone": ("features", "images", "labels"),
    "classifier": ("logits", "pre_logits", "images", "labels"),
    "head": ("logits", "pre_logits", "features", "images", "labels"),
}


_NET_KEYS = ("kind", "weights", "init_from")


@dataclasses.dataclass(frozen=True)
class NetSpec:
  """One network. `recipe` is its `dlsr_jax.training.classifier` recipe (init_from = weights)."""
  name: str
  kind: str
  model: str = ""
  weights: str = ""
  init_from: str = ""
  recipe: Optional[Mapping[str, Any]] = None

  @property
  def trains(self) -> bool:
    return bool(self.recipe and self.recipe["epochs"])


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
  nets: Mapping[str, NetSpec]
  rows: Mapping[str, RowSpec]
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


def net_spec(name: str, block: Mapping[str, Any]) -> NetSpec:
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
  return NetSpec(name=name, kind=kind, model=model, weights=weights,
                 init_from=str(block.get("init_from", "") or ""), recipe=recipe)


def check_net(name: str, spec: NetSpec, layout: FeatureLayout) -> None:
  """Loads the net's starting weights and constructs its optimizer and objective, so that a
  wrong model, weights file or objective setting fails now, naming `c.nets.<name>.<key>`."""
  heads = [m for m in models.names() if m.endswith("_head")]
  if (spec.kind == "head") != (spec.model in heads):
    raise ValueError(f"c.nets.{name}.kind = {spec.kind!r} does not fit model {spec.model!r}: "
                     f"a head on the backbone features is one of {heads} (kind='head'), an "
                     "image classifier any other model (kind='classifier')")
  try:
    net = placeholder_net(spec, layout)
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


def training_order(specs: Mapping[str, NetSpec]) -> list[str]:
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


def provides(spec: NetSpec) -> tuple[str, ...]:
  """The arrays a configured net provides per data set (its objective may add some)."""
  extra = objectives.arrays_of(spec.recipe["objective"]) if spec.trains else ()
  return PROVIDES[spec.kind] + tuple(extra)


def placeholder_net(spec: NetSpec, layout: FeatureLayout) -> Net:
  """The net with its starting weights (or a random init): for checking detector settings
  (loaded once per recipe and width: `build` runs several times before any work)."""
  return classifier.cached_net(plain(spec.recipe),
                               sum(layout.channels) if spec.kind == "head" else None)


def make_detector(row: RowSpec, plan: Plan, *, net: Optional[Net] = None,
                  workdir: Optional[str] = None, seed: int = 0,
                  write_metrics=None, restore_only: bool = False) -> Detector:
  """Constructs a row's detector with its context arguments (`restore_only`: evaluation)."""
  context = {"net": net, "layout": plan.layout, "workdir": workdir, "seed": seed,
             "write_metrics": write_metrics, "restore_only": restore_only}
  return detectors.make(row.type, **row.settings, **{k: context[k] for k in row.context})


def row_spec(name: str, block: Mapping[str, Any], nets: Mapping[str, NetSpec],
              layout: FeatureLayout) -> RowSpec:
  block = dict(block)
  type_, net = block.pop("type", name), block.pop("net", BACKBONE)
  tune, grid = block.pop("tune", None), block.pop("grid", None)
  types = detectors.available()
  if type_ not in types:
    raise ValueError(f"c.detectors.{name}: unknown detector type {type_!r}; available "
                     f"(modules of dlsr_jax.detectors): {', '.join(types)}")
  if net != BACKBONE and net not in nets:
    raise ValueError(f"c.detectors.{name}: unknown net {net!r}; configured nets: "
                     f"{[BACKBONE, *nets]}")
  module = importlib.import_module(f"dlsr_jax.detectors.{type_}")
  params = inspect.signature(module.make).parameters
  context = tuple(a for a in CONTEXT_ARGS if a in params)
  clash = sorted(set(block) & set(CONTEXT_ARGS))
  if clash:
    raise ValueError(f"c.detectors.{name}: {clash} are set by the evaluation, not the config")
  if "net" in context and net == BACKBONE:
    raise ValueError(f"c.detectors.{name}: detector {type_!r} runs a classifier; set net= "
                     f"one of the configured nets {sorted(nets)}")
  spec = RowSpec(name, type_, net, block, (), (), context)
  plan = Plan({}, {}, layout, ())
  try:
    det = make_detector(spec, plan, workdir=os.path.join("unused", name),
                        net=placeholder_net(nets[net], layout) if "net" in context else None)
  except (TypeError, ValueError) as e:
    raise ValueError(f"c.detectors.{name} ({type_}): {e}") from None
  kind = BACKBONE if net == BACKBONE else nets[net].kind
  provided = PROVIDES[kind] if net == BACKBONE else provides(nets[net])
  missing = [a for a in (*det.reads, *det.fit_reads) if a not in provided]
  if missing:
    raise ValueError(f"c.detectors.{name}: detector {type_!r} reads {sorted(set(missing))}, "
                     f"which net {net!r} ({kind}) does not provide (it provides "
                     f"{', '.join(provided)}); set net= a classifier or head net"
                     + (" trained with an objective that provides them"
                        if net != BACKBONE else ""))
  spec = dataclasses.replace(spec, reads=det.reads, fit_reads=det.fit_reads,
                             score_names=det.score_names)
  if tune is not None and not isinstance(tune, bool):
    raise ValueError(f"c.detectors.{name}.tune must be True or False, got {tune!r}")
  if tune or (grid is not None and tune is None):   # tune= / grid= tune this row in place
    spec = tuned_spec(spec, nets, layout, grid, name)
  elif tune is False:
    spec = dataclasses.replace(spec, tune=None)       # never tuned (not even by eval.tune)
  return spec


def check_result_keys(rows: list[RowSpec]) -> None:
  """Two rows must not give the same results key: known from the score names a detector
  declares (DLSR: "mse", "lr_mse", ... when the row is named after its type), else the row's
  name (one score)."""
  from dlsr_jax.evaluation import table  # pylint: disable=g-import-not-at-top
  owner = {}
  for row in rows:
    keys = (table.result_keys(row.name, row.type, row.score_names).values()
            if row.score_names else [row.name])
    for key in dict.fromkeys(keys):
      if key in owner:
        raise ValueError(f"c.detectors.{row.name} and c.detectors.{owner[key]} both give the "
                         f"results key {key!r}: rename one of the rows")
      owner[key] = row.name


def tuned_spec(spec: RowSpec, nets: Mapping[str, NetSpec], layout: FeatureLayout,
               grid: Any = None, name: Optional[str] = None) -> RowSpec:
  """`spec` tuned (as row `name`), its grid checked: every candidate's settings are
  constructed once (a type that trains, like DLSR, cannot be tuned)."""
  from dlsr_jax.evaluation import tune as tune_lib  # pylint: disable=g-import-not-at-top
  name = name or spec.name
  if "workdir" in spec.context or "layout" in spec.context:
    raise ValueError(f"c.detectors.{name}: detector {spec.type!r} trains in its fit; it "
                     "cannot be tuned (tune= / grid=)")
  net = placeholder_net(nets[spec.net], layout) if "net" in spec.context else None
  try:
    cands = tune_lib.candidates(spec.type, grid, spec.settings, net=net)
    for c in cands:
      detectors.make(spec.type, **c, **({"net": net} if net is not None else {}))
  except (TypeError, ValueError) as e:
    raise ValueError(f"c.detectors.{name}.grid ({spec.type}): {e}") from None
  return dataclasses.replace(spec, name=name, tune=True, grid=grid)


def tunable(spec: RowSpec, nets: Mapping[str, NetSpec], layout: FeatureLayout) -> bool:
  """Whether `--config.eval.tune` gives this row a "<row>@tuned" twin: a row not tuned
  already nor set tune=False, of a type that does not train, whose grid has 2+ candidates."""
  from dlsr_jax.evaluation import tune as tune_lib  # pylint: disable=g-import-not-at-top
  if spec.tune is not False or "workdir" in spec.context or "layout" in spec.context:
    return False
  net = placeholder_net(nets[spec.net], layout) if "net" in spec.context else None
  return len(tune_lib.candidates(spec.type, None, spec.settings, net=net)) > 1


TUNED_SUFFIX = "@tuned"

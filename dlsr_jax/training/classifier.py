"""Training classifier nets (and heads on features) from a recipe: a plain dict of settings
(the experiments' `c.nets.<name>` blocks are such recipes).

  nc = classifier.net_config(model="cifar_resnet20", epochs=200)   # a dict
  net = classifier.load_net(nc)                       # random init or `init_from` weights
  net = classifier.train_classifier(net, images, labels, nc, workdir)   # resumable

Keys of a recipe (defaults: the CIFAR recipe, SPEC 4.2):
  model:           registry name of `dlsr_jax.models` ("cifar_resnet20", "resnet18_32x32",
                   "wrn40_2", "linear_head", "mlp_head", ...).
  init_from:       weights file to start from (fine-tuning); "" = random init from `seed`.
                   (Resolving another net's name to its trained weights is the caller's job.)
  num_classes:     classifier outputs (10).
  seed:            random init, shuffling and step keys (0).
  epochs:          passes over the training set; 0 = no training (the weights as loaded).
  batch_size:      global batch size (128).
  learning_rate:   peak SGD learning rate, cosine-decayed to 0 over the run (0.1).
  momentum:        SGD momentum (0.9); nesterov: Nesterov momentum (True).
  weight_decay:    torch-style L2 added to the gradient (5e-4); weight_decay_on: "all"
                   params (torch recipes) or "kernels".
  augment:         random crop (zero padding 4) + horizontal flip in the step (True;
                   ignored for heads on features).
  ema_decay:       > 0: also keep an EMA of the params and return it (0 = none).
  log_every_steps: metrics interval (100); checkpoint_every_steps: mid-epoch
                   checkpoints (0 = epoch ends only).
  hidden, dropout: model settings passed to `models.load` (mlp_head: hidden width; mlp_head
                   and wrn40_2: dropout); absent = the model's default.
  objective:       how the net is trained: a module of `dlsr_jax.objectives`
                   ("cross_entropy", "outlier_exposure", "unleashing_mask",
                   "confidence_branch", "gan_outliers"). Its settings are further keys of the
                   block (the keyword arguments of its `make`, e.g. `weight=0.5`); a stream it
                   reads besides the ID data is a data source under the stream's name
                   (`outliers="npz:..."`) with its batch size as `<stream>_batch_size`
                   (default: batch_size).

The run lives in `workdir` (orbax checkpoints + metrics); re-running the same
call resumes from the latest checkpoint, and a finished run returns at once.
SIGTERM raises `dlsr_jax.training.preemption.Preempted` after a checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from dlsr_jax import models, parallel
from dlsr_jax.detectors.base import FeatureLayout
from dlsr_jax.models.net import Net
from dlsr_jax.objectives import base as objectives
from dlsr_jax.training import loop, metrics_writer, optim
from dlsr_jax.training.checkpoint import Checkpointer

DEFAULTS = dict(model="cifar_resnet20", init_from="", num_classes=10, seed=0, epochs=0,
                batch_size=128, learning_rate=0.1, momentum=0.9, nesterov=True,
                weight_decay=5e-4, weight_decay_on="all", augment=True, ema_decay=0.0,
                log_every_steps=100, checkpoint_every_steps=0, objective="cross_entropy")
MODEL_SETTINGS = ("hidden", "dropout")   # passed to `models.load` when present


def stream_keys(objective: str) -> dict[str, str]:
  """{stream: its batch-size key} of the streams `objective` reads besides "in"."""
  return {s: f"{s}_batch_size" for s in objectives.streams_of(objective)}


def net_config(**overrides) -> dict[str, Any]:
  """A recipe with the defaults above, `overrides` applied (unknown keys rejected).

  Raises:
    ValueError: an unknown key (naming the valid ones, the objective's settings included),
      an unknown objective, or a stream of the objective without its data source.
  """
  objective = overrides.get("objective", DEFAULTS["objective"])
  settings = objectives.settings_of(objective)        # raises for an unknown objective
  streams = stream_keys(objective)
  valid = [*DEFAULTS, *MODEL_SETTINGS, *settings, *streams, *streams.values()]
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(f"unknown net config keys {unknown} (objective {objective!r}); valid: "
                     f"{sorted(valid)}")
  missing = [s for s in streams if not overrides.get(s)]
  missing += [k for k, d in settings.items() if d is inspect.Parameter.empty
              and k not in overrides]
  if missing:
    raise ValueError(f"objective {objective!r} needs {missing}: set "
                     + ", ".join(f"{m}=<data source>" if m in streams else f"{m}=..."
                                 for m in missing))
  return {**DEFAULTS, **overrides}


# key of a recipe -> (check, what is allowed)
_RECIPE_CHECKS = {
    "num_classes": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "epochs": (lambda v: _is_int(v) and v >= 0, "an int >= 0 (0 = no training)"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "seed": (lambda v: _is_int(v), "an int"),
    "learning_rate": (lambda v: _is_number(v) and 0 < v < 1e3, "a number in (0, 1000)"),
    "momentum": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "weight_decay_on": (lambda v: v in ("all", "kernels"), "'all' or 'kernels'"),
    "ema_decay": (lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)"),
    "log_every_steps": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "checkpoint_every_steps": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
}


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_numbers(nc) -> None:
  """The numbers of recipe `nc`, before any work.

  Raises:
    ValueError: "<key> = <value>: must be <what is allowed>" for the first bad one.
  """
  for key, (ok, allowed) in _RECIPE_CHECKS.items():
    if key in nc and not ok(nc[key]):
      raise ValueError(f"{key} = {nc[key]!r}: must be {allowed}")


def objective_settings(nc) -> dict[str, Any]:
  """The objective's own settings in block `nc` (the keyword arguments of its `make`)."""
  names = objectives.settings_of(_get(nc, "objective"))
  return {k: nc[k] for k in names if k in nc}


def stream_sources(nc) -> dict[str, tuple[str, int]]:
  """{stream: (data source, global batch size)} of the streams besides "in"."""
  return {s: (str(nc[s]), int(nc.get(k, _get(nc, "batch_size"))))
          for s, k in stream_keys(_get(nc, "objective")).items()}


def _get(nc, key: str):
  return nc.get(key, DEFAULTS[key])


def load_net(nc, num_features: Optional[int] = None) -> Net:
  """The block's starting `Net`: `init_from` weights, or a random init from `seed`.

  Args:
    nc: a recipe (a dict or ConfigDict).
    num_features: heads only: the width C of the features [N, C].
  """
  weights = _get(nc, "init_from") or None
  settings = {k: nc[k] for k in MODEL_SETTINGS if k in nc}
  return models.load(_get(nc, "model"), weights, num_classes=_get(nc, "num_classes"),
                     seed=_get(nc, "seed"), num_features=num_features, **settings)


def check_objective(nc, net: Net) -> None:
  """Constructs the recipe's optimizer and objective once for `net` (no data, no workdir), so
  that a bad objective setting fails before any work (ValueError / TypeError)."""
  settings = objective_settings(nc)
  if "b" in objectives.settings_of(_get(nc, "objective")) and settings.get("b") is None:
    settings["b"] = 0.0   # estimated from the data when training; any value to construct it
  objectives.make(_get(nc, "objective"), net, optim.sgd(sgd_config(nc), 1), settings,
                  augment=bool(_get(nc, "augment")) and net.resolution is not None,
                  ema_decay=_get(nc, "ema_decay") or None, data=None, workdir=None,
                  seed=_get(nc, "seed"))


def cached_net(nc: Mapping[str, Any], num_features: Optional[int] = None) -> Net:
  """`load_net` of a plain recipe, loaded once per recipe and width (the last 16): for checks
  that construct the same starting net many times."""
  return _cached_net(json.dumps(dict(nc), sort_keys=True, default=str), num_features)


@functools.lru_cache(maxsize=16)
def _cached_net(recipe: str, num_features: Optional[int]) -> Net:
  return load_net(json.loads(recipe), num_features=num_features)


# The arrays each kind of net provides per data set.
PROVIDES = {
    "backbone": ("features", "images", "labels"),
    "classifier": ("logits", "pre_logits", "images", "labels"),
    "head": ("logits", "pre_logits", "features", "images", "labels"),
}


@dataclasses.dataclass(frozen=True)
class NetSpec:
  """One named network of a run: its kind ("backbone", "classifier" or "head"), model, weights
  file, the net it starts from (`init_from`) and its recipe (init_from = weights)."""
  name: str
  kind: str
  model: str = ""
  weights: str = ""
  init_from: str = ""
  recipe: Optional[Mapping[str, Any]] = None

  @property
  def trains(self) -> bool:
    return bool(self.recipe and self.recipe["epochs"])


def provides(spec: NetSpec) -> tuple[str, ...]:
  """The arrays a net provides per data set (its objective may add some)."""
  extra = objectives.arrays_of(spec.recipe["objective"]) if spec.trains else ()
  return PROVIDES[spec.kind] + tuple(extra)


def placeholder_net(spec: NetSpec, layout: FeatureLayout) -> Net:
  """The net with its starting weights (or a random init): for checking detector settings
  (a head's width is that of the `layout` features; loaded once per recipe and width)."""
  return cached_net(spec.recipe, sum(layout.channels) if spec.kind == "head" else None)


NET_KEYS = ("kind", "weights", "init_from")   # the keys of a net block besides its recipe


def net_spec(name: str, block: Mapping[str, Any], prefix: str,
             check_source: Optional[Callable[[str], None]] = None) -> NetSpec:
  """The checked `NetSpec` of net `name` from its plain block (`kind`, `weights`, `init_from` and
  its recipe; messages name it `<prefix>.<name>`). `check_source` checks a training stream's
  data source string statically (ValueError); an npz / folder path must exist."""
  kind = block.get("kind", "")
  if kind not in ("classifier", "head"):
    raise ValueError(f"{prefix}.{name}: kind must be 'classifier' or 'head', got {kind!r}")
  model = block.get("model", "")
  if model not in models.names():
    raise ValueError(f"{prefix}.{name}: unknown model {model!r}; valid: "
                     f"{', '.join(models.names())}")
  recipe = {k: v for k, v in block.items() if k not in NET_KEYS}
  weights = str(block.get("weights", "") or "")
  try:
    recipe = net_config(**recipe, init_from=weights)
  except ValueError as e:
    raise ValueError(f"{prefix}.{name}: {e}") from None
  if weights and not os.path.isfile(weights):
    raise FileNotFoundError(f"{prefix}.{name}: weights file not found: {weights}")
  for stream, (source, _) in stream_sources(recipe).items():
    try:
      if check_source is not None:
        check_source(source)
    except ValueError as e:
      raise ValueError(f"{prefix}.{name}.{stream}: {e}") from None
    scheme, path = source.split(":", 1)
    if scheme in ("npz", "folder") and not os.path.exists(path):
      raise FileNotFoundError(f"{prefix}.{name}.{stream}: {path} not found ({source!r})")
  if recipe["objective"] != "cross_entropy" and not recipe["epochs"]:
    raise ValueError(f"{prefix}.{name}: objective {recipe['objective']!r} with epochs=0 trains "
                     "nothing; set epochs")
  try:
    check_numbers(recipe)
  except ValueError as e:
    raise ValueError(f"{prefix}.{name}.{e}") from None
  return NetSpec(name=name, kind=kind, model=model, weights=weights,
                 init_from=str(block.get("init_from", "") or ""), recipe=recipe)


def check_net(name: str, spec: NetSpec, layout: FeatureLayout, prefix: str) -> None:
  """Loads the net's starting weights and constructs its optimizer and objective, so that a
  wrong model, weights file or objective setting fails now, naming `<prefix>.<name>.<key>`."""
  heads = [m for m in models.names() if m.endswith("_head")]
  if (spec.kind == "head") != (spec.model in heads):
    raise ValueError(f"{prefix}.{name}.kind = {spec.kind!r} does not fit model {spec.model!r}: "
                     f"a head on the backbone features is one of {heads} (kind='head'), an "
                     "image classifier any other model (kind='classifier')")
  try:
    net = placeholder_net(spec, layout)
  except (ValueError, TypeError, KeyError, OSError) as e:
    key = "weights" if spec.weights else "model"
    raise ValueError(f"{prefix}.{name}.{key}: {spec.weights or spec.model!r} cannot be loaded "
                     f"as a {spec.model} with num_classes={spec.recipe['num_classes']}: "
                     f"{type(e).__name__}: {e}") from None
  if not spec.trains:
    return
  try:
    check_objective(spec.recipe, net)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{prefix}.{name} (objective {spec.recipe['objective']!r}): {e}") from None


def training_order(specs: Mapping[str, NetSpec], prefix: str) -> list[str]:
  """The nets by name, each after the net it starts from (`init_from`: a configured net of
  the same model and num_classes; no cycle)."""
  order, seen = [], set()

  def visit(name, path):
    if name in seen:
      return
    if name in path:
      raise ValueError(f"{prefix}: init_from cycle {' -> '.join(path + (name,))}")
    src = specs[name].init_from
    if src:
      if src not in specs:
        raise ValueError(f"{prefix}.{name}: init_from {src!r} is not a configured net; "
                         f"configured nets: {sorted(specs)}")
      if specs[src].model != specs[name].model:
        raise ValueError(f"{prefix}.{name}: init_from {src!r} is a {specs[src].model}, "
                         f"not a {specs[name].model}")
      classes = (specs[src].recipe["num_classes"], specs[name].recipe["num_classes"])
      if classes[0] != classes[1]:
        raise ValueError(f"{prefix}.{name}.num_classes = {classes[1]}: init_from {src!r} has "
                         f"num_classes = {classes[0]}")
      visit(src, path + (name,))
    seen.add(name)
    order.append(name)

  for name in specs:
    visit(name, ())
  return order


def fit_config(nc) -> loop.FitConfig:
  return loop.FitConfig(batch_size=_get(nc, "batch_size"), num_epochs=_get(nc, "epochs"),
                        seed=_get(nc, "seed"), log_every_steps=_get(nc, "log_every_steps"),
                        checkpoint_every_steps=_get(nc, "checkpoint_every_steps"),
                        lr_reference_steps=None)


def sgd_config(nc) -> optim.SGDConfig:
  return optim.SGDConfig(learning_rate=_get(nc, "learning_rate"),
                         momentum=_get(nc, "momentum"), nesterov=_get(nc, "nesterov"),
                         weight_decay=_get(nc, "weight_decay"),
                         decay=_get(nc, "weight_decay_on"))


def train_classifier(net: Net, images: np.ndarray, labels: np.ndarray, nc, workdir: str,
                     mesh=None, streams: Optional[Mapping[str, Mapping[str, np.ndarray]]] = None,
                     restore_only: bool = False) -> Net:
  """Trains `net` with the block's objective (cross-entropy by default); resumes from `workdir`.

  Args:
    net: the starting net (`load_net(nc)`); its variables are the initial ones.
    images: uint8 [N, H, W, 3] training images (or float [N, C] features for a head),
      the full array on every process.
    labels: [N] int class indices.
    nc: the net block (see the module docstring).
    workdir: the run's directory (checkpoints, metrics, net_config.json).
    mesh: data mesh (default: every device).
    streams: the objective's other streams, e.g. {"outliers": {"x": uint8 images}}.
    restore_only: evaluation: restore the finished run only; nothing is trained, moved or
      written (`loop.NotFinished` "run experiments.train to finish: step 8 of 24" for a run
      short of its steps).

  Returns:
    The trained net (the objective's `net`: a method that adds a head returns the new one)
    with its evaluation variables (EMA params if `ema_decay`, BatchNorm statistics).

  Raises:
    Preempted: on SIGTERM, after saving a checkpoint (re-run to resume).
  """
  if not _get(nc, "epochs"):
    return net
  cfg = fit_config(nc)
  labels = np.asarray(labels).astype(np.int32)
  if labels.shape != (len(images),):
    raise ValueError(f"labels must be [N] = [{len(images)}], got shape {labels.shape}")
  name = _get(nc, "objective")
  streams = dict(streams or {})
  wanted = stream_sources(nc)
  if sorted(streams) != sorted(wanted):
    raise ValueError(f"objective {name!r} reads streams {sorted(wanted)} besides 'in'; "
                     f"got {sorted(streams)}")
  cfg = dataclasses.replace(cfg, stream_batch_sizes={s: b for s, (_, b) in wanted.items()})
  data = {"in": {"x": images, "y": labels}, **streams}
  total = (len(images) // cfg.batch_size) * cfg.num_epochs
  tx = optim.sgd(sgd_config(nc), max(total, 1))
  image_net = net.resolution is not None
  ema = _get(nc, "ema_decay") or None
  obj = objectives.make(name, net, tx, objective_settings(nc),
                        augment=bool(_get(nc, "augment")) and image_net, ema_decay=ema,
                        data=data, workdir=workdir, seed=_get(nc, "seed"))
  if restore_only:
    ckpt = Checkpointer(workdir, read_only=True)
    try:
      state = loop.restore_finished(obj.init, data, cfg, ckpt, mesh=mesh)
    finally:
      ckpt.close()
    return dataclasses.replace(obj.net or net, params=obj.variables(state))
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "net_config.json"), "w") as f:
      json.dump(dict(nc) if isinstance(nc, dict) else nc.to_dict(), f, indent=2)
  writer = metrics_writer.create(workdir)
  ckpt = Checkpointer(workdir)
  try:   # on Preempted too: flush the metrics, finish the checkpoint writes
    state = loop.fit(obj.init, obj.step, data, cfg, ckpt,
                     mesh=mesh or parallel.make_mesh(),
                     write_metrics=lambda s, m: writer.write_scalars(s, m),
                     progress=f"train {_get(nc, 'model')} ({name})")
  finally:
    writer.close()
    ckpt.close()
  if obj.finish is not None and jax.process_index() == 0:
    obj.finish(state, workdir)
  return dataclasses.replace(obj.net or net, params=obj.variables(state))

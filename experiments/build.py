"""The ONLY reader of ConfigDicts: `build(c)` checks a config and returns its `plan.Plan`.

`build(c)` validates before any extraction or training (`c.nets`, `c.detectors`, the rows
selected by `c.eval.rows`, the validation sets, the training streams against the test sets;
the checks of each net are `dlsr_jax.training.classifier`'s, of each row
`dlsr_jax.evaluation.rows`') and converts the rest of the config into plain values: the data
sets (`Data`), the seeds, the evaluation settings. The functions at the end turn the config
into the library's own settings (feature spec, LFDN configs, the run's `plan.Inputs`: data
loading, the backbone, the feature cache) and the config record.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Optional

from dlsr_jax import backbones, lfdn, schedule, settings_checks, trainer
from dlsr_jax import train as train_lib
from dlsr_jax.data import sources
from dlsr_jax.detectors.base import FeatureLayout
from dlsr_jax.evaluation import inputs as inputs_lib
from dlsr_jax.evaluation import rows as rows_lib
from dlsr_jax.evaluation.arrays import BACKBONE
from dlsr_jax.training import classifier
from experiments import plan as plan_lib
from experiments import validate
from experiments import workdir as workdir_lib
from experiments.configs import datasets


def feature_layout(c) -> FeatureLayout:
  """The levels of the "features" array (`c.layers` of `c.backbone`), by name."""
  cfg = backbones.config(c.backbone)
  layers = tuple(c.layers) or cfg.default_layers
  bad = [i for i in layers if not 0 <= i < len(cfg.level_names)]
  if bad:
    raise ValueError(f"layers {list(layers)}: {c.backbone} has levels "
                     f"0..{len(cfg.level_names) - 1}")
  return FeatureLayout(names=tuple(cfg.level_names[i] for i in layers),
                       channels=tuple(cfg.level_channels[i] for i in layers))


def check_validation_sets(c, rows: Mapping[str, rows_lib.RowSpec]) -> None:
  """data.val / data.ood_val: well formed, never a test set (compared by real path for
  npz / folder sources, so "npz:d/./x.npz" is "npz:d/x.npz"), and set when a row is tuned."""
  val, ood_val = str(c.data.get("val", "") or ""), str(c.data.get("ood_val", "") or "")
  tests = {"data.test": str(c.data.test)}
  tests.update({f"data.ood.{k}": str(v) for k, v in ood_sources(c).items()})
  ids = {k: datasets.source_identity(v) for k, v in tests.items()}
  tuned = [r.name for r in rows.values() if r.tune]
  if tuned and not (val and ood_val):
    raise ValueError(f"rows {tuned} are tuned (eval.tune / tune= / grid=): set both data.val "
                     f"(e.g. 'holdout:0.1') and data.ood_val (a set that is none of the test "
                     f"sets); got data.val={val!r}, data.ood_val={ood_val!r}")
  checks = [("data.ood_val", ood_val)]
  if datasets.parse_holdout(val) is None:
    checks.append(("data.val", val))
  for key, source in checks:
    if not source:
      continue
    try:
      datasets.check_source(source)
    except ValueError as e:
      raise ValueError(f"{key}: {e}") from None
    clash = [k for k, v in ids.items() if v == datasets.source_identity(source)]
    if clash:
      raise ValueError(f"{key} = {source!r} is the test set {clash[0]} = {tests[clash[0]]!r}: "
                       "validation sets (tuning, ID-val fits) must be none of the test sets")
    if datasets.source_identity(source) == datasets.source_identity(str(c.data.train)):
      raise ValueError(f"{key} = {source!r} is the ID train source data.train"
                       + ("; use data.val='holdout:FRACTION' for a held-out part of it"
                          if key == "data.val" else ""))
    scheme, path = source.split(":", 1)
    if tuned and scheme in ("npz", "folder") and not os.path.exists(path):
      raise FileNotFoundError(f"{key}: {path} not found ({source!r})")


def ood_sources(c) -> dict[str, str]:
  """`c.data.ood` plus the sets given as `c.data.extra_ood` ("name=SOURCE,...")."""
  sources = dict(c.data.ood)
  for item in [i.strip() for i in str(c.data.get("extra_ood", "")).split(",") if i.strip()]:
    name, sep, src = item.partition("=")
    if not sep or not name.strip() or not src.strip():
      raise ValueError(f"data.extra_ood entry {item!r} is not NAME=SOURCE")
    if name.strip() in sources:
      raise ValueError(f"data.extra_ood names {name.strip()!r} twice or shadows data.ood."
                       f"{name.strip()}; override that with --config.data.ood.{name.strip()}=...")
    sources[name.strip()] = src.strip()
  return sources


def _check_streams_apart(c, specs: Mapping[str, classifier.NetSpec]) -> None:
  """A training stream (e.g. OE's outliers) must not be a test set of the evaluation."""
  tests = {"data.test": str(c.data.test)}
  tests.update({f"data.ood.{k}": str(v) for k, v in ood_sources(c).items()})
  for name, spec in specs.items():
    for stream, (source, _) in classifier.stream_sources(spec.recipe).items():
      clash = [k for k, v in tests.items() if sources.same_source(v, source)]
      if clash:
        raise ValueError(f"c.nets.{name}.{stream} = {source!r} is also the test set "
                         f"{clash[0]}: training data must be disjoint from the test sets")


def build(c) -> plan_lib.Plan:
  """Checks and converts `c.nets`, `c.detectors` (the rows selected by `c.eval.rows`)."""
  layout = feature_layout(c)
  blocks = plan_lib.plain(c.get("nets") or {})
  if BACKBONE in blocks:
    raise ValueError(f"c.nets.{BACKBONE}: the name is reserved for the frozen backbone")
  specs = {n: classifier.net_spec(n, b, "c.nets", datasets.check_source)
           for n, b in blocks.items()}
  for n, spec in specs.items():
    classifier.check_net(n, spec, layout, "c.nets")
  _check_streams_apart(c, specs)
  nets = {BACKBONE: classifier.NetSpec(BACKBONE, BACKBONE)}
  nets.update({n: specs[n] for n in classifier.training_order(specs, "c.nets")})
  rows = plan_lib.plain(c.get("detectors") or {})
  wanted = [r.strip() for r in str(c.eval.get("rows", "") or "").split(",") if r.strip()]
  unknown = [r for r in wanted if r not in rows]
  if unknown:
    raise ValueError(f"eval.rows names unknown rows {unknown}; configured rows: {sorted(rows)}")
  if not rows:
    raise ValueError("no detector rows configured (c.detectors)")
  selected = []
  for n in wanted or rows:
    spec = rows_lib.row_spec(n, rows[n], specs, layout, "c.detectors")
    selected.append(spec)
    if c.eval.get("tune", False) and rows_lib.tunable(spec, nets, layout):
      selected.append(rows_lib.tuned_spec(spec, nets, layout, "c.detectors", None,
                                          n + rows_lib.TUNED_SUFFIX))
  if str(c.data.get("val", "") or ""):
    from dlsr_jax.evaluation import tune as tune_lib  # pylint: disable=g-import-not-at-top
    selected = [dataclasses.replace(r, fit_set="val") if r.type in tune_lib.OPENOOD_VAL_FIT
                else r for r in selected]
  rows_lib.check_result_keys(selected, "c.detectors")
  check_validation_sets(c, {r.name: r for r in selected})
  order = list(nets)
  selected = {r.name: r for r in sorted(selected, key=lambda r: order.index(r.net))}
  seeds = tuple(int(s) for s in (c.get("seeds") or ()))
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct, got {list(seeds)}")
  return plan_lib.Plan(nets=nets, rows=selected, layout=layout, seeds=seeds,
                       data=data_plan(c), seed=int(c.seed), eval_seed=int(c.eval.seed),
                       plots=bool(c.eval.plots),
                       trapezoid_aupr=bool(c.eval.get("trapezoid_aupr", False)),
                       inputs=inputs(c), record=config_record(c), summary=lfdn_summary(c))


def data_plan(c) -> plan_lib.Data:
  """The data sets of `c` (`plan.Data`); the groups as configured, unchecked."""
  ood = ood_sources(c)
  keys = {"train": "data.train", "id": "data.test"}
  keys.update({n: f"data.ood.{n}" if n in c.data.ood else f"data.extra_ood {n}" for n in ood})
  groups = {g: tuple(m.strip() for m in str(members).split(",") if m.strip())
            for g, members in (c.data.get("groups") or {}).items()}
  return plan_lib.Data(train=str(c.data.train), test=str(c.data.test), ood=ood, keys=keys,
              groups=groups, val=str(c.data.get("val", "") or ""),
              ood_val=str(c.data.get("ood_val", "") or ""))


# ------------------------------------------- the config as library settings --
def schedule_config(c) -> schedule.ScheduleConfig:
  s = c.schedule
  return schedule.ScheduleConfig(kind=s.kind, num_steps=s.num_steps,
                                 beta_start=s.beta_start, beta_end=s.beta_end)


def model_config(c, num_features: int) -> lfdn.LFDNConfig:
  m = c.model
  return lfdn.LFDNConfig(features=num_features, width=m.width, embed_dim=m.embed_dim,
                         num_blocks=m.num_blocks, dropout=m.dropout,
                         use_time_embedding=m.use_time_embedding, dtype=m.dtype)


def optim_config(c) -> train_lib.OptimConfig:
  o = c.optim
  return train_lib.OptimConfig(learning_rate=o.learning_rate, weight_decay=o.weight_decay,
                               warmup_steps=o.warmup_steps,
                               grad_clip_norm=o.grad_clip_norm or None, ema_decay=o.ema_decay)


def fit_config(c) -> trainer.FitConfig:
  t = c.train
  return trainer.FitConfig(batch_size=t.batch_size, num_epochs=t.num_epochs, seed=c.seed,
                           log_every_steps=t.log_every_steps,
                           checkpoint_every_epochs=t.checkpoint_every_epochs,
                           checkpoint_every_steps=t.checkpoint_every_steps,
                           lr_reference_steps=t.lr_reference_steps,
                           keep_steps=tuple(int(s) for s in t.keep_steps))


def inputs(c) -> inputs_lib.Inputs:
  """How the run loads images, the backbone and its features (`plan.Inputs`)."""
  return inputs_lib.Inputs(
      backbone=c.backbone, weights=None if c.weights in ("none", "", None) else c.weights,
      backbone_dtype=c.backbone_dtype, normalisation=c.normalisation, layers=tuple(c.layers),
      pooling=c.pooling, resolution=c.resolution or 0, feature_batch_size=c.feature_batch_size,
      classifier_batch_size=c.eval.get("classifier_batch_size", 256),
      image_size=c.data.image_size or 0, tfds_data_dir=c.data.tfds_data_dir or "",
      limit=c.data.limit or 0, cache_dir=str(c.cache_dir or ""))


def lfdn_summary(c) -> dict:
  """The LFDN blocks' part of the results' settings line (`plan.settings_summary`)."""
  return {
      "lfdn": f"W={c.model.width} E={c.model.embed_dim} N={c.model.num_blocks}",
      "train": f"{c.train.num_epochs} epochs, batch {c.train.batch_size}, "
               f"lr {c.optim.learning_rate}, wd {c.optim.weight_decay}, ema {c.optim.ema_decay}",
      "ddim": f"stride {c.eval.stride}, eta {c.eval.eta}, release_compat {c.eval.release_compat}",
      "num_draws": c.eval.num_draws, "lr_orientation": c.eval.lr_orientation,
  }


def config_record(c) -> dict:
  """The config as a plain nested dict (what `config.json` records)."""
  return json.loads(c.to_json_best_effort())


def check_config(c, workdir: str, for_eval: bool = False) -> list[str]:
  """Raises `WorkdirConfigError` if `c` differs from the workdir's record in a guarded key;
  returns the changeable keys that differ (`experiments.workdir.check_config`)."""
  return workdir_lib.check_config(config_record(c), workdir, for_eval)


def write_config(c, workdir: str) -> None:
  """Records `c` in `workdir/config.json`; raises if it differs in a guarded key."""
  workdir_lib.record_config(config_record(c), workdir)


def validate_config(c) -> plan_lib.Plan:
  """Raises one ValueError listing every problem of `c` (`validate.problems`, with what
  `build` finds among them); call before any long work. Returns the config's plan (built
  once here)."""
  plan, found = None, []
  try:   # nets and detector rows: types, settings, net names
    plan = build(c)
  except (ValueError, TypeError) as e:
    found.append(f"--config.nets / --config.detectors / --config.eval.rows: {e}")
  settings_checks.raise_problems(validate.problems(config_record(c), found))
  return plan


def lr_reference_step(c) -> int:
  """The step of the LR score's reference checkpoint for config `c`.

  `train.lr_reference_steps` (0 = one epoch of the training set, counted
  without loading it).
  """
  if c.train.lr_reference_steps:
    return int(c.train.lr_reference_steps)
  return inputs_lib.count_source(inputs(c), c.data.train) // c.train.batch_size


def restore_ema(c, workdir: str, num_features: int, reference_step: Optional[int] = None):
  """EMA params of the final checkpoint in `workdir`, or of a kept reference step."""
  from dlsr_jax.detectors import dlsr  # pylint: disable=g-import-not-at-top
  return dlsr.restore_ema(workdir, model_config(c, num_features), optim_config(c),
                          reference_step)


def release_config(c, model: lfdn.LFDNConfig, reference_step: Optional[int]):
  """`c` with a converted release LFDN's sizes, `eval.release_compat` and (with a first
  checkpoint) `train.lr_reference_steps` at its step: the config its workdir records."""
  c = c.copy_and_resolve_references()  # unlocked copy
  c.model.width, c.model.embed_dim = model.width, model.embed_dim
  c.model.num_blocks, c.model.use_time_embedding = model.num_blocks, model.use_time_embedding
  c.eval.release_compat = True
  if reference_step is not None:
    c.train.lr_reference_steps = reference_step
  return c

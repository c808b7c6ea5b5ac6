"""Config checks that run before any feature extraction or training.

`validate_config(c)` raises one `ValueError` listing every bad key of a
ConfigDict (batch sizes, k, schedule, resolution, dtypes, names), each with the
key as given on the command line (`--config.eval.batch_size`) and what is
allowed, so a typo fails in a second instead of after minutes of extraction.
`run.train` and `evaluation.run_evaluate` call it first; it returns the config's plan.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from dlsr_jax import backbones, diffusion, extras, schedule, scoring
from experiments import build

DTYPES = ("float32", "bfloat16", "float16")
MIN_RESOLUTION = 32        # every backbone downsamples 32x: smaller inputs lose levels
SCHEDULE_KINDS = ("scaled_linear", "linear", "cosine")
POOLINGS = ("gap", "dlsr")
K_STRATEGIES = ("vmap", "per_k")


def _int_at_least(lo: int) -> Callable[[Any], bool]:
  return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


# key -> (predicate, what is allowed)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.dtype": (lambda v: v in DTYPES, f"one of {DTYPES}"),
    "backbone_dtype": (lambda v: v in DTYPES, f"one of {DTYPES}"),
    "resolution": (lambda v: v == 0 or _int_at_least(MIN_RESOLUTION)(v),
                   f"0 (the backbone's own) or an int >= {MIN_RESOLUTION} (the backbones "
                   "downsample 32x)"),
    "pooling": (lambda v: v in POOLINGS, f"one of {POOLINGS}"),
    "feature_batch_size": (_int_at_least(1), "an int >= 1"),
    "data.image_size": (lambda v: v == 0 or _int_at_least(1)(v), "0 or an int >= 1"),
    "data.limit": (_int_at_least(0), "an int >= 0 (0 = every image)"),
    "model.width": (lambda v: _int_at_least(2)(v) and v % 2 == 0, "an even int >= 2"),
    "model.embed_dim": (_int_at_least(1), "an int >= 1"),
    "model.num_blocks": (_int_at_least(1), "an int >= 1"),
    "model.dropout": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1)"),
    "schedule.kind": (lambda v: v in SCHEDULE_KINDS, f"one of {SCHEDULE_KINDS}"),
    "schedule.num_steps": (_int_at_least(2), "an int >= 2"),
    "optim.learning_rate": (lambda v: isinstance(v, (int, float)) and 0 < v < 1e3,
                            "a number in (0, 1000)"),
    "optim.ema_decay": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1)"),
    "train.batch_size": (_int_at_least(1), "an int >= 1"),
    "train.num_epochs": (_int_at_least(1), "an int >= 1"),
    "train.log_every_steps": (_int_at_least(1), "an int >= 1"),
    "train.checkpoint_every_epochs": (_int_at_least(1), "an int >= 1"),
    "train.checkpoint_every_steps": (_int_at_least(0), "an int >= 0"),
    "train.lr_reference_steps": (_int_at_least(0), "an int >= 0 (0 = one epoch)"),
    "eval.batch_size": (_int_at_least(1), "an int >= 1"),
    "eval.stride": (_int_at_least(1), "an int >= 1"),
    "eval.num_draws": (_int_at_least(1), "an int >= 1"),
    "eval.eta": (lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0"),
    "eval.knn_k": (_int_at_least(1), "an int >= 1"),
    "eval.k_strategy": (lambda v: v in K_STRATEGIES, f"one of {K_STRATEGIES}"),
    "eval.lr_orientation": (lambda v: v in scoring.LR_ORIENTATIONS,
                            f"one of {scoring.LR_ORIENTATIONS}"),
}


def _get(c, key: str) -> tuple[bool, Any]:
  node = c
  for part in key.split("."):
    if part not in node:
      return False, None
    node = node[part]
  return True, node


def problems(c) -> list[str]:
  """Every problem of config `c`, one line each (empty: fine)."""
  return _problems_and_plan(c)[0]


def _problems_and_plan(c) -> tuple[list[str], Optional[build.Plan]]:
  """(every problem of `c`, its plan: None if `build.build` failed)."""
  out, plan = [], None
  for key, (ok, allowed) in _CHECKS.items():
    present, value = _get(c, key)
    if present and not ok(value):
      out.append(f"--config.{key}={value!r}: must be {allowed}")
  if c.backbone not in backbones.names():
    out.append(f"--config.backbone={c.backbone!r}: must be one of {backbones.names()}")
  s = c.schedule
  if not 0 < s.beta_start < s.beta_end < 1:
    out.append(f"--config.schedule.beta_start={s.beta_start!r}, beta_end={s.beta_end!r}: "
               "need 0 < beta_start < beta_end < 1")
  if _get(c, "schedule.num_steps")[1] and _int_at_least(2)(c.schedule.num_steps):
    try:
      scoring.validate_ks(list(c.eval.ks), c.schedule.num_steps)
    except ValueError as e:
      out.append(f"--config.eval.ks={tuple(c.eval.ks)!r}: {e}")
  try:   # nets and detector rows: types, settings, net names (experiments.build)
    plan = build.build(c)
  except (ValueError, TypeError) as e:
    out.append(f"--config.nets / --config.detectors / --config.eval.rows: {e}")
  out += _library_checks(c)
  out += _extras_checks(c)
  return out, plan


def _strings(node, prefix: str = ""):
  """(dotted key, value) of every string value in a ConfigDict / dict tree."""
  for key, value in node.items():
    if hasattr(value, "items"):
      yield from _strings(value, f"{prefix}{key}.")
    elif isinstance(value, str):
      yield f"{prefix}{key}", value


def _extras_checks(c) -> list[str]:
  """`tfds:` sources (any key, e.g. data.train, data.ood.*, a net's outliers) without the
  `tfds` extra installed: named with the pip command, before any work."""
  if extras.installed("tfds"):
    return []
  return [f"--config.{key}={value!r}: {extras.missing_message('tfds', 'a tfds: source')}"
          for key, value in _strings(c) if value.startswith("tfds:")
          or (key.endswith("extra_ood") and "=tfds:" in value)]


def _library_checks(c) -> list[str]:
  """What the library's own config dataclasses reject (DDIM, schedule)."""
  out = []
  try:
    diffusion.DDIMConfig(stride=c.eval.stride, eta=c.eval.eta,
                         release_compat=c.eval.release_compat)
  except (ValueError, TypeError) as e:
    out.append(f"--config.eval (DDIM): {e}")
  try:
    s = c.schedule
    schedule.make_schedule(schedule.ScheduleConfig(kind=s.kind, num_steps=s.num_steps,
                                                   beta_start=s.beta_start,
                                                   beta_end=s.beta_end))
  except (ValueError, TypeError) as e:
    out.append(f"--config.schedule: {e}")
  return out


def validate_config(c) -> build.Plan:
  """Raises one ValueError listing every problem of `c`; call before any long work.

  Returns:
    The config's plan (`build.build(c)`, built once here).
  """
  found, plan = _problems_and_plan(c)
  found = list(dict.fromkeys(found))
  if len(found) == 1:
    raise ValueError(f"invalid config: {found[0]}")
  if found:
    raise ValueError("invalid config:\n  " + "\n  ".join(found))
  return plan

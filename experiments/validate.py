"""Config checks that run before any feature extraction or training.

`problems(settings)` lists every bad key of a config's settings (a plain dict,
`build.config_record(c)`: batch sizes, k, schedule, resolution, dtypes, names), each with the
key as given on the command line (`--config.eval.batch_size`) and what is allowed, so a typo
fails in a second instead of after minutes of extraction. `build.validate_config(c)` raises
them (with what `build.build` finds) as one `ValueError`; `run.train` and
`run.evaluate` call it first.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from dlsr_jax import backbones, lfdn, scoring, settings_checks

DTYPES = ("float32", "bfloat16", "float16")
MODEL_DTYPES = (*DTYPES, lfdn.BF16_MATMUL)   # + the LFDN's opt-in bf16 dots, f32 sums
MIN_RESOLUTION = 32        # every backbone downsamples 32x: smaller inputs lose levels
SCHEDULE_KINDS = ("scaled_linear", "linear", "cosine")
POOLINGS = ("gap", "dlsr")
K_STRATEGIES = ("vmap", "per_k")


def _int_at_least(lo: int) -> Callable[[Any], bool]:
  return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


# key -> (predicate, what is allowed)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.dtype": (lambda v: v in MODEL_DTYPES, f"one of {MODEL_DTYPES}"),
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


def problems(settings: Mapping, plan_problems: Sequence[str] = ()) -> list[str]:
  """Every problem of a config's settings, one line each (empty: fine).

  Args:
    settings: the config as a plain nested dict (`build.config_record(c)`).
    plan_problems: what `build.build` found (nets, detector rows), listed in their place.
  """
  out = []
  for key, (ok, allowed) in _CHECKS.items():
    present, value = settings_checks.get(settings, key)
    if present and not ok(value):
      out.append(f"--config.{key}={value!r}: must be {allowed}")
  backbone = settings["backbone"]
  if backbone not in backbones.names():
    out.append(f"--config.backbone={backbone!r}: must be one of {backbones.names()}")
  s, e = settings["schedule"], settings["eval"]
  if not 0 < s["beta_start"] < s["beta_end"] < 1:
    out.append(f"--config.schedule.beta_start={s['beta_start']!r}, "
               f"beta_end={s['beta_end']!r}: need 0 < beta_start < beta_end < 1")
  if settings_checks.get(settings, "schedule.num_steps")[1] and _int_at_least(2)(s["num_steps"]):
    try:
      scoring.validate_ks(list(e["ks"]), s["num_steps"])
    except ValueError as err:
      out.append(f"--config.eval.ks={tuple(e['ks'])!r}: {err}")
  out += list(plan_problems)
  out += settings_checks.library_problems(settings["eval"], settings["schedule"], "--config.")
  out += settings_checks.extras_problems(settings, "--config.")
  return out

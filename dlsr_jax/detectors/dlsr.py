"""DLSR (Yang et al., NeurIPS 2024) as a detector: an LFDN trained on the ID features.

`fit` trains the LFDN on the ID train features (or resumes it, or restores a finished run)
in `workdir`, keeping the LR score's early checkpoint; `score` noises each feature vector to
step k, reconstructs it with DDIM and returns, for every k of `ks`:
`mse@k`, `mfsim@k` and, with `lr=True`, `lr_mse@k`, `lr_mfsim@k` (the k is part of the score
name). The AutoEncoder ablation is `use_time_embedding=False`; the last-level ablation is
`levels=("level5",)` (levels are named, as in `FeatureLayout.names`).

This is the one detector whose fit trains a network: its `make` takes the context arguments
`workdir` (where the run lives), `layout` (the levels of the "features" array) and `seed`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Optional

import jax
import numpy as np

from dlsr_jax import diffusion, lfdn, parallel, schedule, scoring, trainer
from dlsr_jax.detectors import base
from dlsr_jax.training import loop
from dlsr_jax.training import optim as optim_lib
from dlsr_jax.training.checkpoint import Checkpointer

__all__ = ["DLSRSettings", "make", "restore_ema"]

# The defaults of the library's own configs; DLSRSettings takes its defaults from these, so
# each lives in one place (experiments/configs take theirs from DLSRSettings).
_LFDN = lfdn.paper_config(720)            # EfficientNet-B4's C: the LFDNConfig defaults
_SCHEDULE = schedule.ScheduleConfig()
_ADAMW = optim_lib.AdamWConfig()
_FIT = loop.FitConfig()
_DDIM = diffusion.DDIMConfig()


@dataclasses.dataclass(frozen=True)
class DLSRSettings:
  """Every setting of a DLSR row (defaults: the paper's; configs take `c.model` etc.).

  The defaults are the library configs' (`lfdn.paper_config(720)`, `ScheduleConfig`,
  `AdamWConfig`, `FitConfig`, `DDIMConfig`) and, for scoring, the ones below;
  `experiments/configs/methods.py` hands them to the configs.

  LFDN (`c.model`): width, embed_dim, num_blocks, dropout, use_time_embedding, dtype.
  Schedule (`c.schedule`): schedule_kind, num_steps, beta_start, beta_end.
  Optimiser (`c.optim`): learning_rate, weight_decay, warmup_steps, grad_clip_norm, ema_decay.
  Training (`c.train`): batch_size, num_epochs, log_every_steps, checkpoint_every_epochs,
    checkpoint_every_steps, lr_reference_steps (0 = one epoch of this set), keep_steps.
  Scoring (`c.eval`): ks, stride, eta, release_compat, num_draws, eval_batch_size,
    k_strategy ("vmap" | "per_k"), lr (also the LR scores), lr_orientation.
  levels: None = every level of the features; else the named levels, e.g. ("level5",).
  """
  width: int = _LFDN.width
  embed_dim: int = _LFDN.embed_dim
  num_blocks: int = _LFDN.num_blocks
  dropout: float = _LFDN.dropout
  use_time_embedding: bool = _LFDN.use_time_embedding
  dtype: str = _LFDN.dtype
  schedule_kind: str = _SCHEDULE.kind
  num_steps: int = _SCHEDULE.num_steps
  beta_start: float = _SCHEDULE.beta_start
  beta_end: float = _SCHEDULE.beta_end
  learning_rate: float = _ADAMW.learning_rate
  weight_decay: float = _ADAMW.weight_decay
  warmup_steps: int = _ADAMW.warmup_steps
  grad_clip_norm: float = _ADAMW.grad_clip_norm or 0.0   # 0 = no clipping
  ema_decay: float = _ADAMW.ema_decay
  batch_size: int = _FIT.batch_size
  num_epochs: int = _FIT.num_epochs
  log_every_steps: int = _FIT.log_every_steps
  checkpoint_every_epochs: int = _FIT.checkpoint_every_epochs
  checkpoint_every_steps: int = _FIT.checkpoint_every_steps
  lr_reference_steps: int = _FIT.lr_reference_steps
  keep_steps: tuple[int, ...] = _FIT.keep_steps
  ks: tuple[int, ...] = (3, 5, 10)
  stride: int = _DDIM.stride
  eta: float = _DDIM.eta
  release_compat: bool = _DDIM.release_compat
  num_draws: int = 1
  eval_batch_size: int = 256
  k_strategy: str = "vmap"
  lr: bool = True
  lr_orientation: str = "first_minus_final"
  levels: Optional[tuple[str, ...]] = None

  def __post_init__(self):
    for name in ("ks", "keep_steps", "levels"):
      value = getattr(self, name)
      if value is not None:
        object.__setattr__(self, name, tuple(value))
    scoring.validate_ks(list(self.ks), self.num_steps)
    if self.k_strategy not in ("vmap", "per_k"):
      raise ValueError(f"dlsr: k_strategy must be 'vmap' or 'per_k', got {self.k_strategy!r}")
    if self.lr_orientation not in scoring.LR_ORIENTATIONS:
      raise ValueError(f"dlsr: lr_orientation must be one of {scoring.LR_ORIENTATIONS}")

  def model(self, num_features: int) -> lfdn.LFDNConfig:
    return lfdn.LFDNConfig(features=num_features, width=self.width, embed_dim=self.embed_dim,
                           num_blocks=self.num_blocks, dropout=self.dropout,
                           use_time_embedding=self.use_time_embedding, dtype=self.dtype)

  def schedule(self) -> schedule.NoiseSchedule:
    return schedule.make_schedule(schedule.ScheduleConfig(
        kind=self.schedule_kind, num_steps=self.num_steps, beta_start=self.beta_start,
        beta_end=self.beta_end))

  def optim(self) -> optim_lib.AdamWConfig:
    return optim_lib.AdamWConfig(learning_rate=self.learning_rate,
                                 weight_decay=self.weight_decay,
                                 warmup_steps=self.warmup_steps,
                                 grad_clip_norm=self.grad_clip_norm or None,
                                 ema_decay=self.ema_decay)

  def fit(self, seed: int) -> trainer.FitConfig:
    return trainer.FitConfig(batch_size=self.batch_size, num_epochs=self.num_epochs, seed=seed,
                             log_every_steps=self.log_every_steps,
                             checkpoint_every_epochs=self.checkpoint_every_epochs,
                             checkpoint_every_steps=self.checkpoint_every_steps,
                             lr_reference_steps=self.lr_reference_steps,
                             keep_steps=tuple(int(s) for s in self.keep_steps))

  def score(self, boundaries: tuple[int, ...]) -> scoring.ScoreConfig:
    return scoring.ScoreConfig(
        boundaries=tuple(boundaries),
        ddim=diffusion.DDIMConfig(stride=self.stride, eta=self.eta,
                                  release_compat=self.release_compat),
        num_draws=self.num_draws, mfsim_skip_first=self.release_compat)


def restore_ema(workdir: str, model_cfg: lfdn.LFDNConfig, optim_cfg: optim_lib.AdamWConfig,
                reference_step: Optional[int] = None) -> Any:   # reads only
  """EMA params of the latest checkpoint in `workdir` (or of a kept reference step).

  Workdirs written before the LFDN trained on the common `TrainState` restore too.
  """
  tx = optim_lib.adamw(optim_cfg)
  rep = parallel.replicated(parallel.make_mesh())
  target = jax.eval_shape(lambda: diffusion.init_x0_state(model_cfg, tx, jax.random.key(0)))
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), target)
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    if reference_step is not None:
      return ckpt.restore_reference(target, reference_step).ema_params
    state = ckpt.restore_latest(target)
  finally:
    ckpt.close()
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: "
                            "run experiments.train with this --workdir first")
  return state.ema_params


@functools.lru_cache(maxsize=16)
def _score_fn(settings: DLSRSettings, boundaries: tuple[int, ...]) -> Callable:
  """The jitted, data-sharded score function (cached: one compile per LFDN shape)."""
  sched = settings.schedule()
  apply_fn = lfdn.apply_fn(settings.model(boundaries[-1]))
  mesh = parallel.make_mesh()
  parallel.check_divisible(settings.eval_batch_size, mesh)
  return parallel.shard_score_fn(
      scoring.make_score_fn(apply_fn, sched.alphas_cumprod, settings.score(boundaries)), mesh)


def _columns(layout: base.FeatureLayout, levels: Optional[tuple[str, ...]]
             ) -> tuple[np.ndarray, tuple[int, ...]]:
  """(column indices into "features", boundaries of the selected levels)."""
  names = layout.names if levels is None else levels
  unknown = [n for n in names if n not in layout.names]
  if unknown or not names or len(set(names)) != len(names):
    raise ValueError(f"dlsr: levels {levels!r} must be distinct names among the features' "
                     f"levels {list(layout.names)}")
  starts = np.concatenate([[0], np.cumsum(layout.channels)])
  idx = [layout.names.index(n) for n in names]
  cols = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in idx])
  bounds = tuple(int(b) for b in np.concatenate([[0], np.cumsum(
      [layout.channels[i] for i in idx])]))
  return cols, bounds


def make(workdir: str, layout: base.FeatureLayout, seed: int = 0,
         write_metrics: Optional[Callable[[int, dict], Any]] = None,
         restore_only: bool = False, **settings: Any) -> base.Detector:
  """The DLSR detector.

  Args:
    workdir: the LFDN run's directory (checkpoints; training resumes there).
    restore_only: `fit` only restores the finished run (evaluation): it trains, moves and
      writes nothing, and fails ("run experiments.train to finish: step 8 of 24") if the
      newest usable checkpoint is short of the configured steps.
    layout: the level names and widths of the "features" array.
    seed: the LFDN's init / shuffle / step seed.
    write_metrics: optional (step, metrics) callback of the training loop.
    **settings: fields of `DLSRSettings` (unknown names are a TypeError listing them).

  Returns:
    A `Detector` reading ("features",); scores `mse@k`, `mfsim@k` (+ `lr_mse@k`,
    `lr_mfsim@k`) for every k, each [N].
  """
  fields = {f.name for f in dataclasses.fields(DLSRSettings)}
  unknown = sorted(set(settings) - fields)
  if unknown:
    raise TypeError(f"detector 'dlsr': unknown settings {unknown}; accepted settings: "
                    f"{', '.join(sorted(fields))}")
  s = DLSRSettings(**settings)
  cols, bounds = _columns(layout, s.levels)
  model_cfg = s.model(bounds[-1])

  def fit(arrays: base.SetArrays, key: jax.Array) -> dict:
    del key   # the LFDN's randomness comes from `seed` (exact resume)
    z = np.ascontiguousarray(np.asarray(arrays["features"], np.float32)[:, cols])
    fit_cfg = s.fit(seed)
    ckpt = Checkpointer(workdir, read_only=restore_only)
    try:   # on Preempted too: finish the checkpoint writes
      if restore_only:
        state = trainer.restore_finished(z, model_cfg, s.optim(), s.schedule(), fit_cfg, ckpt,
                                         mesh=parallel.make_mesh())
      else:
        state = trainer.fit(z, model_cfg, s.optim(), s.schedule(), fit_cfg, ckpt,
                            mesh=parallel.make_mesh(), write_metrics=write_metrics)
    finally:
      ckpt.close()
    ref = None
    if s.lr:
      step = fit_cfg.reference_step(z.shape[0] // fit_cfg.batch_size)
      ref = restore_ema(workdir, model_cfg, s.optim(), reference_step=step)
    return {"final": state.ema_params, "reference": ref}

  def score(state: dict, arrays: base.SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    z = np.asarray(arrays["features"], np.float32)[:, cols]
    fn = _score_fn(s, bounds)

    def run(params):
      return scoring.score_dataset(fn, params, z, s.ks, key, s.eval_batch_size,
                                   k_strategy=s.k_strategy)

    final = run(state["final"])
    out = {f"{t}@{k}": final[t][j] for t in scoring.SCORE_TYPES for j, k in enumerate(s.ks)}
    if s.lr:
      first = run(state["reference"])
      for t in scoring.SCORE_TYPES:
        lr = scoring.likelihood_ratio(first[t], final[t], s.lr_orientation)
        out.update({f"lr_{t}@{k}": lr[j] for j, k in enumerate(s.ks)})
    return out

  names = [f"{t}@{k}" for t in scoring.SCORE_TYPES for k in s.ks]
  names += [f"lr_{t}@{k}" for t in scoring.SCORE_TYPES for k in s.ks] if s.lr else []
  return base.Detector(name="dlsr", reads=("features",), fit=fit, score=score,
                       score_names=tuple(names))

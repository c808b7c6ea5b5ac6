"""The LFDN training loop over cached features: sharded, resumable, logged.

`fit` is a short composition of tested pieces: the pure step from
`dlsr_jax.train`, deterministic per-(seed, epoch) batches from
`dlsr_jax.data`, shardings from `dlsr_jax.parallel` and orbax checkpoints
from `dlsr_jax.checkpoint`. Resuming from the latest checkpoint replays the
exact same batches and keys as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging

from dlsr_jax import data, lfdn, parallel, schedule, train
from dlsr_jax.checkpoint import Checkpointer


@dataclasses.dataclass(frozen=True)
class FitConfig:
  batch_size: int = 128
  num_epochs: int = 150
  seed: int = 0
  log_every_steps: int = 100
  checkpoint_every_epochs: int = 1


def _check_features(z: np.ndarray, batch_size: int) -> None:
  if z.ndim != 2:
    raise ValueError(f"training features must be [N, C], got shape {z.shape}")
  if z.shape[0] < batch_size:
    raise ValueError(f"{z.shape[0]} training examples are fewer than one batch "
                     f"({batch_size}); lower the batch size")
  bad = int(np.sum(~np.isfinite(z)))
  if bad:
    raise ValueError(f"training features contain {bad} NaN/inf values")


def make_jitted_step(model_cfg, tx, sched, ema_decay, mesh, state):
  """The train step jitted with replicated state and a data-sharded batch."""
  step = train.make_train_step(model_cfg, tx, sched.alphas_cumprod, ema_decay)
  rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)
  state_sh = jax.tree.map(lambda _: rep, state)
  return jax.jit(step, in_shardings=(state_sh, dat, rep),
                 out_shardings=(state_sh, rep), donate_argnums=(0,))


def init_state(model_cfg: lfdn.LFDNConfig, tx, key: jax.Array, mesh) -> train.TrainState:
  rep = parallel.replicated(mesh)
  return jax.jit(lambda k: train.create_train_state(model_cfg, tx, k), out_shardings=rep)(key)


def fit(features: np.ndarray, model_cfg: lfdn.LFDNConfig, optim_cfg: train.OptimConfig,
        sched: schedule.NoiseSchedule, cfg: FitConfig, checkpointer: Optional[Checkpointer],
        mesh=None, write_metrics: Optional[Callable[[int, dict], Any]] = None,
        progress: bool = True) -> train.TrainState:
  """Trains the LFDN on `features` [N, C] (this process's full copy).

  Each process takes its own slice of every global batch. Checkpoints are
  written at epoch ends (the first epoch's is kept for the LR score);
  training resumes from the latest checkpoint in `checkpointer`.

  Returns:
    The final `TrainState` (use `ema_params` for scoring).
  """
  features = np.asarray(features, np.float32)
  _check_features(features, cfg.batch_size)
  mesh = mesh or parallel.make_mesh()
  parallel.check_divisible(cfg.batch_size, mesh)
  init_key, loop_key = jax.random.split(jax.random.key(cfg.seed))
  loop_key = jax.device_put(loop_key, parallel.replicated(mesh))
  tx = train.make_optimizer(optim_cfg)
  state = init_state(model_cfg, tx, init_key, mesh)
  if checkpointer is not None:
    restored = checkpointer.restore_latest(state)
    if restored is not None:
      state = restored
  n = features.shape[0]
  steps_per_epoch = n // cfg.batch_size
  start = int(jax.device_get(state.step))       # one sync, before the loop
  total = steps_per_epoch * cfg.num_epochs
  if start:
    logging.info("resuming from step %d of %d", start, total)
  step_fn = make_jitted_step(model_cfg, tx, sched, optim_cfg.ema_decay, mesh, state)
  bar = None
  if progress and jax.process_index() == 0:
    from tqdm.auto import tqdm
    bar = tqdm(total=total, initial=start, desc="train LFDN", unit="step")
  step, t0 = start, time.time()
  for epoch in range(start // steps_per_epoch, cfg.num_epochs):
    idx = data.train_batch_indices(n, cfg.batch_size, epoch, cfg.seed,
                                   jax.process_index(), jax.process_count())
    for i in range(step - epoch * steps_per_epoch, steps_per_epoch):
      batch = parallel.host_to_global(features[idx[i]], mesh)
      state, metrics = step_fn(state, batch, loop_key)
      step += 1
      if bar is not None:
        bar.update(1)
      if step % cfg.log_every_steps == 0 or step == total:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(m["loss"]):
          raise FloatingPointError(f"loss is {m['loss']} at step {step}")
        m["steps_per_sec"] = (step - start) / max(time.time() - t0, 1e-9)
        if write_metrics is not None:
          write_metrics(step, m)
    last = epoch + 1 == cfg.num_epochs
    if checkpointer is not None and (epoch == 0 or last
                                     or (epoch + 1) % cfg.checkpoint_every_epochs == 0):
      checkpointer.save(step, state, first_epoch=(epoch == 0))
  if bar is not None:
    bar.close()
  if checkpointer is not None:
    checkpointer.wait()
  return state

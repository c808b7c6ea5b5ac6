"""LFDN workdirs written before the LFDN moved onto the common training stack still work,
and the LFDN trains on that stack exactly as it trained on its own.

tests/data/lfdn_legacy_v1/ holds a tiny DLSR workdir (three epochs of 4 steps; checkpoints
at steps 8 and 12, the LR reference at 4) and the scores and EMA params the code that wrote
it gave (`tests/make_lfdn_legacy_fixture.py`, run at commit fada1ac: the LFDN's own
four-field `train.TrainState`). Restoring that workdir must give the saved EMA params bit
for bit (a pure read), and scoring them the saved scores; resuming the run from its legacy
step-8 checkpoint must give the same final EMA params. `test_x0_objective_is_the_legacy_step`
checks, bit for bit on any machine, that `diffusion.make_x0_objective` computes what the
LFDN's own state, AdamW and EMA computed (their code is copied below from commit fada1ac).

Scores and retrained params are compared to float32 rounding (rtol 1e-5), not bitwise: they
are computed anew on the machine running the test, and XLA's CPU kernels may round
differently on another CPU (vector width) than on the one that wrote the fixture. On the
machine that wrote it they are equal bit for bit.
"""

import os
import shutil
from typing import Any

import flax
import jax
import jax.numpy as jnp
import make_lfdn_legacy_fixture as fixture
import numpy as np
import optax
import pytest

from dlsr_jax import diffusion, lfdn, schedule
from dlsr_jax.training import loop, optim
from dlsr_jax.training.checkpoint import Checkpointer
from dlsr_jax.training.state import TrainState

EXPECTED_SCORES = os.path.join(fixture.FIXTURE, "expected_scores.npz")
EXPECTED_PARAMS = os.path.join(fixture.FIXTURE, "expected_ema_params.npz")


def _flat(state: dict) -> dict[str, np.ndarray]:
  out = {}
  for name in ("final", "reference"):
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state[name])):
      out[f"{name}{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
  return out


def _expected(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def z():
  return fixture.data()


def test_legacy_workdir_restores_and_scores_equal(tmp_path, z):
  workdir = str(tmp_path / "workdir")
  shutil.copytree(fixture.WORKDIR, workdir)   # fit writes nothing new, but never touch data
  det = fixture.detector(workdir)
  state = det.fit({"features": z["train"]}, jax.random.key(0))   # finished: restores step 12
  got, want = _flat(state), _expected(EXPECTED_PARAMS)
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  scores = det.score(state, {"features": z["test"]}, jax.random.key(fixture.SCORE_KEY))
  want_scores = _expected(EXPECTED_SCORES)
  assert sorted(scores) == sorted(want_scores)
  for k, v in want_scores.items():
    assert np.all(np.isfinite(v)), k
    np.testing.assert_allclose(np.asarray(scores[k]), v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_resuming_a_legacy_checkpoint_continues_the_run(tmp_path, z):
  workdir = tmp_path / "workdir"
  shutil.copytree(fixture.WORKDIR, workdir)
  shutil.rmtree(workdir / "checkpoints" / "12")    # resume from the legacy step 8
  det = fixture.detector(str(workdir))
  state = det.fit({"features": z["train"]}, jax.random.key(0))
  got, want = _flat(state), _expected(EXPECTED_PARAMS)
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)


# --- The LFDN's own training state and update before the move (commit fada1ac, train.py).

class LegacyState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any


def _legacy_init(cfg, tx, key):
  params = lfdn.init_params(cfg, key)
  return LegacyState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ema_params=jax.tree.map(jnp.copy, params))


def _legacy_step(cfg, tx, abar, ema_decay):
  apply = lfdn.apply_fn(cfg, train=True)
  abar = jnp.asarray(abar, jnp.float32)

  def step(state, batch, step_key):
    z0 = batch["in"]["z"]
    loss_fn = lambda p: diffusion.x0_loss(apply, p, z0, step_key, abar)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    n = jnp.asarray(state.step, jnp.float32)
    d = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema), {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return step


def _fields(state) -> dict:
  return {k: getattr(state, k) for k in ("step", "params", "opt_state", "ema_params")}


def test_x0_objective_is_the_legacy_step():
  cfg = lfdn.LFDNConfig(features=6, width=8, embed_dim=4, num_blocks=1, dropout=0.1)
  tx = optim.adamw(optim.AdamWConfig(learning_rate=1e-2, weight_decay=0.1, warmup_steps=2,
                                     grad_clip_norm=0.5))
  abar = schedule.make_schedule(schedule.ScheduleConfig(num_steps=10)).alphas_cumprod
  obj = diffusion.make_x0_objective(cfg, tx, abar, 0.9)
  new, old = jax.jit(obj.init)(jax.random.key(1)), jax.jit(
      lambda k: _legacy_init(cfg, tx, k))(jax.random.key(1))
  assert isinstance(new, TrainState) and new.batch_stats is None and new.extra == {}
  new_step, old_step = jax.jit(obj.step), jax.jit(_legacy_step(cfg, tx, abar, 0.9))
  z = jax.random.normal(jax.random.key(2), (8, 6))
  for i in range(4):
    key = jax.random.fold_in(jax.random.key(3), i)
    new, m_new = new_step(new, {"in": {"z": z}}, key)
    old, m_old = old_step(old, {"in": {"z": z}}, key)
    assert bool(m_new.pop(loop.STATE_FINITE))   # the guard's verdict, for the loop
    jax.tree.map(np.testing.assert_array_equal, m_new, m_old)
  jax.tree.map(np.testing.assert_array_equal, _fields(new), _fields(old))
  assert int(new.step) == 4


def test_a_legacy_state_restores_into_the_common_state(tmp_path):
  cfg = lfdn.LFDNConfig(features=6, width=8, embed_dim=4, num_blocks=1)
  tx = optim.adamw(optim.AdamWConfig())
  old = _legacy_init(cfg, tx, jax.random.key(4)).replace(step=jnp.asarray(7, jnp.int32))
  ckpt = Checkpointer(str(tmp_path))
  try:
    ckpt.save(7, old, reference=True)
    ckpt.wait()
    target = jax.eval_shape(lambda: diffusion.init_x0_state(cfg, tx, jax.random.key(0)))
    for got in (ckpt.restore_latest(target), ckpt.restore_reference(target, 7)):
      assert isinstance(got, TrainState) and got.batch_stats is None and got.extra == {}
      jax.tree.map(np.testing.assert_array_equal, _fields(got), _fields(old))
  finally:
    ckpt.close()

import jax.numpy as jnp
import numpy as np
import pytest

from dlsr_jax import schedule


def test_default_schedule_matches_spec():
  s = schedule.make_schedule()
  assert s.num_steps == 100
  assert round(float(s.alphas_cumprod[3]), 5) == 0.99353
  assert round(float(s.alphas_cumprod[99]), 5) == 0.41175
  betas = np.linspace(np.sqrt(0.0015), np.sqrt(0.0195), 100) ** 2
  np.testing.assert_allclose(s.betas, betas, rtol=1e-6)


def test_schedule_kinds_are_monotone():
  for kind in ("scaled_linear", "linear", "cosine"):
    abar = schedule.make_schedule(schedule.ScheduleConfig(kind=kind)).alphas_cumprod
    assert np.all(np.diff(abar) < 0) and 0 < abar[-1] < abar[0] < 1, kind


def test_unknown_kind_and_bad_steps():
  with pytest.raises(ValueError, match="unknown schedule kind"):
    schedule.make_schedule(schedule.ScheduleConfig(kind="sigmoid"))
  with pytest.raises(ValueError, match="at least 2"):
    schedule.make_schedule(schedule.ScheduleConfig(num_steps=1))


def test_q_sample():
  abar = schedule.make_schedule().alphas_cumprod
  z0 = jnp.ones((3, 4))
  eps = jnp.full((3, 4), 2.0)
  t = jnp.array([0, 10, 99])
  out = schedule.q_sample(z0, t, eps, abar)
  want = np.sqrt(abar[[0, 10, 99]])[:, None] + 2 * np.sqrt(1 - abar[[0, 10, 99]])[:, None]
  np.testing.assert_allclose(out, np.broadcast_to(want, (3, 4)), rtol=1e-6)

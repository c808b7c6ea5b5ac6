"""LFDN workdirs written before the LFDN moved onto the common training stack still work.

tests/data/lfdn_legacy_v1/ holds a tiny DLSR workdir (three epochs of 4 steps; checkpoints
at steps 8 and 12, the LR reference at 4) and the scores and EMA params the code that wrote
it gave (`tests/make_lfdn_legacy_fixture.py`, run at commit fada1ac: the LFDN's own
four-field `train.TrainState`). Restoring that workdir must give the saved EMA params bit
for bit (a pure read), and scoring them the saved scores; training the same run afresh must
give the same EMA params.

Scores and retrained params are compared to float32 rounding (rtol 1e-5), not bitwise: they
are computed anew on the machine running the test, and XLA's CPU kernels may round
differently on another CPU (vector width) than on the one that wrote the fixture. On the
machine that wrote it they are equal bit for bit.
"""

import os
import shutil

import jax
import numpy as np
import pytest

import make_lfdn_legacy_fixture as fixture

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


def test_training_afresh_gives_the_legacy_run(tmp_path, z):
  det = fixture.detector(str(tmp_path / "workdir"))
  state = det.fit({"features": z["train"]}, jax.random.key(0))
  got, want = _flat(state), _expected(EXPECTED_PARAMS)
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)

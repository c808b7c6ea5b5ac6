"""Writes tests/data/lfdn_legacy_v1/: a tiny DLSR workdir and its scores, made by the code of
the day (the LFDN's own four-field `train.TrainState`, before the LFDN moved onto the common
`training.state.TrainState`).

`tests/lfdn_legacy_test.py` restores that workdir with today's code and checks that it scores
what it scored when written, and that training it afresh gives the same state. Kept so the
fixture can be inspected and re-made; re-running it overwrites the folder, which is only
right with a code version whose LFDN workdirs are the legacy layout (commit fada1ac or
before the common-state change).

Run from the repository root: `python tests/make_lfdn_legacy_fixture.py`.
"""

import os
import shutil

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dlsr_jax.detectors import base, dlsr  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "lfdn_legacy_v1")
WORKDIR = os.path.join(FIXTURE, "workdir")
LAYOUT = base.FeatureLayout(names=("level1", "level2"), channels=(4, 4))
SEED = 3
# 64 train rows / batch 16 = 4 steps an epoch, 3 epochs = 12 steps; the LR reference at 4.
SETTINGS = dict(width=16, embed_dim=8, num_blocks=1, num_steps=20, beta_start=0.01,
                beta_end=0.2, learning_rate=1e-3, weight_decay=1e-2, warmup_steps=2,
                grad_clip_norm=1.0, ema_decay=0.9, batch_size=16, num_epochs=3,
                log_every_steps=4, checkpoint_every_epochs=1, lr_reference_steps=4,
                ks=(2, 5), eval_batch_size=16)
SCORE_KEY = 11


def data() -> dict[str, np.ndarray]:
  """Train / test features [N, 8]: 4 clusters plus noise (test: half far off)."""
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, 8))
  train = centers[rng.integers(0, 4, 64)] + 0.1 * rng.normal(size=(64, 8))
  test = centers[rng.integers(0, 4, 24)] + 0.1 * rng.normal(size=(24, 8))
  test[12:] += 3.0 * rng.normal(size=(12, 8))
  return {"train": train.astype(np.float32), "test": test.astype(np.float32)}


def detector(workdir: str) -> base.Detector:
  return dlsr.make(workdir, LAYOUT, seed=SEED, **SETTINGS)


def main():
  if os.path.exists(FIXTURE):
    shutil.rmtree(FIXTURE)
  os.makedirs(FIXTURE)
  z = data()
  det = detector(WORKDIR)
  state = det.fit({"features": z["train"]}, jax.random.key(0))
  scores = det.score(state, {"features": z["test"]}, jax.random.key(SCORE_KEY))
  np.savez(os.path.join(FIXTURE, "expected_scores.npz"),
           **{k: np.asarray(v) for k, v in scores.items()})
  flat = {}
  for name in ("final", "reference"):
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state[name])):
      flat[f"{name}{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
  np.savez(os.path.join(FIXTURE, "expected_ema_params.npz"), **flat)
  print(f"wrote {FIXTURE}: scores {sorted(scores)}")


if __name__ == "__main__":
  main()

"""Exact resume of real processes: SIGKILL mid-epoch, SIGTERM (preemption), the LR checkpoint.

Each scenario runs `tests/fit_worker.py` (a tiny `trainer.fit` with orbax
checkpoints) in subprocesses, interrupts it, re-runs the same command and
compares the final and first-epoch states with an uninterrupted run of the
same training (in this process, on one device like the workers). Every wait
is bounded.
"""

import json
import os
import signal
import sys

import jax
import numpy as np
import pytest

from dlsr_jax import parallel, trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fit_worker  # noqa: E402  pylint: disable=wrong-import-position

from dlsr_jax import cli  # noqa: E402  pylint: disable=wrong-import-position

N, BATCH, EPOCHS = 48, 16, 8            # 3 steps per epoch, 24 steps
STEPS_PER_EPOCH, TOTAL = N // BATCH, EPOCHS * N // BATCH
TIMEOUT = 180                           # per worker run; a hang fails, never blocks CI


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Features, a shared compilation cache and the uninterrupted reference state."""
  root = tmp_path_factory.mktemp("resume")
  z = fit_worker.toy_features(N, seed=0)
  np.savez(root / "z.npz", z=z)
  return {"root": root, "features": root / "z.npz", "cache": root / "jax_cache",
          "ref": _reference(z)}


def _reference(z):
  """The workers' training without interruption, in this process on one device."""
  mesh = parallel.make_mesh(jax.devices()[:1])      # the workers have one device
  return {**fit_worker.flat(fit_worker.train_in_process(z, EPOCHS, BATCH, mesh), "final"),
          **fit_worker.flat(fit_worker.train_in_process(z, 1, BATCH, mesh), "first")}


def _cmd(env, name, **flags):
  return fit_worker.command(env["root"] / name, env["features"], num_epochs=EPOCHS,
                            batch_size=BATCH, out=env["root"] / f"{name}.npz", **flags)


def _run(env, name, **flags):
  log = env["root"] / f"{name}.log"
  proc = fit_worker.start(_cmd(env, name, **flags), log, env["cache"])
  rc = fit_worker.finish(proc, log, TIMEOUT)
  assert rc == 0, f"{name} failed ({rc}):\n{fit_worker.log_tail(log)}"
  assert f"DONE step={TOTAL}" in fit_worker.log_tail(log)
  return dict(np.load(env["root"] / f"{name}.npz"))


def _logged_steps(workdir):
  """Steps in the metrics file (every run appends one line per step)."""
  with open(workdir / "metrics.0.jsonl") as f:
    return [json.loads(line)["step"] for line in f]


def _assert_same_state(got, ref):
  assert sorted(got) == sorted(ref)
  for k in ref:   # same program on one device: bitwise equal in practice
    np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-6, err_msg=k)
  assert int(got["final.step"]) == TOTAL and int(got["first.step"]) == STEPS_PER_EPOCH


def test_sigkill_mid_epoch_then_rerun_ends_like_uninterrupted(env):
  # Checkpoints every 5 steps (5, 10, 20 are mid-epoch) + the first and last epoch.
  flags = dict(checkpoint_every_steps=5, checkpoint_every_epochs=100, step_delay=0.15)
  name, log = "killed", env["root"] / "killed.log"
  ckpt_dir = env["root"] / name / "checkpoints"
  proc = fit_worker.start(_cmd(env, name, **flags), log, env["cache"])
  seen = fit_worker.wait_for_checkpoint(ckpt_dir, 5, proc, log, TIMEOUT)
  proc.send_signal(signal.SIGKILL)
  assert fit_worker.finish(proc, log, 30) == -signal.SIGKILL
  latest = fit_worker.checkpoint_steps(ckpt_dir)[-1]
  assert seen <= latest < TOTAL, "the run ended before it was killed"
  assert latest % STEPS_PER_EPOCH, f"want a mid-epoch checkpoint, got step {latest}"
  assert fit_worker.checkpoint_steps(env["root"] / name / "checkpoints_lr_reference") == [3]
  before = _logged_steps(env["root"] / name)
  assert before == list(range(1, len(before) + 1)) and len(before) >= latest
  got = _run(env, name, **flags)      # the same command again: resumes at `latest`
  assert _logged_steps(env["root"] / name) == before + list(range(latest + 1, TOTAL + 1))
  _assert_same_state(got, env["ref"])


def test_sigterm_saves_exits_with_message_and_rerun_is_exact(env):
  name, log = "preempted", env["root"] / "preempted.log"
  flags = dict(checkpoint_every_epochs=100, step_delay=0.15)  # first and last epoch only
  ckpt_dir = env["root"] / name / "checkpoints"
  proc = fit_worker.start(_cmd(env, name, **flags), log, env["cache"])
  fit_worker.wait_for_checkpoint(ckpt_dir, STEPS_PER_EPOCH, proc, log, TIMEOUT)
  proc.send_signal(signal.SIGTERM)
  rc = fit_worker.finish(proc, log, 60)
  out = fit_worker.log_tail(log)
  assert rc == cli.PREEMPTED_EXIT_CODE, out
  step = int(out.split("training stopped on SIGTERM at step ")[1].split(";")[0])
  assert "Re-run the same command to resume" in out
  assert STEPS_PER_EPOCH < step < TOTAL
  # saved at the preemption step; the first epoch's is kept too (the last two are)
  assert fit_worker.checkpoint_steps(ckpt_dir) == [STEPS_PER_EPOCH, step]
  assert _logged_steps(env["root"] / name) == list(range(1, step + 1))
  got = _run(env, name, **flags)      # resumes at `step`: every step logged exactly once
  assert _logged_steps(env["root"] / name) == list(range(1, TOTAL + 1))
  # (d) the LR reference checkpoint (one epoch here) (LR score) survived preemption and resume.
  assert fit_worker.checkpoint_steps(env["root"] / name / "checkpoints_lr_reference") == [3]
  _assert_same_state(got, env["ref"])


def test_ctrl_c_saves_and_exits_like_sigterm(env):
  name, log = "ctrl_c", env["root"] / "ctrl_c.log"
  flags = dict(checkpoint_every_epochs=100, step_delay=0.15)
  ckpt_dir = env["root"] / name / "checkpoints"
  proc = fit_worker.start(_cmd(env, name, **flags), log, env["cache"])
  fit_worker.wait_for_checkpoint(ckpt_dir, STEPS_PER_EPOCH, proc, log, TIMEOUT)
  proc.send_signal(signal.SIGINT)
  rc = fit_worker.finish(proc, log, 60)
  out = fit_worker.log_tail(log)
  assert rc == cli.PREEMPTED_EXIT_CODE, out
  assert "Ctrl-C received: checkpointing after this step" in out
  step = int(out.split("training stopped on Ctrl-C at step ")[1].split(";")[0])
  assert "KeyboardInterrupt" not in out and "Traceback" not in out
  assert fit_worker.checkpoint_steps(ckpt_dir) == [STEPS_PER_EPOCH, step]


def test_experiments_train_reports_preemption_and_exits_143(monkeypatch, tmp_path, capsys):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import run, train  # pylint: disable=g-import-not-at-top

  def preempted(c, workdir):
    assert workdir == str(tmp_path)
    raise trainer.Preempted(7)

  monkeypatch.setattr(run, "train", preempted)
  config = os.path.join(fit_worker.ROOT, "experiments/configs/quickstart.py:tiny")
  flags.FLAGS(["train", f"--config={config}",
               f"--workdir={tmp_path}", "--nomultihost"])
  try:
    with pytest.raises(SystemExit) as exit_info:
      train.main(["train"])
  finally:
    flags.FLAGS.unparse_flags()
  assert exit_info.value.code == cli.PREEMPTED_EXIT_CODE == 143
  out = capsys.readouterr().out
  assert "PREEMPTED" in out and "step 7" in out and "resume" in out and str(tmp_path) in out

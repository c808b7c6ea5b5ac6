"""The workdir guard: lock, recorded config, validation before any work."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dlsr_jax.evaluation import inputs as inputs_lib
from dlsr_jax.training import workdir as workdir_lib
from experiments import build, run
from experiments import plan as plan_lib
from experiments import workdir as record_lib
from experiments.configs import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WorkStarted(Exception):
  """Raised by the patched backbone loader: the run got past the guard."""


@pytest.fixture
def no_work(monkeypatch):
  def load_backbone(inputs):
    raise WorkStarted

  monkeypatch.setattr(inputs_lib, "load_backbone", load_backbone)


def _cfg(**changes):
  c = quickstart.get_config("tiny")
  for key, value in changes.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _hold_lock(wd) -> subprocess.Popen:
  """Another process that takes the lock of `wd` and sleeps."""
  code = ("import sys, time; sys.path.insert(0, sys.argv[2]);"
          " from dlsr_jax.training import workdir; workdir.acquire(sys.argv[1]);"
          " print('locked', flush=True); time.sleep(120)")
  proc = subprocess.Popen([sys.executable, "-c", code, str(wd), ROOT], stdout=subprocess.PIPE,
                          text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_run_fails_at_once_and_a_stale_lock_is_taken_over(tmp_path, no_work, caplog):
  proc = _hold_lock(tmp_path)
  try:
    t0 = time.time()
    with pytest.raises(workdir_lib.WorkdirLocked, match=rf"in use by pid {proc.pid} on .*"
                       "another --workdir"):
      run.train(_cfg(), str(tmp_path))
    assert time.time() - t0 < 5
    lock = json.loads((tmp_path / ".lock").read_text())
    assert lock["pid"] == proc.pid and lock["host"] and lock["started"]
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  assert (tmp_path / ".lock").exists()                 # left behind by the killed owner
  caplog.set_level("WARNING")
  with pytest.raises(WorkStarted):                      # taken over, then released on error
    run.train(_cfg(), str(tmp_path))
  assert f"stale lock {tmp_path}/.lock of pid {proc.pid}" in caplog.text
  assert not (tmp_path / ".lock").exists()
  assert json.loads((tmp_path / "config.json").read_text())["model"]["width"] == 32


def test_nested_guards_in_one_process_share_the_lock(tmp_path):
  with workdir_lib.lock(str(tmp_path)):
    with workdir_lib.lock(str(tmp_path)):
      pass
    assert (tmp_path / ".lock").exists()
  assert not (tmp_path / ".lock").exists()


def test_invalid_config_fails_before_config_json_or_lock(tmp_path, no_work):
  with pytest.raises(ValueError, match=r"--config.eval.batch_size=0: must be an int >= 1"):
    run.train(_cfg(**{"eval.batch_size": 0}), str(tmp_path))
  assert not os.listdir(tmp_path)


def _trained(wd) -> None:
  """A checkpoint step under `wd`: the record now has a trained run behind it (a record
  without one accepts a new config: a first run that failed trained nothing)."""
  os.makedirs(os.path.join(wd, "head", "checkpoints", "2"))


def test_changed_model_or_data_stops_before_any_work_and_lists_the_keys(tmp_path, no_work):
  with pytest.raises(WorkStarted):
    run.train(_cfg(), str(tmp_path))
  _trained(tmp_path)
  recorded = (tmp_path / "config.json").read_text()
  changed = _cfg(**{"model.width": 64, "schedule.kind": "linear", "data.train": "npz:x.npz"})
  with pytest.raises(workdir_lib.WorkdirConfigError) as err:
    run.train(changed, str(tmp_path))
  msg = str(err.value)
  assert f"data.train: '{_cfg().data.train}' -> 'npz:x.npz'" in msg
  assert "model.width: 32 -> 64" in msg and "schedule.kind: 'scaled_linear' -> 'linear'" in msg
  assert "new --workdir" in msg and "train.num_epochs" in msg
  assert (tmp_path / "config.json").read_text() == recorded and not (tmp_path / ".lock").exists()
  with pytest.raises(workdir_lib.WorkdirConfigError, match="cannot be evaluated"):
    build.check_config(changed, str(tmp_path), for_eval=True)
  # Changeable keys: extend the run, new eval settings; the record follows them.
  longer = _cfg(**{"train.num_epochs": 5, "eval.ks": (2,), "optim.learning_rate": 1e-4})
  with pytest.raises(WorkStarted):
    run.train(longer, str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["train"]["num_epochs"] == 5
  changes = build.check_config(_cfg(), str(tmp_path), for_eval=True)
  for line in ("eval.ks: [2] -> [2, 3]", "optim.learning_rate: 0.0001 -> 0.001",
               "train.num_epochs: 5 -> 2", "detectors.dlsr.ks: [2] -> [2, 3]",
               "detectors.dlsr.num_epochs: 5 -> 2"):   # the DLSR row mirrors the blocks
    assert line in changes, changes


def test_seed_runs_are_guarded_too(tmp_path, monkeypatch):
  """Every seed's training runs under the workdir's lock, in a row folder with its record."""
  from experiments import runner  # pylint: disable=g-import-not-at-top
  c = _cfg()
  c.seeds = (0, 1)
  seen = []

  def fake_fit_row(plan, row, store, wd, seed):
    seen.append((row.name, seed, os.path.exists(os.path.join(wd, ".lock"))))
    rwd = runner.row_workdir(wd, row.name, seed)
    record_lib.record_config(plan_lib.seed_record(plan.record, seed), rwd)   # what fit_row records

  monkeypatch.setattr(runner.arrays, "ArrayStore", lambda *a, **k: None)
  monkeypatch.setattr(runner, "prepare_nets", lambda *a, **k: None)
  monkeypatch.setattr(runner, "check_labels", lambda *a, **k: None)
  monkeypatch.setattr(runner, "fit_row", fake_fit_row)
  run.train(c, str(tmp_path))
  assert [s for s in seen if s[0] == "dlsr"] == [("dlsr", 0, True), ("dlsr", 1, True)]
  for s in (0, 1):
    rwd = runner.row_workdir(str(tmp_path), "dlsr", s)
    assert json.loads(open(os.path.join(rwd, "config.json")).read())["seed"] == s
    assert not os.path.exists(os.path.join(rwd, ".lock"))
  assert not (tmp_path / ".lock").exists()


def test_evaluating_with_another_schedule_stops_before_any_extraction(tmp_path, monkeypatch,
                                                                     no_work):
  """Issue 10, seen 2: evaluating a workdir with another noise schedule printed normal-looking
  results. Now the evaluation names the differing key before anything is loaded."""
  from dlsr_jax import features  # pylint: disable=g-import-not-at-top
  from experiments import evaluation  # pylint: disable=g-import-not-at-top

  def no_extraction(*args, **kwargs):
    raise WorkStarted("features extracted")

  with pytest.raises(WorkStarted):             # "trained": the guard recorded the config
    run.train(_cfg(), str(tmp_path))
  _trained(tmp_path)
  monkeypatch.setattr(features, "extract", no_extraction)
  monkeypatch.setattr(evaluation.arrays, "ArrayStore", no_extraction)
  monkeypatch.setattr(evaluation.runner, "require_trained", lambda *a: None)
  out = tmp_path / "eval"
  with pytest.raises(workdir_lib.WorkdirConfigError) as err:
    run.evaluate(_cfg(**{"schedule.kind": "cosine"}), str(tmp_path), str(out))
  msg = str(err.value)
  assert "cannot be evaluated" in msg and "schedule.kind: 'scaled_linear' -> 'cosine'" in msg
  assert "new --workdir" in msg and not out.exists()
  with pytest.raises(ValueError, match=r"--config.eval.batch_size=0: must be an int >= 1"):
    run.evaluate(_cfg(**{"eval.batch_size": 0}), str(tmp_path), str(out))
  with pytest.raises(WorkStarted, match="features extracted"):   # the same settings get past
    run.evaluate(_cfg(**{"eval.ks": (2,)}), str(tmp_path), str(out))

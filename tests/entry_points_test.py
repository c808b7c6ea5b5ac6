"""The entry points' known failures: one message on stderr, exit status 1, no traceback."""

import os
import subprocess
import sys

import pytest

from dlsr_jax import cli
from dlsr_jax.training import workdir as workdir_lib
from dlsr_jax.training.checkpoint import CheckpointError
from dlsr_jax.training.loop import Diverged
from dlsr_jax.training.preemption import Preempted
from experiments import build
from experiments.configs import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "experiments/configs/quickstart.py:tiny"


def _run(*args, timeout=300) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _last_line(proc) -> str:
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  return lines[-1] if lines else ""


@pytest.mark.parametrize("error", [
    Diverged(5, 6, None), CheckpointError("checkpoint step 4 in /w cannot be restored"),
    workdir_lib.WorkdirLocked("workdir /w is in use"), workdir_lib.WorkdirConfigError("x: 1 -> 2"),
    ValueError("invalid config: --config.eval.batch_size=0"),
    FileNotFoundError("no checkpoint in /w"),
])
def test_known_failures_exit_1_with_their_message(error, capsys):
  with pytest.raises(SystemExit) as exit_info:
    with cli.reported_failures("/w"):
      raise error
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err == f"FAILED ({type(error).__name__}): {error}\n"


def test_preempted_exits_143_naming_ctrl_c_and_other_errors_propagate(capsys):
  with pytest.raises(SystemExit) as exit_info:
    with cli.reported_failures("/w"):
      raise Preempted(7, "Ctrl-C")
  assert exit_info.value.code == cli.PREEMPTED_EXIT_CODE
  assert "training stopped on Ctrl-C at step 7" in capsys.readouterr().out
  with pytest.raises(SystemExit) as exit_info:
    with cli.reported_failures("/w"):
      raise KeyboardInterrupt("second Ctrl-C: stopped at once, without a checkpoint")
  assert exit_info.value.code == cli.INTERRUPTED_EXIT_CODE
  assert "INTERRUPTED (Ctrl-C): second Ctrl-C" in capsys.readouterr().err
  with pytest.raises(RuntimeError, match="a bug"):       # not a known failure: traceback
    with cli.reported_failures("/w"):
      raise RuntimeError("a bug")


def test_evaluate_with_a_bad_detector_type_is_one_line(tmp_path):
  proc = _run("experiments.evaluate", f"--config={TINY}", f"--workdir={tmp_path}",
              "--config.detectors.head_msp.type=mspp")
  assert proc.returncode == 1, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  assert _last_line(proc).startswith("FAILED (ValueError): invalid config: ")
  assert "unknown detector type 'mspp'" in _last_line(proc)
  assert os.listdir(tmp_path) == ["log.txt"]                  # nothing written but its log


def test_evaluate_a_workdir_trained_with_another_schedule_names_it(tmp_path):
  build.write_config(quickstart.get_config("tiny"), str(tmp_path))   # as train wrote it
  os.makedirs(tmp_path / "dlsr" / "checkpoints" / "2")   # a trained run: the record binds
  proc = _run("experiments.evaluate", f"--config={TINY}", f"--workdir={tmp_path}",
              "--config.schedule.kind=cosine")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  message = proc.stderr[proc.stderr.index("FAILED (WorkdirConfigError): workdir"):]
  assert "cannot be evaluated with these:\n" in message, message
  assert "\n  schedule.kind: 'scaled_linear' -> 'cosine'\n" in message, message
  assert "\nUse the recorded values, or start a fresh run with a new --workdir" in message
  assert sorted(os.listdir(tmp_path)) == ["config.json", "dlsr", "log.txt"]   # no extraction


@pytest.mark.parametrize("args,message", [
    (["experiments.quickstart", "--config=experiments/configs/quickstart.py:tinny"],
     "unknown quickstart config variant(s) ['tinny'] in 'tinny'; valid: tiny"),
    (["experiments.train", f"--config={TINY}", "--config.eval.kss=(3,)"],
     "the config has no key --config.eval.kss (Did you mean \"ks\" instead of \"kss\"?)"),
])
def test_mistyped_config_variant_or_key_is_named(tmp_path, args, message):
  proc = _run(*args, f"--workdir={tmp_path}", timeout=120)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert "FATAL Flags parsing error: " in proc.stderr and message in proc.stderr, proc.stderr
  assert not os.listdir(tmp_path)


def test_quickstart_variants():
  assert quickstart.get_config("tiny").data.limit == 48
  assert quickstart.get_config("").data.limit == 0
  with pytest.raises(ValueError, match=r"unknown quickstart config variant\(s\) \['tiny2'\]"):
    quickstart.get_config("tiny,tiny2")

"""Reliability, round two (issue 18): evaluate only restores and writes nothing into a finished
training workdir, a failed first run does not lock its workdir, every setting and data source
is checked before any work, no silent training on missing / wrong labels or on a test set.

Each case runs through `launch.reported_failures` (what the entry points do), so it checks the
exit status and the one-line message. The backbone is a stand-in (its level layout, features
from a fixed projection of the pixels) so that each case takes seconds.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import types

import ml_collections
import numpy as np
import pytest

from dlsr_jax import backbones, features
from experiments import evaluation, launch, pipeline, workdir
from experiments.configs import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_backbone(c):
  cfg = backbones.config(c.backbone)
  return types.SimpleNamespace(
      name=cfg.name, weights_id="stand-in", resolution=32, level_names=cfg.level_names,
      level_channels=cfg.level_channels, default_layers=cfg.default_layers, mean=cfg.mean,
      std=cfg.std)


def _fake_extract(backbone, images, batch_size=64, spec=None, progress=True, desc=""):
  del batch_size, spec, progress, desc
  bounds = features.boundaries_for(backbone.level_channels)
  x = np.asarray(images, np.float32).reshape(len(images), -1) / 255.0
  w = np.random.default_rng(x.shape[1]).normal(size=(x.shape[1], bounds[-1]))
  return (x @ w.astype(np.float32) / np.sqrt(x.shape[1])).astype(np.float32), bounds


@contextlib.contextmanager
def _stand_in_backbone():
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(pipeline, "load_backbone", _fake_backbone)
    mp.setattr(features, "extract", _fake_extract)
    yield


@pytest.fixture(autouse=True)
def stand_in_backbone():
  with _stand_in_backbone():
    yield


def _cfg(**changes):
  """16 digits to train a 16-unit MLP head on (batch 8: 2 steps an epoch, 2 epochs), the
  letters as the OOD set, one row (MSP of the head)."""
  c = quickstart.get_config("tiny")
  c.resolution, c.data.limit = 32, 16
  for name in ("photos", "noise", "digits59"):
    del c.data.ood[name]
  del c.data.groups["near"]
  c.data.groups.far = "letters"
  c.nets.head.batch_size, c.nets.head.epochs = 8, 2
  c.eval.rows, c.eval.plots = "head_msp", False
  for key, value in changes.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished training workdir of `_cfg()` (copy it before changing it)."""
  wd = tmp_path_factory.mktemp("trained")
  with _stand_in_backbone():
    pipeline.run_train(_cfg(), str(wd))
  return wd


def _copy(src, tmp_path):
  dst = tmp_path / "wd"
  shutil.copytree(src, dst)
  return dst


def _snapshot(wd) -> dict:
  """{relative path: (size, mtime_ns)} of every file and folder under `wd`."""
  out = {}
  for root, dirs, files in os.walk(wd):
    for name in dirs + files:
      p = os.path.join(root, name)
      st = os.stat(p)
      out[os.path.relpath(p, wd)] = (st.st_size if name in files else 0, st.st_mtime_ns)
  return out


def _fails(capsys, fn, *args, **kwargs) -> str:
  """Runs `fn` as an entry point does; asserts exit status 1; returns its one-line message."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_:
    with launch.reported_failures("wd"):
      fn(*args, **kwargs)
  assert exit_.value.code == launch.FAILED_EXIT_CODE
  err = capsys.readouterr().err.strip()
  assert err.startswith("FAILED (") and "Traceback" not in err, err
  return err


def _hold_lock(wd) -> subprocess.Popen:
  code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from experiments import workdir;"
          " workdir.acquire(sys.argv[1]); print('locked', flush=True); time.sleep(120)")
  proc = subprocess.Popen([sys.executable, "-c", code, str(wd), ROOT], stdout=subprocess.PIPE,
                          text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.stdout.readline().strip() == "locked"
  return proc


# 1 + acceptance: evaluate only restores, never trains, moves or writes in the workdir.
def test_evaluate_with_outdir_writes_nothing_into_a_finished_workdir(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  before = _snapshot(wd)
  res = evaluation.run_evaluate(_cfg(), str(wd), str(tmp_path / "out"))
  assert _snapshot(wd) == before
  assert (tmp_path / "out" / "results.json").is_file()
  assert 0 <= res["accuracy"]["head"] <= 1


def test_evaluate_of_a_short_run_says_train_to_finish_and_trains_nothing(trained, tmp_path,
                                                                         capsys):
  wd = _copy(trained, tmp_path)
  before = _snapshot(wd)
  err = _fails(capsys, evaluation.run_evaluate, _cfg(**{"nets.head.epochs": 4}), str(wd),
               str(tmp_path / "out"))
  assert "run experiments.train to finish: step 4 of 8" in err, err
  assert _snapshot(wd) == before


def test_evaluate_falls_back_from_a_damaged_checkpoint_moving_nothing(trained, tmp_path,
                                                                      capsys):
  wd = _copy(trained, tmp_path)
  os.remove(wd / "head" / "checkpoints" / "4" / "default" / "_METADATA")
  before = _snapshot(wd)
  err = _fails(capsys, evaluation.run_evaluate, _cfg(), str(wd), str(tmp_path / "out"))
  assert "run experiments.train to finish: step 2 of 4" in err, err   # step 2: the fallback
  assert _snapshot(wd) == before and not (wd / "head" / "checkpoints_set_aside").exists()


def test_evaluate_refuses_a_workdir_that_a_training_run_holds(trained, tmp_path, capsys):
  wd = _copy(trained, tmp_path)
  proc = _hold_lock(wd)
  try:
    err = _fails(capsys, evaluation.run_evaluate, _cfg(), str(wd), str(tmp_path / "out"))
  finally:
    proc.kill()
    proc.wait()
  assert f"workdir {wd} is in use by pid {proc.pid}" in err, err
  assert "Move that folder aside" not in err

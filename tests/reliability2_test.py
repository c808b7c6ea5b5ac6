"""Reliability, round two (issue 18): evaluate only restores and writes nothing into a finished
training workdir, a failed first run does not lock its workdir, every setting and data source
is checked before any work, no silent training on missing / wrong labels or on a test set.

Each case runs through `cli.reported_failures` (what the entry points do), so it checks the
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

from dlsr_jax import backbones, cli, features
from dlsr_jax.evaluation import inputs as inputs_lib
from dlsr_jax.training import workdir as workdir_lib
from experiments import build, run
from experiments.configs import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_backbone(inputs):
  cfg = backbones.config(inputs.backbone)
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
    mp.setattr(inputs_lib, "load_backbone", _fake_backbone)
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
  """A finished training workdir of `_cfg()` and its tiny DLSR row (copy it before changing
  it)."""
  wd = tmp_path_factory.mktemp("trained")
  with _stand_in_backbone():
    run.train(_cfg(**{"eval.rows": "head_msp,dlsr"}), str(wd))
  return wd


def _copy(src, tmp_path):
  dst = tmp_path / "wd"
  shutil.copytree(src, dst)
  return dst


def _snapshot(wd) -> dict:
  """{relative path: (size, mtime_ns)} of `wd` and every file and folder under it."""
  out = {".": (0, os.stat(wd).st_mtime_ns)}
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
    with cli.reported_failures("wd"):
      fn(*args, **kwargs)
  assert exit_.value.code == cli.FAILED_EXIT_CODE
  err = capsys.readouterr().err.strip()
  assert "Traceback" not in err, err
  err = err.splitlines()[-1]          # after any progress bars
  assert err.startswith("FAILED ("), err
  return err


def _hold_lock(wd) -> subprocess.Popen:
  code = ("import sys, time; sys.path.insert(0, sys.argv[2]);"
          " from dlsr_jax.training import workdir; workdir.acquire(sys.argv[1]);"
          " print('locked', flush=True); time.sleep(120)")
  proc = subprocess.Popen([sys.executable, "-c", code, str(wd), ROOT], stdout=subprocess.PIPE,
                          text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.stdout.readline().strip() == "locked"
  return proc


# 1 + acceptance: evaluate only restores, never trains, moves or writes in the workdir.
def test_evaluate_with_outdir_writes_nothing_into_a_finished_workdir(trained, tmp_path):
  wd = _copy(trained, tmp_path)
  before = _snapshot(wd)
  res = run.evaluate(_cfg(), str(wd), str(tmp_path / "out"))
  assert _snapshot(wd) == before
  assert (tmp_path / "out" / "results.json").is_file()
  assert 0 <= res["accuracy"]["head"] <= 1


def test_evaluate_of_a_short_run_says_train_to_finish_and_trains_nothing(trained, tmp_path,
                                                                         capsys):
  wd = _copy(trained, tmp_path)
  before = _snapshot(wd)
  err = _fails(capsys, run.evaluate, _cfg(**{"nets.head.epochs": 4}), str(wd),
               str(tmp_path / "out"))
  assert "run experiments.train to finish: step 4 of 8" in err, err
  assert _snapshot(wd) == before


def test_evaluate_never_trains_the_lfdn_further(trained, tmp_path, capsys):
  wd = _copy(trained, tmp_path)
  before = _snapshot(wd)
  err = _fails(capsys, run.evaluate,
               _cfg(**{"eval.rows": "dlsr", "train.num_epochs": 4}), str(wd), str(tmp_path / "o"))
  assert "run experiments.train to finish: step 2 of 4" in err and str(wd / "dlsr") in err, err
  assert _snapshot(wd) == before


def test_evaluate_falls_back_from_a_damaged_checkpoint_moving_nothing(trained, tmp_path,
                                                                      capsys):
  wd = _copy(trained, tmp_path)
  os.remove(wd / "head" / "checkpoints" / "4" / "default" / "_METADATA")
  before = _snapshot(wd)
  err = _fails(capsys, run.evaluate, _cfg(), str(wd), str(tmp_path / "out"))
  assert "run experiments.train to finish: step 2 of 4" in err, err   # step 2: the fallback
  assert _snapshot(wd) == before and not (wd / "head" / "checkpoints_set_aside").exists()


def test_evaluate_refuses_a_workdir_that_a_training_run_holds(trained, tmp_path, capsys):
  wd = _copy(trained, tmp_path)
  proc = _hold_lock(wd)
  try:
    err = _fails(capsys, run.evaluate, _cfg(), str(wd), str(tmp_path / "out"))
  finally:
    proc.kill()
    proc.wait()
  assert f"workdir {wd} is in use by pid {proc.pid}" in err, err
  assert "Move that folder aside" not in err


def _npz(path, n=16, labels=None, seed=0):
  """An npz data set of `n` random 32x32 RGB images (with `labels` if given)."""
  images = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  arrays = {"images": images} if labels is None else {"images": images,
                                                      "labels": np.asarray(labels)}
  np.savez(path, **arrays)
  return f"npz:{path}"


def _has_checkpoint(wd) -> bool:
  return workdir_lib.has_checkpoints(str(wd))


# 2: a failed first run writes no record, and a record with no checkpoint takes a new config.
def test_a_typo_in_data_train_fails_before_the_record(tmp_path, capsys):
  wd = tmp_path / "wd"
  err = _fails(capsys, run.train, _cfg(**{"data.train": "npz:/no/such/digits.npz"}),
               str(wd))
  assert "data.train = 'npz:/no/such/digits.npz'" in err and "not found" in err, err
  assert not (wd / workdir_lib.CONFIG_NAME).exists() and not (wd / ".lock").exists()
  err = _fails(capsys, run.train, _cfg(**{"nets.head.batch_size": 1000}), str(wd))
  assert "c.nets.head.batch_size = 1000 is more than the 16 images of data.train" in err, err
  assert not (wd / workdir_lib.CONFIG_NAME).exists()


def test_a_record_without_a_checkpoint_accepts_the_corrected_command(tmp_path, monkeypatch):
  from experiments import runner  # pylint: disable=g-import-not-at-top
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / workdir_lib.CONFIG_NAME).write_text(_cfg(**{"nets.head.hidden": 7}).to_json())
  ran = []
  monkeypatch.setattr(runner, "run_train", lambda plan, w: ran.append(w))
  run.train(_cfg(), str(wd))          # an older version recorded a failed run
  assert ran == [str(wd)]
  import json  # pylint: disable=g-import-not-at-top
  assert json.loads((wd / workdir_lib.CONFIG_NAME).read_text())["nets"]["head"]["hidden"] == 16
  os.makedirs(wd / "head" / "checkpoints" / "4")   # now something was trained: guarded
  with pytest.raises(workdir_lib.WorkdirConfigError, match=r"nets.head.hidden: 16 -> 7"):
    run.train(_cfg(**{"nets.head.hidden": 7}), str(wd))


# 3 and 6: labels are checked before any training.
def test_training_on_unlabelled_data_fails_before_work(tmp_path, capsys):
  source = _npz(tmp_path / "unlabelled.npz")
  wd = tmp_path / "wd"
  err = _fails(capsys, run.train, _cfg(**{"data.train": source}), str(wd))
  assert "data.train has no labels" in err and "net head" in err, err
  assert not _has_checkpoint(wd)
  c = _cfg(**{"data.train": source})               # a row that fits on labels, no net trains
  c.nets.head.epochs = 0
  c.detectors.maha = ml_collections.ConfigDict(dict(type="mahalanobis", class_conditional=True,
                                                   shrinkage=0.1))
  c.eval.rows = "maha"
  err = _fails(capsys, run.evaluate, c, str(wd), str(tmp_path / "out"))
  assert "data.train has no labels" in err and "row maha" in err, err


def test_labels_beyond_num_classes_fail_before_training(tmp_path, capsys):
  source = _npz(tmp_path / "digits.npz", labels=np.arange(16) % 13)
  wd = tmp_path / "wd"
  err = _fails(capsys, run.train, _cfg(**{"data.train": source}), str(wd))
  assert "labels of data.train lie in 0..12; net head has num_classes=5" in err, err
  assert not _has_checkpoint(wd)


# 4: outliers that are a test set under another name, a symlink or a copy.
def _oe_cfg(tmp_path, outliers: str):
  c = _cfg(**{"data.train": _npz(tmp_path / "train.npz", labels=np.arange(16) % 5),
              "data.test": _npz(tmp_path / "test.npz", labels=np.arange(16) % 5, seed=1)})
  c.data.ood.letters = _npz(tmp_path / "dtd.npz", seed=2)
  c.nets.oe = ml_collections.ConfigDict(dict(
      kind="classifier", model="cifar_resnet20", num_classes=5, objective="outlier_exposure",
      outliers=outliers, outliers_batch_size=4, epochs=1, batch_size=8))
  c.detectors.oe_msp = ml_collections.ConfigDict(dict(type="msp", net="oe"))
  c.eval.rows = "oe_msp"
  return c


@pytest.mark.parametrize("how", ["dot", "symlink", "copy"])
def test_outliers_that_are_a_test_set_are_refused(tmp_path, capsys, how):
  if how == "dot":
    outliers = f"npz:{tmp_path}/./dtd.npz"
  else:
    _npz(tmp_path / "dtd.npz", seed=2)
    target = tmp_path / "outliers.npz"
    if how == "symlink":
      os.symlink(tmp_path / "dtd.npz", target)
    else:
      shutil.copy(tmp_path / "dtd.npz", target)
    outliers = f"npz:{target}"
  wd = tmp_path / "wd"
  err = _fails(capsys, run.train, _oe_cfg(tmp_path, outliers), str(wd))
  assert "c.nets.oe.outliers" in err and "data.ood.letters" in err, err
  assert "disjoint from the test sets" in err and not _has_checkpoint(wd)


# 5: a diverged classifier names its own key, which may change in the workdir.
def test_a_diverged_net_names_its_learning_rate_which_may_change(tmp_path, capsys, monkeypatch):
  from dlsr_jax.training import loop  # pylint: disable=g-import-not-at-top
  from dlsr_jax.training import classifier as classifiers  # pylint: disable=g-import-not-at-top

  def diverging(*args, **kwargs):           # as loop.fit raises it
    raise loop.Diverged(3, 4, None)

  monkeypatch.setattr(classifiers, "train_classifier", diverging)
  wd = tmp_path / "wd"
  err = _fails(capsys, run.train, _cfg(), str(wd))
  assert "training diverged" in err and "Lower c.nets.head.learning_rate (now 0.05" in err, err
  assert "optim.learning_rate" not in err
  os.makedirs(wd / "head" / "checkpoints" / "2")
  changed = build.check_config(_cfg(**{"nets.head.learning_rate": 0.01,
                                         "nets.head.epochs": 3}), str(wd))
  assert "nets.head.learning_rate: 0.05 -> 0.01" in changed and "nets.head.epochs: 2 -> 3" in (
      changed)
  with pytest.raises(workdir_lib.WorkdirConfigError, match="nets.head.num_classes"):
    build.check_config(_cfg(**{"nets.head.num_classes": 6}), str(wd))


# 7: a workdir this process cannot write.
def test_a_read_only_workdir_is_one_line_and_is_evaluated_with_an_outdir(trained, tmp_path,
                                                                         capsys, monkeypatch):
  wd = _copy(trained, tmp_path)
  access = os.access
  monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
      not str(p).startswith(str(wd)) or not mode & os.W_OK) and access(p, mode, **kw))
  err = _fails(capsys, run.train, _cfg(), str(wd))
  assert f"workdir {wd} is not writable" in err, err
  err = _fails(capsys, run.evaluate, _cfg(), str(wd))
  assert f"output folder {wd} is not writable" in err and "--outdir" in err, err
  before = _snapshot(wd)
  run.evaluate(_cfg(), str(wd), str(tmp_path / "out"))
  assert _snapshot(wd) == before and (tmp_path / "out" / "results.md").is_file()


# 8: late failures are found before any extraction or fitting.
def test_outdir_a_file_and_a_typo_in_an_ood_source_fail_before_extraction(trained, tmp_path,
                                                                           capsys, monkeypatch):
  wd = _copy(trained, tmp_path)

  def no_extraction(*args, **kwargs):
    raise AssertionError("features extracted")

  monkeypatch.setattr(features, "extract", no_extraction)
  out = tmp_path / "results.txt"
  out.write_text("not a folder")
  err = _fails(capsys, run.evaluate, _cfg(), str(wd), str(out))
  assert f"output folder {out} is a file" in err, err
  err = _fails(capsys, run.evaluate,
               _cfg(**{"data.ood.letters": "npz:/no/such/lettrs.npz"}), str(wd),
               str(tmp_path / "out"))
  assert "data.ood.letters = 'npz:/no/such/lettrs.npz'" in err and "not found" in err, err
  c = _cfg(**{"eval.rows": "dlsr,mse"})
  c.detectors.mse = ml_collections.ConfigDict(dict(type="knn", k=3))
  err = _fails(capsys, run.evaluate, c, str(wd), str(tmp_path / "out"))
  assert "c.detectors.mse and c.detectors.dlsr both give the results key 'mse'" in err, err
  assert not (tmp_path / "out").exists()


# 9: net-block settings are checked by build, each naming its key.
@pytest.mark.parametrize("change,message", [
    ({"nets.head.learning_rate": -0.1}, "c.nets.head.learning_rate = -0.1: must be a number"),
    ({"nets.head.model": "cifar_resnet20"}, "c.nets.head.kind = 'head' does not fit model "
                                            "'cifar_resnet20'"),
    ({"nets.head.momentum": -1.0}, "c.nets.head.momentum = -1.0: must be a number >= 0"),
])
def test_net_block_settings_fail_at_once_naming_the_key(tmp_path, capsys, change, message):
  wd = tmp_path / "wd"
  err = _fails(capsys, run.train, _cfg(**change), str(wd))
  assert message in err and "SGDConfig(" not in err, err
  assert not wd.exists()


def test_an_objective_setting_fails_at_once_naming_the_net(tmp_path, capsys):
  c = _oe_cfg(tmp_path, _npz(tmp_path / "outliers.npz", seed=5))
  c.nets.oe.weight = -1.0
  err = _fails(capsys, run.train, c, str(tmp_path / "wd"))
  assert "c.nets.oe (objective 'outlier_exposure')" in err and "weight must be >= 0" in err, err
  assert not (tmp_path / "wd").exists()


# 10: Mahalanobis with one image per class, and N <= C.
def _maha_cfg(**settings):
  c = _cfg()
  c.nets.head.epochs = 0                       # nothing to train: evaluate at once
  c.detectors.maha = ml_collections.ConfigDict(dict(type="mahalanobis", shrinkage=0.1,
                                                   **settings))
  c.eval.rows = "maha"
  return c


def test_class_conditional_mahalanobis_with_one_image_per_class_says_why(tmp_path, capsys):
  c = _maha_cfg(class_conditional=True)
  c.data.train = _npz(tmp_path / "five.npz", n=5, labels=np.arange(5))
  err = _fails(capsys, run.evaluate, c, str(tmp_path / "wd"), str(tmp_path / "out"))
  assert "pooled within-class covariance is zero" in err and "a single training row" in err, err
  assert "all rows identical" not in err


def test_a_gaussian_on_fewer_rows_than_features_warns_in_the_results(tmp_path):
  res = run.evaluate(_maha_cfg(), str(tmp_path / "wd"), str(tmp_path / "out"))
  assert any("maha: mahalanobis: N = 16 training rows <= C = 512 features" in w
             for w in res["warnings"]), res.get("warnings")
  md = (tmp_path / "out" / "results.md").read_text()
  assert "**Warnings**" in md and "N = 16 training rows <= C = 512 features" in md


# Smaller items of issue 18.
def _toy_fit(tmp_path, epochs):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dlsr_jax.training import checkpoint, loop  # pylint: disable=g-import-not-at-top
  from dlsr_jax.training.state import TrainState  # pylint: disable=g-import-not-at-top

  def init(key):
    del key
    return TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.zeros(3)}, opt_state=())

  def step(state, batch, key):
    del key
    return state.replace(step=state.step + 1), {"loss": jnp.mean(batch["in"]["x"])}

  ck = checkpoint.Checkpointer(str(tmp_path))
  try:
    cfg = loop.FitConfig(batch_size=4, num_epochs=epochs, lr_reference_steps=None)
    return loop.fit(init, step, {"in": {"x": np.ones((8, 3), np.float32)}}, cfg, ck,
                    progress=False)
  finally:
    ck.close()


def test_epochs_below_the_checkpoint_is_an_error_not_a_silent_resume(tmp_path):
  from dlsr_jax.training import loop  # pylint: disable=g-import-not-at-top
  assert int(_toy_fit(tmp_path, 4).step) == 8
  with pytest.raises(loop.NotFinished, match=r"at step 8, beyond this config's 4 steps"):
    _toy_fit(tmp_path, 2)


def test_a_missing_lr_reference_suggests_evaluating_without_the_lr_scores(tmp_path):
  from dlsr_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  state = _toy_fit(tmp_path, 1)
  ck = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(FileNotFoundError, match=r"--config.eval.lr=False"):
    ck.restore_reference(state, 391)
  ck.close()


def test_an_object_npz_names_its_file_and_a_truncated_pth_says_so(tmp_path):
  from dlsr_jax import data  # pylint: disable=g-import-not-at-top
  from dlsr_jax.weights import torch_reader  # pylint: disable=g-import-not-at-top
  path = tmp_path / "objects.npz"
  np.savez(path, images=np.array([np.zeros((2, 2)), "x"], dtype=object))
  with pytest.raises(ValueError, match=rf"npz file {path}: .*object arrays"):
    data.load_images(f"npz:{path}")
  pth = tmp_path / "model.pth"
  import zipfile  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(pth, "w") as zf:
    zf.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 200)
  pth.write_bytes(pth.read_bytes()[:300])
  with pytest.raises(torch_reader.CheckpointFormatError, match=r"truncated or damaged"):
    torch_reader.read_torch_checkpoint(str(pth))


def test_evaluate_logs_into_its_outdir_not_into_the_workdir(tmp_path):
  """The entry point's log.txt goes to --outdir (7: nothing written into the workdir)."""
  wd, out = tmp_path / "wd", tmp_path / "out"
  wd.mkdir()
  code = ("import sys; sys.path.insert(0, sys.argv[1]); from absl import flags, logging;"
          " from experiments import evaluate, launch;"
          " flags.FLAGS(['evaluate', '--config=experiments/configs/quickstart.py:tiny',"
          " '--workdir=' + sys.argv[2], '--outdir=' + sys.argv[3]]);"
          " launch.route_logs(0); logging.info('routed')")
  subprocess.run([sys.executable, "-c", code, ROOT, str(wd), str(out)], cwd=ROOT, check=True,
                 env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert not os.listdir(wd) and "routed" in (out / "log.txt").read_text()


def test_a_full_disk_inside_another_error_is_one_line(capsys):
  import errno  # pylint: disable=g-import-not-at-top

  def save():
    try:
      raise OSError(errno.ENOSPC, "No space left on device", "/wd/checkpoints/8")
    except OSError as e:
      raise RuntimeError("orbax: async save failed") from e

  err = _fails(capsys, save)
  assert err.startswith("FAILED (OSError): [Errno 28] No space left on device") and (
      "/wd/checkpoints/8" in err), err
  with pytest.raises(RuntimeError, match="a bug"):   # anything else keeps its traceback
    with cli.reported_failures("wd"):
      raise RuntimeError("a bug")

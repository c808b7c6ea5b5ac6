"""Two JAX processes on localhost (CPU, gloo collectives) train like one.

`tests/fit_worker.py` runs in 2 processes x 2 fake CPU devices joined by
`jax.distributed.initialize(coordinator_address="127.0.0.1:<free port>")`.
Each takes its shard of the features and all-gathers them, trains through
`trainer.fit` and writes checkpoints collectively into one shared workdir.
The result must equal a 1-process run over the same 4 devices. Every wait is
bounded: a hung collective fails the test instead of blocking CI.
"""

import os
import signal
import socket
import sys

import jax
import numpy as np
import pytest

from dlsr_jax import lfdn, multihost, parallel, train, trainer
from dlsr_jax.training.checkpoint import Checkpointer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fit_worker  # noqa: E402  pylint: disable=wrong-import-position

from dlsr_jax import cli  # noqa: E402  pylint: disable=wrong-import-position

N, BATCH, EPOCHS = 47, 16, 6            # 2 steps per epoch; feature shards of 23 and 24
TOTAL = EPOCHS * (N // BATCH)
TIMEOUT = 240                           # for a pair of worker processes


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  z = fit_worker.toy_features(N, seed=1)
  np.savez(root / "z.npz", z=z)
  return {"root": root, "z": z, "features": root / "z.npz", "cache": root / "jax_cache"}


@pytest.fixture(scope="module")
def reference(env):
  """The same training in this process over the same number (4) of devices."""
  assert jax.device_count() == 4, "conftest sets 4 fake CPU devices"
  return fit_worker.flat(fit_worker.train_in_process(env["z"], EPOCHS, BATCH), "final")


def _launch_pair(env, name, log_tag="", **flags):
  """Starts processes 0 and 1 of a 2-process job; returns (procs, logs)."""
  port = _free_port()
  procs, logs = [], []
  for i in range(2):
    log = env["root"] / f"{name}{log_tag}.{i}.log"
    cmd = fit_worker.command(env["root"] / name, env["features"], num_epochs=EPOCHS,
                             batch_size=BATCH, out=env["root"] / f"{name}.npz",
                             coordinator=f"127.0.0.1:{port}", num_processes=2, process_id=i,
                             local_devices=2, gather=True, **flags)
    procs.append(fit_worker.start(cmd, log, env["cache"]))
    logs.append(log)
  return procs, logs


def _run_pair(env, name, log_tag="", **flags):
  procs, logs = _launch_pair(env, name, log_tag, **flags)
  rcs = fit_worker.finish_all(procs, logs, TIMEOUT)
  assert rcs == [0, 0], "\n".join(f"process {i} ({rc}):\n{fit_worker.log_tail(log)}"
                                  for i, (rc, log) in enumerate(zip(rcs, logs)))
  for i, log in enumerate(logs):
    assert f"DONE step={TOTAL} process={i}" in fit_worker.log_tail(log)
  return dict(np.load(env["root"] / f"{name}.npz"))


def _assert_matches(got, reference):
  for k, v in reference.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-5, err_msg=k)


def test_two_processes_train_like_one(env, reference):
  got = _run_pair(env, "pair", checkpoint_every_epochs=100)   # first and last epoch
  _assert_matches(got, reference)
  wd = env["root"] / "pair"
  # Only process 0 wrote metrics; both processes wrote the checkpoints collectively.
  assert sorted(p.name for p in wd.glob("metrics.*")) == ["metrics.0.jsonl"]
  assert fit_worker.checkpoint_steps(wd / "checkpoints") == [N // BATCH, TOTAL]   # last 2
  assert fit_worker.checkpoint_steps(wd / "checkpoints_lr_reference") == [N // BATCH]
  # The collective checkpoint holds the whole state: restore it here, on 4 devices.
  model_cfg = lfdn.LFDNConfig(**fit_worker.MODEL)
  tx = train.make_optimizer(train.OptimConfig(learning_rate=fit_worker.LEARNING_RATE))
  target = trainer.init_state(model_cfg, tx, jax.random.key(0), parallel.make_mesh())
  ck = Checkpointer(str(wd))
  try:
    restored = ck.restore_latest(target)
  finally:
    ck.close()
  for k, v in jax.tree_util.tree_flatten_with_path(restored)[0]:
    np.testing.assert_array_equal(np.asarray(v), got["final" + jax.tree_util.keystr(k)])


def test_sigterm_on_one_host_stops_both_at_one_step_then_resume(env, reference):
  name = "preempt"
  procs, logs = _launch_pair(env, name, ".preempted", step_delay=0.3,
                             checkpoint_every_epochs=100)
  try:
    fit_worker.wait_for_checkpoint(env["root"] / name / "checkpoints", N // BATCH, procs[0],
                                   logs[0], TIMEOUT)
  except AssertionError:
    fit_worker.kill_all(procs)
    raise
  procs[1].send_signal(signal.SIGTERM)     # the scheduler preempts host 1 only
  rcs = fit_worker.finish_all(procs, logs, TIMEOUT)
  tails = [fit_worker.log_tail(log) for log in logs]
  assert rcs == [cli.PREEMPTED_EXIT_CODE] * 2, tails
  step = int(tails[0].split("training stopped on SIGTERM at step ")[1].split(";")[0])
  assert N // BATCH < step < TOTAL
  assert fit_worker.checkpoint_steps(env["root"] / name / "checkpoints") == [N // BATCH, step]
  got = _run_pair(env, name, ".resumed", checkpoint_every_epochs=100)   # both restart
  _assert_matches(got, reference)


# ------------------------------------------------------- in-process helpers --
def test_shard_range_partitions_and_single_process_gather_is_identity():
  for n, count in ((47, 2), (10, 3), (7, 7)):
    ranges = [multihost.shard_range(n, p, count) for p in range(count)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges[:-1], ranges[1:]))
    assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1
  with pytest.raises(ValueError, match="cannot be split"):
    multihost.shard_range(1, 0, 2)
  z = np.arange(12.0).reshape(6, 2)
  np.testing.assert_array_equal(multihost.allgather_rows(z, 6), z)
  with pytest.raises(ValueError, match="expected 6"):
    multihost.allgather_rows(z[:5], 6)


def test_auto_detection_joins_only_known_multi_process_setups(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS",
              *multihost.TPU_POD_ENV_VARS):
    monkeypatch.delenv(var, raising=False)
  assert multihost.detect_cluster() is None             # this CPU test machine
  assert multihost.initialize(None) is False and multihost.initialize(False) is False
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host-a,host-b")
  assert multihost.detect_cluster() == "running on a Cloud TPU VM"
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  assert "JAX_COORDINATOR_ADDRESS" in multihost.detect_cluster()


def test_source_features_loads_and_extracts_only_this_process_rows(tmp_path, monkeypatch):
  """Process 1 of 2 reads rows [4, 9) of a 9-image set, extracts them, all-gathers."""
  from dlsr_jax import data, features  # pylint: disable=g-import-not-at-top
  from dlsr_jax.evaluation import inputs as inputs_lib  # pylint: disable=g-import-not-at-top
  from experiments import build  # pylint: disable=g-import-not-at-top
  from experiments.configs import quickstart  # pylint: disable=g-import-not-at-top
  c = quickstart.get_config("tiny")
  c.data.limit = 0
  images = np.random.default_rng(0).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
  np.savez(tmp_path / "s.npz", images=images)
  source = f"npz:{tmp_path / 's.npz'}"
  backbone = inputs_lib.load_backbone(build.inputs(c))
  loads, gathers, load = [], [], data.load_images
  monkeypatch.setattr(data, "load_images",
                      lambda *a, **kw: loads.append(kw.get("rows")) or load(*a, **kw))
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)

  def gather(local, n):
    gathers.append((local, n))
    return np.concatenate([np.zeros((n - local.shape[0], local.shape[1]), local.dtype), local])

  monkeypatch.setattr(multihost, "allgather_rows", gather)
  cache = features.FeatureCache(str(tmp_path / "cache"))
  z, bounds, info = inputs_lib.source_features(build.inputs(c), backbone, source, cache, shard=True)
  assert loads == [(4, 9)] and info["num_images"] == 9 and z.shape == (9, bounds[-1])
  (local, n), = gathers
  full = inputs_lib.load_source(build.inputs(c), source).images   # the config's resizing applies
  want, _ = features.extract(backbone, full[4:], 4, build.inputs(c).feature_spec, progress=False)
  assert n == 9 and local.shape == (5, bounds[-1])
  np.testing.assert_allclose(local, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(z[4:], local)

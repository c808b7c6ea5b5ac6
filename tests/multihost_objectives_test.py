"""Every classifier objective trains data-parallel on two processes like on one.

`tests/objective_worker.py` runs in 2 processes x 2 fake CPU devices joined by
`jax.distributed.initialize` on localhost and trains, one after the other, outlier
exposure (two streams), UMAP (scores in params, the frozen weights in `extra`), the
confidence branch (lambda in `extra`) and the GAN (three networks) with `loop.fit`, each
process holding the full arrays and feeding its rows of every global batch. The reference
is the same training in this process over the same number (4) of devices.

Equality: the gradients' all-reduce sums the devices' partial results in another order
across processes (gloo) than within one, so the states agree to float32 rounding, not
bitwise: |2 processes - 1 process| <= 1e-6 + 1e-5 |1 process| is asserted (measured, 12
steps: at most 2.4e-7 on any leaf of any objective, in the GAN's Adam moments; 1.2e-7 for
OE, UMAP and the confidence branch). The resumed run is compared bitwise with the
uninterrupted run of the same two processes.

One pair of workers does it all (process start-up and compilation are most of the cost,
and the reference is computed while the pair trains): the four runs, then the GAN once
more ("gan_again"), during which process 1 alone gets SIGTERM; a second pair resumes
"gan_again". Preemption and resume are one code path for every objective (`loop.fit`'s
watch and checkpoints of the whole `TrainState`, streams replayed from the step), so they
are checked once, on the objective with the most state: three networks, two of them with
their optimizer states in `extra`. Every wait is bounded.
"""

import os
import signal
import socket
import sys
import threading

import jax
import numpy as np
import pytest

from dlsr_jax import parallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fit_worker  # pylint: disable=wrong-import-position
import objective_worker as worker  # pylint: disable=wrong-import-position

from dlsr_jax import cli  # pylint: disable=wrong-import-position

OBJECTIVES = ("oe", "umap", "cb", "gan")
STREAMS = {"oe": ("in", "outliers"), "umap": ("in",), "cb": ("in",), "gan": ("in",)}
SIZES = {"in": (worker.N_IN, worker.BATCH), "outliers": (worker.N_OUT, worker.OUT_BATCH)}
STEPS_PER_EPOCH = worker.N_IN // worker.BATCH
TOTAL = worker.TOTAL_STEPS
TIMEOUT = 420                  # for a pair of workers; a hang fails, never blocks CI


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost_objectives")
  return {"root": root, "cache": root / "jax_cache", "data": worker.toy_data()}


def _reference(env):
  """{run: (flat state + export, rows per stream)} of the 1-process, 4-device training."""
  assert jax.device_count() == 4, "conftest sets 4 fake CPU devices"
  out = {}
  for run in OBJECTIVES:
    rows = {}
    state, export = worker.train_run(run, str(env["root"] / "reference" / run), env["data"],
                                     rows, mesh=parallel.make_mesh())
    out[run] = ({**fit_worker.flat(state, "state"), **fit_worker.flat(export, "export")},
                {k: np.asarray(v) for k, v in rows.items()})
  return out


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch_pair(env, tag, **flags):
  """Processes 0 and 1 of a 2-process job (2 devices each); (procs, logs)."""
  port = _free_port()
  procs, logs = [], []
  for i in range(2):
    log = env["root"] / f"pair.{tag}.{i}.log"
    cmd = [sys.executable, worker.__file__, f"--root={env['root'] / 'pair'}", f"--tag={tag}",
           f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
           "--local_devices=2", *[f"--{k}={v}" for k, v in flags.items()]]
    procs.append(fit_worker.start(cmd, log, env["cache"]))
    logs.append(log)
  return procs, logs


def _sigterm_host_1_after(ckpt_dir, procs, logs, errors):
  """Once "gan_again" has saved its first epoch, SIGTERM process 1 only (a thread)."""
  try:
    fit_worker.wait_for_checkpoint(ckpt_dir, STEPS_PER_EPOCH, procs[0], logs[0], TIMEOUT)
    procs[1].send_signal(signal.SIGTERM)     # the scheduler preempts host 1 only
  except AssertionError as e:
    errors.append(e)


@pytest.fixture(scope="module")
def runs(env):
  """The reference, and the pair: run A (the four objectives, then "gan_again" preempted on
  host 1), run B (resumes "gan_again"). The reference trains while run A does (2 cores)."""
  procs, logs = _launch_pair(env, "A", slow="gan_again", step_delay=0.3)
  ckpt_dir = env["root"] / "pair" / "gan_again" / "checkpoints"
  errors = []
  preempter = threading.Thread(target=_sigterm_host_1_after,
                               args=(ckpt_dir, procs, logs, errors), daemon=True)
  preempter.start()
  try:
    reference = _reference(env)
    preempter.join(TIMEOUT)
    if errors or preempter.is_alive():
      raise errors[0] if errors else AssertionError("no SIGTERM sent within the timeout")
  except BaseException:
    fit_worker.kill_all(procs)
    raise
  rcs = fit_worker.finish_all(procs, logs, TIMEOUT)
  tails = [fit_worker.log_tail(log, 20000) for log in logs]
  preempted_steps = fit_worker.checkpoint_steps(ckpt_dir)
  procs, resume_logs = _launch_pair(env, "B", runs="gan_again")
  resume_rcs = fit_worker.finish_all(procs, resume_logs, TIMEOUT)
  assert resume_rcs == [0, 0], "\n".join(
      f"resumed process {i} ({rc}):\n{fit_worker.log_tail(log)}"
      for i, (rc, log) in enumerate(zip(resume_rcs, resume_logs)))
  return {"reference": reference, "rcs": rcs, "tails": tails,
          "preempted_steps": preempted_steps, "dir": env["root"] / "pair"}


def _state(runs, run):
  return dict(np.load(runs["dir"] / run / "state.npz"))


def _rows(runs, run, process, tag="A"):
  return dict(np.load(runs["dir"] / run / f"rows.{process}.{tag}.npz"))


def test_first_runs_finished_on_both_processes(runs):
  for i, tail in enumerate(runs["tails"]):
    for run in OBJECTIVES:
      assert f"DONE {run} step={TOTAL} process={i}" in tail, tail[-4000:]


@pytest.mark.parametrize("run", OBJECTIVES)
def test_two_processes_train_each_objective_like_one(run, runs):
  want, _ = runs["reference"][run]
  got = _state(runs, run)
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg=f"{run} {k}")
  assert int(got["state.step"]) == TOTAL


@pytest.mark.parametrize("run", OBJECTIVES)
def test_per_host_shards_of_every_stream_are_disjoint_and_complete(run, runs):
  _, want_rows = runs["reference"][run]
  parts = [_rows(runs, run, p) for p in range(2)]
  assert sorted(want_rows) == sorted(parts[0]) == sorted(parts[1]) == sorted(STREAMS[run])
  for stream in STREAMS[run]:
    n, batch = SIZES[stream]
    p0, p1 = parts[0][stream], parts[1][stream]
    assert p0.shape == p1.shape == (TOTAL, batch // 2), (stream, p0.shape, p1.shape)
    for s in range(TOTAL):      # disjoint halves of the batch the one process fed
      assert not set(p0[s]) & set(p1[s]), (run, stream, s)
    np.testing.assert_array_equal(np.concatenate([p0, p1], axis=1), want_rows[stream])
    per_epoch = n // batch      # every full epoch of the stream feeds each row once
    fed = np.concatenate([p0, p1], axis=1)
    for e in range(TOTAL // per_epoch):
      np.testing.assert_array_equal(np.sort(fed[e * per_epoch:(e + 1) * per_epoch], None),
                                    np.arange(n), err_msg=f"{run} {stream} epoch {e}")


def test_sigterm_on_one_host_stops_both_at_one_step_and_resume_equals_uninterrupted(runs):
  assert runs["rcs"] == [cli.PREEMPTED_EXIT_CODE] * 2, [t[-4000:] for t in runs["tails"]]
  steps = []
  for tail in runs["tails"]:     # every process logs where it stopped
    assert "preempted (SIGTERM): stopped at step " in tail, tail[-4000:]
    steps.append(int(tail.split("preempted (SIGTERM): stopped at step ")[1].split(" ")[0]))
  step = steps[0]
  assert steps == [step, step] and STEPS_PER_EPOCH < step < TOTAL, steps
  assert runs["preempted_steps"] == [STEPS_PER_EPOCH, step]
  # The resumed run ends bitwise like the uninterrupted 2-process GAN ...
  got, want = _state(runs, "gan_again"), _state(runs, "gan")
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  # ... having fed, on each host, exactly the rows of the uninterrupted run.
  for p in range(2):
    before, after = _rows(runs, "gan_again", p, "A"), _rows(runs, "gan_again", p, "B")
    assert before["in"].shape[0] == step and after["in"].shape[0] == TOTAL - step
    np.testing.assert_array_equal(np.concatenate([before["in"], after["in"]]),
                                  _rows(runs, "gan", p)["in"])

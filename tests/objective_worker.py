"""Every classifier objective trained by `loop.fit` in one process of a (multi-process) job.

  python tests/objective_worker.py --root=DIR --tag=A [--coordinator=127.0.0.1:PORT
      --num_processes=2 --process_id=I] [--local_devices=2] [--slow=gan_again --step_delay=0.3]

Trains, one after the other, each run of `RUNS` on the tiny image data of `toy_data`
(the same arrays on every process, as `dlsr_jax.training.classifier.train_classifier` is
given them): outlier exposure (streams "in" and "outliers", EMA), UMAP (unleashing mask
with prune=True: scores in params, the frozen weights in `extra`, b estimated and
written to the workdir), the confidence branch (lambda in `extra`) and the GAN (three
networks: the classifier in params, G and D in `extra`); "gan_again" is the GAN once
more in a workdir of its own, the run that the preemption test interrupts. Each run
checkpoints into DIR/<run> and resumes from there, like `experiments.train`.

Outputs per run, in DIR/<run>:
  state.npz        process 0: the final `TrainState` ("state...") and the exported
                   evaluation variables ("export..."), as flat numpy entries.
  rows.<p>.<tag>.npz   process p: the dataset rows it fed to the devices, per stream
                   ([steps of this invocation, local batch]), read back from the very
                   arrays the loop handed to `parallel.host_to_global`.
On preemption (SIGTERM on any host) the process exits like `experiments.train`
(status `cli.PREEMPTED_EXIT_CODE`). --step_delay slows each step of the --slow run
(in the metrics callback) so that a test can signal it mid-training.

Importing this module does not start JAX; the tests import `RUNS`, `toy_data` and
`train_run` and run the same training in their own process as the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_IN, N_OUT, BATCH, OUT_BATCH, EPOCHS = 32, 24, 8, 8, 3   # 4 steps an epoch, 12 in all
NUM_CLASSES, SEED = 3, 3
GAN = {"nz": 8, "ngf": 8, "ndf": 8, "num_samples": 16}
# run name -> (objective, settings, ema_decay)
RUNS = {
    "oe": ("outlier_exposure", {"weight": 0.5}, 0.9),
    "umap": ("unleashing_mask", {"prune": True, "keep": 0.8}, None),
    "cb": ("confidence_branch", {"lambda0": 0.1, "beta": 0.3}, None),
    "gan": ("gan_outliers", GAN, None),
    "gan_again": ("gan_outliers", GAN, None),
}
TOTAL_STEPS = EPOCHS * (N_IN // BATCH)


def toy_data() -> dict:
  """{"in": {"x", "y"}, "outliers": {"x"}}: random uint8 32x32 images (every row unique)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  x = rng.integers(0, 256, (N_IN + N_OUT, 32, 32, 3)).astype(np.uint8)
  return {"in": {"x": x[:N_IN], "y": rng.integers(0, NUM_CLASSES, N_IN).astype(np.int32)},
          "outliers": {"x": x[N_IN:]}}


def tiny_net():
  """The objective tests' TinyCNN (conv, BatchNorm, dense) on 32x32 images."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from dlsr_jax.models.net import Net  # pylint: disable=g-import-not-at-top
  from tests.training_test import TinyCNN  # pylint: disable=g-import-not-at-top
  module = TinyCNN(strides=2)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  return Net(name="tiny32", module=module, params=variables, resolution=32,
             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@contextlib.contextmanager
def fed_rows(data: dict, rows: dict):
  """Records the dataset rows of every image batch the loop feeds (rows[stream] += [...]).

  Wraps `parallel.host_to_global`, through which `loop.fit` hands each process's rows of
  every global batch to its devices; each fed image is looked up by its bytes.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  from dlsr_jax import parallel  # pylint: disable=g-import-not-at-top
  where = {}
  for stream, arrays in data.items():
    for i, image in enumerate(arrays["x"]):
      where[image.tobytes()] = (stream, i)
  original = parallel.host_to_global

  def spy(local, mesh):
    local = np.asarray(local)
    if local.ndim == 4:      # images (labels are skipped)
      found = [where[image.tobytes()] for image in local]
      streams = {s for s, _ in found}
      if len(streams) != 1:
        raise AssertionError(f"one fed batch mixes the streams {sorted(streams)}")
      rows.setdefault(streams.pop(), []).append([i for _, i in found])
    return original(local, mesh)

  parallel.host_to_global = spy
  try:
    yield rows
  finally:
    parallel.host_to_global = original


def train_run(run: str, workdir: str, data: dict, rows: dict, mesh=None,
              step_delay: float = 0.0):
  """Trains `RUNS[run]` with checkpoints in `workdir` (resuming); (state, exported variables).

  `rows` gets the rows fed, per stream (see `fed_rows`), also when training stops early.
  """
  from dlsr_jax.objectives import base as objectives  # pylint: disable=g-import-not-at-top
  from dlsr_jax.training import loop, optim  # pylint: disable=g-import-not-at-top
  from dlsr_jax.training.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  name, settings, ema = RUNS[run]
  streams = {"in": data["in"], **{s: data[s] for s in objectives.streams_of(name)}}
  tx = optim.sgd(optim.SGDConfig(learning_rate=0.05), TOTAL_STEPS)
  obj = objectives.make(name, tiny_net(), tx, settings, augment=True, ema_decay=ema,
                        data=streams, workdir=workdir, seed=SEED)
  cfg = loop.FitConfig(batch_size=BATCH, num_epochs=EPOCHS, seed=SEED, log_every_steps=1,
                       checkpoint_every_epochs=100, lr_reference_steps=None,
                       stream_batch_sizes={"outliers": OUT_BATCH})
  ckpt = Checkpointer(workdir)
  try:
    with fed_rows(streams, rows):
      state = loop.fit(obj.init, obj.step, streams, cfg, ckpt, mesh=mesh, progress=False,
                       write_metrics=lambda s, m: time.sleep(step_delay))
  finally:
    ckpt.close()
  if obj.finish is not None:
    obj.finish(state, workdir)
  return state, obj.variables(state)


def save_rows(path: str, rows: dict) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  np.savez(path, **{k: np.asarray(v, np.int64).reshape(len(v), -1) for k, v in rows.items()})


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", required=True)
  p.add_argument("--tag", required=True, help="names this invocation's rows files")
  p.add_argument("--runs", default=",".join(RUNS))
  p.add_argument("--slow", default="", help="the run that --step_delay slows")
  p.add_argument("--step_delay", type=float, default=0.0)
  p.add_argument("--coordinator", default="")
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--local_devices", type=int, default=1)
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from dlsr_jax import cli, multihost  # pylint: disable=g-import-not-at-top
  from dlsr_jax.training.preemption import Preempted  # pylint: disable=g-import-not-at-top
  from tests import fit_worker  # pylint: disable=g-import-not-at-top

  if args.coordinator:
    multihost.initialize(True, args.coordinator, args.num_processes, args.process_id,
                         timeout_s=60)
  p = jax.process_index()
  data = toy_data()
  for run in args.runs.split(","):
    workdir = os.path.join(args.root, run)
    os.makedirs(workdir, exist_ok=True)
    delay = args.step_delay if run == args.slow else 0.0
    rows_path = os.path.join(workdir, f"rows.{p}.{args.tag}.npz")
    rows = {}
    try:
      state, export = train_run(run, workdir, data, rows, step_delay=delay)
    except Preempted as e:
      save_rows(rows_path, rows)
      cli.exit_preempted(e.step, workdir, e.reason)
    save_rows(rows_path, rows)
    if p == 0:
      np.savez(os.path.join(workdir, "state.npz"), **fit_worker.flat(state, "state"),
               **fit_worker.flat(export, "export"))
    print(f"DONE {run} step={int(jax.device_get(state.step))} process={p}", flush=True)


if __name__ == "__main__":
  main()

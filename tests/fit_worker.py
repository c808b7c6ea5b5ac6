"""A tiny `trainer.fit` run in its own process, for the resume and multi-host tests.

  python tests/fit_worker.py --workdir=WD --features=z.npz --num_epochs=8 --out=out.npz
      [--coordinator=127.0.0.1:PORT --num_processes=2 --process_id=I] [--local_devices=2]
      [--gather] [--checkpoint_every_steps=4] [--step_delay=0.1]

Trains the tiny LFDN `MODEL` on the [N, C] `z` of --features with checkpoints in --workdir
(resuming from them, like `experiments.train`). Process 0 appends every
step's metrics to WD/metrics.<process index>.jsonl (so a file from another
process would show that it wrote too) and, with --out, saves the final state
and the LR reference checkpoint's state (one epoch) as flat npz entries. On preemption it
exits like `experiments.train` (status `cli.PREEMPTED_EXIT_CODE`).
--step_delay slows every step (inside the metrics callback) so that a test can
kill the run mid-training; it does not change what is computed.

The module also holds the tests' helpers to start, wait for (always with a
timeout) and poll such workers; importing it does not import JAX.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = dict(features=8, width=16, embed_dim=8, num_blocks=2)
LEARNING_RATE = 1e-3
EMA_DECAY = 0.99


# ------------------------------------------------------- helpers for tests --
def toy_features(n: int, seed: int):
  """[n, 8] float32 features: four clusters with small noise (the tests' training data)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(4, 8))
  return (base[rng.integers(0, 4, n)] + 0.05 * rng.normal(size=(n, 8))).astype(np.float32)


def command(workdir, features, **flags) -> list[str]:
  """The worker's command line; `flags` become --name=value (True: --name)."""
  cmd = [sys.executable, os.path.abspath(__file__), f"--workdir={workdir}",
         f"--features={features}"]
  for name, value in flags.items():
    if value is True:
      cmd.append(f"--{name}")
    elif value not in (None, False):
      cmd.append(f"--{name}={value}")
  return cmd


def start(cmd: list[str], log_path, compile_cache: str) -> subprocess.Popen:
  """Starts a worker with output to `log_path` and a shared compilation cache."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             JAX_COMPILATION_CACHE_DIR=str(compile_cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("XLA_FLAGS", None)
  log = open(log_path, "w")  # pylint: disable=consider-using-with
  try:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  finally:
    log.close()


def log_tail(log_path, chars: int = 4000) -> str:
  with open(log_path, errors="replace") as f:
    return f.read()[-chars:]


def finish(proc: subprocess.Popen, log_path, timeout: float) -> int:
  """Waits at most `timeout` s for `proc` (killed if it overruns); its exit status."""
  try:
    return proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait(timeout=30)
    raise AssertionError(f"worker did not finish within {timeout} s (killed):\n"
                         f"{log_tail(log_path)}") from None


def finish_all(procs: list[subprocess.Popen], logs: list, timeout: float) -> list[int]:
  """`finish` for processes running together, within one shared deadline."""
  deadline = time.time() + timeout
  try:
    return [finish(p, log, max(deadline - time.time(), 1.0)) for p, log in zip(procs, logs)]
  finally:
    kill_all(procs)


def kill_all(procs: list[subprocess.Popen]) -> None:
  """Kills the workers still running (test clean-up after a failure)."""
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait(timeout=30)


def checkpoint_steps(ckpt_dir) -> list[int]:
  """Completely written steps in an orbax checkpoint directory."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def wait_for_checkpoint(ckpt_dir, min_step: int, proc: subprocess.Popen, log_path,
                        timeout: float) -> int:
  """Polls until a checkpoint >= `min_step` exists; returns its step."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [s for s in checkpoint_steps(ckpt_dir) if s >= min_step]
    if steps:
      return steps[-1]
    if proc.poll() is not None:
      raise AssertionError(f"worker exited ({proc.returncode}) before a checkpoint >= "
                           f"{min_step} appeared:\n{log_tail(log_path)}")
    time.sleep(0.02)
  proc.kill()
  proc.wait(timeout=30)
  raise AssertionError(f"no checkpoint >= {min_step} in {ckpt_dir} after {timeout} s:\n"
                       f"{log_tail(log_path)}")


# ----------------------------------------------------------------- worker --
def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--features", required=True)
  p.add_argument("--num_epochs", type=int, default=8)
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--seed", type=int, default=3)
  p.add_argument("--checkpoint_every_steps", type=int, default=0)
  p.add_argument("--checkpoint_every_epochs", type=int, default=1)
  p.add_argument("--step_delay", type=float, default=0.0)
  p.add_argument("--out", default="")
  p.add_argument("--coordinator", default="")
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--local_devices", type=int, default=1)
  p.add_argument("--gather", action="store_true",
                 help="take this process's shard of the features and all-gather them")
  return p.parse_args(argv)


def fit_config(args):
  from dlsr_jax import trainer  # pylint: disable=g-import-not-at-top
  return trainer.FitConfig(batch_size=args.batch_size, num_epochs=args.num_epochs,
                           seed=args.seed, log_every_steps=1,
                           checkpoint_every_epochs=args.checkpoint_every_epochs,
                           checkpoint_every_steps=args.checkpoint_every_steps,
                           lr_reference_steps=0)   # one epoch of the toy set


def model_and_optim():
  from dlsr_jax import lfdn, train  # pylint: disable=g-import-not-at-top
  return (lfdn.LFDNConfig(**MODEL),
          train.OptimConfig(learning_rate=LEARNING_RATE, ema_decay=EMA_DECAY))


def train_in_process(z, num_epochs: int, batch_size: int, mesh=None):
  """The worker's training without checkpoints, in the calling process."""
  from dlsr_jax import schedule, trainer  # pylint: disable=g-import-not-at-top
  args = parse_args(["--workdir=-", "--features=-", f"--num_epochs={num_epochs}",
                     f"--batch_size={batch_size}"])
  model_cfg, optim_cfg = model_and_optim()
  return trainer.fit(z, model_cfg, optim_cfg, schedule.make_schedule(), fit_config(args),
                     None, mesh=mesh, progress=False)


def flat(tree, prefix: str) -> dict:
  """{prefix + path: numpy leaf} of a (replicated) pytree."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {prefix + jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def main(argv=None) -> None:
  args = parse_args(argv)
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dlsr_jax import cli, multihost, schedule, trainer  # pylint: disable=g-import-not-at-top
  from dlsr_jax.training.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_threefry_partitionable", True)
  if args.coordinator:
    multihost.initialize(True, args.coordinator, args.num_processes, args.process_id,
                         timeout_s=60)
  z = np.load(args.features)["z"]
  if args.gather:
    lo, hi = multihost.shard_range(z.shape[0])
    gathered = multihost.allgather_rows(z[lo:hi], z.shape[0])
    if not np.array_equal(gathered, z):
      raise AssertionError("all-gathered feature shards differ from the full array")
    z = gathered
  os.makedirs(args.workdir, exist_ok=True)
  metrics_path = os.path.join(args.workdir, f"metrics.{jax.process_index()}.jsonl")

  def write_metrics(step, m):
    with open(metrics_path, "a") as f:
      f.write(json.dumps({"step": step, **m}) + "\n")
    time.sleep(args.step_delay)

  model_cfg, optim_cfg = model_and_optim()
  ckpt = Checkpointer(args.workdir)
  try:
    state = trainer.fit(z, model_cfg, optim_cfg, schedule.make_schedule(), fit_config(args),
                        ckpt, write_metrics=write_metrics, progress=False)
    first = ckpt.restore_reference(state, ckpt.reference_steps()[0])
  except trainer.Preempted as e:
    ckpt.close()
    cli.exit_preempted(e.step, args.workdir, e.reason)
  ckpt.close()
  if args.out and jax.process_index() == 0:
    np.savez(args.out, **flat(state, "final"), **flat(first, "first"))
  print(f"DONE step={int(jax.device_get(state.step))} process={jax.process_index()}",
        flush=True)


if __name__ == "__main__":
  main()

r"""Trains the DLSR LFDN on cached backbone features.

  python -m experiments.train --config=experiments/configs/cifar10_lite0.py:runlocal \
      --workdir=/tmp/dlsr --config.train.num_epochs=5

Re-running the same command resumes from the latest checkpoint in --workdir.
On SIGTERM (preemption) training saves a checkpoint at the current step and
exits with status 143 (`launch.PREEMPTED_EXIT_CODE`) and a message saying so;
re-running resumes there, exactly.

Multi-host (TPU pods, several GPU nodes, several processes): run the same
command on every host; see `experiments/launch.py` for --multihost and
friends. Each process extracts the features of its own shard of the training
images, the features are all-gathered, every process trains on identical
global batches, only process 0 writes the config and metrics, and
checkpoints are written collectively into the shared --workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from dlsr_jax import trainer
from experiments import launch, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, caches.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  launch.setup()
  try:
    pipeline.run_train(_CONFIG.value, _WORKDIR.value)
  except trainer.Preempted as e:
    launch.exit_preempted(e.step, _WORKDIR.value)
  logging.info("done: checkpoints in %s", _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)

r"""Trains every network the config names: classifier nets, then the DLSR LFDN(s).

  python -m experiments.train --config=experiments/configs/cifar10_lite0.py:runlocal \
      --workdir=/tmp/dlsr --config.train.num_epochs=5

Every `c.nets.<name>` with epochs > 0 trains in <workdir>/<name>/ (in init_from order), every
detector row whose fit trains (type "dlsr") in <workdir>/<row>/ (<workdir>/<row>/seed_<s>/
with `c.seeds`), on the cached features of the ID training set. The config is checked
(`experiments/build.py`) before anything runs. Re-running the same command resumes each
run from its latest checkpoint (finished runs are restored, not retrained).
On SIGTERM (preemption) training saves a checkpoint at the current step and
exits with status 143 (`cli.PREEMPTED_EXIT_CODE`) and a message saying so;
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

from dlsr_jax import cli
from experiments import run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, caches.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run.setup()
  with cli.reported_failures(_WORKDIR.value):   # known failures: one message, exit 1
    run.train(_CONFIG.value, _WORKDIR.value)
  logging.info("done: checkpoints in %s", _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)

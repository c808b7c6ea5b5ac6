r"""Trains the DLSR LFDN on cached backbone features.

  python -m experiments.train --config=experiments/configs/cifar10_lite0.py:runlocal \
      --workdir=/tmp/dlsr --config.train.num_epochs=5

Re-running the same command resumes from the latest checkpoint in --workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import launch, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, caches.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  launch.setup()
  pipeline.run_train(_CONFIG.value, _WORKDIR.value)
  logging.info("done: checkpoints in %s", _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)

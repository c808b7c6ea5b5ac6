r"""Converts the official DLSR release's trained LFDN checkpoints into a workdir.

  python -m experiments.convert_release --config=experiments/configs/cifar10_effb4.py \
      --final=output_dir/checkpoint-149.pth --first=output_dir/checkpoint-0.pth \
      --workdir=/tmp/dlsr_release

then score the released models with the same config plus the printed flags:

  python -m experiments.evaluate --config=experiments/configs/cifar10_effb4.py \
      --workdir=/tmp/dlsr_release --config.eval.release_compat=True \
      --config.model.width=1440 --config.model.embed_dim=720 --config.model.num_blocks=16 ...

The checkpoints are read and written by `dlsr_jax.release.convert_to_workdir`, without torch
and without running pickled code. `--final` becomes `checkpoints/` (the latest), `--first`
(optional; the LR score needs it) the LR reference checkpoint in
`checkpoints_lr_reference/` (and `train.lr_reference_steps` is set to its
step in the written config and the printed flags). Each is a
`TrainState` with the release's weights as `params` and its EMA weights as
`ema_params` (`--weights=raw` puts the raw weights there instead), the step
set to the EMA's update count (else epoch + 1), and a freshly initialised
optimizer state of `--config`'s optimizer: the release's AdamW moments are
not converted, so resuming training from these checkpoints restarts the
optimizer. The config written to `<workdir>/<row>/config.json` has the inferred LFDN
sizes and `eval.release_compat = True`. The features the config extracts must
have the checkpoint's C dimensions (release: EfficientNet-B4, five levels,
C = 720).
"""

from __future__ import annotations

import os
from typing import Optional

from absl import app, flags
from ml_collections import config_flags

from dlsr_jax import release, schedule
from experiments import build

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The config evaluate will use (path[:variant]).", lock_config=True)
_FINAL = flags.DEFINE_string("final", None, "The release's last checkpoint-<epoch>.pth.")
_FIRST = flags.DEFINE_string("first", None, "The release's checkpoint-0.pth (for the LR score).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The evaluation workdir: the checkpoints go to "
                                "<workdir>/<row>/ (must be new).")
_ROW = flags.DEFINE_string("row", "dlsr", "The DLSR detector row (c.detectors.<row>) whose "
                           "LFDN this is.")
_WEIGHTS = flags.DEFINE_enum("weights", "ema", ["ema", "raw"],
                             "Which weights become ema_params (the ones scoring uses).")


def config_flags_for(cfg, reference_step: Optional[int] = None) -> list[str]:
  """The --config overrides that make a config's LFDN match `cfg` (an LFDNConfig)
  and point the LR score at the converted first checkpoint's step."""
  out = [f"--config.model.width={cfg.width}", f"--config.model.embed_dim={cfg.embed_dim}",
         f"--config.model.num_blocks={cfg.num_blocks}",
         f"--config.model.use_time_embedding={cfg.use_time_embedding}",
         "--config.eval.release_compat=True"]
  if reference_step is not None:
    out.append(f"--config.train.lr_reference_steps={reference_step}")
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  c, row_dir = _CONFIG.value, os.path.join(_WORKDIR.value, _ROW.value)
  s = release.convert_to_workdir(
      row_dir, _FINAL.value, _FIRST.value, _WEIGHTS.value, optim_cfg=build.optim_config(c),
      alphas_cumprod=schedule.make_schedule(build.schedule_config(c)).alphas_cumprod)
  m = s["model"]
  build.write_config(build.release_config(c, m, s["steps"][0]), row_dir)
  print(f"LFDN: C={m.features} W={m.width} E={m.embed_dim} N={m.num_blocks} "
        f"time_embedding={m.use_time_embedding}; {s['weights']} weights; epochs "
        f"{s['epochs']} -> steps {s['steps']} (first epoch, final) in {row_dir}")
  if s["schedule_matches"] is False:
    print("WARNING: the checkpoint's alphas_cumprod differs from --config's schedule")
  if _FIRST.value is None:
    print("no --first: no first-epoch checkpoint, so no LR score")
  print("evaluate with the same --config and: " + " ".join(config_flags_for(m, s["steps"][0])))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "final", "workdir"])
  app.run(main)

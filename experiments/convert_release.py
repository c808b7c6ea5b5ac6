r"""Converts the official DLSR release's trained LFDN checkpoints into a workdir.

  python -m experiments.convert_release --config=experiments/configs/cifar10_effb4.py \
      --final=output_dir/checkpoint-149.pth --first=output_dir/checkpoint-0.pth \
      --workdir=/tmp/dlsr_release

then score the released models with the same config plus the printed flags:

  python -m experiments.evaluate --config=experiments/configs/cifar10_effb4.py \
      --workdir=/tmp/dlsr_release --config.eval.release_compat=True \
      --config.model.width=1440 --config.model.embed_dim=720 --config.model.num_blocks=16 ...

The checkpoints are read without torch and without running pickled code
(`dlsr_jax.release`). `--final` becomes `checkpoints/` (the latest), `--first`
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
from typing import Any, Optional

import numpy as np
from absl import app, flags
from ml_collections import config_flags

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


def _state(c, params, ema, step: int):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dlsr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  from experiments import pipeline  # pylint: disable=g-import-not-at-top

  params = jax.tree.map(jnp.asarray, params)
  tx = train_lib.make_optimizer(pipeline.optim_config(c))
  return train_lib.TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                              opt_state=tx.init(params),
                              ema_params=jax.tree.map(jnp.asarray, ema))


def _read(path: str, weights: str):
  from dlsr_jax import release  # pylint: disable=g-import-not-at-top

  params, ema, info = release.read_release_checkpoint(path)
  if weights == "ema":
    if ema is None:
      raise ValueError(f"{path} has no EMA weights (model_ema.*): pass --weights=raw to "
                       "score with the raw weights")
  else:
    ema = params
  step = info.ema_num_updates if (info.ema_num_updates or 0) > 0 else (info.epoch or 0) + 1
  return params, ema, info, step


def convert(c, workdir: str, final: str, first: Optional[str] = None,
            weights: str = "ema") -> dict[str, Any]:
  """Writes the release checkpoints `final` (and `first`) as workdir checkpoints.

  Args:
    c: the experiment config evaluation will use (its optimizer and schedule;
      its LFDN sizes are replaced by the checkpoint's).
    workdir: a directory without checkpoints.
    final, first: the release's last and first-epoch checkpoint files.
    weights: "ema" (default; what the release scores with) or "raw".

  Returns:
    Summary: model (LFDNConfig), steps, epochs, flags (the --config overrides
    evaluate needs), schedule_matches (None if the checkpoint has no schedule).
  """
  from dlsr_jax import schedule  # pylint: disable=g-import-not-at-top
  from dlsr_jax.training.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from experiments import pipeline  # pylint: disable=g-import-not-at-top

  p, ema, info, step = _read(final, weights)
  first_read = _read(first, weights) if first else None
  if first_read is not None:
    if first_read[2].config != info.config:
      raise ValueError(f"{first} has an LFDN {first_read[2].config}, {final} has {info.config}")
    if first_read[3] >= step:
      raise ValueError(f"{first} (step {first_read[3]}) is not before {final} (step {step})")
  c = c.copy_and_resolve_references()  # unlocked copy
  m = info.config
  c.model.width, c.model.embed_dim, c.model.num_blocks = m.width, m.embed_dim, m.num_blocks
  c.model.use_time_embedding = m.use_time_embedding
  c.eval.release_compat = True
  if first_read is not None:
    c.train.lr_reference_steps = first_read[3]
  matches = None
  if info.alphas_cumprod is not None:
    ours = schedule.make_schedule(pipeline.schedule_config(c)).alphas_cumprod
    matches = bool(ours.shape == info.alphas_cumprod.shape
                   and np.allclose(ours, info.alphas_cumprod, rtol=1e-5, atol=1e-7))
  ckpt = Checkpointer(workdir)
  try:
    if ckpt.latest_step() is not None or ckpt.reference_steps():
      raise FileExistsError(f"{workdir} already has checkpoints; convert into a new workdir")
    ckpt.save(step, _state(c, p, ema, step))
    if first_read is not None:
      fp, fema, _, fstep = first_read
      ckpt.save_reference(fstep, _state(c, fp, fema, fstep))
  finally:
    ckpt.close()
  pipeline.write_config(c, workdir)
  return {"model": m, "steps": (first_read[3] if first_read else None, step),
          "epochs": (first_read[2].epoch if first_read else None, info.epoch),
          "flags": config_flags_for(m, first_read[3] if first_read else None),
          "schedule_matches": matches, "weights": weights}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  row_dir = os.path.join(_WORKDIR.value, _ROW.value)
  s = convert(_CONFIG.value, row_dir, _FINAL.value, _FIRST.value, _WEIGHTS.value)
  m = s["model"]
  print(f"LFDN: C={m.features} W={m.width} E={m.embed_dim} N={m.num_blocks} "
        f"time_embedding={m.use_time_embedding}; {s['weights']} weights; epochs "
        f"{s['epochs']} -> steps {s['steps']} (first epoch, final) in {row_dir}")
  if s["schedule_matches"] is False:
    print("WARNING: the checkpoint's alphas_cumprod differs from --config's schedule")
  if _FIRST.value is None:
    print("no --first: no first-epoch checkpoint, so no LR score")
  print("evaluate with the same --config and: " + " ".join(s["flags"]))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "final", "workdir"])
  app.run(main)

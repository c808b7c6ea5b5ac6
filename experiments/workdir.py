"""The experiment configs' workdir policy: which config keys may change between runs.

The lock and the config record are `dlsr_jax.training.workdir` (plain dicts); this module
says which keys of an experiment config may differ from a workdir's record
(`CHANGEABLE_KEYS`, `changeable`) and applies it to a config's settings (a plain dict,
`build.config_record(c)`): `check_config` (every evaluation, every training run) and
`record_config` (every training run).
`c.nets.<name>` keys in `CHANGEABLE_NET_KEYS` (learning_rate, epochs, ...) may change like
their LFDN counterparts.
"""

from __future__ import annotations

from dlsr_jax.training import workdir as workdir_lib
from experiments.configs import common

# Keys that may change between runs in one workdir; a trailing "." is a prefix.
CHANGEABLE_KEYS = (
    "train.num_epochs",              # extend a run
    "train.log_every_steps", "train.checkpoint_every_epochs", "train.checkpoint_every_steps",
    "train.keep_steps",              # keep further steps from now on
    "optim.learning_rate",           # lower it to continue after a divergence
    "eval.",                         # scoring settings: each evaluation reports its own
    "data.test", "data.ood.", "data.extra_ood", "data.groups.",   # sets scored, not trained on
    "data.tfds_data_dir",            # where the data is, not what it is
    "data.val", "data.ood_val",      # validation sets: tuning and ID-val fits, not training
    "feature_batch_size", "cache_dir", "seeds",
)
# Keys of a `c.nets.<name>` block that may change, like their LFDN counterparts: lower the
# learning rate after a divergence, extend the run, log / checkpoint more often.
CHANGEABLE_NET_KEYS = ("learning_rate", "epochs", "log_every_steps", "checkpoint_every_steps")
CHANGEABLE_HINT = f"{', '.join(CHANGEABLE_KEYS)} (a trailing '.' covers a group)."


def changeable(key: str) -> bool:
  """Whether `key` may differ from the record.

  A DLSR detector row's setting (`detectors.<row>.<name>`) is changeable when the block
  key it mirrors is (`num_epochs` like `train.num_epochs`, `ks` like `eval.ks`); its
  type, net and levels are not; other detector settings only change scoring.
  """
  parts = key.split(".")
  if parts[0] == "detectors" and len(parts) >= 3 and parts[2] in ("tune", "grid"):
    return True                    # tuning: chosen on validation sets at each evaluation
  if parts[0] == "detectors" and len(parts) == 3:
    name = parts[2]
    if name in common.DLSR_REFS:
      block, leaf = common.DLSR_REFS[name]
      return changeable(f"{block}.{leaf}")
    return name not in ("type", "net", "levels")
  if parts[0] == "nets" and len(parts) == 3:
    return parts[2] in CHANGEABLE_NET_KEYS
  return any(key == k or (k.endswith(".") and key.startswith(k)) for k in CHANGEABLE_KEYS)


def check_config(settings: dict, workdir: str, for_eval: bool = False) -> list[str]:
  """Raises `WorkdirConfigError` if a config's `settings` (`build.config_record(c)`) differ
  from the workdir's record in a guarded key (`for_eval`: the caller evaluates the workdir's
  checkpoints); returns the changeable keys that differ ('key: old -> new')."""
  return workdir_lib.check_record(settings, workdir, changeable, for_eval, CHANGEABLE_HINT)


def record_config(settings: dict, workdir: str) -> None:
  """Checks `settings` against the record, then writes them if absent or changed
  (process 0)."""
  workdir_lib.write_record(settings, workdir, changeable, CHANGEABLE_HINT)

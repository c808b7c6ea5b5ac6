"""The workdir guard: one run at a time, one configuration per workdir.

Lock: `<workdir>/.lock` holds the owner's pid, host, start time and command. It
is created atomically (O_EXCL), so a second run on the same workdir fails at
once with a message naming the owner; a lock left by a dead process on this
host is taken over with a warning; the lock is removed when the run ends,
normally or by an exception (a SIGKILL leaves it behind: the next run takes it
over). A process that already holds the lock may take it again (nested calls).
Only process 0 of a multi-process job takes it.

Config: the first run whose config passes validation records it in
`<workdir>/config.json`. Every later run (and every evaluation, through
`check_config(c, workdir, for_eval=True)`) compares its config with the
record and stops before any work if a key outside `CHANGEABLE_KEYS` differs,
listing each as `key: old -> new`. Changeable keys are written back to the
record (so it shows the latest run's values); the guarded keys never change.
Keys that exist on only one side (added or removed since the record was
written) are not compared. A record with no checkpoint behind it (a first run
that failed before training anything) is replaced by the new config, with a
warning listing what changed. `c.nets.<name>` keys in `CHANGEABLE_NET_KEYS`
(learning_rate, epochs, ...) may change like their LFDN counterparts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sys
import time
from typing import Any, Callable, Iterator

import jax
from absl import logging

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"

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


class WorkdirLocked(RuntimeError):
  """Another live process holds the workdir's lock."""


class WorkdirConfigError(ValueError):
  """The config differs from the one the workdir was started with."""


class WorkdirNotWritable(ValueError):
  """The workdir (or the output folder) cannot be written by this process."""


def check_writable(path: str, what: str = "workdir", hint: str = "") -> None:
  """Raises `WorkdirNotWritable` (one line) if `path`, or the folder that would hold it, is not
  a writable directory."""
  probe = path
  while probe and not os.path.exists(probe):
    probe = os.path.dirname(probe.rstrip(os.sep)) or "."
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirNotWritable(f"{what} {path} is a file, not a folder{hint}")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise WorkdirNotWritable(f"{what} {path} is not writable by this process"
                             + (f" ({probe} is read-only)" if probe != path else "") + hint)


# -------------------------------------------------------------------- lock --
def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # someone else's live process
    return True
  return True


def _read_lock(path: str) -> dict:
  """The lock's owner ({} if unreadable after a few tries: a crash mid-write)."""
  for _ in range(10):
    try:
      with open(path) as f:
        return json.load(f)
    except FileNotFoundError:
      raise
    except (OSError, ValueError):
      time.sleep(0.1)     # being written right now
  return {}


def _owner(info: dict) -> str:
  return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} since "
          f"{info.get('started', '?')} ({info.get('command', '?')})")


def _try_create(path: str) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  info = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
          "command": " ".join(sys.argv)[:300]}
  with os.fdopen(fd, "w") as f:
    json.dump(info, f)
  return True


def _take_over_stale(path: str, info: dict) -> None:
  """Moves a dead owner's lock aside (atomically, so only one taker wins)."""
  aside = f"{path}.stale.{os.getpid()}"
  os.replace(path, aside)
  with open(aside) as f:
    moved = f.read()
  if info and json.loads(moved or "{}") != info:   # a new owner got in first: put it back
    os.replace(aside, path)
    raise WorkdirLocked(f"{path} was just taken by another run")
  os.remove(aside)
  logging.warning("took over the stale lock %s of %s: that process is no longer running",
                  path, _owner(info) if info else "an unreadable owner")


def acquire(workdir: str) -> bool:
  """Takes `<workdir>/.lock`; False if this process already holds it (do not release).

  Raises:
    WorkdirLocked: another live process (or one on another host) holds it.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  host = socket.gethostname()
  for _ in range(3):
    if _try_create(path):
      return True
    try:
      info = _read_lock(path)
    except FileNotFoundError:
      continue              # released meanwhile: try again
    if info.get("pid") == os.getpid() and info.get("host") == host:
      return False
    if info and (info.get("host") != host or _alive(int(info.get("pid", -1)))):
      raise WorkdirLocked(
          f"workdir {workdir} is in use by {_owner(info)}. Wait for that run to finish "
          f"(or stop it), or use another --workdir. If that process is gone (its machine "
          f"crashed), delete {path}.")
    _take_over_stale(path, info)
  raise WorkdirLocked(f"could not take the lock {path}: other runs keep taking it")


def check_unlocked(workdir: str) -> None:
  """Raises `WorkdirLocked` if a live process holds `<workdir>/.lock` (writes nothing: for
  reading a workdir this process cannot write)."""
  path = os.path.join(workdir, LOCK_NAME)
  try:
    info = _read_lock(path)
  except FileNotFoundError:
    return
  if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
    return
  if info and (info.get("host") != socket.gethostname() or _alive(int(info.get("pid", -1)))):
    raise WorkdirLocked(f"workdir {workdir} is in use by {_owner(info)}. Wait for that run to "
                        "finish (or stop it) before evaluating it.")


def release(workdir: str) -> None:
  path = os.path.join(workdir, LOCK_NAME)
  with contextlib.suppress(FileNotFoundError):
    os.remove(path)


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock (process 0 only) for the `with` body."""
  took = jax.process_index() == 0 and acquire(workdir)
  try:
    yield
  finally:
    if took:
      release(workdir)


# ------------------------------------------------------------------ config --
def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _as_dict(c) -> dict:
  return json.loads(c.to_json_best_effort())


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
    from experiments.configs import common  # pylint: disable=g-import-not-at-top
    name = parts[2]
    if name in common.DLSR_REFS:
      block, leaf = common.DLSR_REFS[name]
      return changeable(f"{block}.{leaf}")
    return name not in ("type", "net", "levels")
  if parts[0] == "nets" and len(parts) == 3:
    return parts[2] in CHANGEABLE_NET_KEYS
  return any(key == k or (k.endswith(".") and key.startswith(k)) for k in CHANGEABLE_KEYS)


def differences(old: dict, new: dict) -> tuple[list[str], list[str]]:
  """(guarded, changeable) keys whose values differ, each as 'key: old -> new'."""
  a, b = _flat(old), _flat(new)
  diff = [k for k in sorted(set(a) & set(b)) if a[k] != b[k]]
  lines = {k: f"{k}: {a[k]!r} -> {b[k]!r}" for k in diff}
  return ([lines[k] for k in diff if not changeable(k)],
          [lines[k] for k in diff if changeable(k)])


def _recorded(workdir: str) -> dict | None:
  path = os.path.join(workdir, CONFIG_NAME)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise WorkdirConfigError(f"{path} is not valid JSON ({e}): restore it, or use a new "
                             "--workdir") from None


def has_checkpoints(workdir: str, depth: int = 4) -> bool:
  """Whether any run under `workdir` (itself, a net's, a row's, a seed's) saved a checkpoint."""
  if depth < 0 or not os.path.isdir(workdir):
    return False
  ckpt = os.path.join(workdir, "checkpoints")
  if os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt)):
    return True
  return any(has_checkpoints(os.path.join(workdir, n), depth - 1) for n in os.listdir(workdir)
             if not n.startswith((".", "checkpoints", "feature_cache"))
             and os.path.isdir(os.path.join(workdir, n)))


def check_config(c, workdir: str, for_eval: bool = False) -> list[str]:
  """Raises `WorkdirConfigError` if `c` differs from the workdir's record in a guarded key.

  Args:
    c: the run's config.
    workdir: the workdir (its `config.json` is the record; none: nothing to check).
    for_eval: the caller evaluates the workdir's checkpoints (changes the message).

  Returns:
    The changeable keys that differ ('key: old -> new').
  """
  old = _recorded(workdir)
  if old is None:
    if for_eval:
      logging.warning("%s has no %s: cannot check that it was trained with these settings",
                      workdir, CONFIG_NAME)
    return []
  guarded, changed = differences(old, _as_dict(c))
  if guarded and not has_checkpoints(workdir):
    logging.warning("%s records other settings but no checkpoint was written under it (an "
                    "earlier run failed before training): %s:\n  %s",
                    os.path.join(workdir, CONFIG_NAME), "not compared" if for_eval else
                    "the new settings replace them", "\n  ".join(guarded))
    return guarded + changed
  if guarded:
    what = "evaluated" if for_eval else "resumed"
    raise WorkdirConfigError(
        f"workdir {workdir} was started with other settings ({CONFIG_NAME}); it cannot be "
        f"{what} with these:\n  " + "\n  ".join(guarded) + "\nUse the recorded values, or "
        "start a fresh run with a new --workdir. Keys that may change between runs: "
        f"{', '.join(CHANGEABLE_KEYS)} (a trailing '.' covers a group).")
  return changed


def record_config(c, workdir: str) -> None:
  """Checks `c` against the record, then writes it if absent or changed (process 0)."""
  changed = check_config(c, workdir)
  if changed:
    logging.info("settings changed since the last run in %s:\n  %s", workdir,
                 "\n  ".join(changed))
  old = _recorded(workdir)
  added = old is not None and set(_flat(_as_dict(c))) != set(_flat(old))   # e.g. a new net
  if jax.process_index() == 0 and (changed or added or old is None):
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_NAME)
    with open(path + ".tmp", "w") as f:
      f.write(c.to_json_best_effort(indent=2))
    os.replace(path + ".tmp", path)


@contextlib.contextmanager
def guard(c, workdir: str, check: Callable[[Any], Any] | None = None) -> Iterator[None]:
  """Validates `c` (and runs `check(c)`, e.g. the data sources), checks that `workdir` is
  writable, locks it, checks and records the config; unlocks on exit."""
  from experiments import validate  # pylint: disable=g-import-not-at-top
  validate.validate_config(c)
  if jax.process_index() == 0:
    check_writable(workdir, hint=": use another --workdir")
  with lock(workdir):
    check_config(c, workdir)
    if check is not None:   # under the lock, before the record is written
      check(c)
    record_config(c, workdir)
    yield


def guarded(fn: Callable) -> Callable:
  """Decorator for `fn(c, workdir, ...)`: runs it inside `guard(c, workdir)`."""

  @functools.wraps(fn)
  def wrapper(c, workdir: str, *args, **kwargs):
    with guard(c, workdir):
      return fn(c, workdir, *args, **kwargs)

  return wrapper

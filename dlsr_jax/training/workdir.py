"""A run's folder guard: one run at a time, one configuration per folder (plain dicts).

Lock: `<workdir>/.lock` holds the owner's pid, host, start time and command. It
is created atomically (O_EXCL), so a second run on the same workdir fails at
once with a message naming the owner; a lock left by a dead process on this
host is taken over with a warning; the lock is removed when the run ends,
normally or by an exception (a SIGKILL leaves it behind: the next run takes it
over). A process that already holds the lock may take it again (nested calls).
Only process 0 of a multi-process job takes it.

Record: the first run records its settings (a JSON-able dict) in `<workdir>/config.json`.
Every later run compares its settings with the record (`check_record`) and stops before
any work if a key the caller's `changeable(key)` rejects differs, listing each as
`key: old -> new`. Changeable keys are written back to the record (so it shows the latest
run's values); the guarded keys never change. Keys that exist on only one side (added or
removed since the record was written) are not compared. A record with no checkpoint behind
it (a first run that failed before training anything) is replaced by the new settings, with
a warning listing what changed. Which keys may change is the caller's policy
(`experiments.workdir.changeable` for the experiment configs).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from typing import Any, Callable, Iterator, Optional

import jax
from absl import logging

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"


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
def lock(workdir: str, read_only: bool = False) -> Iterator[None]:
  """Holds the workdir's lock (process 0 only) for the `with` body. `read_only` (a reader
  that writes nothing into the workdir): only checks that no other live process holds it
  (`check_unlocked`)."""
  if read_only:
    check_unlocked(workdir)
  took = not read_only and jax.process_index() == 0 and acquire(workdir)
  try:
    yield
  finally:
    if took:
      release(workdir)


# ------------------------------------------------------------------ config --
def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  """A nested dict as {"a.b.c": leaf}."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def differences(old: dict, new: dict, changeable: Callable[[str], bool]
                ) -> tuple[list[str], list[str]]:
  """(guarded, changeable) keys whose values differ, each as 'key: old -> new'."""
  a, b = flat(old), flat(new)
  diff = [k for k in sorted(set(a) & set(b)) if a[k] != b[k]]
  lines = {k: f"{k}: {a[k]!r} -> {b[k]!r}" for k in diff}
  return ([lines[k] for k in diff if not changeable(k)],
          [lines[k] for k in diff if changeable(k)])


def recorded(workdir: str) -> Optional[dict]:
  """The settings recorded in `<workdir>/config.json` (None: no record)."""
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


def append_run(workdir: str, nets: dict, name: str = "train_runs.json") -> None:
  """Appends one call's nets (e.g. objective, wall seconds to train or restore) with the time
  to the list in `<workdir>/<name>` (written whole, then renamed: never half a file)."""
  path = os.path.join(workdir, name)
  runs = []
  if os.path.exists(path):
    with open(path) as f:
      runs = json.load(f)
  runs.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "nets": nets})
  with open(path + ".tmp", "w") as f:
    json.dump(runs, f, indent=2)
  os.replace(path + ".tmp", path)


def check_record(settings: dict, workdir: str, changeable: Callable[[str], bool],
                 for_eval: bool = False, changeable_hint: str = "") -> list[str]:
  """Raises `WorkdirConfigError` if `settings` differ from the workdir's record in a guarded
  key (one `changeable` rejects).

  Args:
    settings: the run's settings (a JSON-able nested dict).
    workdir: the workdir (its `config.json` is the record; none: nothing to check).
    changeable: whether a dotted key may differ from the record.
    for_eval: the caller evaluates the workdir's checkpoints (changes the message).
    changeable_hint: the keys that may change, for the message.

  Returns:
    The changeable keys that differ ('key: old -> new').
  """
  old = recorded(workdir)
  if old is None:
    if for_eval:
      logging.warning("%s has no %s: cannot check that it was trained with these settings",
                      workdir, CONFIG_NAME)
    return []
  guarded, changed = differences(old, settings, changeable)
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
        f"start a fresh run with a new --workdir. Keys that may change between runs: "
        f"{changeable_hint}")
  return changed


def write_record(settings: dict, workdir: str, changeable: Callable[[str], bool],
                 changeable_hint: str = "") -> None:
  """Checks `settings` against the record, then writes them if absent or changed
  (process 0)."""
  changed = check_record(settings, workdir, changeable, changeable_hint=changeable_hint)
  if changed:
    logging.info("settings changed since the last run in %s:\n  %s", workdir,
                 "\n  ".join(changed))
  old = recorded(workdir)
  added = old is not None and set(flat(settings)) != set(flat(old))   # e.g. a new net
  if jax.process_index() == 0 and (changed or added or old is None):
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_NAME)
    with open(path + ".tmp", "w") as f:
      f.write(json.dumps(settings, indent=2))
    os.replace(path + ".tmp", path)

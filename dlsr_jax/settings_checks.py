"""Config-free checks of a settings tree (a plain nested dict, e.g. an experiment config's
record): key lookup, the library's own rejections (DDIM, schedule), sources that need an
extra, and one error listing every problem. Each message starts with the caller's key
prefix (e.g. "--config."), so it names the flag to fix.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

from dlsr_jax import diffusion, extras, schedule


def get(settings: Mapping, key: str) -> tuple[bool, Any]:
  """(present, value) of a dotted key ("eval.stride") of a settings tree."""
  node = settings
  for part in key.split("."):
    if part not in node:
      return False, None
    node = node[part]
  return True, node


def strings(node: Mapping, prefix: str = "") -> Iterator[tuple[str, str]]:
  """(dotted key, value) of every string value in a dict tree."""
  for key, value in node.items():
    if hasattr(value, "items"):
      yield from strings(value, f"{prefix}{key}.")
    elif isinstance(value, str):
      yield f"{prefix}{key}", value


def extras_problems(settings: Mapping, prefix: str) -> list[str]:
  """`tfds:` sources (any key, e.g. data.train, data.ood.*, a net's outliers) without the
  `tfds` extra installed: named with the pip command, before any work."""
  if extras.installed("tfds"):
    return []
  return [f"{prefix}{key}={value!r}: {extras.missing_message('tfds', 'a tfds: source')}"
          for key, value in strings(settings) if value.startswith("tfds:")
          or (key.endswith("extra_ood") and "=tfds:" in value)]


def library_problems(e: Mapping, s: Mapping, prefix: str) -> list[str]:
  """What the library's own config dataclasses reject of the DDIM settings `e` (stride, eta,
  release_compat) and the schedule settings `s`."""
  out = []
  try:
    diffusion.DDIMConfig(stride=e["stride"], eta=e["eta"], release_compat=e["release_compat"])
  except (ValueError, TypeError) as err:
    out.append(f"{prefix}eval (DDIM): {err}")
  try:
    schedule.make_schedule(schedule.ScheduleConfig(kind=s["kind"], num_steps=s["num_steps"],
                                                   beta_start=s["beta_start"],
                                                   beta_end=s["beta_end"]))
  except (ValueError, TypeError) as err:
    out.append(f"{prefix}schedule: {err}")
  return out


def raise_problems(found: Sequence[str]) -> None:
  """Raises one ValueError listing every problem (duplicates once); nothing if none."""
  found = list(dict.fromkeys(found))
  if len(found) == 1:
    raise ValueError(f"invalid config: {found[0]}")
  if found:
    raise ValueError("invalid config:\n  " + "\n  ".join(found))

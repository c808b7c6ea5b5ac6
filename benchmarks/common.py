"""Benchmark helpers: timing, machine and version info, table formatting.

Nothing here imports jax or torch at module level, so a benchmark can set
XLA_FLAGS / thread counts before those libraries initialise.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Optional, Sequence


@dataclasses.dataclass
class Timing:
  """Wall-clock times of one benchmarked callable, in milliseconds."""
  first_ms: float            # the first call (compile / warm-up included)
  times_ms: list[float]      # the timed calls after warm-up
  last: Any = dataclasses.field(default=None, repr=False)   # the last call's result

  @property
  def median_ms(self) -> float:
    return statistics.median(self.times_ms)

  @property
  def min_ms(self) -> float:
    return min(self.times_ms)

  def as_dict(self) -> dict[str, Any]:
    return {"first_ms": self.first_ms, "median_ms": self.median_ms, "min_ms": self.min_ms,
            "times_ms": self.times_ms}


def _timed_call(fn: Callable[[], Any], sync: Callable[[Any], Any]) -> tuple[float, Any]:
  t0 = time.perf_counter()
  out = fn()
  sync(out)
  return (time.perf_counter() - t0) * 1e3, out


def time_fn(fn: Callable[[], Any], sync: Callable[[Any], Any], warmup: int,
            reps: int) -> Timing:
  """Times `sync(fn())`: one first call, `warmup - 1` more untimed calls, `reps` timed ones.

  Args:
    fn: the work; its result is passed to `sync`.
    sync: waits for the result (`jax.block_until_ready`, `torch.cuda.synchronize`).
    warmup: untimed calls, the first included (at least 1).
    reps: timed calls (at least 1).
  """
  return time_interleaved([(fn, sync)], warmup, reps)[0]


def time_interleaved(cases: Sequence[tuple[Callable[[], Any], Callable[[Any], Any]]],
                     warmup: int, reps: int) -> list[Timing]:
  """Times several `(fn, sync)` cases with their timed calls alternating (A B A B ...).

  On a machine shared with other work, alternating spreads the disturbance
  over all cases, so their ratio is steadier than with back-to-back runs.
  Each case first gets its own first call and warm-up.
  """
  firsts, lasts = [], []
  for fn, sync in cases:
    first, out = _timed_call(fn, sync)
    for _ in range(max(warmup, 1) - 1):
      _, out = _timed_call(fn, sync)
    firsts.append(first)
    lasts.append(out)
  times: list[list[float]] = [[] for _ in cases]
  for _ in range(max(reps, 1)):
    for i, (fn, sync) in enumerate(cases):
      ms, lasts[i] = _timed_call(fn, sync)
      times[i].append(ms)
  return [Timing(first_ms=f, times_ms=t, last=o) for f, t, o in zip(firsts, times, lasts)]


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo (or platform.processor())."""
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def cpu_flags_of_interest() -> list[str]:
  """The SIMD features that matter for matmuls (AVX-512, bf16, AMX)."""
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        if line.startswith("flags"):
          flags = line.split(":", 1)[1].split()
          return sorted(f for f in flags if f.startswith(("avx2", "avx512", "amx", "avx_vnni")))
  except OSError:
    pass
  return []


def num_cores() -> int:
  """CPU cores available to this process."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def load_average() -> Optional[tuple[float, float, float]]:
  try:
    return os.getloadavg()
  except OSError:
    return None


def package_versions(names: Sequence[str]) -> dict[str, str]:
  """`{name: __version__}` for importable packages (imports them)."""
  out = {}
  for name in names:
    try:
      out[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
    except ImportError:
      out[name] = "not installed"
  return out


def machine_info() -> dict[str, Any]:
  """CPU, cores, memory, load and Python platform (no jax/torch import)."""
  mem_gb = None
  try:
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
  except (ValueError, OSError, AttributeError):
    pass
  return {"cpu": cpu_model(), "cores": num_cores(), "simd": cpu_flags_of_interest(),
          "memory_gb": round(mem_gb, 1) if mem_gb else None, "load_average": load_average(),
          "python": platform.python_version(), "platform": platform.platform(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  """A plain-text table of `rows` over `columns` (floats with 4 significant digits)."""
  def cell(v):
    if isinstance(v, float):
      return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return "" if v is None else str(v)

  body = [[cell(r.get(c)) for c in columns] for r in rows]
  widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(columns)]
  line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
  sep = "  ".join("-" * w for w in widths)
  return "\n".join([line(columns), sep] + [line(b) for b in body])


def save_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON, creating the parent folder."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  with open(path, "w") as fh:
    json.dump(obj, fh, indent=2, default=str)


def machine() -> str:
  """One line: CPU, cores, JAX platform and device count, library versions."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  return (f"{cpu_model()}, {os.cpu_count()} cores, {jax.devices()[0].platform} "
          f"({jax.device_count()} device); Python {platform.python_version()}, "
          f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
          f"numpy {numpy.__version__}")


def write_section(path: str, name: str, body: str) -> None:
  """Replaces (or appends) the `name` section of a shared Markdown file."""
  begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
  text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
  block = f"{begin}\n{body.rstrip()}\n{end}"
  if begin in text and end in text:
    text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
  else:
    text = text.rstrip() + "\n\n" + block + "\n"
  with open(path, "w") as f:
    f.write(text)


def synthetic_npz_dir(path: str, names: Sequence[str], n: int = 48, size: int = 32,
                      num_classes: int = 10) -> str:
  """Writes tiny random `<name>.npz` sets (uint8 `images` [n, size, size, 3], `labels`).

  The `--quick` runs of the offline benchmarks use them in place of the real
  data folder (`../shared/data`), so a smoke run needs nothing outside the
  repository. Files already there are kept (the quick runs share one folder and
  its feature caches). Each set gets its own seed and a per-set brightness offset, so
  the sets differ a little and every metric is defined. Returns `path`.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  for i, name in enumerate(names):
    if os.path.exists(os.path.join(path, name + ".npz")):   # another quick run's: keep it
      continue
    rng = np.random.default_rng(1000 + i)
    images = rng.integers(0, 200, (n, size, size, 3)) + 5 * i
    labels = np.arange(n) % num_classes
    np.savez(os.path.join(path, name + ".npz"), images=images.astype(np.uint8),
             labels=labels.astype(np.int64))
  return path


def set_quick_flags(out_dir: Optional[str], overrides: dict[str, Any]) -> None:
  """Sets absl flags for a `--quick` run of an offline benchmark (after parsing).

  Raises a usage error without `--out_dir`: a smoke run writes only there, never
  to benchmarks/RESULTS.md or the committed logs.
  """
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  if not out_dir:
    raise app.UsageError("--quick needs --out_dir (it never writes benchmarks/RESULTS.md)")
  for name, value in overrides.items():
    setattr(flags.FLAGS, name, value)

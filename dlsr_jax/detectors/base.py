"""The `Detector` interface of post-hoc OOD methods and `make(type, **settings)`.

A detector is fitted once on the ID training set and then scores any data set; a score is
HIGHER for more OOD-looking inputs. Detector types are the modules of this package, found by
name with importlib (no registry): `make("energy", temperature=2.0)` calls
`dlsr_jax.detectors.energy.make(temperature=2.0)`.

Context arguments: besides its settings, a module's `make` may take parameters with these
names, which the experiment glue (`experiments/build.py`) fills in from the row's network:
`net` (the classifier `Net`, e.g. ODIN), `layout` (the `FeatureLayout` of "features"),
`workdir` (a directory of its own: a detector taking it trains in `fit` and is trained by
`experiments.train`, e.g. DLSR), `seed`, `write_metrics` (a training metrics callback) and
`restore_only` (True in an evaluation: `fit` restores the finished training run, read only).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import pkgutil
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

__all__ = ["CONTEXT_ARGS", "Detector", "FeatureLayout", "SetArrays", "available",
           "check_arrays", "make"]

# Row-aligned arrays of ONE data set: "features" [N, C], "logits" [N, K], "pre_logits" [N, D],
# "confidence" [N], "images" [N, H, W, 3] uint8, "labels" [N], "ids" [N].
SetArrays = Mapping[str, np.ndarray]
PyTree = Any
_NOT_DETECTORS = ("base",)   # modules of this package that are not detector types
CONTEXT_ARGS = ("net", "layout", "workdir", "seed", "write_metrics", "restore_only")


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
  """The levels of a "features" array [N, C]: their names and widths, in column order.

  Attributes:
    names: level names, e.g. ("level1", ..., "level5").
    channels: the width of each level; sum(channels) = C.
  """
  names: tuple[str, ...]
  channels: tuple[int, ...]

  def __post_init__(self):
    object.__setattr__(self, "names", tuple(self.names))
    object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
    if len(self.names) != len(self.channels) or not self.names:
      raise ValueError(f"FeatureLayout: {len(self.names)} names for "
                       f"{len(self.channels)} channel counts")


def check_arrays(arrays: SetArrays, needed: tuple[str, ...], detector: str, call: str) -> None:
  """Raises a clear ValueError unless `arrays` has every key of `needed`, row-aligned.

  Args:
    arrays: the set's arrays.
    needed: the keys the detector reads.
    detector: the detector's name (for the message).
    call: "fit" or "score" (for the message).
  """
  if not isinstance(arrays, Mapping):
    raise TypeError(f"detector {detector!r}: {call} takes a mapping of arrays (SetArrays), "
                    f"got {type(arrays).__name__}")
  missing = [k for k in needed if k not in arrays]
  if missing:
    raise ValueError(f"detector {detector!r}: {call} reads the array(s) {missing}, missing from "
                   f"the given arrays (has {sorted(arrays)}; needs {list(needed)})")
  rows = {k: int(np.shape(arrays[k])[0]) if np.ndim(arrays[k]) else None for k in needed}
  if None in rows.values() or len(set(rows.values())) > 1:
    raise ValueError(f"detector {detector!r}: {call} needs row-aligned arrays [N, ...], got "
                     f"leading dimensions {rows}")


@dataclasses.dataclass(frozen=True)
class Detector:
  """A post-hoc OOD method (higher score = more OOD).

  `fit` and `score` are wrapped at construction so that every call first checks that the
  arrays it reads are there (`check_arrays`).

  Attributes:
    name: the method's name, e.g. "energy".
    reads: the SetArrays keys `score` needs (the evaluator computes only those per set).
    fit: (ID train arrays, key) -> state, any pytree (None for detectors with nothing to fit).
    score: (state, arrays, key) -> {score name: [N] float32 numpy} (float64 where float32
      would tie scores, e.g. "confidence").
    fit_reads: the keys `fit` needs; defaults to `reads`. Differs when fitting needs more than
      scoring, e.g. the class-conditional Mahalanobis needs "labels" on the ID train set only.
    score_names: the names `score` returns, when known before scoring (e.g. DLSR's
      "mse@3", ...); None = one score (or not declared). Lets an evaluation find rows whose
      results keys collide before any fitting.
  """
  name: str
  reads: tuple[str, ...]
  fit: Callable[[SetArrays, jax.Array], PyTree]
  score: Callable[[PyTree, SetArrays, jax.Array], dict[str, np.ndarray]]
  fit_reads: Optional[tuple[str, ...]] = None
  score_names: Optional[tuple[str, ...]] = None

  def __post_init__(self):
    for field in ("reads", "fit_reads"):
      value = getattr(self, field)
      if value is None:
        continue
      if isinstance(value, str) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"Detector.{field} must be a tuple of array names, got {value!r}")
      object.__setattr__(self, field, tuple(value))
    if self.fit_reads is None:
      object.__setattr__(self, "fit_reads", self.reads)
    if not getattr(self.fit, "_checks_arrays", False):
      object.__setattr__(self, "fit", _checked_fit(self.fit, self.fit_reads, self.name))
    if not getattr(self.score, "_checks_arrays", False):
      object.__setattr__(self, "score", _checked_score(self.score, self.reads, self.name))


def _checked_fit(fit: Callable, needed: tuple[str, ...], name: str) -> Callable:
  @functools.wraps(fit)
  def wrapped(arrays: SetArrays, key: jax.Array) -> PyTree:
    check_arrays(arrays, needed, name, "fit")
    return fit(arrays, key)
  wrapped._checks_arrays = True
  return wrapped


def _checked_score(score: Callable, needed: tuple[str, ...], name: str) -> Callable:
  @functools.wraps(score)
  def wrapped(state: PyTree, arrays: SetArrays, key: jax.Array) -> dict[str, np.ndarray]:
    check_arrays(arrays, needed, name, "score")
    return score(state, arrays, key)
  wrapped._checks_arrays = True
  return wrapped


def available() -> list[str]:
  """The detector types: the public modules of `dlsr_jax.detectors` other than `base`."""
  package = importlib.import_module("dlsr_jax.detectors")
  return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                if not m.name.startswith("_") and m.name not in _NOT_DETECTORS)


def make(type: str, **settings: Any) -> Detector:  # pylint: disable=redefined-builtin
  """Builds a detector by type: `dlsr_jax.detectors.<type>.make(**settings)`.

  Args:
    type: a detector module name, e.g. "msp", "energy", "odin", "mahalanobis", "knn".
    **settings: the keyword arguments of that module's `make`.

  Returns:
    The `Detector`.

  Raises:
    ValueError: an unknown type (the message lists the available ones), or a setting value
      the module rejects.
    TypeError: a setting the module's `make` does not take, or a required one missing (the
      message names the detector and its accepted settings).
  """
  types = available()
  if not isinstance(type, str) or type not in types:
    raise ValueError(f"unknown detector type {type!r}; available: {', '.join(types)}")
  module = importlib.import_module(f"dlsr_jax.detectors.{type}")
  signature = inspect.signature(module.make)
  try:
    signature.bind(**settings)
  except TypeError as e:
    accepted = ", ".join(
        p.name + ("" if p.default is inspect.Parameter.empty else f"={p.default!r}")
        for p in signature.parameters.values())
    raise TypeError(f"detector {type!r}: {e}; accepted settings: {accepted}") from None
  return module.make(**settings)

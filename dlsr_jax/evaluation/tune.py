"""Hyperparameter tuning of a detector on validation sets only (OpenOOD's APS mode).

  best, candidates = tune("react", {"percentile": [85, 90, 95, 99]}, fit=id_val_arrays,
                          id_val=id_val_arrays, ood_val=ood_val_arrays,
                          key=jax.random.key(0), net=net)
  det = detectors.make("react", net=net, **best)

Every candidate (the product of the grid's values, in the grid's key order) is fitted on `fit`
and scored on the ID validation set `id_val` and the OOD validation set `ood_val`; the first
candidate with the highest AUROC (OOD positive) wins, as OpenOOD keeps the first best. The
caller picks the sets: neither may be a test set (the experiments refuse an OOD-val that is
one of the protocol's test sets).

Where the detector module has a `score_grid` hook (`dlsr_jax/detectors/_grid.py`: react,
ash, scale, dice, vra, energy, gen, knn, nci, vim, residual) the candidates that differ only
in its `GRID_SETTINGS` are scored in ONE jitted call vmapped over the hyperparameters, on the
ID-val and OOD-val rows at once (the detectors are batch independent); values the fit depends
on are fitted once each. Otherwise each candidate is fitted and scored on its own.
`time_grid` times both ways (the benchmark's "grid vs one by one").
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import time
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import numpy as np

from dlsr_jax import detectors as detectors_lib
from dlsr_jax.detectors.base import CONTEXT_ARGS, SetArrays
from dlsr_jax.evaluation.evaluate import fit_key, set_key
from dlsr_jax.evaluation import metrics as metrics_lib

__all__ = ["DEFAULT_GRIDS", "ID_VAL", "OOD_VAL", "OPENOOD_VAL_FIT", "candidates", "default_grid", "plain_settings",
           "score_candidates", "time_grid", "tune", "tune_and_record"]

Grid = Union[Mapping[str, Sequence[Any]], Sequence[Mapping[str, Any]]]
ID_VAL, OOD_VAL = "id_val", "ood_val"   # the set names the validation sets are keyed with

# OpenOOD v1.5's APS grids (SPEC-posthoc section 1), in its key order. "D/4" etc. are
# fractions of the feature width D (resolved by `default_grid` from net.head): OpenOOD's ViM
# grid {256, 1000} is for D = 512, and 1000 >= D leaves no residual space, which is refused here.
DEFAULT_GRIDS: dict[str, dict[str, tuple]] = {
    "energy": {"temperature": (1.0,)},
    "gen": {"gamma": (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0), "m": (10, 50, 100, 200, 500, 1000)},
    "react": {"percentile": (85.0, 90.0, 95.0, 99.0)},
    "ash": {"percentile": (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)},
    "scale": {"percentile": (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)},
    "dice": {"percentile": (90.0,)},
    "vra": {"high": (85.0, 90.0, 95.0, 99.0), "low": (1.0, 5.0, 10.0, 15.0)},
    "knn": {"k": (50, 100, 200, 500, 1000)},
    "vim": {"dim": ("D/4", "D/2", "3D/4")},
    "residual": {"dim": ("D/4", "D/2", "3D/4")},
    "fdbd": {"distance_as_normalizer": (True, False)},
    "nci": {"alpha": (1e-4, 1e-3, 1e-2, 1e-1)},
    "relation": {"pow": (1.0, 2.0, 4.0, 6.0, 8.0)},
    "nnguide": {"k": (100,)},
    "odin": {"temperature": (1.0, 10.0, 100.0, 1000.0), "eps": (0.0014, 0.0028)},
}
# The types OpenOOD fits on the ID validation split, not the ID train split (SPEC-posthoc
# section 6.2); the experiments fit them on data.val when the protocol names one.
OPENOOD_VAL_FIT = ("klm", "react", "residual", "tempscale", "vra")
_FRACTIONS = {"D/4": 0.25, "D/2": 0.5, "3D/4": 0.75}


def _module(detector_type: str):
  if detector_type not in detectors_lib.available():
    raise ValueError(f"tune: unknown detector type {detector_type!r}; available: "
                     f"{', '.join(detectors_lib.available())}")
  return importlib.import_module(f"dlsr_jax.detectors.{detector_type}")


def default_grid(detector_type: str, net: Any = None) -> dict[str, list]:
  """The type's default grid (`DEFAULT_GRIDS`; {} = defaults only), fractions of D resolved
  from `net.head` (W [D, K]) and values a k-NN bank could not hold left to `tune` to refuse."""
  _module(detector_type)
  grid = {}
  for name, values in DEFAULT_GRIDS.get(detector_type, {}).items():
    out = []
    for v in values:
      if isinstance(v, str):
        if net is None:
          raise ValueError(f"tune: the default {detector_type} grid sets {name} as {v} of the "
                           f"feature width D; pass net= (its head gives D) or a grid")
        v = max(1, int(_FRACTIONS[v] * np.shape(net.head[0])[0]))
      if v not in out:
        out.append(v)
    grid[name] = out
  return grid


def _defaults(detector_type: str) -> dict[str, Any]:
  params = inspect.signature(_module(detector_type).make).parameters.values()
  return {p.name: p.default for p in params if p.name not in CONTEXT_ARGS
          and p.default is not inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD}


def candidates(detector_type: str, settings_grid: Optional[Grid] = None,
               settings: Optional[Mapping[str, Any]] = None, *, net: Any = None
               ) -> list[dict[str, Any]]:
  """The complete settings of every candidate, in order.

  Args:
    detector_type: a module of `dlsr_jax.detectors`.
    settings_grid: {setting: [values]} (their product, the last key varying fastest), a list
      of settings dicts, or None for `default_grid`.
    settings: the row's fixed settings (a grid value overrides them).
    net: the classifier (for a default grid in fractions of D).

  Returns:
    [{setting: value}] with every setting of the type's `make` (defaults filled in), the
    context arguments (net, ...) excluded.

  Raises:
    ValueError: an empty grid or a setting the type's `make` does not take.
  """
  grid = default_grid(detector_type, net) if settings_grid is None else settings_grid
  if isinstance(grid, Mapping):
    grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
    if any(not v for v in grid.values()):
      raise ValueError(f"tune: {detector_type} grid {grid} has a setting with no values")
    rows = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
  else:
    rows = [dict(r) for r in grid]
    if not rows:
      raise ValueError(f"tune: the {detector_type} grid has no candidates")
  base = {**_defaults(detector_type), **dict(settings or {})}
  out = []
  for row in rows:
    unknown = sorted(set(row) - set(base)) or sorted(set(row) & set(CONTEXT_ARGS))
    if unknown:
      raise ValueError(f"tune: {detector_type} has no tunable setting(s) {unknown}; its "
                       f"settings: {sorted(base)}")
    out.append({**base, **row})
  return out


def _context(detector_type: str, net: Any) -> dict[str, Any]:
  params = inspect.signature(_module(detector_type).make).parameters
  return {"net": net} if "net" in params else {}


def _score_name(names: Sequence[str], detector_type: str) -> str:
  if detector_type in names:
    return detector_type
  if len(names) == 1:
    return names[0]
  raise ValueError(f"tune: detector {detector_type!r} gives several scores {list(names)}; "
                   "tuning needs one")


def _take(arrays: SetArrays, keys: Sequence[str]) -> dict[str, np.ndarray]:
  return {k: arrays[k] for k in keys}


def _one_by_one(detector_type: str, cands: Sequence[Mapping], fit: SetArrays,
                id_val: SetArrays, ood_val: SetArrays, key: jax.Array, net: Any
                ) -> list[tuple[np.ndarray, np.ndarray]]:
  out = []
  for c in cands:
    det = detectors_lib.make(detector_type, **c, **_context(detector_type, net))
    state = det.fit(_take(fit, det.fit_reads), fit_key(key, detector_type))
    both = []
    for name, arrays in ((ID_VAL, id_val), (OOD_VAL, ood_val)):
      scores = det.score(state, _take(arrays, det.reads), set_key(key, name))
      both.append(np.asarray(scores[_score_name(list(scores), detector_type)]))
    out.append(tuple(both))
  return out


def _grid_groups(module, cands: Sequence[Mapping]) -> list[list[int]]:
  """Candidate indices grouped by their settings outside the hook's GRID_SETTINGS."""
  groups: dict[tuple, list[int]] = {}
  for i, c in enumerate(cands):
    fixed = tuple((k, repr(v)) for k, v in c.items() if k not in module.GRID_SETTINGS)
    groups.setdefault(fixed, []).append(i)
  return list(groups.values())


def _with_grid(detector_type: str, cands: Sequence[Mapping], fit: SetArrays,
               id_val: SetArrays, ood_val: SetArrays, net: Any
               ) -> list[tuple[np.ndarray, np.ndarray]]:
  module = _module(detector_type)
  det = detectors_lib.make(detector_type, **cands[0], **_context(detector_type, net))
  n_id = None
  both = {}
  for k in det.reads:
    a, b = np.asarray(id_val[k]), np.asarray(ood_val[k])
    n_id = a.shape[0]
    both[k] = np.concatenate([a, b])
  fit_arrays = _take(fit, det.fit_reads)
  out: list = [None] * len(cands)
  for idx in _grid_groups(module, cands):
    scores = np.asarray(module.score_grid([cands[i] for i in idx], fit_arrays, both, net=net))
    if scores.shape != (len(idx), len(next(iter(both.values())))):
      raise RuntimeError(f"{detector_type}.score_grid returned shape {scores.shape} for "
                         f"{len(idx)} candidates")
    for j, i in enumerate(idx):
      out[i] = (scores[j, :n_id], scores[j, n_id:])
  return out


def score_candidates(detector_type: str, cands: Sequence[Mapping], fit: SetArrays,
                     id_val: SetArrays, ood_val: SetArrays, *, key: jax.Array,
                     net: Any = None, use_grid: bool = True
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
  """(ID-val scores, OOD-val scores) of each candidate (complete settings, `candidates`).

  With `use_grid` and a `score_grid` hook in the detector's module, one vmapped call per
  group of candidates differing only in the hook's GRID_SETTINGS; else fit and score each.
  Every candidate's settings are checked first (constructing its detector).
  """
  ctx = _context(detector_type, net)
  for c in cands:
    detectors_lib.make(detector_type, **c, **ctx)
  if use_grid and hasattr(_module(detector_type), "score_grid"):
    return _with_grid(detector_type, cands, fit, id_val, ood_val, net)
  return _one_by_one(detector_type, cands, fit, id_val, ood_val, key, net)


def tune(detector_type: str, settings_grid: Optional[Grid], fit: SetArrays,
         id_val: SetArrays, ood_val: SetArrays, *, key: jax.Array, net: Any = None,
         settings: Optional[Mapping[str, Any]] = None, use_grid: bool = True
         ) -> tuple[dict[str, Any], list[dict]]:
  """Chooses a detector's settings by AUROC of ID-val against OOD-val.

  Args:
    detector_type: a module of `dlsr_jax.detectors`, e.g. "react".
    settings_grid: {setting: [values]} (product), a list of settings dicts, or None for the
      type's `default_grid` (SPEC-posthoc's OpenOOD grids).
    fit: the arrays each candidate is fitted on (the row's fit set: ID train, or ID val for
      the methods OpenOOD fits on ID val).
    id_val: the ID validation arrays (never the ID test set).
    ood_val: the OOD validation arrays (never an OOD test set).
    key: the tuning key (each candidate is fitted with `fit_key(key, type)` and the sets
      scored with `set_key(key, "id_val" | "ood_val")`).
    net: the classifier, for the types that read `net.head` (or run the net, ODIN).
    settings: the row's fixed settings (e.g. knn's array="pre_logits").
    use_grid: score with the module's vmapped `score_grid` where it has one.

  Returns:
    (best settings: complete settings of the first candidate with the highest AUROC,
     candidates: [{"settings", "auroc", "aupr_in", "aupr_out", "fpr95_id_positive",
     "fpr95_ood_positive", "best"}] in grid order). A candidate the detector refuses (a
     value it rejects, a fit it cannot make, e.g. knn's k above the fit rows, or scores
     the metrics refuse) is kept with "error" (its reason) and metrics None.

  Raises:
    ValueError: an unknown type or setting, an empty grid, or every candidate refused.
  """
  cands = candidates(detector_type, settings_grid, settings, net=net)
  try:
    pairs = score_candidates(detector_type, cands, fit, id_val, ood_val, key=key, net=net,
                             use_grid=use_grid)
    errors = [None] * len(cands)
  except ValueError:   # some candidate is refused: score each alone, recording why
    pairs, errors = [], []
    for c in cands:
      try:
        pairs.append(score_candidates(detector_type, [c], fit, id_val, ood_val, key=key,
                                      net=net, use_grid=False)[0])
        errors.append(None)
      except ValueError as e:
        pairs.append(None)
        errors.append(str(e))
  rows = []
  for c, pair, error in zip(cands, pairs, errors):
    if error is None:
      try:
        m = metrics_lib.compute_all(*pair)
      except ValueError as e:
        error = f"metrics: {e}"
    if error is not None:
      m = {name: None for name in metrics_lib.METRIC_NAMES}
      m["error"] = error
    rows.append({"settings": plain_settings(c), **m, "best": False})
  ok = [i for i, r in enumerate(rows) if "error" not in r]
  if not ok:
    raise ValueError(f"tune: every {detector_type} candidate was refused; the first: "
                     f"{cands[0]}: {rows[0]['error']}")
  best = max(ok, key=lambda i: (rows[i]["auroc"], -i))
  rows[best]["best"] = True
  return dict(cands[best]), rows


def plain_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
  """JSON-friendly settings (numpy scalars as Python numbers)."""
  return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in settings.items()}


def search_record(detector_type: str, settings_grid: Optional[Grid], best: Mapping[str, Any],
                  net: Any = None) -> dict[str, Any]:
  """What a tuned row's search record says of `tune`'s choice, JSON-able: "grid" (the grid
  searched: `settings_grid` or the type's default), "chosen" (the best candidate's values of
  the grid's keys), "settings" (its complete settings)."""
  grid = settings_grid if settings_grid is not None else default_grid(detector_type, net)
  keys = list(grid) if isinstance(grid, Mapping) else list(
      dict.fromkeys(k for cand in grid for k in cand))
  settings = plain_settings(best)
  return {"grid": _json_plain(grid), "chosen": {k: settings[k] for k in keys},
          "settings": settings}


def tune_and_record(detector_type: str, settings_grid: Optional[Grid], fit: SetArrays,
                    id_val: SetArrays, ood_val: SetArrays, *, key: jax.Array, net: Any = None,
                    settings: Optional[Mapping[str, Any]] = None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
  """`tune`, timed: (the best settings, the search's record: `search_record`, "seconds",
  "candidates")."""
  t0 = time.time()
  best, cands = tune(detector_type, settings_grid, fit, id_val, ood_val, key=key, net=net,
                     settings=settings)
  return best, {**search_record(detector_type, settings_grid, best, net),
                "seconds": round(time.time() - t0, 3), "candidates": cands}


def _json_plain(value):
  """A grid as JSON (ConfigDicts and tuples as dicts and lists)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _json_plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_plain(v) for v in value]
  return value


def _accepted(detector_type: str, cands: list, fit, id_val, ood_val, key, net) -> list:
  """The candidates the detector accepts (as `tune` skips the refused ones)."""
  try:
    score_candidates(detector_type, cands, fit, id_val, ood_val, key=key, net=net,
                     use_grid=False)
    return cands
  except ValueError:
    pass
  ok = []
  for c in cands:
    try:
      score_candidates(detector_type, [c], fit, id_val, ood_val, key=key, net=net,
                       use_grid=False)
      ok.append(c)
    except ValueError:
      pass
  if not ok:
    raise ValueError(f"time_grid: every {detector_type} candidate was refused")
  return ok


def time_grid(detector_type: str, settings_grid: Optional[Grid], fit: SetArrays,
              id_val: SetArrays, ood_val: SetArrays, *, key: jax.Array, net: Any = None,
              settings: Optional[Mapping[str, Any]] = None, repeats: int = 3
              ) -> dict[str, float]:
  """Wall time of scoring the whole grid with the vmapped hook against one by one.

  Each way runs once to compile, then `repeats` times; the best time counts (fits included).
  Candidates the detector refuses (e.g. knn's k above the fit rows) are left out, as `tune`
  never chooses them.

  Returns:
    {"n_candidates" (accepted), "grid_s", "one_by_one_s", "speedup"}; grid_s is None for a
    type without a `score_grid` hook.
  """
  cands = _accepted(detector_type, candidates(detector_type, settings_grid, settings, net=net),
                    fit, id_val, ood_val, key, net)
  out: dict[str, Any] = {"n_candidates": len(cands)}
  modes = {"one_by_one_s": False}
  if hasattr(_module(detector_type), "score_grid"):
    modes["grid_s"] = True
  for name, use_grid in modes.items():
    best = np.inf
    for i in range(repeats + 1):
      t0 = time.perf_counter()
      pairs = score_candidates(detector_type, cands, fit, id_val, ood_val, key=key, net=net,
                               use_grid=use_grid)
      jax.block_until_ready([p[0] for p in pairs])
      if i:
        best = min(best, time.perf_counter() - t0)
    out[name] = round(float(best), 6)
  out.setdefault("grid_s", None)
  out["speedup"] = (None if out["grid_s"] is None
                    else round(out["one_by_one_s"] / max(out["grid_s"], 1e-9), 2))
  return out

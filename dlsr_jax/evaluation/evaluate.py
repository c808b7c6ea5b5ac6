"""The evaluator: `forward` (a net's arrays on a data set) and `evaluate` (every row fitted
once, every set scored, every metric) -> `Results`.

  net = models.load("cifar_resnet20", "resnet20-12fca82f.th")
  fit = {**evaluation.forward(net, train_images), "labels": train_labels}
  sets = {"id": evaluation.forward(net, test_images), "svhn": evaluation.forward(net, svhn)}
  dets = {"msp": detectors.make("msp"), "odin": detectors.make("odin", net=net)}
  results = evaluation.evaluate(dets, fit, {**sets, "id": {**sets["id"], "images": ...}},
                                key=jax.random.key(0))
  print(results.markdown()); results.write("out/")

A detector reads only its arrays (`Detector.reads`, `fit_reads`) from `fit` and from each set,
so `fit` and `sets` may be lazy mappings that compute an array when it is first read.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
import zlib
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import numpy as np

from dlsr_jax import xla_cpu
from dlsr_jax.data import batching
from dlsr_jax.detectors.base import Detector, SetArrays
from dlsr_jax.evaluation import report, table

__all__ = ["Results", "evaluate", "fit_key", "forward", "set_key"]

Scores = dict[str, dict[str, dict[str, np.ndarray]]]   # {key: {k | "-": {set: [N]}}}
_RECORD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95_id_positive", "fpr95_ood_positive")


# ------------------------------------------------------------------------------ forward --
# One jitted function per (model, input handling); the params are an argument, so a net with
# new weights (a fine-tune, a restored checkpoint) and every data set reuse its compilation.
_FORWARD: "collections.OrderedDict[tuple, tuple[Any, Callable]]" = collections.OrderedDict()
_FORWARD_MAX = 64


def forward_kernel(net) -> Callable:
  """The compiled function `forward` runs on each batch: `fn(params, batch) -> {output name:
  float32 [B, ...]}` (one per model and input handling, reused across weights and sets)."""
  owner = net.apply_fn if net.apply_fn is not None else net.module
  # a conv net on CPU: the XLA CPU option of the train step and ODIN (`dlsr_jax.xla_cpu`);
  # idle, it made this forward pass 1.15x (ResNet-20) and 1.49x (ResNet-18) faster
  options = xla_cpu.classifier_compiler_options(params=net.params)
  spec = (id(owner), id(net.preprocess_fn), net.resolution, net.mean, net.std,
          tuple(net.outputs), tuple(sorted((options or {}).items())))
  hit = _FORWARD.get(spec)
  if hit is not None and hit[0] is owner:
    _FORWARD.move_to_end(spec)
    return hit[1]
  images = net.resolution is not None

  def fn(params, xb):
    x = net.preprocess(xb) if images else xb.astype(np.float32)
    logits, out = net.apply(params, x)
    out = {"logits": logits, **out}
    missing = [k for k in net.outputs if k not in out]
    if missing:
      raise ValueError(f"net {net.name!r} lists outputs {list(net.outputs)} but its apply "
                       f"returns no {missing}")
    return {k: out[k].astype(np.float32) for k in net.outputs}

  jitted = jax.jit(fn, compiler_options=options)
  _FORWARD[spec] = (owner, jitted)   # keeps `owner` alive, so its id is not reused
  if len(_FORWARD) > _FORWARD_MAX:
    _FORWARD.popitem(last=False)
  return jitted


def forward(net, images: np.ndarray, batch_size: int = 256, *,
            progress: bool = False) -> dict[str, np.ndarray]:
  """Every array the net provides (`net.outputs`: "logits" [N, K], "pre_logits" [N, D], ...).

  Compiled once per net (model and input handling), whatever the data set, its size or the
  net's weights: every call runs full batches of `batch_size` rows (the last padded).

  Args:
    net: a `models.Net` (`models.load`, `models.wrap`, a head on features).
    images: uint8 [N, H, W, 3] for image nets, float features [N, C] for heads.
    batch_size: rows per call.
    progress: show a tqdm bar.

  Returns:
    {output name: float32 numpy [N, ...]}.
  """
  x = np.asarray(images)
  if net.resolution is not None and (x.ndim != 4 or x.shape[-1] != 3):
    raise ValueError(f"forward({net.name!r}): expected images [N, H, W, 3], got {x.shape}")
  if net.resolution is None and x.ndim != 2:
    raise ValueError(f"forward({net.name!r}): a head takes features [N, C], got {x.shape}")
  fn = forward_kernel(net)
  params = net.params
  out = batching.map_padded(lambda xb: fn(params, xb), x, batch_size, full_batches=True,
                            progress=progress, desc=f"{net.name} forward")
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


# ------------------------------------------------------------------------------ results --
def _name_key(key: jax.Array, name: str) -> jax.Array:
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def set_key(key: jax.Array, name: str) -> jax.Array:
  """The key a data set is scored with: `key` folded with the set's name.

  Each set draws its own noise (keyed on the set name and the example id), so a set scored
  against a copy of itself under another name gives AUROC ~0.5, not exactly 0.5.
  """
  return _name_key(key, name)


def fit_key(key: jax.Array, row: str) -> jax.Array:
  """The key a row is fitted with: `key` folded with the row's name."""
  return _name_key(key, row)


@dataclasses.dataclass
class Results:
  """Scores and metrics of every (row, score, k, set).

  Attributes:
    id_set: the name of the ID test set in `scores`.
    ood_sets: the OOD set names, in order.
    groups: {group: [ood set, ...]}, averaged as "group:<name>".
    scores: {key: {str(k) | "-": {set: [N] scores}}}; a key is a row's score
      (`table.result_keys`).
    rows: {key: {"row", "detector", "score", ...}} (the experiments add "net").
    timing: {row: {"fit_s", "score_s", "images_per_s"}}.
    metrics: {key: {k: {ood set | "group:g" | "average": {metric: fraction}}}}.
    trapezoid_aupr: the metrics also hold the trapezoidal AUPRs ("aupr_in_trapezoid",
      "aupr_out_trapezoid"; the openood_* protocols).
  """
  id_set: str
  ood_sets: tuple[str, ...]
  groups: dict[str, list[str]]
  scores: Scores
  rows: dict[str, dict]
  timing: dict[str, dict]
  metrics: dict = dataclasses.field(default=None)
  trapezoid_aupr: bool = False

  def __post_init__(self):
    if self.metrics is None:
      self.metrics = table.row_metrics(self.scores, self.id_set, self.groups,
                                       trapezoid=self.trapezoid_aupr)

  @property
  def ks(self) -> list[int]:
    return sorted({int(k) for by_k in self.scores.values() for k in by_k if k != table.NO_K})

  def to_dict(self, **extra: Any) -> dict:
    """The results dict of `dlsr_jax.evaluation.table` (what results.json holds)."""
    out = {"id_set": self.id_set, "ood_sets": list(self.ood_sets), "groups": self.groups,
           "ks": self.ks, "rows": self.rows, "metrics": self.metrics, **extra}
    out.setdefault("timing", {"rows": self.timing})
    return out

  def to_records(self) -> list[dict]:
    """One dict per (key, k, set) including "group:<g>" and "average": row, score, k (None
    when k-free), set, the five metrics (fractions), and the row's metadata."""
    records = []
    for key, by_k in self.metrics.items():
      meta = self.rows.get(key, {})
      for k, by_set in by_k.items():
        for name, m in by_set.items():
          records.append({"row": meta.get("row", key), "score": meta.get("score", key),
                          "key": key, "detector": meta.get("detector"),
                          **({"net": meta["net"]} if "net" in meta else {}),
                          "k": None if k == table.NO_K else int(k), "set": name,
                          **{c: m[c] for c in _RECORD_METRICS}})
    return records

  def markdown(self, **extra: Any) -> str:
    """The Markdown report (one table per key and k, the overview and the summary)."""
    return report.markdown(self.to_dict(**extra))

  def write(self, outdir: str, *, plots: bool = True, also: Sequence[str] = (),
            **extra: Any) -> list[str]:
    """results.{json,md,csv} (and results_openood.csv with near / far groups), scores.npz
    ("<set>/<key>": [K or 1, N]) and, with `plots`, the ROC / histogram PNGs; `extra` goes
    into results.json. Returns the files written (relative to `outdir`, listed in
    results.json "files" with `also`, files the caller writes beside them)."""
    results = self.to_dict(**extra)
    os.makedirs(outdir, exist_ok=True)
    flat = {f"{s}/{key}": np.stack([by_k[k][s] for k in by_k])
            for key, by_k in self.scores.items() for s in next(iter(by_k.values()))}
    np.savez(os.path.join(outdir, "scores.npz"), ks=np.asarray(self.ks), **flat)
    files = ["scores.npz"]
    if plots:
      files += _write_plots(results, self.scores, outdir, self.id_set, self.ood_sets)
    results["files"] = sorted({*report.result_files(results), *files, *also})
    report.write_results(results, outdir)
    return results["files"]

  def select(self, rows: Iterable[str]) -> "Results":
    """The results of the named rows only."""
    rows = set(rows)
    keys = [k for k, m in self.rows.items() if m["row"] in rows]
    return Results(self.id_set, self.ood_sets, self.groups,
                   {k: self.scores[k] for k in keys}, {k: self.rows[k] for k in keys},
                   {r: t for r, t in self.timing.items() if r in rows},
                   {k: self.metrics[k] for k in keys}, self.trapezoid_aupr)

  @classmethod
  def combine(cls, parts: Sequence["Results"], order: Optional[Sequence[str]] = None
              ) -> "Results":
    """One `Results` of several evaluations of the same sets (e.g. one per net), rows in
    `order` (row names; default: as given). Raises ValueError if two rows share a key."""
    if not parts:
      raise ValueError("Results.combine: nothing to combine")
    first = parts[0]
    scores, rows, timing, metrics = {}, {}, {}, {}
    for p in parts:
      if (p.id_set, tuple(p.ood_sets)) != (first.id_set, tuple(first.ood_sets)):
        raise ValueError(f"Results.combine: different sets {p.id_set, p.ood_sets} and "
                         f"{first.id_set, first.ood_sets}")
      dup = set(p.scores) & set(scores)
      if dup:
        raise ValueError(f"rows give the same results keys {sorted(dup)}: rename a row")
      scores.update(p.scores)
      rows.update(p.rows)
      timing.update(p.timing)
      metrics.update(p.metrics)
    keys = list(scores)
    if order is not None:
      rank = {r: i for i, r in enumerate(order)}
      keys.sort(key=lambda k: rank.get(rows[k]["row"], len(rank)))
    if len({p.trapezoid_aupr for p in parts}) > 1:
      raise ValueError("Results.combine: some parts have the trapezoidal AUPRs, some not")
    return cls(first.id_set, first.ood_sets, first.groups, {k: scores[k] for k in keys},
               {k: rows[k] for k in keys}, timing, {k: metrics[k] for k in keys},
               first.trapezoid_aupr)


def _write_plots(results: dict, scores: Scores, outdir: str, id_set: str,
                 ood_sets: Sequence[str]) -> list[str]:
  from dlsr_jax.evaluation import plots  # pylint: disable=g-import-not-at-top (matplotlib)
  files = []
  for key, by_k in results["metrics"].items():
    best = max(by_k, key=lambda k: by_k[k]["average"]["auroc"])
    title = table.score_title(results, key) + ("" if best == table.NO_K else f", k = {best}")
    plots.plot_roc_and_histograms(scores[key][best][id_set],
                                  {n: scores[key][best][n] for n in ood_sets},
                                  os.path.join(outdir, f"roc_hist_{key}.png"),
                                  title=f"{title}, ID = {results['id_set']}")
    files.append(f"roc_hist_{key}.png")
  if any(table.NO_K not in by_k for by_k in results["metrics"].values()):
    plots.plot_auroc_vs_k(results, os.path.join(outdir, "auroc_vs_k.png"))
    files.append("auroc_vs_k.png")
  return files


# ----------------------------------------------------------------------------- evaluate --
def _take(arrays: SetArrays, keys: Sequence[str]) -> dict[str, np.ndarray]:
  return {k: arrays[k] for k in keys if k in arrays}


def evaluate(detectors: Mapping[str, Detector], fit: SetArrays,
             sets: Mapping[str, SetArrays], *, key: jax.Array, id_set: str = "id",
             groups: Optional[Mapping[str, Sequence[str]]] = None,
             trapezoid_aupr: bool = False) -> Results:
  """Fits each row once on `fit`, scores every set, computes every metric.

  Args:
    detectors: {row name: Detector} (`detectors.make(...)`).
    fit: the ID training arrays (`SetArrays`: "logits", "pre_logits", "labels", ...).
    sets: {set name: SetArrays}: the ID test set under `id_set` and every OOD set.
    key: the evaluation key; row r is fitted with `fit_key(key, r)` and set s scored with
      `set_key(key, s)`, so a row's scores do not depend on the other rows or sets.
    id_set: the name of the ID test set in `sets`.
    groups: optional {group: [OOD set, ...]} averaged as "group:<name>" rows.
    trapezoid_aupr: also the trapezoidal AUPRs beside the step-wise ones (OpenOOD's).

  Returns:
    `Results`: scores and metrics of every (row, score, k, set).

  Raises:
    ValueError: no detectors, no OOD set, `id_set` missing from `sets` or a group naming an
      unknown set (all before any fitting); two rows whose results keys collide; a
      detector's own errors (missing arrays, impossible fits) as it raises them.
  """
  if not detectors:
    raise ValueError("evaluate: no detectors")
  bad = [r for r, d in detectors.items() if not isinstance(d, Detector)]
  if bad:
    raise TypeError(f"evaluate: rows {bad} are not Detectors (use detectors.make)")
  if id_set not in sets:
    raise ValueError(f"evaluate: id_set {id_set!r} is not among the sets {sorted(sets)}")
  ood = tuple(s for s in sets if s != id_set)
  if not ood:
    raise ValueError("evaluate: no OOD sets (sets holds only the ID test set)")
  groups = {g: list(m) for g, m in (groups or {}).items()}
  for g, members in groups.items():
    unknown = [m for m in members if m not in ood]
    if unknown or not members:
      raise ValueError(f"evaluate: OOD group {g!r} names unknown sets {unknown} "
                       f"(OOD sets: {list(ood)})")
  order = (id_set, *ood)
  scores: Scores = {}
  rows, timing = {}, {}
  for row, det in detectors.items():
    t0 = time.time()
    state = det.fit(_take(fit, det.fit_reads), fit_key(key, row))
    fit_s = time.time() - t0
    inputs = {s: _take(sets[s], det.reads) for s in order}
    t0, n = time.time(), 0
    per_set = {}
    for s in order:
      per_set[s] = det.score(state, inputs[s], set_key(key, s))
      n += len(next(iter(per_set[s].values())))
    score_s = time.time() - t0
    names = list(per_set[id_set])
    keys = table.result_keys(row, det.name, names)
    dup = set(keys.values()) & set(scores)
    if dup:
      raise ValueError(f"rows give the same results keys {sorted(dup)}: rename a row")
    for name in names:
      base, k = table.split_score(name)
      label = table.NO_K if k is None else str(k)
      scores.setdefault(keys[base], {})[label] = {s: np.asarray(per_set[s][name])
                                                  for s in order}
      rows[keys[base]] = {"row": row, "detector": det.name, "score": base}
    timing[row] = {"fit_s": round(fit_s, 3), "score_s": round(score_s, 3),
                   "images_per_s": round(n / max(score_s, 1e-9), 1)}
  return Results(id_set, ood, groups, scores, rows, timing, trapezoid_aupr=trapezoid_aupr)

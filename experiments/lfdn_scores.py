"""LFDN-only scoring helpers on feature arrays, for benchmark scripts (re-exported by
`experiments.evaluation`): DLSR scores of a trained LFDN workdir at every k, the configured
feature rows (Mahalanobis, KNN) fitted on given features, and the old results assembly.
"""

from __future__ import annotations

import time
import zlib
from typing import Collection, Mapping, Optional

import jax
import numpy as np

from dlsr_jax import features, parallel, schedule, scoring
from dlsr_jax import train as train_lib
from dlsr_jax.evaluation import table
from experiments import build, pipeline, runner
from experiments.pipeline import ood_sources, parse_groups


def load_feature_sets(c, workdir: str, backbone=None, with_train: bool = False):
  """Features of the ID test set ("id") and every OOD set (and "train" if asked)."""
  backbone = backbone or pipeline.load_backbone(c)
  cache = features.FeatureCache(pipeline.cache_dir(c, workdir))
  sources = [("id", c.data.test)] + sorted(ood_sources(c).items())
  if with_train:
    sources.append(("train", c.data.train))
  sets, timing = {}, {}
  for name, src in sources:
    sets[name], _, timing[name] = pipeline.source_features(c, backbone, src, cache)
  return backbone, sets, timing


def _score_fn_and_key(c, boundaries):
  """(jitted, data-sharded DLSR score function, scoring key, validated ks)."""
  sched = schedule.make_schedule(pipeline.schedule_config(c))
  ks = scoring.validate_ks(list(c.eval.ks), sched.num_steps)
  apply_fn = train_lib.lfdn_apply_fn(pipeline.model_config(c, boundaries[-1]))
  # Data-parallel over every device: params replicated, batch sharded.
  mesh = parallel.make_mesh()
  score_fn = parallel.shard_score_fn(
      scoring.make_score_fn(apply_fn, sched.alphas_cumprod, pipeline.score_config(c, boundaries)),
      mesh)
  parallel.check_divisible(c.eval.batch_size, mesh)
  return score_fn, jax.random.key(c.eval.seed), ks


def _set_key(key: jax.Array, name: str) -> jax.Array:
  # Each set draws its own noise (keyed on the set name and the example id), so a set
  # scored against a copy of itself under another name gives AUROC ~0.5, not exactly 0.5.
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def score_sets_with_params(c, sets: Mapping[str, np.ndarray], boundaries, params,
                           progress: bool = False) -> dict:
  """{set: {"mse", "mfsim": [K, N]}} of LFDN `params`, with the noise of `dlsr_scores`."""
  score_fn, key, ks = _score_fn_and_key(c, boundaries)
  strategy = c.eval.get("k_strategy", "vmap")
  return {n: scoring.score_dataset(score_fn, params, z, ks, _set_key(key, n), c.eval.batch_size,
                                   progress=progress, desc=f"score {n}", k_strategy=strategy)
          for n, z in sets.items()}


def dlsr_scores(c, workdir: str, sets: Mapping[str, np.ndarray], boundaries,
                with_lr: bool) -> tuple[dict, dict]:
  """{set: {"mse", "mfsim"[, "lr_mse", "lr_mfsim"]: [K, N]}} and scoring throughput."""
  score_fn, key, ks = _score_fn_and_key(c, boundaries)
  bs = c.eval.batch_size
  params = pipeline.restore_ema(c, workdir, boundaries[-1])
  t0 = time.time()   # compile once, outside the timed region
  warm = np.zeros((bs, boundaries[-1]), np.float32)
  warm_ks = ks if c.eval.get("k_strategy", "vmap") == "vmap" else ks[:1]
  jax.block_until_ready(score_fn(params, warm, np.arange(bs), warm_ks, key))
  compile_s = time.time() - t0
  t0 = time.time()
  final = score_sets_with_params(c, sets, boundaries, params, progress=True)
  dt = time.time() - t0
  n_total = sum(z.shape[0] for z in sets.values())
  timing = {"compile_s": round(compile_s, 3), "seconds": round(dt, 3),
            "images_per_s": round(n_total / max(dt, 1e-9), 1), "num_k": len(ks),
            "num_images": n_total}
  out = {n: dict(s) for n, s in final.items()}
  if with_lr:
    first_params = pipeline.restore_ema(c, workdir, boundaries[-1],
                                        reference_step=pipeline.lr_reference_step(c))
    first = score_sets_with_params(c, sets, boundaries, first_params)
    for n in sets:
      for t in scoring.SCORE_TYPES:
        out[n][f"lr_{t}"] = scoring.likelihood_ratio(first[n][t], final[n][t],
                                                     c.eval.lr_orientation)
  return out, timing


def _feature_rows(c) -> list[build.RowSpec]:
  """The configured rows on the backbone features that train nothing (e.g. Mahalanobis)."""
  plan = build.build(c)
  return [r for r in plan.rows.values()
          if not r.trains and r.net == build.BACKBONE and set(r.fit_reads) == {"features"}]


def baseline_scores(c, z_train: np.ndarray, sets: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
  """{set: {row: [1, N]}} of the feature rows (`_feature_rows`), fitted on `z_train`."""
  plan = build.build(c)
  out = {n: {} for n in sets}
  timing = {}
  for row in _feature_rows(c):
    t0 = time.time()
    det = build.make_detector(row, plan)
    state = det.fit({"features": z_train}, runner.fit_key(c, row.name))
    for n, z in sets.items():
      (score,) = det.score(state, {"features": z}, _set_key(runner.fit_key(c, row.name), n)
                           ).values()
      out[n][row.name] = np.asarray(score)[None, :]
    timing[row.name] = {"seconds": round(time.time() - t0, 3)}
  return out, timing


def merge_scores(*parts: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
  merged: dict = {}
  for part in parts:
    for n, s in part.items():
      merged.setdefault(n, {}).update(s)
  return merged


def assemble_results(c, scores: Mapping, settings: dict, timing: dict,
                     k_free: Optional[Collection[str]] = None) -> dict:
  """The results dict; `k_free` names the scores that do not depend on k (default: the
  feature rows of `baseline_scores`)."""
  if k_free is None:
    k_free = [r.name for r in _feature_rows(c)]
  ood_names = [n for n in scores if n not in ("id", "train")]
  ks = [int(k) for k in c.eval.ks]
  return {
      "id_set": c.data.test,
      "ood_sets": {n: ood_sources(c)[n] for n in ood_names},
      "groups": parse_groups(c),
      "ks": ks,
      "metrics": table.all_metrics(scores["id"], {n: scores[n] for n in ood_names}, ks,
                                    parse_groups(c), k_free=k_free),
      "settings": settings,
      "timing": timing,
  }



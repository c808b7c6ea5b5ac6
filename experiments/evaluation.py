"""Evaluation: DLSR scores (MSE, MFsim, LR at every k), feature baselines, metrics, outputs.

`run_evaluate` is a short composition of `load_feature_sets`, `dlsr_scores`,
`baseline_scores`, `assemble_results` and `write_outputs`; benchmark scripts
reuse the pieces (e.g. to add ablation models to the same table).
"""

from __future__ import annotations

import os
import time
import zlib
from typing import Collection, Mapping, Optional

import jax
import numpy as np
from absl import logging

from dlsr_jax import baselines, features, parallel, schedule, scoring
from dlsr_jax import train as train_lib
from dlsr_jax.evaluation import plots as plots_lib
from dlsr_jax.evaluation import report, table
from experiments import pipeline

BASELINES = ("mahalanobis", "knn")


def require_checkpoint(workdir: str) -> None:
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir) or not os.listdir(ckpt_dir):
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}: run experiments.train with "
                            "this --workdir first")


def ood_sources(c) -> dict[str, str]:
  """`c.data.ood` plus the sets given as `c.data.extra_ood` ("name=SOURCE,...")."""
  sources = dict(c.data.ood)
  for item in [i.strip() for i in str(c.data.get("extra_ood", "")).split(",") if i.strip()]:
    name, sep, src = item.partition("=")
    if not sep or not name.strip() or not src.strip():
      raise ValueError(f"data.extra_ood entry {item!r} is not NAME=SOURCE")
    if name.strip() in sources:
      raise ValueError(f"data.extra_ood names {name.strip()!r} twice or shadows data.ood."
                       f"{name.strip()}; override that with --config.data.ood.{name.strip()}=...")
    sources[name.strip()] = src.strip()
  return sources


def parse_groups(c) -> dict[str, list[str]]:
  """`c.data.groups` ({group: "a,b"}) -> {group: ["a", "b"]}, checked against the OOD sets."""
  groups = {}
  for g, members in (c.data.get("groups") or {}).items():
    names = [m.strip() for m in str(members).split(",") if m.strip()]
    unknown = [m for m in names if m not in ood_sources(c)]
    if unknown or not names:
      raise ValueError(f"data.groups.{g} = {members!r} names unknown OOD sets {unknown}; "
                       f"configured sets: {sorted(ood_sources(c))}")
    groups[g] = names
  return groups


def parse_baselines(c) -> list[str]:
  names = [b.strip() for b in str(c.eval.get("baselines", "")).split(",") if b.strip()]
  unknown = [b for b in names if b not in BASELINES]
  if unknown:
    raise ValueError(f"unknown baselines {unknown}; available: {BASELINES}")
  return names


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


def baseline_scores(c, z_train: np.ndarray, sets: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
  """{set: {baseline: [1, N]}} fitted on the ID train features, and their timing."""
  out = {n: {} for n in sets}
  timing = {}
  for name in parse_baselines(c):
    t0 = time.time()
    if name == "mahalanobis":
      model = baselines.fit_mahalanobis(z_train, shrinkage=c.eval.mahalanobis_shrinkage)
      fn = lambda z, m=model: baselines.mahalanobis_score(m, z)
    else:
      model = baselines.fit_knn(z_train, k=c.eval.knn_k)
      fn = lambda z, m=model: baselines.knn_score(m, z)
    for n, z in sets.items():
      out[n][name] = np.asarray(fn(z))[None, :]
    timing[name] = {"seconds": round(time.time() - t0, 3)}
  return out, timing


def merge_scores(*parts: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
  merged: dict = {}
  for part in parts:
    for n, s in part.items():
      merged.setdefault(n, {}).update(s)
  return merged


def assemble_results(c, scores: Mapping, settings: dict, timing: dict,
                     k_free: Collection[str] = BASELINES) -> dict:
  """The results dict; `k_free` names the scores that do not depend on k."""
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


def write_outputs(results: dict, scores: Mapping, outdir: str, plots: bool = True) -> None:
  """results.{json,md,csv}, scores.npz (raw per-sample scores) and PNG figures."""
  if jax.process_index() != 0:
    return
  paths = report.write_results(results, outdir)
  flat = {f"{n}/{t}": v for n, s in scores.items() if n != "train" for t, v in s.items()}
  np.savez(os.path.join(outdir, "scores.npz"), ks=np.asarray(results["ks"]), **flat)
  if plots:
    ood = list(results["ood_sets"])
    for t in scores["id"]:
      by_k = results["metrics"][t]
      best = max(by_k, key=lambda k: by_k[k]["average"]["auroc"])
      j = 0 if best == table.NO_K else results["ks"].index(int(best))
      title = table.SCORE_TITLES.get(t, t) + ("" if best == table.NO_K else f", k = {best}")
      plots_lib.plot_roc_and_histograms(scores["id"][t][j], {n: scores[n][t][j] for n in ood},
                                     os.path.join(outdir, f"roc_hist_{t}.png"),
                                     title=f"{title}, ID = {results['id_set']}")
    if any(table.NO_K not in by_k for by_k in results["metrics"].values()):
      plots_lib.plot_auroc_vs_k(results, os.path.join(outdir, "auroc_vs_k.png"))
  logging.info("wrote %s", paths)


def run_evaluate(c, workdir: str, outdir: Optional[str] = None) -> dict:
  """Scores the ID test set and every OOD set; writes results, tables, scores, plots.

  With `c.seeds`, every seed's LFDN (`<workdir>/seed_<s>/`) is scored on the same
  features; each seed's results go to `<outdir>/seed_<s>/`, and the top-level
  results hold the mean over seeds with the standard deviation beside it.
  """
  outdir = outdir or workdir
  if not ood_sources(c):
    raise ValueError("no OOD sets configured: set --config.data.extra_ood=NAME=SOURCE")
  runs = pipeline.seed_runs(c, workdir)
  for _, wd in runs:
    require_checkpoint(wd)
  parse_groups(c)
  use_baselines = bool(parse_baselines(c))
  backbone, sets, timing = load_feature_sets(c, workdir, with_train=use_baselines)
  bounds = pipeline.feature_boundaries(c, backbone)
  z_train = sets.pop("train", None)
  base = {}
  if use_baselines:
    base, timing["baselines"] = baseline_scores(c, z_train, sets)
  settings = pipeline.settings_summary(c, backbone, bounds)
  per_seed = []
  for cs, wd in runs:
    dlsr, timing["scoring"] = dlsr_scores(cs, wd, sets, bounds, with_lr=c.eval.lr)
    scores = merge_scores(dlsr, base)
    results = assemble_results(cs, scores, settings, dict(timing))
    seed_out = outdir if len(runs) == 1 and wd == workdir else os.path.join(
        outdir, os.path.basename(wd))
    write_outputs(results, scores, seed_out, plots=c.eval.plots)
    per_seed.append(results)
  if len(per_seed) == 1 and runs[0][1] == workdir:
    return per_seed[0]
  results = dict(per_seed[0])
  results["seeds"] = [cs.seed for cs, _ in runs]
  results["metrics"], results["metrics_std"] = table.mean_and_std(
      [r["metrics"] for r in per_seed])
  if jax.process_index() == 0:
    report.write_results(results, outdir)
    logging.info("mean +- std over seeds %s in %s", results["seeds"], outdir)
  return results

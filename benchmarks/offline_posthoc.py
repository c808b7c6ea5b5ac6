r"""Every post-hoc detector on the published CIFAR-10 ResNet-20 and ResNet-56, default and tuned.

  python -m benchmarks.offline_posthoc --data_dir=../shared/data \
      --weights_dir=../shared/weights/cifar10_resnet
  python -m benchmarks.offline_posthoc --quick --out_dir=/tmp/posthoc_quick   # seconds

Only the library is used (`models.load`, `evaluation.forward`, `detectors.make`,
`evaluation.evaluate`, `evaluation.tune`): no config, no workdir.

Data (the 32x32 npz files of `../shared/data`):
- ID training source `cifar10_train_exact` (5,170 images), split once with a fixed permutation
  (seed 0) into the fit set (90 %: every detector's statistics) and the ID validation set
  (10 %: tuning only).
- ID test `cifar10_test_exact` (1,017); near-OOD CIFAR-100 (`cifar100_test_exact`, 916); far-OOD
  iSUN, MNIST, Fashion-MNIST, DTD.
- OOD validation `intel_scenes` (natural scenes; not among the reported sets).
Default rows use SPEC-posthoc's settings with its ResNet-20 adaptations (ViM / Residual dim =
D / 2, NNGuide bank 600 with k = 100, GEN m capped at the class count, KNN k = 50); the tuned rows
choose each method's OpenOOD grid value by AUROC of ID-val against OOD-val, never a test set.
Writes `<out_dir>/posthoc.json` and (not with --quick) the `offline_posthoc` section of
`benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional, Sequence

import numpy as np
from absl import app, flags

from benchmarks.common import machine, write_section

_DATA = flags.DEFINE_string("data_dir", None, "Folder with the 32x32 .npz data sets.")
_WEIGHTS = flags.DEFINE_string("weights_dir", None, "Folder with resnet20-*.th, resnet56-*.th.")
_OUT = flags.DEFINE_string("out_dir", "/tmp/dlsr_bench_posthoc",
                           "Where posthoc.json and the cached arrays go.")
_RESULTS = flags.DEFINE_string("results_md", os.path.join(os.path.dirname(__file__), "RESULTS.md"),
                               "Markdown file whose offline_posthoc section is rewritten.")
_NETS = flags.DEFINE_list("nets", ["ResNet-20", "ResNet-56"], "Which nets.")
_DETECTORS = flags.DEFINE_list("detectors", [], "Only these detector types (default: every one).")
_VAL = flags.DEFINE_float("val_fraction", 0.1, "Share of the ID training source held out as ID-val.")
_OOD_VAL_N = flags.DEFINE_integer("ood_val_n", 1000, "Images of the OOD-val set used (a fixed "
                                  "random part; the tuning cost grows with it).")
_TUNE = flags.DEFINE_bool("tune", True, "Also tune every row with a grid on ID-val / OOD-val.")
_QUICK = flags.DEFINE_bool("quick", False,
                           "Smoke run: random-weight ResNet-20 on small synthetic sets (seconds); "
                           "never touches RESULTS.md.")

ID_TRAIN, ID_TEST, OOD_VAL = "cifar10_train_exact", "cifar10_test_exact", "intel_scenes"
NEAR = {"cifar100": "cifar100_test_exact"}
FAR = {"isun": "isun", "mnist": "mnist_test", "fashionmnist": "fashionmnist_test", "dtd": "dtd"}
NETS = {"ResNet-20": ("cifar_resnet20", "resnet20-12fca82f.th"),
        "ResNet-56": ("cifar_resnet56", "resnet56-4bfd9763.th")}

# OpenOOD v1.5 CIFAR-10 leaderboard, CrossEntropy-trained ResNet-18 (3 seeds), near / far AUROC
# (%), from `results/cifar10.csv` of github.com/Jingkang50/OpenOOD; keyed by our detector type.
OPENOOD_CIFAR10 = {
    "msp": (88.03, 90.73), "tempscale": (88.09, 90.97), "odin": (82.87, 87.96),
    "mahalanobis": (84.20, 89.72), "rmds": (89.80, 92.20), "energy": (87.58, 91.21),
    "gradnorm": (54.90, 57.55), "react": (87.11, 90.42), "maxlogit": (87.52, 91.10),
    "klm": (79.19, 82.68), "vim": (88.68, 93.48), "knn": (90.64, 92.96), "dice": (78.34, 84.23),
    "ash": (75.27, 78.49), "she": (81.54, 85.32), "gen": (88.20, 91.35),
    "relation": (89.77, 92.21), "scale": (82.55, 86.39), "fdbd": (90.42, 93.16),
    "nci": (88.86, 91.27),
}
# Not on that leaderboard: vra, residual, nnguide.
NOT_HERE = {"dlsr", "confidence"}   # DLSR reads backbone features; confidence needs its head


def default_settings(kind: str, net, num_classes: int, dim: int, n_fit: int) -> dict[str, Any]:
  """SPEC-posthoc's defaults with its ResNet-20 adaptations (§4); the NNGuide bank is capped
  at the fit set (only --quick's sets are smaller than 600)."""
  s: dict[str, Any] = {
      "knn": dict(array="pre_logits", k=50),
      "mahalanobis": dict(array="pre_logits", class_conditional=True),
      "odin": dict(temperature=1000.0, eps=0.0014),
      "gen": dict(gamma=0.1, m=min(100, num_classes)),
      "vim": dict(dim=dim // 2), "residual": dict(dim=dim // 2),
      "nnguide": dict(k=100, bank=min(600, n_fit)),
  }.get(kind, {})
  return {**s, **({"net": net} if kind in needs_net() else {})}


def needs_net() -> set[str]:
  return {"odin", "gradnorm", "react", "ash", "scale", "dice", "vra", "vim", "residual", "fdbd",
          "nci"}


# --------------------------------------------------------------------------------- data --
def load_npz(name: str, limit: int = 0) -> dict[str, np.ndarray]:
  path = os.path.join(_DATA.value, name + ".npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"benchmark data file {path} is missing (--data_dir)")
  with np.load(path) as f:
    out = {"images": f["images"], "labels": f["labels"]}
  return {k: v[:limit] for k, v in out.items()} if limit else out


def synthetic_sets(rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
  """--quick: small uint8 sets; the OOD sets are shifted so the detectors separate them."""
  def make(n, shift, labelled=True):
    x = np.clip(rng.normal(120 + shift, 40, size=(n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return {"images": x, "labels": rng.integers(0, 10, n) if labelled else np.full(n, -1)}
  return {ID_TRAIN: make(300, 0), ID_TEST: make(60, 0), OOD_VAL: make(40, 60, False),
          **{v: make(40, 30 * (i + 1), False) for i, v in enumerate([*NEAR.values(),
                                                                      *FAR.values()])}}


def split_train(train: dict[str, np.ndarray], fraction: float) -> tuple[dict, dict]:
  """(fit, id_val): a fixed permutation (seed 0) of the ID training source."""
  n = len(train["labels"])
  n_val = int(round(n * fraction))
  if not 0 < n_val < n:
    raise ValueError(f"--val_fraction {fraction} leaves no fit or no validation image of {n}")
  perm = np.random.default_rng(0).permutation(n)
  val, fit = np.sort(perm[:n_val]), np.sort(perm[n_val:])
  return ({k: v[fit] for k, v in train.items()}, {k: v[val] for k, v in train.items()})


def quick_net(data: dict):
  """--quick: a random-weight ResNet-20 whose final layer is refitted (least squares) to
  labels drawn from its own features, so every class is predicted (a random net predicts one
  class for every input, which KLM rightly refuses); the sets' labels are set to match."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from dlsr_jax import evaluation, models  # pylint: disable=g-import-not-at-top
  net = models.load("cifar_resnet20", seed=0)
  z = {n: evaluation.forward(net, d["images"])["pre_logits"] for n, d in data.items()}
  mu, sd = z[ID_TRAIN].mean(0), z[ID_TRAIN].std(0) + 1e-6
  proj = np.random.default_rng(1).normal(size=(z[ID_TRAIN].shape[1], 10))
  for n in (ID_TRAIN, ID_TEST):
    data[n]["labels"] = np.argmax(((z[n] - mu) / sd) @ proj, 1)
  target = 10.0 * np.eye(10)[data[ID_TRAIN]["labels"]]
  w = np.linalg.lstsq(z[ID_TRAIN] - mu, target - target.mean(0), rcond=None)[0]
  # The one-hot rows sum to a constant, so w @ 1 = 0: a little noise gives w full rank, else
  # W^+ (ViM / Residual's origin -b W^+) blows up.
  w = w + np.random.default_rng(2).normal(scale=0.1 * np.abs(w).mean(), size=w.shape)
  b = target.mean(0) - mu @ w
  params = jax_tree_copy(net.params)
  layer = params["params"]
  for part in net.head_path:
    layer = layer[part]
  layer["kernel"], layer["bias"] = w.astype(np.float32), b.astype(np.float32)
  return dataclasses.replace(net, params=params)


def jax_tree_copy(tree):
  return {k: jax_tree_copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


# -------------------------------------------------------------------------------- rows --
def benchmarked_types() -> list[str]:
  """Every detector type but DLSR and the confidence branch, or --detectors (checked)."""
  from dlsr_jax import detectors  # pylint: disable=g-import-not-at-top
  kinds = [k for k in detectors.available() if k not in NOT_HERE]
  if _DETECTORS.value:
    unknown = sorted(set(_DETECTORS.value) - set(kinds))
    if unknown:
      raise app.UsageError(f"--detectors: unknown or not benchmarked here {unknown}; "
                           f"choose from {kinds}")
    kinds = [k for k in kinds if k in _DETECTORS.value]
  return kinds


def default_rows(net, num_classes: int, dim: int, n_fit: int) -> dict:
  from dlsr_jax import detectors  # pylint: disable=g-import-not-at-top
  kinds = benchmarked_types()
  return {k: detectors.make(k, **default_settings(k, net, num_classes, dim, n_fit)) for k in kinds}


def summarise(results, rows: Sequence[str]) -> dict[str, dict]:
  """{row: near / far / all AUROC (%), FPR95 (OOD positive, %), fit / score seconds}."""
  out = {}
  for key, meta in results.rows.items():
    if meta["row"] not in rows:
      continue
    by_set = next(iter(results.metrics[key].values()))
    t = results.timing[meta["row"]]
    out[meta["row"]] = {
        "near_auroc": 100 * by_set["group:near"]["auroc"],
        "far_auroc": 100 * by_set["group:far"]["auroc"],
        "near_fpr95": 100 * by_set["group:near"]["fpr95_ood_positive"],
        "far_fpr95": 100 * by_set["group:far"]["fpr95_ood_positive"],
        "auroc": {s: 100 * by_set[s]["auroc"] for s in results.ood_sets},
        "fit_s": t["fit_s"], "score_s": t["score_s"]}
  return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
  ra, rb = (np.argsort(np.argsort(x)).astype(float) for x in (a, b))
  return float(np.corrcoef(ra, rb)[0, 1])


def cached_forward(net, title: str, set_name: str, images: np.ndarray) -> dict:
  """`evaluation.forward`, kept in <out_dir>/arrays/ keyed by the net, the set and a digest of
  the weights and images (a rerun skips the forward passes; --quick never caches)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from dlsr_jax import evaluation  # pylint: disable=g-import-not-at-top
  if _QUICK.value:
    return evaluation.forward(net, images)
  h = hashlib.sha256(images.tobytes())
  for leaf in jax.tree.leaves(net.params):
    h.update(np.asarray(leaf).tobytes())
  path = os.path.join(_OUT.value, "arrays",
                      f"{title.replace(' ', '_')}_{set_name}_{h.hexdigest()[:16]}.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      return dict(f)
  out = evaluation.forward(net, images)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path + ".tmp.npz", **out)
  os.replace(path + ".tmp.npz", path)
  return out


def run_net(title: str, net, data: dict, key, tune: bool) -> dict:
  """Arrays, default rows, tuned rows and their timings for one net."""
  import jax  # pylint: disable=g-import-not-at-top
  from dlsr_jax import evaluation  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  arrays = {name: {**cached_forward(net, title, name, d["images"]), **d}
            for name, d in data.items()}
  forward_s = time.time() - t0
  fit, id_val = split_train(arrays[ID_TRAIN], _VAL.value)
  ood_val = arrays[OOD_VAL]
  if len(ood_val["labels"]) > _OOD_VAL_N.value:            # a fixed random part (seed 0)
    keep = np.sort(np.random.default_rng(0).permutation(len(ood_val["labels"]))
                   [:_OOD_VAL_N.value])
    ood_val = {k: v[keep] for k, v in ood_val.items()}
  sets = {"id": arrays[ID_TEST], **{n: arrays[f] for n, f in {**NEAR, **FAR}.items()}}
  groups = {"near": list(NEAR), "far": list(FAR)}
  num_classes = arrays[ID_TEST]["logits"].shape[1]
  dim = arrays[ID_TEST]["pre_logits"].shape[1]
  accuracy = float(np.mean(arrays[ID_TEST]["logits"].argmax(1) == arrays[ID_TEST]["labels"]))
  rows = default_rows(net, num_classes, dim, len(fit["labels"]))
  results = evaluation.evaluate(rows, fit, sets, key=key, groups=groups)
  out = {"net": title, "accuracy": accuracy, "forward_s": forward_s, "fit_n": len(fit["labels"]),
         "val_n": len(id_val["labels"]), "dim": dim,
         "default": summarise(results, rows), "tuned": {}, "search": {}}
  if tune:
    out.update(tune_rows(net, rows, fit, id_val, ood_val, sets, groups, key,
                         num_classes, dim))
  jax.clear_caches()
  return out


def tune_rows(net, rows, fit, id_val, ood_val, sets, groups, key, num_classes, dim) -> dict:
  """Each row whose OpenOOD grid has 2+ candidates: chosen on ID-val vs OOD-val, then
  evaluated on the test sets; the grid's wall time with the vmapped hook and one by one."""
  from dlsr_jax import detectors, evaluation  # pylint: disable=g-import-not-at-top
  from dlsr_jax.evaluation import tune  # pylint: disable=g-import-not-at-top
  tuned, search = {}, {}
  for kind in rows:
    settings = default_settings(kind, net, num_classes, dim, len(fit["labels"]))
    context = {"net": settings.pop("net")} if "net" in settings else {}
    grid = tune.default_grid(kind, net=net)
    cands = tune.candidates(kind, grid, settings, net=net) if grid else []
    if len({json.dumps(tune.plain_settings(c), sort_keys=True, default=str)
            for c in cands}) < 2:
      continue                                   # nothing to choose (no grid, one value)
    t0 = time.time()
    best, candidates = tune.tune(kind, grid, fit, id_val, ood_val, key=key, settings=settings,
                                 **context)
    tune_s = time.time() - t0
    timing = ({} if kind == "odin" else   # ODIN: no hook; its one-by-one time is tune_s
              tune.time_grid(kind, grid, fit, id_val, ood_val, key=key, settings=settings,
                             repeats=1, **context))
    det = detectors.make(kind, **best, **context)
    res = evaluation.evaluate({kind + "@tuned": det}, fit, sets, key=key, groups=groups)
    tuned.update(summarise(res, [kind + "@tuned"]))
    varied = sorted({k for c in cands for k in c if c[k] != cands[0][k]})
    search[kind] = {"chosen": {k: best[k] for k in varied}, "tune_s": tune_s,
                    "n_candidates": len(cands), "grid_s": timing.get("grid_s"),
                    "one_by_one_s": timing.get("one_by_one_s", tune_s),
                    "candidates": candidates}
  return {"tuned": tuned, "search": search}


# ------------------------------------------------------------------------------ report --
def fmt(x: Optional[float], nd: int = 1) -> str:
  return "-" if x is None else f"{x:.{nd}f}"


def markdown(runs: list[dict], header: str) -> str:
  lines = [header, ""]
  for run in runs:
    lines += [f"### {run['net']} (ID accuracy {100 * run['accuracy']:.2f} %, D = {run['dim']}; "
              f"fit set {run['fit_n']}, ID-val {run['val_n']}; forward of every set "
              f"{run['forward_s']:.0f} s)", "",
              "| detector | near AUROC | far AUROC | near FPR95 | far FPR95 | tuned near | "
              "tuned far | chosen on ID-val / OOD-val | fit s | score s | grid s | one by one s "
              "| candidates | OpenOOD near / far |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(run["default"], key=lambda r: -run["default"][r]["far_auroc"])
    for row in order:
      d = run["default"][row]
      t = run["tuned"].get(row + "@tuned")
      s = run["search"].get(row)
      chosen = (", ".join(f"{k}={v}" for k, v in s["chosen"].items()) if s else "")
      oo = OPENOOD_CIFAR10.get(row)
      lines.append(
          f"| {row} | {fmt(d['near_auroc'], 2)} | {fmt(d['far_auroc'], 2)} | "
          f"{fmt(d['near_fpr95'])} | {fmt(d['far_fpr95'])} | "
          f"{fmt(t and t['near_auroc'], 2)} | {fmt(t and t['far_auroc'], 2)} | {chosen} | "
          f"{d['fit_s']:.2f} | {d['score_s']:.2f} | {fmt(s and s['grid_s'], 2)} | "
          f"{fmt(s and s['one_by_one_s'], 2)} | {s['n_candidates'] if s else '-'} | "
          f"{'-' if oo is None else f'{oo[0]:.2f} / {oo[1]:.2f}'} |")
    both = [r for r in run["default"] if r in OPENOOD_CIFAR10]
    lines += ["", "Spearman rank correlation with OpenOOD v1.5 (ResNet-18) over the "
              f"{len(both)} methods on both: near "
              f"{spearman([run['default'][r]['near_auroc'] for r in both], [OPENOOD_CIFAR10[r][0] for r in both]):.2f}, far "
              f"{spearman([run['default'][r]['far_auroc'] for r in both], [OPENOOD_CIFAR10[r][1] for r in both]):.2f}.",
              ""]
  return "\n".join(lines)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from dlsr_jax import models  # pylint: disable=g-import-not-at-top
  if not _QUICK.value and not (_DATA.value and _WEIGHTS.value):
    raise app.UsageError("--data_dir and --weights_dir are required (or --quick)")
  benchmarked_types()                       # a bad --detectors fails before any work
  os.makedirs(_OUT.value, exist_ok=True)
  if _QUICK.value:
    data = synthetic_sets(np.random.default_rng(0))
    nets = {"ResNet-20 (random body, fitted head)": quick_net(data)}
  else:
    names = [ID_TRAIN, ID_TEST, OOD_VAL, *NEAR.values(), *FAR.values()]
    data = {n: load_npz(n) for n in names}                       # every file checked first
    unknown = [n for n in _NETS.value if n not in NETS]
    if unknown:
      raise app.UsageError(f"--nets: unknown {unknown}; choose from {list(NETS)}")
    paths = {t: os.path.join(_WEIGHTS.value, NETS[t][1]) for t in _NETS.value}
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
      raise FileNotFoundError(f"weights files missing: {missing}")
    nets = {t: models.load(NETS[t][0], p) for t, p in paths.items()}
  t0 = time.time()
  runs = [run_net(t, net, data, jax.random.key(0), _TUNE.value) for t, net in nets.items()]
  payload = {"machine": machine(), "wall_s": time.time() - t0, "runs": runs}
  with open(os.path.join(_OUT.value, "posthoc.json"), "w") as f:
    json.dump(payload, f, indent=1, default=str)
  header = ("## Every post-hoc detector on the CIFAR-10 ResNet-20 / ResNet-56 "
            "(`benchmarks/offline_posthoc.py`)\n\n"
            f"Machine: {payload['machine']}. Wall time {payload['wall_s']:.0f} s. AUROC and "
            "FPR95 (OpenOOD's OOD-positive convention) in %, near = CIFAR-100, far = mean of iSUN, "
            "MNIST, Fashion-MNIST, DTD; ID = cifar10_test_exact. Every row, default or tuned, is "
            "fitted on the same fit set (90 % of cifar10_train_exact; OpenOOD fits ReAct, VRA, "
            "Residual, KLM and TempScale on its ID-val instead). Tuned rows: the value of the "
            "method's OpenOOD grid (`tune.DEFAULT_GRIDS`; rows whose grid has one value are not "
            "tuned) with the best AUROC of ID-val (the other 10 %) against OOD-val "
            f"({_OOD_VAL_N.value} random images of intel_scenes), never a test set. fit / score s: "
            "one evaluation, first call's compilation included. grid s / one by one s: "
            "`tune.time_grid`, every candidate fitted and scored on ID-val + OOD-val with the "
            "vmapped `score_grid` hook (one call per fit-dependent value) against one at a time, "
            "after a compile run; for ODIN (no hook) the tuning wall time.")
  text = markdown(runs, header)
  print(text)
  if not _QUICK.value:
    write_section(_RESULTS.value, "offline_posthoc", text)


if __name__ == "__main__":
  app.run(main)

"""Merges the per-benchmark JSONs of `benchmarks/gpu_suite.sh` into one `suite.json`.

  python -m benchmarks.suite_merge --out_dir=DIR [--quick]

Reads DIR/status.tsv (one "name<TAB>rc<TAB>seconds" line per benchmark run) and
DIR/<name>.json, and writes DIR/suite.json: the machine, each benchmark's exit
status, wall time and full results (or why there are none), and the headline
figures with their goals (issue 17): the LFDN train step and scoring, the
classifier train step, ODIN and the Outlier Exposure step as ratios against
PyTorch fp32 eager (> 1: dlsr_jax faster), and end-to-end DLSR scoring with
EfficientNet-B4 (goal 10,000 img/s on a GPU). Exit status 0 when every benchmark
ran and wrote its JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Optional, Sequence

if __package__ in (None, ""):   # run as a script: make the repo root importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

BENCHMARKS = ("bench_lfdn", "bench_classifier", "bench_backbone")
E2E_GOAL_IMAGES_PER_S = 10_000.0
E2E_MODEL = "efficientnet_b4"
RATIO_GOALS = {("lfdn", "train"): 2.0, ("lfdn", "score"): 2.0,
               ("classifier", "train"): 1.2, ("classifier", "odin"): 1.2,
               ("classifier", "oe"): 1.2}


def read_status(path: str) -> dict[str, dict[str, Any]]:
  """{name: {"rc", "wall_s"}} from the suite's status.tsv."""
  out = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.rstrip("\n").split("\t")
      if len(parts) != 3:
        raise ValueError(f"{path}:{n}: expected 'name<TAB>rc<TAB>seconds', got {line!r}")
      out[parts[0]] = {"rc": int(parts[1]), "wall_s": float(parts[2])}
  return out


def _load(path: str) -> Optional[dict[str, Any]]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def headline(results: dict[str, Any], quick: bool = False) -> list[dict[str, Any]]:
  """One row per headline figure: what, value, goal, met.

  The LFDN goals hold at paper size and the end-to-end goal for B4 (other rows:
  goal None); a --quick run's tiny sizes say nothing about a goal (met None).
  """
  rows = []
  lf = results.get("bench_lfdn") or {}
  for s in lf.get("summary", []):
    if s["compare"] == "head-to-head fp32" and s["part"] in ("train", "score"):
      goal = RATIO_GOALS[("lfdn", s["part"])] if s["size"] == "paper" else None
      rows.append({"what": f"LFDN {s['part']} ({s['size']} size) vs torch fp32 eager",
                   "value": s["ratio_torch_over_jax"], "goal": goal,
                   "met": None if goal is None else s["ratio_torch_over_jax"] >= goal})
  cl = results.get("bench_classifier") or {}
  for s in cl.get("summary", []):
    goal = RATIO_GOALS.get(("classifier", s["part"]))   # forward: no goal, the reference
    rows.append({"what": f"{s['model']} {s['part']} (batch {s['batch']}) vs torch eager",
                 "value": s["ratio_torch_over_jax"], "goal": goal,
                 "met": None if goal is None else s["ratio_torch_over_jax"] >= goal})
  bb = results.get("bench_backbone") or {}
  for model, e in bb.get("extra", {}).items():
    if "end_to_end_images_per_s" not in e:
      continue
    ips = e["end_to_end_images_per_s"]
    goal = E2E_GOAL_IMAGES_PER_S if model == E2E_MODEL else None
    rows.append({"what": f"end-to-end DLSR scoring, {model} (batch "
                         f"{e.get('end_to_end_batch')}), images/s",
                 "value": ips, "goal": goal, "met": None if goal is None else ips >= goal})
  if quick:
    for r in rows:
      r["met"] = None
  return rows


def merge(out_dir: str, quick: bool) -> tuple[dict[str, Any], bool]:
  """(the suite JSON, whether every benchmark ran with rc 0 and wrote its JSON)."""
  status_path = os.path.join(out_dir, "status.tsv")
  if not os.path.exists(status_path):
    raise FileNotFoundError(f"{status_path} is missing: run benchmarks/gpu_suite.sh first")
  status = read_status(status_path)
  results, runs, ok = {}, {}, True
  for name in BENCHMARKS:
    st = status.get(name)
    data = _load(os.path.join(out_dir, f"{name}.json"))
    run = {"ran": st is not None, **(st or {}), "json": data is not None}
    if st is None:
      run["error"] = "not run"
    elif st["rc"] in (124, 137):
      run["error"] = f"timed out (rc {st['rc']}); see {name}.log"
    elif st["rc"] != 0:
      run["error"] = f"failed (rc {st['rc']}); see {name}.log"
    elif data is None:
      run["error"] = f"rc 0 but {name}.json is missing"
    ok = ok and "error" not in run
    runs[name], results[name] = run, data
  suite = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": quick,
           "machine": common.machine_info(),
           "total_wall_s": sum(r.get("wall_s", 0.0) for r in runs.values()),
           "runs": runs, "headline": headline(results, quick), "results": results}
  return suite, ok


def main(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out_dir", required=True, help="the suite's output folder")
  p.add_argument("--quick", action="store_true", help="mark the suite as a smoke run")
  args = p.parse_args(argv)
  suite, ok = merge(args.out_dir, args.quick)
  path = os.path.join(args.out_dir, "suite.json")
  common.save_json(path, suite)
  print(common.format_table(suite["headline"], ["what", "value", "goal", "met"]))
  for name, r in suite["runs"].items():
    print(f"{name}: " + (r.get("error") or f"ok, {r['wall_s']:.0f} s"))
  print(f"total {suite['total_wall_s']:.0f} s; wrote {path}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

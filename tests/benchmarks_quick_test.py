"""Every benchmark script's --quick smoke run, so a benchmark cannot rot unnoticed.

`benchmarks/gpu_suite.sh --quick` runs bench_lfdn, bench_classifier and
bench_backbone (each --quick, own process) and merges their JSONs; bf16_effect
and epoch_sweep run in one process (their mains, sharing the compiled LFDN
step); the three absl offline_* scripts run in their own processes (their flags
clash in one) on tiny random data that --quick writes itself, in one shared
folder (offline_classifiers reuses offline_cifar10's feature cache). No run may
write benchmarks/RESULTS.md or benchmarks/logs/.

CI time: every run is a subprocess on one CPU device (not conftest's four fake
ones: nothing here tests sharding) sharing one persistent XLA compilation cache,
so the many identical compiles (the backbone per data set, the scorer per set,
the same nets across scripts) are paid once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _committed_outputs() -> dict[str, tuple[int, float]]:
  """(size, mtime) of benchmarks/RESULTS.md and everything in benchmarks/logs/."""
  paths = [os.path.join(BENCH, "RESULTS.md")]
  logs = os.path.join(BENCH, "logs")
  paths += [os.path.join(logs, f) for f in sorted(os.listdir(logs))]
  return {p: (os.stat(p).st_size, os.stat(p).st_mtime) for p in paths if os.path.exists(p)}


_CACHE: list[str] = []   # the module's persistent compilation cache folder


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
  """One output folder for the module; asserts the committed results were not touched."""
  before = _committed_outputs()
  _CACHE[:] = [str(tmp_path_factory.mktemp("xla_cache"))]
  yield str(tmp_path_factory.mktemp("bench_quick"))
  _CACHE.clear()
  assert _committed_outputs() == before, "a --quick run wrote benchmarks/RESULTS.md or logs/"


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="")
  if _CACHE:
    env.update(JAX_COMPILATION_CACHE_DIR=_CACHE[0], JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


def _load(path: str) -> dict:
  assert os.path.exists(path), f"{path} was not written"
  with open(path) as f:
    return json.load(f)


def test_gpu_suite_quick_runs_every_speed_benchmark(out_dir):
  suite_dir = os.path.join(out_dir, "suite")
  r = _run(["bash", os.path.join(BENCH, "gpu_suite.sh"), "--quick", f"--out_dir={suite_dir}"])
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  suite = _load(os.path.join(suite_dir, "suite.json"))
  assert suite["quick"] is True
  for name in ("bench_lfdn", "bench_classifier", "bench_backbone"):
    assert suite["runs"][name]["rc"] == 0 and suite["runs"][name]["json"], suite["runs"][name]
  lf = suite["results"]["bench_lfdn"]
  assert {(s["part"], s["compare"]) for s in lf["summary"]} >= {
      ("train", "head-to-head fp32"), ("score", "head-to-head fp32")}
  cl = suite["results"]["bench_classifier"]
  assert sorted(s["part"] for s in cl["summary"]) == ["forward", "odin", "oe", "train"]
  assert all(s["jax_ms"] > 0 and s["torch_ms"] > 0 for s in cl["summary"])
  bb = suite["results"]["bench_backbone"]
  assert bb["rows"][0]["ours_fp32"] > 0 and bb["rows"][0]["torch_fp32"] > 0
  assert bb["extra"]["efficientnet_lite0"]["end_to_end_images_per_s"] > 0
  # Every figure made it into the headline; a smoke run claims no goal.
  assert len(suite["headline"]) == 2 + 4 + 1
  assert all(h["met"] is None and h["value"] > 0 for h in suite["headline"])


def test_suite_merge_reports_a_failed_or_missing_benchmark(tmp_path):
  from benchmarks import suite_merge
  (tmp_path / "status.tsv").write_text("bench_lfdn\t1\t3.5\nbench_classifier\t124\t80\n")
  assert suite_merge.main([f"--out_dir={tmp_path}"]) == 1
  runs = _load(str(tmp_path / "suite.json"))["runs"]
  assert runs["bench_lfdn"]["error"].startswith("failed (rc 1)")
  assert runs["bench_classifier"]["error"].startswith("timed out")
  assert runs["bench_backbone"]["error"] == "not run"


def test_gpu_suite_refuses_bad_arguments_before_writing_anything():
  inside = os.path.join(BENCH, "logs", "suite_must_not_exist")
  r = _run(["bash", os.path.join(BENCH, "gpu_suite.sh"), f"--out_dir={inside}"])
  assert r.returncode == 2 and "must not be under benchmarks/" in r.stderr
  assert not os.path.exists(inside)
  r = _run(["bash", os.path.join(BENCH, "gpu_suite.sh"), "--fast"])
  assert r.returncode == 2 and "unknown argument '--fast'" in r.stderr


def test_quick_refuses_to_run_without_an_out_dir():
  from benchmarks import bench_classifier, bench_lfdn, bf16_effect
  for mod in (bench_classifier, bench_lfdn):
    with pytest.raises(SystemExit):
      mod.parse_args(["--quick"])
  with pytest.raises(SystemExit):
    bf16_effect.main(["--quick"])


def test_bf16_effect_and_epoch_sweep_quick(out_dir):
  d = os.path.join(out_dir, "lfdn_auroc")
  code = ("import sys; from benchmarks import bf16_effect, epoch_sweep; "
          f"sys.exit(bf16_effect.main(['--quick', '--out_dir={d}']) "
          f"or epoch_sweep.main(['--quick', '--out_dir={d}']))")
  r = _run([sys.executable, "-c", code])
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  res = _load(os.path.join(d, "bf16_effect.json"))["results"]
  assert sorted(res) == ["backbone fp32 / LFDN bf16", "backbone fp32 / LFDN fp32"]
  for r in res.values():
    assert 0 <= r["mfsim_k1"]["far_avg"] <= 100 and r["train_s"] > 0
  sweep = _load(os.path.join(d, "epoch_sweep.json"))
  assert sorted(sweep) == ["1", "2"]
  assert all(0 <= sweep[e]["mse_k1"]["far_avg"] <= 100 for e in sweep)


@pytest.mark.parametrize("script,section", [
    ("offline_cifar10", "offline_cifar10"),
    ("offline_classifiers", "offline_classifiers"),   # after offline_cifar10: its cache
    ("offline_objectives", "offline_objectives"),
])
def test_offline_benchmark_quick(out_dir, script, section):
  r = _run([sys.executable, "-m", f"benchmarks.{script}", "--quick", f"--out_dir={out_dir}"])
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  with open(os.path.join(out_dir, "RESULTS.md")) as f:
    text = f.read()
  begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
  assert begin in text and end in text
  body = text[text.index(begin):text.index(end)]
  assert "| stage | seconds |" in body or "### Time per stage" in body
  if script == "offline_objectives":
    log = _load(os.path.join(out_dir, "offline_objectives.json"))
    nets = {m["net"] for m in log["results"]["rows"].values()}
    assert nets == {"base", "plain"}


def test_offline_posthoc_quick(out_dir):
  """Four detector types (a k-free one, two with a vmapped grid, one fitting an eigenbasis):
  default and tuned rows, the search record with both timings, no RESULTS.md."""
  d = os.path.join(out_dir, "posthoc")
  r = _run([sys.executable, "-m", "benchmarks.offline_posthoc", "--quick", f"--out_dir={d}",
            "--detectors=msp,react,knn,vim"])
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "| detector | near AUROC |" in r.stdout and not os.path.exists(
      os.path.join(d, "RESULTS.md"))
  (run,) = _load(os.path.join(d, "posthoc.json"))["runs"]
  assert sorted(run["default"]) == ["knn", "msp", "react", "vim"]
  assert sorted(run["tuned"]) == ["knn@tuned", "react@tuned", "vim@tuned"]   # msp: no grid
  for name, rec in run["search"].items():
    assert rec["n_candidates"] == len(rec["candidates"]) >= 2, name
    assert sum(c["best"] for c in rec["candidates"]) == 1, name
    best = next(c for c in rec["candidates"] if c["best"])
    assert all(v == best["settings"][k] for k, v in rec["chosen"].items()), name
    assert rec["grid_s"] > 0 and rec["one_by_one_s"] > 0, name
  for row in (*run["default"].values(), *run["tuned"].values()):
    assert 0 <= row["near_auroc"] <= 100 and 0 <= row["far_auroc"] <= 100

"""End-to-end runs of the entry points on tiny settings (random backbone, few images)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "experiments/configs/quickstart.py:tiny"


def _run(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-5000:]}")
  return proc


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory):
  wd = tmp_path_factory.mktemp("qs")
  proc = _run("experiments.quickstart", f"--config={TINY}", f"--workdir={wd}")
  return wd, proc


HEAD_ROWS = ("head_msp", "head_odin", "head_energy", "head_mahalanobis", "head_knn")


def test_quickstart_writes_one_table_with_every_row(quickstart_dir):
  wd, proc = quickstart_dir
  for name in ("results.json", "results.md", "results.csv", "scores.npz", "config.json",
               "roc_hist_mse.png", "roc_hist_mfsim.png", "roc_hist_lr_mse.png",
               "roc_hist_knn.png", "auroc_vs_k.png", "dlsr/config.json",
               "head/net_config.json", *[f"roc_hist_{r}.png" for r in HEAD_ROWS]):
    assert (wd / name).exists(), name
  assert (wd / "dlsr" / "checkpoints").is_dir() and (wd / "head" / "checkpoints").is_dir()
  res = json.loads((wd / "results.json").read_text())
  assert res["ks"] == [2, 3]
  assert set(res["metrics"]) == {"mse", "mfsim", "lr_mse", "lr_mfsim", "mahalanobis", "knn",
                                 *HEAD_ROWS}
  assert res["rows"]["head_odin"] == {"row": "head_odin", "detector": "odin", "net": "head",
                                      "score": "odin"}
  assert res["rows"]["lr_mse"] == {"row": "dlsr", "detector": "dlsr", "net": "backbone",
                                   "score": "lr_mse"}
  assert set(res["metrics"]["knn"]) == {"-"} and set(res["metrics"]["mse"]) == {"2", "3"}
  assert 0.0 <= res["accuracy"]["head"] <= 1.0
  assert res["timing"]["rows"]["dlsr"]["images_per_s"] > 0
  for score in res["metrics"].values():
    for rows in score.values():
      assert set(rows) == {"digits59", "letters", "photos", "noise", "group:near",
                           "group:far", "average"}
      for m in rows.values():
        assert all(0.0 <= v <= 1.0 for v in m.values())
  scores = np.load(wd / "scores.npz")
  assert scores["id/mfsim"].shape == (2, 48) and scores["noise/mse"].shape == (2, 48)
  assert scores["id/head_energy"].shape == (1, 48)
  lines = (wd / "results.csv").read_text().splitlines()
  assert lines[0].startswith("net,detector,type,score,key,k,ood_set,auroc")
  assert "head,head_msp,msp,msp,head_msp,,digits59," in "\n".join(lines)
  assert "backbone,dlsr,dlsr,mse,mse,2,noise," in "\n".join(lines)
  assert len(lines) == 1 + (4 * 2 + 2 + len(HEAD_ROWS)) * 7
  assert "| head | head_msp | msp |" in proc.stdout and "total" in proc.stdout


def test_quickstart_console_is_quiet_and_metrics_are_jsonl(quickstart_dir):
  """orbax's INFO lines (several per checkpoint) go to <workdir>/log.txt, not the console;
  our stage lines stay; each training run keeps its curve in metrics.jsonl."""
  wd, proc = quickstart_dir
  log = (wd / "log.txt").read_text()
  assert "checkpoint_manager.py" in log and "row dlsr: training in" in log
  assert "checkpoint_manager.py" not in proc.stderr and "row dlsr: training in" in proc.stderr
  for run in ("dlsr", "head"):
    rows = [json.loads(line) for line in (wd / run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("step" in r and "loss" in r for r in rows), run


def test_evaluate_reuses_cache_and_takes_overrides(quickstart_dir, tmp_path):
  wd, _ = quickstart_dir
  rng = np.random.default_rng(0)
  npz = tmp_path / "extra.npz"
  np.savez(npz, images=rng.integers(0, 256, (9, 20, 20, 3), dtype=np.uint8),
           labels=np.zeros(9, np.int64))
  out = tmp_path / "eval"
  _run("experiments.evaluate", f"--config={TINY}", f"--workdir={wd}", f"--outdir={out}",
       f"--config.data.extra_ood=extra=npz:{npz},itself=offline:digits04:test",
       "--config.data.ood.photos=offline:noise", "--config.eval.ks=(3,)",
       "--config.eval.lr=False", "--config.eval.rows=dlsr")
  res = json.loads((out / "results.json").read_text())
  assert res["ks"] == [3] and set(res["metrics"]) == {"mse", "mfsim"}
  # Sanity: the ID test set evaluated against itself (its own noise draws) is at chance.
  for t in ("mse", "mfsim"):
    assert 0.3 < res["metrics"][t]["3"]["itself"]["auroc"] < 0.7
  assert res["ood_sets"]["extra"] == f"npz:{npz}"
  assert res["ood_sets"]["photos"] == "offline:noise"   # a configured set swapped by a flag
  assert res["timing"]["id"]["cached"] and res["timing"]["noise"]["cached"]
  assert not res["timing"]["extra"]["cached"]
  assert np.load(out / "scores.npz")["extra/mse"].shape == (1, 9)


def test_missing_data_file_fails_fast_with_its_name(quickstart_dir, tmp_path):
  wd, _ = quickstart_dir
  with pytest.raises(AssertionError, match="nope.npz"):
    _run("experiments.evaluate", f"--config={TINY}", f"--workdir={wd}",
         f"--outdir={tmp_path}", "--config.data.ood.noise=npz:/nope/nope.npz", timeout=120)


def test_evaluate_without_checkpoint_says_so(tmp_path):
  with pytest.raises(AssertionError, match="no checkpoint"):
    _run("experiments.evaluate", f"--config={TINY}", f"--workdir={tmp_path}", timeout=300)


def test_seeds_train_one_lfdn_each_and_evaluate_reports_mean_and_std(tmp_path):
  wd, out = tmp_path / "wd", tmp_path / "eval"
  seeds = ["--config.seeds=(0,1)", "--config.eval.ks=(3,)", "--config.eval.lr=False",
           "--config.eval.rows=dlsr,mahalanobis"]
  _run("experiments.train", f"--config={TINY}", f"--workdir={wd}", *seeds)
  for s in (0, 1):
    assert (wd / "dlsr" / f"seed_{s}" / "checkpoints").is_dir()
    assert json.loads((wd / "dlsr" / f"seed_{s}" / "config.json").read_text())["seed"] == s
  assert len(list((wd / "feature_cache").iterdir())) >= 1   # one cache for both seeds
  _run("experiments.evaluate", f"--config={TINY}", f"--workdir={wd}", f"--outdir={out}", *seeds)
  res = json.loads((out / "results.json").read_text())
  assert res["seeds"] == [0, 1]
  per_seed = [json.loads((out / f"seed_{s}" / "results.json").read_text()) for s in (0, 1)]
  a, b = (r["metrics"]["mse"]["3"]["average"]["auroc"] for r in per_seed)
  assert a != b   # two different LFDNs
  assert res["metrics"]["mse"]["3"]["average"]["auroc"] == pytest.approx((a + b) / 2)
  assert res["metrics_std"]["mse"]["3"]["average"]["auroc"] == pytest.approx(abs(a - b) / 2)
  assert res["metrics_std"]["mahalanobis"]["-"]["average"]["auroc"] == 0.0   # no training
  assert " ± " in (out / "results.md").read_text()
  assert "auroc_std" in (out / "results.csv").read_text().splitlines()[0]

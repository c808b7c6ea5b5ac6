"""`benchmarks/bench_conv_wgrad.py`: its custom_vjp convolutions and its --quick smoke run.

The weight-gradient variants it times (per-tap and im2col matrix products, the
flattened-grid products) must give the gradients `jax.grad` gives for the plain
`lax.conv_general_dilated` (strides 1 and 2, 3x3 and 1x1 kernels, groups 1 and 2,
odd and even sizes), or their timings mean nothing; and the script must run.
"""

import json
import os

import pytest

from benchmarks import bench_conv_wgrad


def test_weight_gradient_variants_equal_jax_grad():
  worst = bench_conv_wgrad.check_variants(["taps_g", "flat"])
  assert set(worst) == {"taps_g", "flat"}
  assert all(err < 1e-5 for err in worst.values()), worst


def test_check_catches_a_wrong_gradient(monkeypatch):
  real = bench_conv_wgrad.weight_grad
  monkeypatch.setattr(bench_conv_wgrad, "weight_grad",
                      lambda v, *a, **k: 1.01 * real(v, *a, **k))
  bench_conv_wgrad.conv_fn.cache_clear()
  try:
    with pytest.raises(AssertionError, match="taps_g"):
      bench_conv_wgrad.check_variants(["taps_g"])
  finally:
    bench_conv_wgrad.conv_fn.cache_clear()


def test_quick_run(tmp_path):
  assert bench_conv_wgrad.main(["--quick", f"--out_dir={tmp_path}"]) == 0
  out = json.load(open(os.path.join(tmp_path, "bench_conv_wgrad.json")))
  got = {(r["part"], r.get("what") or r.get("variant")) for r in out["results"]}
  assert ("step", "zero") in got and ("step", "torch eager") in got
  assert ("layer", "dW taps_g") in got
  assert all(r["median_ms"] > 0 for r in out["results"])

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
  # flat: the most index arithmetic; taps_g shares its slicing with taps_x and patches_g
  # (all four are checked by every full run of the script).
  worst = bench_conv_wgrad.check_variants(["flat", "taps_g"])
  assert set(worst) == {"flat", "taps_g"}
  assert all(err < 1e-5 for err in worst.values()), worst


def test_check_catches_a_wrong_gradient(monkeypatch):
  real = bench_conv_wgrad.weight_grad
  monkeypatch.setattr(bench_conv_wgrad, "weight_grad",
                      lambda v, *a, **k: 1.01 * real(v, *a, **k))
  bench_conv_wgrad.conv_fn.cache_clear()
  try:
    with pytest.raises(AssertionError, match="taps_g"):
      bench_conv_wgrad.check_variants(["taps_g"], cases=bench_conv_wgrad.CHECK_CASES[:1])
  finally:
    bench_conv_wgrad.conv_fn.cache_clear()


def test_quick_run(tmp_path):
  assert bench_conv_wgrad.main(["--quick", f"--out_dir={tmp_path}"]) == 0
  with open(os.path.join(tmp_path, "bench_conv_wgrad.json")) as f:
    out = json.load(f)
  got = {(r["part"], r.get("what") or r.get("variant")) for r in out["results"]}
  assert ("step", "zero") in got and ("step", "torch eager") in got
  assert ("layer", "dW taps_g") in got
  convs = {(r["op"], r["impl"]) for r in out["results"] if r["part"] == "convs"}
  assert convs == {(op, impl) for op in ("forward", "dx", "dW")
                   for impl in ("jax, library options", "jax, XLA defaults", "torch eager",
                                "torch channels_last")}
  assert all(r["median_ms"] > 0 for r in out["results"])


def test_classifier_compiler_options(monkeypatch):
  import jax
  import jax.numpy as jnp
  from jax import lax

  from dlsr_jax import xla_cpu
  opts = xla_cpu.classifier_compiler_options(jax.devices())
  assert opts == xla_cpu.CLASSIFIER_CPU_OPTIONS and opts is not xla_cpu.CLASSIFIER_CPU_OPTIONS
  assert xla_cpu.classifier_compiler_options() == opts    # the default backend is CPU here
  x = jnp.ones((2, 8, 8, 4))
  w = jnp.ones((3, 3, 4, 4))
  conv = jax.jit(lambda x, w: jax.grad(lambda w: jnp.sum(lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))))(w),
      compiler_options=opts)
  assert float(conv(x, w)[0, 0, 0, 0]) > 0   # XLA accepts the option and computes
  conv_init = lambda key: {"kernel": jax.random.normal(key, (3, 3, 4, 8)), "step": 0}
  dense_init = lambda key: {"w": jax.random.normal(key, (4, 8))}    # e.g. the LFDN
  assert xla_cpu.classifier_compiler_options(jax.devices(), conv_init) == opts
  assert xla_cpu.classifier_compiler_options(jax.devices(), dense_init) is None
  monkeypatch.setenv(xla_cpu.ENV_VAR, "0")
  assert xla_cpu.classifier_compiler_options(jax.devices()) is None
  assert xla_cpu.classifier_compiler_options(jax.devices(), conv_init) is None


def test_a_jaxlib_that_refuses_the_option_falls_back_to_the_defaults(monkeypatch):
  import jax

  from dlsr_jax import xla_cpu
  assert xla_cpu.options_accepted()          # this jaxlib knows it
  monkeypatch.setattr(xla_cpu, "CLASSIFIER_CPU_OPTIONS",
                      {"xla_cpu_no_such_option_dlsr": "1"})
  xla_cpu.options_accepted.cache_clear()
  try:
    assert not xla_cpu.options_accepted()
    assert xla_cpu.classifier_compiler_options(jax.devices()) is None
  finally:
    xla_cpu.options_accepted.cache_clear()

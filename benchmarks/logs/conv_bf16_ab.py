"""bf16 convolutions on XLA CPU: forward, input and weight gradient of a 3x3 conv at ResNet-20 stage
shapes (batch 128), f32 against bf16 operands (f32 accumulation), compiled with the library
option, XLA defaults and YNNPACK INDIVIDUAL_CONVOLUTION. usage: python benchmarks/logs/conv_bf16_ab.py
Result (2026-12-07, idle): bf16 is no faster anywhere (0.9-1.3x the f32 time): XLA CPU has no
AMX convolution. benchmarks/RESULTS.md, speed_issue17_ceilings."""
import time, re, numpy as np, jax, jax.numpy as jnp
from jax import lax
f32, bf = jnp.float32, jnp.bfloat16
DN = ("NHWC", "HWIO", "NHWC")
def conv(x, w, pet=None): return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN, preferred_element_type=pet)
Y = "xla_cpu_experimental_ynn_fusion_type"; P = "LIBRARY_FUSION_TYPE_"
opts = {"lib": {Y: f"{P}REDUCE"}, "default": {}, "indiv_conv": {Y: f"{P}REDUCE,{P}INDIVIDUAL_CONVOLUTION"}}
for (b, s, c) in [(128, 32, 16), (128, 16, 32), (128, 8, 64)]:
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (b, s, s, c)); w = 0.1 * jax.random.normal(k[1], (3, 3, c, c)); g = jax.random.normal(k[2], (b, s, s, c))
  fns = {
    "fwd f32": (lambda x, w, g: conv(x, w), (x, w, g)),
    "fwd bf16": (lambda x, w, g: conv(x, w, f32), (x.astype(bf), w.astype(bf), g)),
    "dx f32": (lambda x, w, g: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0], (x, w, g)),
    "dx bf16": (lambda x, w, g: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0], (x.astype(bf), w.astype(bf), g.astype(bf))),
    "dW f32": (lambda x, w, g: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0], (x, w, g)),
    "dW bf16": (lambda x, w, g: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0], (x.astype(bf), w.astype(bf), g.astype(bf))),
  }
  for on, o in opts.items():
    row = []
    for n, (f, a) in fns.items():
      cf = jax.jit(f).lower(*a).compile(o)
      jax.block_until_ready(cf(*a)); ts = []
      for _ in range(10):
        t = time.perf_counter(); jax.block_until_ready(cf(*a)); ts.append(time.perf_counter() - t)
      row.append(f"{n} {1000*np.median(ts):6.2f}")
    print((b, s, c), on, " | ".join(row), flush=True)

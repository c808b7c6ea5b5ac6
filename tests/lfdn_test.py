import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlsr_jax import lfdn


def test_paper_size_parameter_count():
  cfg = lfdn.LFDNConfig(features=720, width=1440, embed_dim=720, num_blocks=16)
  shapes = jax.eval_shape(lambda: lfdn.init_params(cfg, jax.random.key(0)))
  n = sum(x.size for x in jax.tree.leaves(shapes))
  assert abs(n / 1e6 - 86.7) < 0.1, n


def test_zero_init_head_predicts_zero_and_shapes():
  cfg = lfdn.LFDNConfig(features=12, width=16, embed_dim=8, num_blocks=2)
  p = lfdn.init_params(cfg, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (5, 12))
  out = lfdn.LFDN(cfg).apply({"params": p}, x, jnp.arange(5))
  assert out.shape == (5, 12) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)   # head and block outputs are zero-initialised
  assert np.all(np.asarray(p["block_0"]["out_dense"]["kernel"]) == 0)


def test_time_embedding_matters_and_autoencoder_has_none():
  cfg = lfdn.LFDNConfig(features=6, width=8, embed_dim=4, num_blocks=1)
  p = lfdn.init_params(cfg, jax.random.key(0))
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  p = jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape)
                                for a, k in zip(leaves, keys)])
  x = jnp.ones((2, 6))
  m = lfdn.LFDN(cfg)
  a = m.apply({"params": p}, x, jnp.array([1, 1]))
  b = m.apply({"params": p}, x, jnp.array([50, 50]))
  assert not np.allclose(a, b)
  ae = lfdn.LFDNConfig(features=6, width=8, embed_dim=4, num_blocks=1, use_time_embedding=False)
  pa = lfdn.init_params(ae, jax.random.key(0))
  assert "time_dense_0" not in pa and "emb_dense" not in pa["block_0"]
  assert lfdn.LFDN(ae).apply({"params": pa}, x).shape == (2, 6)


def test_shared_scalar_timestep_equals_per_row_timesteps():
  """A scalar t (DDIM scoring) embeds once and broadcasts: the same output as t per row."""
  cfg = lfdn.LFDNConfig(features=6, width=8, embed_dim=4, num_blocks=2)
  p = lfdn.init_params(cfg, jax.random.key(0))
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  p = jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape)
                                for a, k in zip(leaves, keys)])
  x = jax.random.normal(jax.random.key(4), (5, 6))
  m = lfdn.LFDN(cfg)
  per_row = m.apply({"params": p}, x, jnp.full((5,), 7))
  for t in (jnp.int32(7), jnp.array([7])):
    shared = m.apply({"params": p}, x, t)
    assert shared.shape == (5, 6)
    np.testing.assert_allclose(shared, per_row, rtol=1e-6, atol=1e-6)
  # Different rows still get their own timesteps.
  mixed = m.apply({"params": p}, x, jnp.array([7, 7, 7, 7, 80]))
  np.testing.assert_allclose(mixed[:4], per_row[:4], rtol=1e-6, atol=1e-6)
  assert not np.allclose(mixed[4], per_row[4])


def test_timestep_embedding_layout():
  e = lfdn.timestep_embedding(jnp.array([0.0, 3.0]), 8)
  np.testing.assert_allclose(e[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  np.testing.assert_allclose(e[1], np.r_[np.cos(3 * freqs), np.sin(3 * freqs)], rtol=1e-5)


def test_bad_inputs():
  cfg = lfdn.LFDNConfig(features=6, width=8, embed_dim=4, num_blocks=1)
  p = lfdn.init_params(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match=r"expects \[B, 6\]"):
    lfdn.LFDN(cfg).apply({"params": p}, jnp.ones((2, 5)), jnp.zeros(2))
  with pytest.raises(ValueError, match="pass timesteps"):
    lfdn.LFDN(cfg).apply({"params": p}, jnp.ones((2, 6)))
  with pytest.raises(ValueError, match="width must be even"):
    lfdn.LFDNConfig(features=6, width=7)


def test_bf16_compute_keeps_fp32_params():
  cfg = lfdn.LFDNConfig(features=6, width=8, embed_dim=4, num_blocks=1, dtype="bfloat16")
  p = lfdn.init_params(cfg, jax.random.key(0))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(p))
  out = lfdn.LFDN(cfg).apply({"params": p}, jnp.ones((2, 6)), jnp.zeros(2, jnp.int32))
  assert out.dtype == jnp.float32


def test_bf16_matmul_multiplies_in_bf16_and_stays_close_to_fp32():
  """dtype "bf16_matmul": same params; every Dense is a bf16 x bf16 -> f32 dot; f32 output."""
  kw = {"features": 6, "width": 8, "embed_dim": 4, "num_blocks": 2}
  cfg, mixed = lfdn.LFDNConfig(**kw), lfdn.LFDNConfig(**kw, dtype=lfdn.BF16_MATMUL)
  p = lfdn.init_params(cfg, jax.random.key(0))
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), p,
                                   lfdn.init_params(mixed, jax.random.key(0))))
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  p = jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape)
                                for a, k in zip(leaves, keys)])
  x, t = jax.random.normal(jax.random.key(6), (3, 6)), jnp.array([1, 40, 900])
  f32 = lfdn.LFDN(cfg).apply({"params": p}, x, t)
  fn = jax.jit(lambda p, x: lfdn.LFDN(mixed).apply({"params": p}, x, t))
  out = fn(p, x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, f32, rtol=5e-2, atol=5e-2)
  assert not np.array_equal(out, f32)   # it did round the matmul inputs
  dots = [ln for ln in fn.lower(p, x).as_text().splitlines() if "dot_general" in ln]
  assert len(dots) == 2 + 1 + 3 * 2 + 1   # time MLP, in_proj, 3 per block, out_proj
  for ln in dots:
    assert re.search(r"\(tensor<[0-9x]*bf16>, tensor<[0-9x]*bf16>\) -> tensor<[0-9x]*f32>", ln), ln


_BF16_DOT = r"\(tensor<[0-9x]*bf16>, tensor<[0-9x]*bf16>\) -> tensor<[0-9x]*f32>"


def test_bf16_matmul_gradients_are_bf16_dots_close_to_fp32():
  """Training with "bf16_matmul": the backward's two GEMMs per Dense also take bf16 operands
  (the cotangent rounded to bf16) and accumulate in f32, not JAX's default transpose (an f32
  cotangent times an upcast operand: fp32 GEMMs); the gradients stay near fp32's."""
  kw = {"features": 6, "width": 8, "embed_dim": 4, "num_blocks": 2}
  cfg, mixed = lfdn.LFDNConfig(**kw), lfdn.LFDNConfig(**kw, dtype=lfdn.BF16_MATMUL)
  p = lfdn.init_params(cfg, jax.random.key(0))
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  p = jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape)
                                for a, k in zip(leaves, keys)])
  x, t = jax.random.normal(jax.random.key(6), (3, 6)), jnp.array([1, 40, 900])

  def grad_fn(c):
    return jax.jit(jax.grad(lambda p, x: jnp.sum(lfdn.LFDN(c).apply({"params": p}, x, t) ** 2),
                            argnums=(0, 1)))

  g32, g16 = grad_fn(cfg)(p, x), grad_fn(mixed)(p, x)
  for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)):
    assert b.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(a)))
    np.testing.assert_allclose(b, a, atol=5e-2 * scale)
    assert not np.array_equal(a, b)
  dots = [ln for ln in grad_fn(mixed).lower(p, x).as_text().splitlines()
          if "dot_general" in ln]
  # 10 Dense layers: forward + 2 gradient GEMMs each, less the input's gradient of the first
  # time layer (its input is the sinusoidal embedding of t, not differentiated)
  assert len(dots) == 3 * 10 - 1, len(dots)
  for ln in dots:
    assert re.search(_BF16_DOT, ln), ln


def test_bf16_dense_gradient_stays_bf16_when_compiled():
  """XLA CPU upcasts a bf16 dot that contracts the major dimension (the weight gradient, the
  batch summed) to an fp32 GEMM, 3-5x slower; `bf16_dot_general`'s backward hands it a
  row-major lhs^T, and the compiled forward and both gradient GEMMs multiply bf16."""
  x, w = jax.random.normal(jax.random.key(0), (16, 32)), jax.random.normal(jax.random.key(1),
                                                                           (32, 24))
  dn = (((1,), (0,)), ((), ()))
  f = jax.jit(jax.grad(lambda x, w: jnp.sum(lfdn.bf16_dot_general(x, w, dn) ** 2),
                       argnums=(0, 1)))
  dx, dw = f(x, w)
  y = x @ w
  np.testing.assert_allclose(dx, 2 * y @ w.T, rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(dx))))
  np.testing.assert_allclose(dw, 2 * x.T @ y, rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(dw))))
  compiled = _compiled_dots(f.lower(x, w).compile().as_text())
  assert compiled == [["bf16", "bf16"]] * 3, compiled


def _compiled_dots(hlo):
  """Operand dtypes of every dot in compiled HLO text, one computation at a time."""
  out = []
  for body in re.findall(r"\{\n(.*?)\n\}", hlo, re.DOTALL):
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", body))
    out += [[types[o.strip().lstrip("%")] for o in operands.split(",")]
            for operands in re.findall(r"\bdot\(([^)]*)\)", body)]
  return out


def test_bf16_matmul_data_parallel_step_gathers_nothing():
  """The loop's train step over 4 devices (batch sharded): the bf16 weight gradient keeps
  each device's rows (the only collective is the gradients' all-reduce, as in fp32) and its
  GEMMs stay bf16."""
  from dlsr_jax import parallel, schedule, trainer
  from dlsr_jax.training import loop, optim
  assert jax.device_count() == 4, "conftest sets 4 fake CPU devices"
  mesh = parallel.make_mesh(jax.devices())
  abar = np.asarray(schedule.make_schedule().alphas_cumprod, np.float32).tobytes()
  cfg = lfdn.LFDNConfig(features=16, width=32, embed_dim=16, num_blocks=1,
                        dtype=lfdn.BF16_MATMUL)
  init_fn, step_fn = loop.jitted_step(*trainer.lfdn_init_and_step(cfg, optim.AdamWConfig(),
                                                                  abar), mesh)
  init_key, loop_key, bad = loop.step_inputs(0, mesh)
  batch = {"in": {"z": parallel.host_to_global(np.ones((32, 16), np.float32), mesh)}}
  hlo = step_fn.lower(init_fn(init_key), batch, loop_key, bad).compile().as_text()
  collectives = re.findall(
      r" (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(", hlo)
  assert collectives == ["all-reduce"], collectives   # fp32 compiles to this one too
  dots = _compiled_dots(hlo)
  assert dots and all(d == ["bf16", "bf16"] for d in dots), dots

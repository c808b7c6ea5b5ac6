"""LFDN: the Latent Feature Diffusion Network of DLSR (an MLP with residual blocks).

  x -> SiLU -> Dense(C -> W)
  emb = Dense(E)(SiLU(Dense(E)(sinusoidal(t, W))))         (skipped: AutoEncoder)
  N x [h = Dense_W(SiLU(GN(x))) + Dense_W(SiLU(emb));
       h = Dense_W(SiLU(GN(h)))  (zero-init, optional dropout before it); x = x + h]
  GN -> SiLU -> Dense(W -> C) (zero-init)  =  prediction of z0.

GroupNorm has a single group, epsilon 1e-5. Paper size for EfficientNet-B4
features: C = 720, W = 1440, E = 720, N = 16 (about 86.7 M parameters).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LFDNConfig:
  """Frozen, hashable LFDN hyper-parameters."""
  features: int                 # C: input/output feature size
  width: int = 1440             # W
  embed_dim: int = 720          # E
  num_blocks: int = 16          # N
  dropout: float = 0.0
  use_time_embedding: bool = True   # False: the "AutoEncoder" ablation
  gn_epsilon: float = 1e-5
  dtype: str = "float32"        # compute dtype; params stay float32 (or BF16_MATMUL)

  def __post_init__(self):
    for name in ("features", "width", "embed_dim", "num_blocks"):
      if getattr(self, name) <= 0:
        raise ValueError(f"LFDNConfig.{name} must be positive, got {getattr(self, name)}")
    if self.width % 2:
      raise ValueError(f"LFDNConfig.width must be even (sinusoidal embedding), got {self.width}")


# dtype "bf16_matmul": every Dense multiplies bfloat16 copies of its input and kernel and accumulates
# and returns float32; norms, activations, the residual stream and the DDIM arithmetic stay
# float32. Training differentiates each Dense into two more bf16 x bf16 -> f32 GEMMs (the
# cotangent rounded to bf16). On CPUs with AMX (and on GPUs/TPUs) a bf16 x bf16 -> f32 matmul
# is several times faster than fp32; a bf16 -> bf16 matmul ("bfloat16" compute) is not faster
# on XLA CPU.
BF16_MATMUL = "bf16_matmul"


def _bf16_dot(lhs, rhs, dimension_numbers, precision):
  return jax.lax.dot_general(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16),
                             dimension_numbers, precision=precision,
                             preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _bf16_dense_dot(lhs, rhs, dimension_numbers, precision):
  return _bf16_dot(lhs, rhs, dimension_numbers, precision)


def _bf16_dense_dot_fwd(lhs, rhs, dimension_numbers, precision):
  return (_bf16_dot(lhs, rhs, dimension_numbers, precision),
          (lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16)))


def _bf16_dense_dot_bwd(dimension_numbers, precision, res, g):
  # JAX's own transpose of a bf16 x bf16 -> f32 dot multiplies the f32 cotangent by an
  # upcast operand: two fp32 GEMMs. Here both gradient GEMMs are bf16 x bf16 -> f32 too (the
  # cotangent rounded to bf16, as in mixed-precision training).
  del dimension_numbers
  lhs, rhs = res
  k, n = rhs.shape
  gb = g.astype(jnp.bfloat16)
  d_lhs = jax.lax.dot_general(gb, rhs, (((g.ndim - 1,), (1,)), ((), ())), precision=precision,
                              preferred_element_type=jnp.float32)
  # The weight gradient contracts the batch, the major dimension of both operands. XLA CPU
  # runs such a bf16 dot (or one whose operand is a transpose, which it lays out column-major)
  # as an fp32 GEMM on upcast copies: 3-5x slower than bf16. A row-major copy of lhs^T, pinned
  # by a barrier on a view with the rows flattened, keeps the GEMM in bf16. The batch is split
  # into one block per device first, so that a batch sharded across devices stays sharded
  # (each device multiplies its own block; the sum over blocks is the gradient's all-reduce).
  # GPUs and TPUs multiply the transposed operand directly.
  x, gf = lhs.reshape(-1, k), gb.reshape(-1, n)
  blocks = jax.device_count()
  if jax.default_backend() != "cpu" or x.shape[0] % blocks:
    d_rhs = jax.lax.dot_general(x, gf, (((0,), (0,)), ((), ())), precision=precision,
                                preferred_element_type=jnp.float32)
  else:
    rows = x.shape[0] // blocks
    x_t = jnp.swapaxes(x.reshape(blocks, rows, k), 1, 2).reshape(blocks, k * rows)
    x_t = jax.lax.optimization_barrier(x_t).reshape(blocks, k, rows)
    d_rhs = jax.lax.dot_general(x_t, gf.reshape(blocks, rows, n),
                                (((2,), (1,)), ((0,), (0,))), precision=precision,
                                preferred_element_type=jnp.float32).sum(0)
  return d_lhs, d_rhs


_bf16_dense_dot.defvjp(_bf16_dense_dot_fwd, _bf16_dense_dot_bwd)


def bf16_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` of bfloat16 copies of both operands, accumulated in float32.

  A float32 Dense contraction (`x[..., K] @ W[K, N]`) also differentiates into bf16 x bf16 ->
  f32 GEMMs (the cotangent rounded to bf16); any other is left to JAX's autodiff."""
  del preferred_element_type
  (lc, rc), (lb, rb) = dimension_numbers
  if (tuple(lc), tuple(rc), tuple(lb), tuple(rb)) == ((lhs.ndim - 1,), (0,), (), ()) \
      and rhs.ndim == 2 and lhs.dtype == rhs.dtype == jnp.float32:
    return _bf16_dense_dot(lhs, rhs, ((tuple(lc), tuple(rc)), ((), ())), precision)
  return _bf16_dot(lhs, rhs, dimension_numbers, precision)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps.

  Args:
    t: [B] timesteps.
    dim: even embedding size.

  Returns:
    [B, dim] float32.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class ResBlock(nn.Module):
  width: int
  dropout: float
  gn_epsilon: float
  dtype: Any
  dot_general: Optional[Callable] = None

  @nn.compact
  def __call__(self, x, emb, train: bool):
    gn = lambda name: nn.GroupNorm(num_groups=1, epsilon=self.gn_epsilon,
                                   dtype=self.dtype, name=name)
    dense = lambda name, **kw: nn.Dense(self.width, dtype=self.dtype, name=name,
                                        dot_general=self.dot_general, **kw)
    h = dense("in_dense")(nn.silu(gn("in_norm")(x)))
    if emb is not None:
      h = h + dense("emb_dense")(nn.silu(emb))
    h = nn.silu(gn("out_norm")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = dense("out_dense", kernel_init=nn.initializers.zeros)(h)
    return x + h


class LFDN(nn.Module):
  """x0-predicting denoiser over pooled multi-layer features.

  Call: `LFDN(cfg).apply({"params": p}, z_t [B, C], t [B], train=False,
  rngs={"dropout": key} when training with dropout) -> z0_hat [B, C]` (float32).
  `t` may also be a scalar (or [1]) shared by the batch: its embedding is then
  computed once (same values up to float32 rounding, fewer multiply-adds).
  """
  config: LFDNConfig

  @nn.compact
  def __call__(self, x: jax.Array, t: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    cfg = self.config
    mixed = cfg.dtype == BF16_MATMUL
    dtype = jnp.dtype(jnp.float32 if mixed else cfg.dtype)
    dg = bf16_dot_general if mixed else None
    if x.ndim != 2 or x.shape[-1] != cfg.features:
      raise ValueError(f"LFDN expects [B, {cfg.features}] features, got {x.shape}")
    emb = None
    if cfg.use_time_embedding:
      if t is None:
        raise ValueError("this LFDN uses a time embedding: pass timesteps t [B]")
      t = jnp.asarray(t)
      # One timestep for the whole batch (DDIM scoring): embed it once, as one row that
      # broadcasts over the batch. The time MLP and every block's emb_dense (about a fifth
      # of the network's multiply-adds at paper size) then run on 1 row instead of B.
      t = t.reshape((1,)) if t.size == 1 else jnp.broadcast_to(t, (x.shape[0],))
      emb = timestep_embedding(t, cfg.width)
      emb = nn.Dense(cfg.embed_dim, dtype=dtype, dot_general=dg, name="time_dense_0")(emb)
      emb = nn.Dense(cfg.embed_dim, dtype=dtype, dot_general=dg, name="time_dense_1")(
          nn.silu(emb))
    h = nn.Dense(cfg.width, dtype=dtype, dot_general=dg, name="in_proj")(nn.silu(x.astype(dtype)))
    for i in range(cfg.num_blocks):
      h = ResBlock(cfg.width, cfg.dropout, cfg.gn_epsilon, dtype, dg, name=f"block_{i}")(
          h, emb, train)
    h = nn.silu(nn.GroupNorm(num_groups=1, epsilon=cfg.gn_epsilon, dtype=dtype,
                             name="out_norm")(h))
    out = nn.Dense(cfg.features, dtype=dtype, kernel_init=nn.initializers.zeros,
                   dot_general=dg, name="out_proj")(h)
    return out.astype(jnp.float32)


PAPER_NUM_BLOCKS = 16


def paper_config(features: int) -> LFDNConfig:
  """The paper's LFDN size for C = `features`: width W = 2C, embedding E = C, N = 16 blocks.

  (EfficientNet-B4's C = 720 gives the `LFDNConfig` defaults.)
  """
  return LFDNConfig(features=features, width=2 * features, embed_dim=features,
                    num_blocks=PAPER_NUM_BLOCKS)


def init_params(cfg: LFDNConfig, key: jax.Array) -> Any:
  """Initial LFDN params (float32) for a config."""
  x = jnp.zeros((1, cfg.features), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  return LFDN(cfg).init({"params": key}, x, t)["params"]


def apply_fn(cfg: LFDNConfig, train: bool = False) -> Callable[..., jax.Array]:
  """`(params, z_t, t[, dropout_key]) -> z0_hat` of an LFDN config.

  With `train`, dropout (if the config has some) is on and keyed by `dropout_key`.
  """
  model = LFDN(cfg)

  def apply(params, z_t, t, dropout_key=None):
    rngs = {"dropout": dropout_key} if (train and dropout_key is not None) else None
    return model.apply({"params": params}, z_t, t, train=train, rngs=rngs)

  return apply

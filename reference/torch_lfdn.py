"""A PyTorch LFDN, train step and DDIM scorer equivalent to dlsr_jax (benchmark baseline).

Mirrors `dlsr_jax.lfdn.LFDN`, `dlsr_jax.train.make_train_step` and
`dlsr_jax.scoring.make_score_fn` so that the benchmark compares the same
computation. `load_flax_params` copies Flax params into the torch module
(Dense kernel [in, out] -> Linear weight [out, in]; GroupNorm scale/bias ->
weight/bias), which the equivalence test uses.

Only torch and numpy are needed here; the Flax params may be any nested
mapping of array-likes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
  """Sinusoidal embedding [cos | sin] of timesteps t [B] -> [B, dim] float32."""
  half = dim // 2
  idx = torch.arange(half, dtype=torch.float32, device=t.device)
  freqs = torch.exp(-math.log(max_period) * idx / half)
  args = t.to(torch.float32)[:, None] * freqs[None, :]
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _group_norm(width: int, eps: float) -> nn.GroupNorm:
  return nn.GroupNorm(1, width, eps=eps)


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
  layer = nn.Linear(n_in, n_out)
  nn.init.zeros_(layer.weight)
  nn.init.zeros_(layer.bias)
  return layer


class ResBlock(nn.Module):
  """h = Dense(SiLU(GN(x))) + Dense(SiLU(emb)); h = Dense0(SiLU(GN(h))); x + h."""

  def __init__(self, width: int, embed_dim: Optional[int], dropout: float, eps: float):
    super().__init__()
    self.in_norm = _group_norm(width, eps)
    self.in_dense = nn.Linear(width, width)
    self.emb_dense = nn.Linear(embed_dim, width) if embed_dim else None
    self.out_norm = _group_norm(width, eps)
    self.dropout = nn.Dropout(dropout)
    self.out_dense = _zero_linear(width, width)

  def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor]) -> torch.Tensor:
    h = self.in_dense(F.silu(self.in_norm(x)))
    if self.emb_dense is not None:
      h = h + self.emb_dense(F.silu(emb))
    h = self.out_dense(self.dropout(F.silu(self.out_norm(h))))
    return x + h


class TorchLFDN(nn.Module):
  """The LFDN in PyTorch: `forward(z_t [B, C], t [B]) -> z0_hat [B, C]`.

  Takes the same hyper-parameters as `dlsr_jax.lfdn.LFDNConfig` (features,
  width, embed_dim, num_blocks, dropout, use_time_embedding, gn_epsilon).
  """

  def __init__(self, features: int, width: int = 1440, embed_dim: int = 720,
               num_blocks: int = 16, dropout: float = 0.0, use_time_embedding: bool = True,
               gn_epsilon: float = 1e-5):
    super().__init__()
    self.width = width
    self.use_time_embedding = use_time_embedding
    if use_time_embedding:
      self.time_dense_0 = nn.Linear(width, embed_dim)
      self.time_dense_1 = nn.Linear(embed_dim, embed_dim)
    self.in_proj = nn.Linear(features, width)
    emb_dim = embed_dim if use_time_embedding else None
    self.blocks = nn.ModuleList(
        [ResBlock(width, emb_dim, dropout, gn_epsilon) for _ in range(num_blocks)])
    self.out_norm = _group_norm(width, gn_epsilon)
    self.out_proj = _zero_linear(width, features)

  @classmethod
  def from_config(cls, cfg: Any) -> "TorchLFDN":
    """Builds the module from a `dlsr_jax.lfdn.LFDNConfig` (or anything alike)."""
    return cls(cfg.features, cfg.width, cfg.embed_dim, cfg.num_blocks, cfg.dropout,
               cfg.use_time_embedding, cfg.gn_epsilon)

  def forward(self, x: torch.Tensor, t: Optional[torch.Tensor] = None) -> torch.Tensor:
    emb = None
    if self.use_time_embedding:
      if t is None:
        raise ValueError("this LFDN uses a time embedding: pass timesteps t [B]")
      t = torch.broadcast_to(torch.as_tensor(t, device=x.device), (x.shape[0],))
      emb = timestep_embedding(t, self.width)
      emb = self.time_dense_1(F.silu(self.time_dense_0(emb)))
    h = self.in_proj(F.silu(x))
    for block in self.blocks:
      h = block(h, emb)
    return self.out_proj(F.silu(self.out_norm(h)))


# ---------------------------------------------------------------- Flax params


def _to_tensor(a: Any) -> torch.Tensor:
  return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def _copy_dense(layer: nn.Linear, p: Mapping[str, Any]) -> None:
  layer.weight.copy_(_to_tensor(p["kernel"]).T)
  layer.bias.copy_(_to_tensor(p["bias"]))


def _copy_norm(layer: nn.GroupNorm, p: Mapping[str, Any]) -> None:
  layer.weight.copy_(_to_tensor(p["scale"]))
  layer.bias.copy_(_to_tensor(p["bias"]))


@torch.no_grad()
def load_flax_params(model: TorchLFDN, params: Mapping[str, Any]) -> TorchLFDN:
  """Copies Flax LFDN params (the `params` collection) into `model`, in place."""
  if model.use_time_embedding:
    _copy_dense(model.time_dense_0, params["time_dense_0"])
    _copy_dense(model.time_dense_1, params["time_dense_1"])
  _copy_dense(model.in_proj, params["in_proj"])
  for i, block in enumerate(model.blocks):
    p = params[f"block_{i}"]
    _copy_norm(block.in_norm, p["in_norm"])
    _copy_dense(block.in_dense, p["in_dense"])
    if block.emb_dense is not None:
      _copy_dense(block.emb_dense, p["emb_dense"])
    _copy_norm(block.out_norm, p["out_norm"])
    _copy_dense(block.out_dense, p["out_dense"])
  _copy_norm(model.out_norm, params["out_norm"])
  _copy_dense(model.out_proj, params["out_proj"])
  return model


# ---------------------------------------------------------------- training


def ema_decay_at(n: int, decay: float) -> float:
  """EMA decay with warm-up: min(decay, (1 + n) / (10 + n)) at update n."""
  return min(decay, (1.0 + n) / (10.0 + n))


class TorchTrainer:
  """AdamW + EMA x0-prediction training, as `dlsr_jax.train.make_train_step`.

  `step(z0 [B, C]) -> (loss, grad_norm)` (tensors, not synchronised). The
  timestep and noise come from the trainer's own generator, so the random
  draws differ from JAX's; the computation is the same.
  """

  def __init__(self, model: TorchLFDN, alphas_cumprod: np.ndarray, learning_rate: float = 1e-4,
               weight_decay: float = 1e-4, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8, ema_decay: float = 0.9999, seed: int = 0,
               compile_model: bool = False, fused: Optional[bool] = None):
    self.model = model
    device = next(model.parameters()).device
    self.abar = torch.as_tensor(np.asarray(alphas_cumprod, np.float32), device=device)
    self.opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(b1, b2), eps=eps,
                                 weight_decay=weight_decay, fused=fused)
    self.params = [p for p in model.parameters()]
    self.ema = [p.detach().clone() for p in self.params]
    self.ema_decay = ema_decay
    self.num_updates = 0
    self.gen = torch.Generator(device=device).manual_seed(seed)
    self.forward = torch.compile(model) if compile_model else model

  def loss(self, z0: torch.Tensor, t: Optional[torch.Tensor] = None,
           noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x0-prediction MSE at uniformly drawn timesteps (or the given t, noise)."""
    if t is None:
      t = torch.randint(0, self.abar.shape[0], (z0.shape[0],), generator=self.gen,
                        device=z0.device)
    if noise is None:
      noise = torch.randn(z0.shape, generator=self.gen, device=z0.device, dtype=z0.dtype)
    a = self.abar[t][:, None]
    z_t = a.sqrt() * z0 + (1.0 - a).sqrt() * noise
    return torch.mean(torch.square(self.forward(z_t, t) - z0))

  def step(self, z0: torch.Tensor, t: Optional[torch.Tensor] = None,
           noise: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One AdamW step and EMA update; `t`, `noise` default to fresh draws."""
    self.model.train()
    self.opt.zero_grad(set_to_none=True)
    loss = self.loss(z0, t, noise)
    loss.backward()
    grads = [p.grad for p in self.params]
    grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    self.opt.step()
    self._update_ema()
    return loss.detach(), grad_norm

  @torch.no_grad()
  def _update_ema(self) -> None:
    d = ema_decay_at(self.num_updates, self.ema_decay)
    torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - d)
    self.num_updates += 1


# ---------------------------------------------------------------- scoring


@dataclasses.dataclass(frozen=True)
class TorchScoreConfig:
  """As `dlsr_jax.scoring.ScoreConfig` + `DDIMConfig`, flattened."""
  boundaries: tuple[int, ...]
  stride: int = 1
  eta: float = 1.0
  release_compat: bool = False
  num_draws: int = 1
  mfsim_skip_first: bool = False


def _ddim_coefs(abar: np.ndarray, t: int, t_prev: int,
                eta: float) -> tuple[np.float32, ...]:
  """Paper-mode DDIM from abar[t] to abar[t_prev]: (sqrt(a_t), sqrt(1 - a_t), sqrt(a_prev),
  dir_coef, sigma) as float32."""
  f = np.float32
  a_t, a_prev = f(abar[t]), f(abar[t_prev])
  one = f(1.0)
  sigma = f(eta) * np.sqrt((one - a_prev) / (one - a_t)) * np.sqrt(one - a_t / a_prev)
  dir_coef = np.sqrt(np.maximum(one - a_prev - sigma * sigma, f(0.0)))
  return np.sqrt(a_t), np.sqrt(one - a_t), np.sqrt(a_prev), dir_coef, sigma


def _release_coefs(abar: np.ndarray, t: int, eta: float) -> tuple[float, ...]:
  """The release's step t -> t - 1 (SPEC 1.5): a_t = abar[t], a = abar[t - 1],
  a_prev = abar[t - 2] (abar[0] at t = 1) -> (a_t, a, a_prev, sigma) as floats."""
  f = np.float32
  a_t, a, a_prev = f(abar[t]), f(abar[t - 1]), f(abar[max(t - 2, 0)])
  one = f(1.0)
  sigma = f(eta) * np.sqrt((one - a_prev) / (one - a) * (one - a / a_prev))
  return float(a_t), float(a), float(a_prev), float(sigma)


def ddim_reconstruct(model: nn.Module, z0: torch.Tensor, k: int, eps: torch.Tensor,
                     abar: np.ndarray, cfg: TorchScoreConfig,
                     gen: Optional[torch.Generator] = None) -> torch.Tensor:
  """Noises z0 to level k with `eps` and denoises back with DDIM (see dlsr_jax.diffusion).

  `cfg.release_compat` follows the release's arithmetic (stride 1): eps_hat from
  abar[t], x0 recomputed from it with abar[t - 1], update to abar[t - 2]; the
  t = 1 step is the identity and is skipped.
  """
  a_k = np.float32(abar[k])
  z = float(np.sqrt(a_k)) * z0 + float(np.sqrt(np.float32(1.0) - a_k)) * eps
  t = int(k)
  if cfg.release_compat and cfg.stride != 1:
    raise ValueError(f"release_compat needs stride 1, got {cfg.stride}")
  while t > (1 if cfg.release_compat else 0):
    tt = torch.full((z0.shape[0],), t, dtype=torch.int32, device=z0.device)
    x0_hat = model(z, tt)
    if cfg.release_compat:
      a_t, a, a_prev, sigma = _release_coefs(abar, t, cfg.eta)
      eps_hat = (z / math.sqrt(a_t) - x0_hat) / math.sqrt(1.0 / a_t - 1.0)
      pred = (z - math.sqrt(1.0 - a) * eps_hat) / math.sqrt(a)
      z = (math.sqrt(a_prev) * pred
           + math.sqrt(max(1.0 - a_prev - sigma * sigma, 0.0)) * eps_hat)
      t_prev = t - 1
    else:
      t_prev = max(t - cfg.stride, 0)
      sa_t, s1a_t, sa_prev, dir_coef, sigma = (float(c) for c in
                                               _ddim_coefs(abar, t, t_prev, cfg.eta))
      eps_hat = (z - sa_t * x0_hat) / s1a_t
      z = sa_prev * x0_hat + dir_coef * eps_hat
    if cfg.eta > 0:
      z = z + sigma * torch.randn(z.shape, generator=gen, device=z.device, dtype=z.dtype)
    t = t_prev
  return z


def mse_score(z0: torch.Tensor, z_rec: torch.Tensor) -> torch.Tensor:
  return torch.sum(torch.square(z0 - z_rec), dim=-1)


def mfsim_score(z0: torch.Tensor, z_rec: torch.Tensor, boundaries: Sequence[int],
                skip_first: bool = False, eps: float = 1e-8) -> torch.Tensor:
  """Minus the mean per-layer cosine similarity, as dlsr_jax.scoring.mfsim_score."""
  start = 1 if skip_first else 0
  sims = []
  for lo, hi in zip(boundaries[start:-1], boundaries[start + 1:]):
    a, b = z0[:, lo:hi], z_rec[:, lo:hi]
    num = torch.sum(a * b, dim=-1)
    den = torch.clamp(torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1),
                      min=eps)
    sims.append(num / den)
  return -torch.mean(torch.stack(sims, dim=0), dim=0)


def score(model: nn.Module, z0: torch.Tensor, ks: Sequence[int], abar: np.ndarray,
          cfg: TorchScoreConfig, eps: Optional[torch.Tensor] = None,
          gen: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
  """MSE and MFsim of z0 [B, C] at each noise level: {type: [K, B]}.

  Args:
    model: the denoiser (eval mode; call under `torch.inference_mode()`).
    z0: [B, C] features.
    ks: noise levels; a Python loop runs each k's DDIM chain separately.
    abar: [T] alphas_cumprod (numpy).
    cfg: stride / eta / release_compat / draws / MFsim layout.
    eps: optional forward noise [num_draws, B, C] (or [B, C] for one draw),
      shared across k values as in dlsr_jax; drawn from `gen` when None.
    gen: torch generator for the noise that is not passed in.
  """
  abar = np.asarray(abar, np.float32)
  if eps is not None and eps.ndim == 2:
    eps = eps[None]
  if eps is None:
    eps = torch.randn((cfg.num_draws,) + tuple(z0.shape), generator=gen, device=z0.device,
                      dtype=z0.dtype)
  out = {"mse": [], "mfsim": []}
  for k in ks:
    mse, mfs = 0.0, 0.0
    for d in range(cfg.num_draws):
      z_rec = ddim_reconstruct(model, z0, int(k), eps[d], abar, cfg, gen)
      mse = mse + mse_score(z0, z_rec)
      mfs = mfs + mfsim_score(z0, z_rec, cfg.boundaries, cfg.mfsim_skip_first)
    out["mse"].append(mse / cfg.num_draws)
    out["mfsim"].append(mfs / cfg.num_draws)
  return {name: torch.stack(v, dim=0) for name, v in out.items()}

"""The official DLSR release's trained LFDN checkpoints, read without torch.

The release (github xbyym/DLSR) saves `checkpoint-<epoch>.pth` files: a dict
with `model` (the LFDM state dict), `optimizer`, `epoch`, `scaler` and `args`
(an `argparse.Namespace`, read here as a dict). Inside `model`:

  * `model.diffusion_model.<name>`: the LFDN weights;
  * `model_ema.<"diffusion_model." + name without dots>`: their EMA copies
    (plus the EMA's `decay` and `num_updates`);
  * everything else (frozen encoder, class embedder, schedule buffers) is
    ignored, except `alphas_cumprod`, reported for checking the schedule.

Name mapping (torch `nn.Linear.weight` [out, in] is our `kernel` [in, out]
transposed; GroupNorm `weight` is our `scale`):

  input_proj.1                 -> in_proj
  time_embed.0, time_embed.2   -> time_dense_0, time_dense_1
  res_blocks.i.in_layers.0     -> block_i/in_norm
  res_blocks.i.in_layers.2     -> block_i/in_dense
  res_blocks.i.emb_layers.1    -> block_i/emb_dense
  res_blocks.i.out_layers.0    -> block_i/out_norm
  res_blocks.i.out_layers.3    -> block_i/out_dense
  out.0, out.2                 -> out_norm, out_proj

The release's LFDN computes what ours computes ([cos | sin] embedding of
width W, SiLU before every Dense but the time MLP's first, one-group
GroupNorm with epsilon 1e-5, dropout before the zero-initialised last Dense
of a block) when its bottleneck width equals W, it has no context layers and
out_channels equals in_channels, as in the release's config; anything else is
refused here. Its GroupNorm group count is not in the weights: 1 (the release's
default and config) is assumed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping, Optional, Union

import jax
import numpy as np

from dlsr_jax import lfdn
from dlsr_jax.weights.torch_pickle import CheckpointFormatError, as_str
from dlsr_jax.weights.torch_reader import load_torch_object

PathLike = Union[str, os.PathLike]

LFDN_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."

_TOP = {"in_proj": "input_proj.1", "time_dense_0": "time_embed.0",
        "time_dense_1": "time_embed.2", "out_norm": "out.0", "out_proj": "out.2"}
_BLOCK = {"in_norm": "in_layers.0", "in_dense": "in_layers.2", "emb_dense": "emb_layers.1",
          "out_norm": "out_layers.0", "out_dense": "out_layers.3"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


@dataclasses.dataclass(frozen=True)
class ReleaseInfo:
  """What a release checkpoint says besides the LFDN weights."""
  path: str
  config: lfdn.LFDNConfig                # inferred from the weights' shapes
  epoch: Optional[int]                   # 0 for checkpoint-0.pth
  args: dict[str, Any]                   # the training run's argparse attributes
  has_ema: bool
  ema_num_updates: Optional[int]         # optimizer steps the EMA has seen
  ema_decay: Optional[float]
  alphas_cumprod: Optional[np.ndarray]   # the LFDM's schedule buffer, if saved
  num_ignored: int                       # encoder, embedder and schedule tensors


def torch_name(path: tuple[str, ...]) -> str:
  """Our LFDN param path, e.g. ("block_3", "in_dense", "kernel") -> release name."""
  *mods, leaf = path
  if len(mods) == 1 and mods[0] in _TOP:
    return f"{_TOP[mods[0]]}.{_LEAF[leaf]}"
  m = re.fullmatch(r"block_(\d+)", mods[0]) if len(mods) == 2 else None
  if m is None or mods[1] not in _BLOCK:
    raise KeyError(f"no release name for LFDN param {'/'.join(path)}")
  return f"res_blocks.{m.group(1)}.{_BLOCK[mods[1]]}.{_LEAF[leaf]}"


def ema_name(name: str) -> str:
  """The LFDM state-dict key of the EMA copy of LFDN weight `name`."""
  return EMA_PREFIX + ("diffusion_model." + name).replace(".", "")


def _scalar(x: Any) -> Optional[float]:
  if isinstance(x, np.ndarray) and x.size == 1:
    return x.reshape(()).item()
  return None


def infer_config(weights: Mapping[str, np.ndarray], source: str = "checkpoint"
                 ) -> lfdn.LFDNConfig:
  """The `LFDNConfig` of a release LFDN state dict (names without prefix).

  Raises:
    CheckpointFormatError: a tensor needed for a size is missing, or the
      network is a variant our LFDN does not implement (bottleneck != width,
      context layers, out_channels != in_channels).
  """
  def shape(name: str) -> tuple[int, ...]:
    if name not in weights:
      raise CheckpointFormatError(f"{source}: no LFDN weight {LFDN_PREFIX}{name}")
    return tuple(weights[name].shape)

  width, features = shape("input_proj.1.weight")
  blocks = sorted({int(m.group(1)) for k in weights
                   if (m := re.match(r"res_blocks\.(\d+)\.", k))})
  if not blocks or blocks != list(range(len(blocks))):
    raise CheckpointFormatError(f"{source}: residual blocks {blocks} are not 0..N-1")
  use_time = any(k.startswith("time_embed.") for k in weights)
  embed = shape("time_embed.0.weight")[0] if use_time else lfdn.LFDNConfig.embed_dim
  mid = shape("res_blocks.0.in_layers.2.weight")[0]
  out_c = shape("out.2.weight")[0]
  problems = []
  if mid != width:
    problems.append(f"bottleneck_channels {mid} != model_channels {width}")
  if out_c != features:
    problems.append(f"out_channels {out_c} != in_channels {features}")
  if any(".context_layers." in k for k in weights):
    problems.append("context layers (use_context=True)")
  if problems:
    raise CheckpointFormatError(
        f"{source}: this LFDN variant is not implemented by dlsr_jax.lfdn: "
        + "; ".join(problems))
  return lfdn.LFDNConfig(features=features, width=width, embed_dim=embed,
                         num_blocks=len(blocks), use_time_embedding=use_time)


def _to_params(weights: Mapping[str, np.ndarray], cfg: lfdn.LFDNConfig, what: str,
               key_of, source: str) -> tuple[Any, list[str]]:
  """Maps release weights onto the LFDN param tree; returns (params, used keys)."""
  shapes = jax.eval_shape(lambda: lfdn.init_params(cfg, jax.random.key(0)))
  missing, misshaped, used = [], [], []

  def leaf(path, s):
    names = tuple(p.key for p in path)
    key = key_of(torch_name(names))
    w = weights.get(key)
    if w is None:
      missing.append(key)
      return None
    used.append(key)
    w = np.asarray(w, np.float32)
    if names[-1] == "kernel":
      w = w.T
    if w.shape != s.shape:
      misshaped.append(f"{key}: {tuple(weights[key].shape)} (want "
                       f"{s.shape[::-1] if names[-1] == 'kernel' else s.shape})")
    return np.ascontiguousarray(w)

  params = jax.tree_util.tree_map_with_path(leaf, shapes)
  if missing or misshaped:
    raise CheckpointFormatError(
        f"{source}: {what} weights do not fit an LFDN with {cfg}: "
        f"missing {missing or 'none'}; mis-shaped {misshaped or 'none'}")
  return params, used


def read_release_checkpoint(path: PathLike) -> tuple[Any, Optional[Any], ReleaseInfo]:
  """Reads a release `checkpoint-<epoch>.pth` (no torch, no pickled code run).

  Args:
    path: a `torch.save`d dict with `model` (the LFDM state dict), `epoch`,
      `args`, ... (zip or legacy format). A bare LFDM state dict also works.

  Returns:
    (params, ema_params, info): LFDN param trees (float32 numpy leaves, the
    layout of `lfdn.init_params(info.config, key)`); `ema_params` is None when
    the checkpoint has no EMA copies (use the EMA ones for scoring, as the
    release does).

  Raises:
    FileNotFoundError; UnsafeCheckpointError (a global outside the allow-list);
    CheckpointFormatError naming missing, unexpected or mis-shaped keys.
  """
  path = os.fspath(path)
  obj = load_torch_object(path)
  if not isinstance(obj, Mapping):
    raise CheckpointFormatError(f"{path}: expected a dict, got {type(obj).__name__}")
  sd = obj.get("model", obj.get("state_dict", obj))
  if not isinstance(sd, Mapping):
    raise CheckpointFormatError(f"{path}: 'model' is a {type(sd).__name__}, not a state dict")
  sd = {as_str(k): v for k, v in sd.items() if isinstance(v, np.ndarray)}
  raw = {k[len(LFDN_PREFIX):]: v for k, v in sd.items() if k.startswith(LFDN_PREFIX)}
  if not raw:
    raise CheckpointFormatError(
        f"{path}: no '{LFDN_PREFIX}*' tensors (not a DLSR release checkpoint?); "
        f"keys start with {sorted({k.split('.')[0] for k in sd})[:20]}")
  cfg = infer_config(raw, path)
  params, used = _to_params(sd, cfg, "LFDN", lambda n: LFDN_PREFIX + n, path)
  unexpected = sorted({k for k in sd if k.startswith(LFDN_PREFIX)} - set(used))
  used = [k[len(LFDN_PREFIX):] for k in used]

  ema_sd, ema_key = sd, ema_name
  top_ema = obj.get("model_ema")  # misc.save_model(ema_params=...): a full state dict
  if not any(k.startswith(EMA_PREFIX) for k in sd) and isinstance(top_ema, Mapping):
    ema_sd = {as_str(k): v for k, v in top_ema.items()}
    ema_key = lambda n: LFDN_PREFIX + n
  has_ema = any(ema_key(n) in ema_sd for n in used)
  ema_params = None
  if has_ema:
    ema_params, ema_used = _to_params(ema_sd, cfg, "EMA", ema_key, path)
    if ema_sd is sd:
      stray = {k for k in sd if k.startswith(EMA_PREFIX + "diffusion_model")} - set(ema_used)
      unexpected += sorted(stray)
  if unexpected:
    raise CheckpointFormatError(f"{path}: unexpected LFDN weights {unexpected}")

  args = obj.get("args")
  epoch = obj.get("epoch")
  abar = sd.get("alphas_cumprod")
  info = ReleaseInfo(
      path=path, config=cfg, epoch=epoch if isinstance(epoch, int) else None,
      args=dict(args) if isinstance(args, Mapping) else {}, has_ema=has_ema,
      ema_num_updates=(None if (n := _scalar(sd.get(EMA_PREFIX + "num_updates"))) is None
                       else int(n)),
      ema_decay=_scalar(sd.get(EMA_PREFIX + "decay")),
      alphas_cumprod=None if abar is None else np.asarray(abar, np.float64),
      num_ignored=sum(1 for k in sd if not k.startswith((LFDN_PREFIX, EMA_PREFIX))))
  return params, ema_params, info


def _train_state(params: Any, ema: Any, step: int, optim_cfg: Any) -> Any:
  """A `TrainState` holding the release's weights, with a fresh optimizer state."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from dlsr_jax import train as train_lib  # pylint: disable=g-import-not-at-top

  params = jax.tree.map(jnp.asarray, params)
  tx = train_lib.make_optimizer(optim_cfg)
  return train_lib.TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                              opt_state=tx.init(params),
                              ema_params=jax.tree.map(jnp.asarray, ema))


def _read_for_workdir(path: PathLike, weights: str):
  """(params, the weights scoring uses, info, step) of one release checkpoint."""
  params, ema, info = read_release_checkpoint(path)
  if weights == "ema":
    if ema is None:
      raise ValueError(f"{path} has no EMA weights (model_ema.*): pass --weights=raw to "
                       "score with the raw weights")
  else:
    ema = params
  step = info.ema_num_updates if (info.ema_num_updates or 0) > 0 else (info.epoch or 0) + 1
  return params, ema, info, step


def convert_to_workdir(workdir: str, final: PathLike, first: Optional[PathLike] = None,
                       weights: str = "ema", optim_cfg: Any = None,
                       alphas_cumprod: Optional[np.ndarray] = None) -> dict[str, Any]:
  """Writes the release checkpoints `final` (and `first`) as checkpoints of `workdir`.

  `final` becomes the latest checkpoint, `first` (the LR score's reference) a kept reference
  checkpoint; each a `TrainState` with the release's weights as `params`, its EMA weights
  (`weights="ema"`; "raw": the raw weights) as `ema_params`, the step set to the EMA's update
  count (else epoch + 1) and a fresh optimizer state of `optim_cfg` (an `AdamWConfig`): the
  release's AdamW moments are not converted.

  Args:
    workdir: a directory without checkpoints.
    final, first: the release's last and first-epoch checkpoint files.
    weights: "ema" (default; what the release scores with) or "raw".
    optim_cfg: the optimizer whose state is initialised (default `AdamWConfig()`).
    alphas_cumprod: our schedule's, compared with the checkpoint's if it has one.

  Returns:
    model (LFDNConfig), steps (first, final), epochs (first, final), schedule_matches (None if
    either side has no schedule), weights.
  """
  from dlsr_jax.training import optim  # pylint: disable=g-import-not-at-top
  from dlsr_jax.training.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top

  optim_cfg = optim_cfg or optim.AdamWConfig()
  p, ema, info, step = _read_for_workdir(final, weights)
  first_read = _read_for_workdir(first, weights) if first else None
  if first_read is not None:
    if first_read[2].config != info.config:
      raise ValueError(f"{first} has an LFDN {first_read[2].config}, {final} has {info.config}")
    if first_read[3] >= step:
      raise ValueError(f"{first} (step {first_read[3]}) is not before {final} (step {step})")
  matches = None
  if info.alphas_cumprod is not None and alphas_cumprod is not None:
    ours = np.asarray(alphas_cumprod)
    matches = bool(ours.shape == info.alphas_cumprod.shape
                   and np.allclose(ours, info.alphas_cumprod, rtol=1e-5, atol=1e-7))
  ckpt = Checkpointer(workdir)
  try:
    if ckpt.latest_step() is not None or ckpt.reference_steps():
      raise FileExistsError(f"{workdir} already has checkpoints; convert into a new workdir")
    ckpt.save(step, _train_state(p, ema, step, optim_cfg))
    if first_read is not None:
      fp, fema, _, fstep = first_read
      ckpt.save_reference(fstep, _train_state(fp, fema, fstep, optim_cfg))
  finally:
    ckpt.close()
  return {"model": info.config, "steps": (first_read[3] if first_read else None, step),
          "epochs": (first_read[2].epoch if first_read else None, info.epoch),
          "schedule_matches": matches, "weights": weights}

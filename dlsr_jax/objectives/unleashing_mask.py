"""Unleashing Mask (Zhu et al., ICML 2023): fine-tune a trained classifier towards a loss level.

The paper observes that a classifier detects OOD inputs best at an intermediate stage of
training, before it has memorised the atypical training examples, and "unleashes" that
ability from a fully trained model in two steps:

1. Estimate a loss constraint `b`: the mean training cross-entropy of a masked copy of the
   trained model, with a random mask dropping `mask_drop` (3.5 %) of the weights of every
   layer (`estimate_b`). The masked net is run in eval mode (running BatchNorm statistics)
   over every training example, without augmentation.
2. Fine-tune with the loss |CE - b| + b (`loss`): gradient descent on the CE while it lies
   above b, gradient *ascent* while it lies below, so the training loss hovers at b and the
   net forgets what it memorised beyond it.

Two variants (`make(..., prune=...)`):

- UM (`prune=False`, objective "unleashing_mask"): every parameter is fine-tuned with that
  loss (through `base.supervised`, with the crop + flip augmentation of image nets).
- UMAP (`prune=True`, objective "unleashing_mask_prune"): the weights stay frozen and a
  pruning mask is learned instead, as in edge-popup (Ramanujan et al. 2020). Every layer
  kernel gets a trained score per weight; its mask keeps exactly the top round(keep * n)
  weights by |score| (`topk_mask`, keep = 0.8); the effective kernel is w * mask. The forward
  pass uses the hard 0/1 mask, the backward pass hands the gradient of the mask to |score|
  unchanged (straight-through). The scores start at |w| (`score_init="magnitude"`: step 0
  is the magnitude-pruned net) or at a He/Kaiming-uniform draw from `seed`
  (`score_init="kaiming"`, bound sqrt(6 / fan_in), as edge-popup).

Choices made here:

- Masked leaves: "layer weights" are the conv / dense kernels, i.e. the params leaves named
  "kernel" with ndim >= 2 (`is_kernel`). Biases and BatchNorm scales / shifts are never masked
  (in UMAP they are frozen as well).
- Mask sizes are exact per layer: the random mask drops exactly round(mask_drop * n) entries
  (a uniformly random subset, one independent key per leaf, `fold_in(key, leaf index)`), the
  UMAP mask keeps exactly round(keep * n) (a stable sort breaks ties, so equal scores still
  keep that count). Python's `round` (half to even) is used for both.
- BatchNorm in UMAP: the forward pass is in train mode and the running statistics are updated
  (they are the only non-score state that changes). The pruned net's activation statistics
  differ from the dense net's, so keeping the dense net's running statistics would evaluate
  the pruned net with mismatched normalisation.
- State layout of UMAP: `TrainState.params` holds the scores (a params-like tree with only the
  kernel leaves, e.g. {"conv": {"kernel": ...}, "fc": {"kernel": ...}}), `TrainState.extra`
  is {"weights": the frozen "params" collection of the net}, bit-identical after any number
  of steps, so a checkpoint is self-contained. With `ema_decay` the EMA is one of the scores
  and `export` masks with the EMA scores.
- `export(state)` of UMAP returns plain dense Flax variables (kernels multiplied by the final
  mask, other params as they were, the updated BatchNorm statistics): any detector or another
  objective's `init_from` reads them as an ordinary net of the same architecture.
- `b` is estimated once per run: with a `workdir`, the estimate is written to
  `<workdir>/unleashing_mask_b.json` (b, mask_drop, seed, num_images) by process 0 and re-read
  on a re-run, so a resumed run trains towards the same b without recomputing it. The mask key
  is `fold_in(key(seed), B_KEY_TAG)`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlsr_jax.data import batching
from dlsr_jax.models.net import Net
from dlsr_jax.objectives import base, cross_entropy
from dlsr_jax.objectives._masks import (is_kernel, kernel_leaves, kernels_of, masked_copy,
                                        pruned_kernels, random_mask, topk_mask, with_kernels)
from dlsr_jax.training.state import TrainState

__all__ = ["B_FILE", "B_KEY_TAG", "SCORE_INITS", "estimate_b", "is_kernel", "kernel_leaves",
           "kernels_of", "loss", "make", "masked_copy", "pruned_kernels", "random_mask",
           "topk_mask", "with_kernels"]   # the mask functions live in `_masks`

PyTree = Any
B_FILE = "unleashing_mask_b.json"
B_KEY_TAG = 0x554D   # "UM": folded into key(seed) for the random mask of the b estimate
SCORE_INITS = ("magnitude", "kaiming")


def loss(ce: jax.Array, b: jax.Array) -> jax.Array:
  """The Unleashing Mask loss |ce - b| + b.

  Args:
    ce: scalar batch-mean softmax cross-entropy.
    b: scalar loss constraint (>= 0).

  Returns:
    Scalar |ce - b| + b: equal to ce above b; below b its gradient is -d ce (ascent on CE).
  """
  return jnp.abs(ce - b) + b


def estimate_b(net: Net, images: np.ndarray, labels: np.ndarray, *, drop: float = 0.035,
               key: jax.Array, batch_size: int = 256) -> float:
  """The loss constraint b: mean CE of a randomly masked copy of `net` on a data set.

  Args:
    net: the trained classifier (or head).
    images: uint8 [N, H, W, 3] images (fed through `net.preprocess`), or features [N, C]
      for heads.
    labels: [N] int class indices.
    drop: fraction of each kernel dropped by the mask (`random_mask`).
    key: the mask's key.
    batch_size: examples per forward pass.

  Returns:
    The mean over all N examples of the softmax cross-entropy of the masked net in eval
    mode (running BatchNorm statistics, no dropout, no augmentation).
  """
  variables = dict(net.params)
  variables["params"] = masked_copy(variables["params"],
                                    random_mask(key, variables["params"], drop))

  @jax.jit
  def per_example_ce(variables, x, y):
    logits, _ = net.apply(variables, cross_entropy.network_input(net, x))
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)

  ce = batching.map_padded(lambda x, y: per_example_ce(variables, x, y),
                           (np.asarray(images), np.asarray(labels)), batch_size)
  return float(np.mean(ce.astype(np.float64)))


def _read_or_estimate_b(net: Net, data: Mapping, workdir: Optional[str], seed: int,
                        mask_drop: float) -> float:
  """b from `<workdir>/unleashing_mask_b.json` if it is there, else estimated (and written)."""
  x, y = data["in"]["x"], data["in"]["y"]
  record = {"mask_drop": float(mask_drop), "seed": int(seed), "num_images": int(len(x))}
  path = None if workdir is None else os.path.join(workdir, B_FILE)
  if path is not None and os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diff = {k: (saved.get(k), v) for k, v in record.items() if saved.get(k) != v}
    if diff:
      raise ValueError(f"{path} was written for other settings: " + ", ".join(
          f"{k} {old!r} there, {new!r} now" for k, (old, new) in sorted(diff.items()))
                       + "; delete it (or use another workdir) to estimate b again")
    return float(saved["b"])
  key = jax.random.fold_in(jax.random.key(seed), B_KEY_TAG)
  b = estimate_b(net, x, y, drop=mask_drop, key=key)
  if path is not None and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
      json.dump({"b": b, **record}, f, indent=1)
    os.replace(tmp, path)
  return b


def _augment_fn(net: Net, augment: Optional[bool]) -> Optional[base.AugmentFn]:
  """crop + flip of image nets (default on for them); an error for heads."""
  image_net = net.resolution is not None
  if augment is None:
    augment = image_net
  if augment and not image_net:
    raise ValueError(f"{net.name!r} is a head on features: no image augmentation")
  return cross_entropy.crop_flip_in() if augment else None


def _ce_and_accuracy(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
  return cross_entropy.loss(logits, y), acc


def _initial_scores(weights: PyTree, score_init: str, seed: int) -> dict:
  """|w| of every kernel, or a He-uniform draw per kernel keyed by `seed` and leaf index."""
  kernels = kernels_of(weights)
  if score_init == "magnitude":
    return jax.tree.map(jnp.abs, kernels)
  init = jax.nn.initializers.he_uniform()
  leaves, treedef = jax.tree.flatten(kernels)
  key = jax.random.key(seed)
  return jax.tree.unflatten(treedef, [init(jax.random.fold_in(key, i), k.shape, k.dtype)
                                      for i, k in enumerate(leaves)])


def _prune_objective(net: Net, tx: optax.GradientTransformation, b: float, keep: float,
                     score_init: str, seed: int, ema_decay: Optional[float],
                     augment: Optional[base.AugmentFn]) -> base.Objective:
  """UMAP: frozen weights, trained per-weight scores, exact top-k masks."""
  weights = net.params["params"]
  has_bn = "batch_stats" in net.params
  b_arr = jnp.float32(b)

  def init(key: jax.Array) -> TrainState:
    del key  # the scores come from the weights or `seed`
    scores = _initial_scores(weights, score_init, seed)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=scores, opt_state=tx.init(scores),
        ema_params=jax.tree.map(jnp.copy, scores) if ema_decay is not None else None,
        batch_stats=jax.tree.map(jnp.array, net.params["batch_stats"]) if has_bn else None,
        extra={"weights": jax.tree.map(jnp.array, weights)})

  def step(state: TrainState, batch: base.Batch, key: jax.Array):
    k_aug, k_drop = jax.random.split(key)
    if augment is not None:
      batch = augment(k_aug, batch)
    x = cross_entropy.network_input(net, batch["in"]["x"])
    y = batch["in"]["y"]
    frozen = state.extra["weights"]

    def loss_of(scores):
      params = with_kernels(frozen, pruned_kernels(frozen, scores, keep))
      variables = {"params": params}
      if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats
      logits, _, stats = base.apply_train(net.module, variables, x, k_drop)
      ce, acc = _ce_and_accuracy(logits, y)
      return loss(ce, b_arr), (ce, acc, stats)

    (value, (ce, acc, stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    new = base.apply_gradients(state, grads, tx, ema_decay=ema_decay, batch_stats=stats)
    return new, {"loss": value, "grad_norm": optax.tree.norm(grads), "ce": ce,
                 "accuracy": acc, "b": b_arr}

  def export(state: TrainState) -> dict:
    scores = state.params if state.ema_params is None else state.ema_params
    frozen = state.extra["weights"]
    masks = topk_mask(scores, keep)
    kernels = jax.tree.map(lambda w, m: w * m, kernels_of(frozen), masks)
    variables = {"params": with_kernels(frozen, kernels)}
    if state.batch_stats is not None:
      variables["batch_stats"] = state.batch_stats
    return variables

  return base.Objective(name="unleashing_mask_prune", streams=(), init=init, step=step,
                        net=net, export=export)


def make(net: Net, tx: optax.GradientTransformation, *, augment: Optional[bool] = None,
         ema_decay: Optional[float] = None, data: Optional[Mapping] = None,
         workdir: Optional[str] = None, seed: int = 0, b: Optional[float] = None,
         mask_drop: float = 0.035, prune: bool = False, keep: float = 0.8,
         score_init: str = "magnitude") -> base.Objective:
  """The Unleashing Mask objective (UM, or UMAP with `prune=True`) for a trained `net`.

  Args:
    net: the trained classifier (or head) and its variables.
    tx: the optimizer (of all params for UM, of the scores for UMAP).
    augment: random crop (pad 4) + horizontal flip; default: True for image nets, False for
      heads on features (where it is an error).
    ema_decay: keep an EMA of the trained params (UMAP: of the scores); None = no EMA.
    data: the host streams; b is estimated on data["in"]["x"], data["in"]["y"] when `b` is
      None.
    workdir: the run's folder: the b estimate is written there (`B_FILE`) and re-read on a
      re-run; None = estimate every time.
    seed: the key of the b estimate's random mask (and of the "kaiming" score init).
    b: the loss constraint; None = estimated (`estimate_b`).
    mask_drop: fraction of each kernel dropped by the mask of the b estimate, in (0, 1).
    prune: UMAP: learn a pruning mask of the frozen weights instead of fine-tuning them.
    keep: UMAP: fraction of each kernel kept, in (0, 1].
    score_init: UMAP: "magnitude" (|w|) or "kaiming" (He-uniform from `seed`).

  Returns:
    The `Objective` ("unleashing_mask" or "unleashing_mask_prune"); metrics "loss", "ce",
    "accuracy" (of the training batch), "b", "grad_norm".

  Raises:
    ValueError: bad settings, no b and no data, or a b file written for other settings.
  """
  if not 0.0 < mask_drop < 1.0:
    raise ValueError(f"mask_drop must be in (0, 1), got {mask_drop}")
  if not 0.0 < keep <= 1.0:
    raise ValueError(f"keep must be in (0, 1], got {keep}")
  if score_init not in SCORE_INITS:
    raise ValueError(f"score_init must be one of {SCORE_INITS}, got {score_init!r}")
  augment_fn = _augment_fn(net, augment)
  if b is None:
    if data is None:
      raise ValueError("unleashing_mask needs the loss constraint b or the training data "
                       "to estimate it: neither b nor data was given")
    b = _read_or_estimate_b(net, data, workdir, seed, mask_drop)
  if not (math.isfinite(b) and b >= 0):
    raise ValueError(f"b must be a finite number >= 0, got {b}")
  b = float(b)
  if prune:
    return _prune_objective(net, tx, b, keep, score_init, seed, ema_decay, augment_fn)

  b_arr = jnp.float32(b)

  def loss_fn(variables, batch, key):
    x, y = batch["in"]["x"], batch["in"]["y"]
    logits, _, batch_stats = base.apply_train(net.module, variables,
                                              cross_entropy.network_input(net, x), key)
    ce, acc = _ce_and_accuracy(logits, y)
    return loss(ce, b_arr), ({"ce": ce, "accuracy": acc, "b": b_arr}, batch_stats)

  obj = base.supervised("unleashing_mask", loss_fn, tx, net.params, ema_decay=ema_decay,
                        augment=augment_fn)
  return base.Objective(name=obj.name, streams=obj.streams, init=obj.init, step=obj.step,
                        net=net)

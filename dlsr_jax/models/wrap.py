"""`wrap`: any Flax / JAX classifier function as a `Net` (bring your own model).

  def apply_fn(params, x):                       # x = preprocess(images)
    logits, pre = ...                            # [B, K], [B, D]
    return logits, {"pre_logits": pre}
  net = models.wrap(apply_fn, variables, preprocess=lambda x: x / 255.0, head="head")
  arrays = evaluation.forward(net, images)       # {"logits", "pre_logits"}
  W, b = net.head                                # variables["params"]["head"]

A wrapped net is for evaluation: the detectors (ODIN included: it differentiates through
`preprocess`) and `evaluation.forward` take it as they take `models.load`'s nets. Training
objectives need a Flax module (`models.load`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from dlsr_jax import cache
from dlsr_jax.models.net import Net
from dlsr_jax.typedefs import Params


def _unit_scale(x: jax.Array) -> jax.Array:
  return x / 255.0


def wrap(apply_fn: Callable[[Params, jax.Array], Any], params: Params, *,
         preprocess: Optional[Callable[[jax.Array], jax.Array]] = None,
         head: Optional[str | Sequence[str]] = None, name: str = "wrapped",
         resolution: int = 32) -> Net:
  """A `Net` around `apply_fn(params, x) -> (logits [B, K], out)` with out["pre_logits"].

  Args:
    apply_fn: a pure, jittable function of the variables and a batch of network inputs,
      e.g. `lambda p, x: module.apply(p, x, train=False)`; it returns the logits and a
      dict holding at least "pre_logits" [B, D] (further [B] or [B, ...] entries, such as
      "confidence", become arrays the net provides).
    params: the variables as `module.init` returns them (`{"params": ..., ...}`).
    preprocess: float images [B, H, W, 3] in [0, 255] (uint8 cast to float32) ->
      network input; differentiable (ODIN perturbs the images through it). None:
      `x / 255`, i.e. inputs in [0, 1].
    head: the name of the final `nn.Dense` in `params["params"]` ("head"), or a path
      of names for a nested one (("backbone", "fc")); None if there is none (`Net.head`
      then raises; the methods that read the final layer need it).
    name: a name for messages and caches.
    resolution: the input height and width the model takes.

  Returns:
    A `Net` whose `apply`, `preprocess`, `normalise`, `head` and `outputs` work as for
    `models.load`'s nets.

  Raises:
    TypeError / ValueError: `apply_fn` is not callable, does not return `(logits [B, K],
      {"pre_logits": [B, D], ...})` on a [1, resolution, resolution, 3] batch, or `head`
      is not a dense layer of shape [D, K] (all checked here, with shapes only).
  """
  if not callable(apply_fn):
    raise TypeError(f"models.wrap: apply_fn must be callable, got {type(apply_fn).__name__}")
  if not isinstance(params, Mapping):
    raise TypeError(f"models.wrap: params must be the variables dict of module.init, got "
                    f"{type(params).__name__}")
  prep = _unit_scale if preprocess is None else preprocess
  head_path = None if head is None else ((head,) if isinstance(head, str) else tuple(head))
  net = Net(name=name, module=None, params=params, resolution=int(resolution),
            weights_id=cache.params_digest(params), head_path=head_path, apply_fn=apply_fn,
            preprocess_fn=prep)
  example = jax.ShapeDtypeStruct((1, net.resolution, net.resolution, 3), jnp.float32)
  try:
    result = jax.eval_shape(lambda p, x: apply_fn(p, prep(x)), params, example)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"models.wrap({name!r}): apply_fn(params, preprocess(images)) fails on "
                     f"a {example.shape} float32 batch: {type(e).__name__}: {e}") from e
  if not (isinstance(result, (tuple, list)) and len(result) == 2
          and isinstance(result[1], Mapping)):
    raise ValueError(f"models.wrap({name!r}): apply_fn must return (logits, out) with out a "
                     f"dict, got {jax.tree.map(lambda a: a.shape, result)}")
  logits, out = result
  if logits.ndim != 2 or "pre_logits" not in out or out["pre_logits"].ndim != 2:
    raise ValueError(f"models.wrap({name!r}): apply_fn must return logits [B, K] and "
                     f"out['pre_logits'] [B, D]; got logits {logits.shape}, out "
                     f"{ {k: v.shape for k, v in out.items()} }")
  extra = tuple(k for k in out if k != "pre_logits")
  net = dataclasses.replace(net, outputs=("logits", "pre_logits", *extra))
  if head_path is not None:
    w, _ = net.head
    want = (out["pre_logits"].shape[1], logits.shape[1])
    if tuple(w.shape) != want:
      raise ValueError(f"models.wrap({name!r}): head {'/'.join(head_path)} has a kernel of "
                       f"shape {tuple(w.shape)}; logits = pre_logits @ W + b needs {want}")
  return net

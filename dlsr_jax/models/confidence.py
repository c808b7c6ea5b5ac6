"""A confidence head on any classifier (DeVries & Taylor 2018, the confidence branch).

`ConfidenceNet(inner)` runs `inner` unchanged and adds one Dense(1) unit on its
out["pre_logits"]: out["confidence"] is that unit's pre-sigmoid logit [B]
(the confidence is its sigmoid). `with_confidence_head(net, key)` wraps a `Net`
(an image classifier or a head on features) keeping its variables:

  wrapped = with_confidence_head(net, jax.random.key(0))
  logits, out = wrapped.apply(wrapped.params, x)   # logits == net's; out["confidence"] [B]

Variables of the wrapped net: {"params": {"inner": <net's params>, "confidence":
{"kernel" [D, 1], "bias" [1]}}, "batch_stats": {"inner": <net's>}} (no
"batch_stats" when the inner net has none).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlsr_jax.models.heads import LinearHead, MLPHead
from dlsr_jax.models.net import Net

__all__ = ["CONFIDENCE", "ConfidenceNet", "with_confidence_head"]

CONFIDENCE = "confidence"   # the out key, the params key of the head and the array name


class ConfidenceNet(nn.Module):
  """`inner` plus a confidence logit on its pre-logits.

  Attributes:
    inner: a classifier module, `__call__(x, train) -> (logits, out)` with
      out["pre_logits"] [B, D].
  """
  inner: nn.Module

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """x -> (inner's logits [B, K], inner's out + {"confidence": [B] float32 logit})."""
    logits, out = self.inner(x, train=train)
    pre = out["pre_logits"].astype(jnp.float32)
    conf = nn.Dense(1, dtype=jnp.float32, param_dtype=jnp.float32, name=CONFIDENCE)(pre)
    return logits, {**out, CONFIDENCE: conf[..., 0]}


def _example_input(net: Net, num_features: Optional[int]) -> jax.ShapeDtypeStruct:
  if net.resolution is not None:
    return jax.ShapeDtypeStruct((1, net.resolution, net.resolution, 3), jnp.float32)
  if num_features is None:   # the registry's heads: the input width of their first layer
    first = {LinearHead: "fc", MLPHead: "fc1"}.get(type(net.module))
    if first is None:
      raise ValueError(f"{net.name!r} is a head on features of unknown width: pass "
                       "num_features=C (the width of its inputs [N, C])")
    num_features = int(net.params["params"][first]["kernel"].shape[0])
  return jax.ShapeDtypeStruct((1, num_features), jnp.float32)


def with_confidence_head(net: Net, key: jax.Array, *,
                         num_features: Optional[int] = None) -> Net:
  """`net` with a freshly initialised confidence head (`ConfidenceNet`).

  Args:
    net: the classifier (image net or head on features) and its variables; its
      logits and pre-logits are unchanged by the wrapping.
    key: PRNG key of the head's init (Flax's Dense default: LeCun normal kernel,
      zero bias).
    num_features: heads on features only: the input width C; inferred for the
      registry's "linear_head" / "mlp_head".

  Returns:
    A `Net` named `net.name + "+confidence"` with the same resolution and
    normalisation, `outputs` = net.outputs + ("confidence",) and the variables
    described in the module docstring.

  Raises:
    ValueError: `net` already has a confidence output, or a head's input width
      cannot be found.
  """
  if net.module is None:
    raise ValueError(f"{net.name!r} is a wrapped function (models.wrap), not a Flax module: "
                     "a confidence head is trained, and training needs a module (models.load)")
  if CONFIDENCE in net.outputs:
    raise ValueError(f"{net.name!r} already has a {CONFIDENCE!r} output")
  example = _example_input(net, num_features)
  _, out = jax.eval_shape(lambda x: net.module.apply(net.params, x, train=False), example)
  width = out["pre_logits"].shape[-1]
  head = nn.Dense(1, dtype=jnp.float32, param_dtype=jnp.float32).init(
      key, jnp.zeros((1, width), jnp.float32))["params"]
  variables = {"params": {"inner": net.params["params"], CONFIDENCE: head}}
  for collection, value in net.params.items():
    if collection != "params":
      variables[collection] = {"inner": value}
  tag = zlib.crc32(np.asarray(jax.random.key_data(key)).tobytes())
  return dataclasses.replace(
      net, name=f"{net.name}+{CONFIDENCE}", module=ConfidenceNet(net.module),
      params=variables, weights_id=f"{net.weights_id}+{CONFIDENCE}{tag:08x}",
      outputs=(*net.outputs, CONFIDENCE),
      head_path=None if net.head_path is None else ("inner", *net.head_path))

"""Each method's defaults for the configs, taken from the library (one place).

`DLSR`: the defaults of a DLSR row (`dlsr_jax.detectors.dlsr.DLSRSettings()`, which takes
them from the library's LFDN / schedule / AdamW / loop / DDIM configs); common.py's
c.model / c.schedule / c.optim / c.train / c.eval blocks start from them (`DLSR_REFS`
names which key follows which setting). `lfdn_size(C)`: the paper's LFDN for C features
(W = 2C, E = C, N = 16; `dlsr_jax.lfdn.paper_config`), which protocol.py applies per
backbone.
"""

from __future__ import annotations

from dlsr_jax import lfdn
from dlsr_jax.detectors.dlsr import DLSRSettings

DLSR = DLSRSettings()


def lfdn_size(num_features: int) -> tuple[int, int, int]:
  """(width, embed_dim, num_blocks) of the paper's LFDN for `num_features` = C."""
  cfg = lfdn.paper_config(num_features)
  return cfg.width, cfg.embed_dim, cfg.num_blocks

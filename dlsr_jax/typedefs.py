"""Type aliases and shape conventions used across dlsr_jax.

Shapes are written in docstrings as ``[B, H, W, C]`` (images, NHWC) and
``[B, C]`` (pooled multi-layer features). Scores are ``[N]`` or ``[K, N]``
(one row per noise step k). Everywhere: a score is higher for inputs that look
more out-of-distribution.
"""

from typing import Any, Mapping

import jax
import numpy as np

PyTree = Any
PRNGKey = jax.Array
Array = jax.Array
Params = PyTree
Batch = Mapping[str, np.ndarray]

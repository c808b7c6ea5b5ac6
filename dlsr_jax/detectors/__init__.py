"""Post-hoc OOD detectors, one module each (higher score = more OOD).

`make(type, **settings)` imports `dlsr_jax.detectors.<type>` by name and calls its `make`;
importing this package imports only `base`, never every detector module.
"""

from dlsr_jax.detectors.base import Detector, SetArrays, available, make

__all__ = ["Detector", "SetArrays", "available", "make"]

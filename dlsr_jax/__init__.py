"""dlsr_jax: DLSR unsupervised OOD detection and its baselines in JAX/Flax.

Importing this package has no side effects: no flags, no I/O, no device work.
Submodules are imported explicitly, e.g. ``from dlsr_jax import scoring``.
"""

__version__ = "0.1.0"

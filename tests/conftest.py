"""Test-wide setup. Runs before JAX initialises its backends."""

import os

# Four fake CPU devices so sharded code paths are exercised on a CPU-only machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

"""Test-wide setup. Runs before JAX initialises its backends."""

import os

# Four fake CPU devices so sharded code paths are exercised on a CPU-only machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import socket  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
  """Makes any attempt to open a network connection fail loudly."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"test tried to use the network: {args}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)

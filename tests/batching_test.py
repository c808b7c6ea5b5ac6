"""data.batching.map_padded: one batch shape, padding stripped, every input form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlsr_jax.data import batching


def test_pads_last_batch_with_last_row_and_strips_it():
  x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
  seen = []

  def fn(batch):
    seen.append(batch.copy())
    return batch.sum(axis=1)

  out = batching.map_padded(fn, x, batch_size=3)
  np.testing.assert_array_equal(out, x.sum(axis=1))
  assert [b.shape for b in seen] == [(3, 2)] * 3
  np.testing.assert_array_equal(seen[-1], x[[6, 6, 6]])


def test_dict_and_tuple_inputs_and_pytree_outputs():
  a = np.arange(5, dtype=np.int32)
  b = np.arange(10, dtype=np.float32).reshape(5, 2)
  out = batching.map_padded(lambda d: {"s": d["a"] + d["b"][:, 0], "b": d["b"]},
                            {"a": a, "b": b}, batch_size=2)
  np.testing.assert_array_equal(out["s"], a + b[:, 0])
  np.testing.assert_array_equal(out["b"], b)
  pair = batching.map_padded(lambda u, v: (u * 2, v), (a, b), batch_size=4)
  np.testing.assert_array_equal(pair[0], a * 2)
  np.testing.assert_array_equal(pair[1], b)


def test_one_compile_and_batch_size_independent():
  x = np.random.default_rng(0).normal(size=(23, 4)).astype(np.float32)
  traces = []

  @jax.jit
  def fn(batch):
    traces.append(batch.shape)
    return jnp.tanh(batch) @ jnp.ones((4,))

  whole = batching.map_padded(fn, x, batch_size=100)   # one batch of 23: never padded up
  assert traces == [(23, 4)]
  traces.clear()
  for bs in (1, 5, 23):
    np.testing.assert_allclose(batching.map_padded(fn, x, bs), whole, rtol=1e-6)
  assert traces == [(1, 4), (5, 4)]   # one trace per batch shape; 23 was already compiled
  assert isinstance(whole, np.ndarray) and whole.shape == (23,)


@pytest.mark.parametrize("arrays,bs,match", [
    (np.zeros((3, 2)), 0, "batch_size must be a positive int"),
    (np.zeros((3, 2)), 2.0, "batch_size must be a positive int"),
    (np.zeros((3, 2)), True, "batch_size must be a positive int"),
    ((np.zeros(3), np.zeros(4)), 2, r"not row-aligned.*'#0': 3, '#1': 4"),
    ({"x": np.zeros((0, 2))}, 2, "no rows"),
    ((), 2, "at least one array"),
    (np.float32(1.0), 2, "scalar"),
])
def test_errors(arrays, bs, match):
  with pytest.raises(ValueError, match=match):
    batching.map_padded(lambda *a: a, arrays, bs)


def test_full_batches_pads_a_small_set_up_and_progress_keeps_outputs():
  x = np.arange(5, dtype=np.float32)
  seen = []
  out = batching.map_padded(lambda b: (seen.append(b.shape), b * 2)[1], x, 8, full_batches=True)
  assert seen == [(8,)]
  np.testing.assert_array_equal(out, x * 2)
  seen.clear()
  again = batching.map_padded(lambda b: (seen.append(b.shape), b * 2)[1], x, 2,
                              full_batches=True, progress=True, desc="test")
  assert seen == [(2,)] * 3
  np.testing.assert_array_equal(again, x * 2)

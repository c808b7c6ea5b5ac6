"""dlsr_jax.evaluation.checks: the data checks take plain values and name the caller's keys."""

import numpy as np
import pytest

from dlsr_jax.evaluation import checks


def test_count_sources_names_the_key():
  def count(source):
    if source == "gone":
      raise FileNotFoundError("no such file")
    return 7
  assert checks.count_sources({"train": "a"}, {"train": "data.train"}, count) == {"train": 7}
  with pytest.raises(FileNotFoundError, match=r"^data.ood.x = 'gone': no such file$"):
    checks.count_sources({"x": "gone"}, {"x": "data.ood.x"}, count)


def test_batch_sizes_and_labels():
  checks.check_batch_sizes({"k.batch_size": 4}, 4, "t")
  with pytest.raises(ValueError, match=r"^k.batch_size = 5 is more than the 4 images of "
                     r"data.train \(t\): lower it$"):
    checks.check_batch_sizes({"k.batch_size": 5}, 4, "t")
  checks.check_labels(np.array([0, 1]), "t", ["net a"], {"a": (2, "c.nets.a.num_classes")})
  with pytest.raises(ValueError, match=r"has num_classes=2 \(key.k\)$"):
    checks.check_labels(np.array([0, 2]), "t", ["net a"], {"a": (2, "key.k")})
  with pytest.raises(ValueError, match="1 unlabelled images .* net a, row r train"):
    checks.check_labels(np.array([0, -1]), "t", ["net a", "row r"], {})


class _Store:
  """What split_arrays / fit_arrays read of an ArrayStore: get(net, set, keys)."""

  def get(self, net, set_name, keys):
    base = {"train": 0, "val": 100, "ood_val": 200}[set_name]
    return {k: np.arange(base, base + 6) for k in keys}


def test_split_and_fit_arrays_without_a_config():
  from dlsr_jax.evaluation import arrays
  rows = lambda n: (np.arange(2, n), np.arange(2))                          # noqa: E731
  train = arrays.split_arrays(_Store(), "net", "train", ["labels"], rows)
  np.testing.assert_array_equal(train["labels"], [2, 3, 4, 5])
  val = arrays.split_arrays(_Store(), "net", arrays.VAL, ["labels"], rows)
  np.testing.assert_array_equal(val["labels"], [0, 1])
  own = arrays.split_arrays(_Store(), "net", arrays.VAL, ["labels"])        # data.val a source
  np.testing.assert_array_equal(own["labels"], np.arange(100, 106))
  whole = arrays.fit_arrays(_Store(), "net", "train", ["labels"], True, rows)  # DLSR: all rows
  np.testing.assert_array_equal(whole["labels"], np.arange(6))
  part = arrays.fit_arrays(_Store(), "net", "train", ["labels"], False, rows)
  np.testing.assert_array_equal(part["labels"], [2, 3, 4, 5])


def test_settings_checks_without_a_config():
  from dlsr_jax import settings_checks
  tree = {"eval": {"stride": 0, "eta": 0.0, "release_compat": False},
          "schedule": {"kind": "linear", "num_steps": 10, "beta_start": 1e-4, "beta_end": 0.02},
          "data": {"train": "npz:x.npz"}}
  assert settings_checks.get(tree, "eval.stride") == (True, 0)
  assert settings_checks.get(tree, "eval.nope") == (False, None)
  assert list(settings_checks.strings(tree)) == [("schedule.kind", "linear"),
                                                 ("data.train", "npz:x.npz")]
  found = settings_checks.library_problems(tree["eval"], tree["schedule"], "--x.")
  assert len(found) == 1 and found[0].startswith("--x.eval (DDIM): ")
  with pytest.raises(ValueError, match=r"^invalid config: a$"):
    settings_checks.raise_problems(["a", "a"])
  with pytest.raises(ValueError, match=r"^invalid config:\n  a\n  b$"):
    settings_checks.raise_problems(["a", "b"])
  settings_checks.raise_problems([])

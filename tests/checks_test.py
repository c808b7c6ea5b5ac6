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

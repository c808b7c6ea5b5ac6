"""dlsr_jax.evaluation.rows and classifier.net_spec / training_order: plain blocks in, checked
specs out, messages naming the block by the caller's key prefix (no config involved)."""

import pytest

from dlsr_jax.detectors.base import FeatureLayout
from dlsr_jax.evaluation import rows
from dlsr_jax.training import classifier

LAYOUT = FeatureLayout(names=("a",), channels=(8,))


def test_row_spec_and_prefix():
  spec = rows.row_spec("m", {"type": "mahalanobis"}, {}, LAYOUT, "run.rows")
  assert (spec.type, spec.net, spec.tune) == ("mahalanobis", "backbone", False)
  assert "features" in spec.reads + spec.fit_reads
  with pytest.raises(ValueError, match=r"^run\.rows\.e: detector 'energy' reads \['logits'\]"):
    rows.row_spec("e", {"type": "energy"}, {}, LAYOUT, "run.rows")
  with pytest.raises(ValueError, match=r"^run\.rows\.x: unknown detector type 'nope'"):
    rows.row_spec("x", {"type": "nope"}, {}, LAYOUT, "run.rows")
  with pytest.raises(ValueError, match=r"^run\.rows\.odin: detector 'odin' runs a classifier"):
    rows.row_spec("odin", {}, {}, LAYOUT, "run.rows")
  # the results key of a one-score row is its name: two rows of one name clash
  with pytest.raises(ValueError, match=r"^p\.k and p\.k both give the results key 'k'"):
    rows.check_result_keys([rows.RowSpec("k", "msp", "backbone", {}, (), (), ())] * 2, "p")


def test_net_checks_prefix():
  with pytest.raises(ValueError, match=r"^nets\.a: kind must be 'classifier' or 'head'"):
    classifier.net_spec("a", {"kind": "x"}, "nets")
  spec = classifier.net_spec("h", {"kind": "head", "model": "linear_head"}, "nets")
  assert (spec.kind, spec.trains, spec.recipe["num_classes"]) == ("head", False, 10)
  assert "features" in classifier.provides(spec)
  loop_ = {n: classifier.NetSpec(n, "head", "linear_head", init_from=s,
                                 recipe={"num_classes": 10, "epochs": 0})
           for n, s in (("a", "b"), ("b", "a"))}
  with pytest.raises(ValueError, match=r"^nets: init_from cycle a -> b -> a"):
    classifier.training_order(loop_, "nets")

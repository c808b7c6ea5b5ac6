"""README's Python API examples run as written, on small data and weights this test makes."""

import os
import re

import numpy as np
import torch

from reference import torch_resnet_cifar

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _block(marker: str) -> str:
  text = open(README).read()
  match = re.search(rf"<!-- example: {marker} -->\n```python\n(.*?)```", text, re.S)
  assert match, f"README has no python block after <!-- example: {marker} -->"
  return match.group(1)


def test_readme_python_api_examples_run(tmp_path, capsys):
  rng = np.random.default_rng(0)
  for name, n in (("cifar10_train_exact", 64), ("cifar10_test_exact", 24), ("dtd", 20),
                  ("isun", 16)):
    np.savez(tmp_path / f"{name}.npz",
             images=rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, size=n))
  torch.manual_seed(0)
  weights = tmp_path / "resnet20.th"
  torch.save({"state_dict": torch_resnet_cifar.CifarResNet(20).state_dict()}, weights)
  first = _block("resnet20")
  for const, value in (("WEIGHTS", weights), ("DATA", tmp_path)):
    first, n = re.subn(rf"^{const} = .*$", f"{const} = {str(value)!r}", first, flags=re.M)
    assert n == 1, const
  first = first.replace('"/tmp/resnet20_ood"', repr(str(tmp_path / "out")))
  namespace = {}
  exec(compile(first, "README.md:resnet20", "exec"), namespace)  # pylint: disable=exec-used
  table = capsys.readouterr().out
  for row in ("msp", "energy", "odin", "knn"):
    assert f"| {row} | {row} |" in table
  assert "`dtd`" in table and "`isun`" in table
  records = namespace["results"].to_records()
  assert {r["set"] for r in records} == {"dtd", "isun", "average"}
  assert all(0.0 <= r["auroc"] <= 1.0 for r in records)
  assert (tmp_path / "out" / "results.csv").is_file()
  assert namespace["fit"]["pre_logits"].shape == (64, 64)

  exec(compile(_block("wrap"), "README.md:wrap", "exec"), namespace)  # pylint: disable=exec-used
  table = capsys.readouterr().out
  assert "| energy | energy |" in table and "| mahalanobis | mahalanobis |" in table
  assert namespace["W"].shape == (16, 10) and namespace["b"].shape == (10,)
  assert namespace["fit"]["logits"].shape == (64, 10)

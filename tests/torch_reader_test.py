"""The torch-free checkpoint reader: formats, dtypes, views, wrappers and safety."""

import argparse
import collections
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from dlsr_jax import backbones
from dlsr_jax.weights import torch_reader
from dlsr_jax.weights.torch_reader import (CheckpointFormatError, UnsafeCheckpointError,
                                           read_torch_checkpoint)

LITE0_PATH = backbones.imagenet_weights_path("efficientnet_lite0")
FORMATS = pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])


def _tensors():
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  return {
      "f32": torch.randn(3, 4),
      "transposed": torch.randn(5, 6).t(),  # non-contiguous strides
      "slice": torch.arange(10)[2:9:3],  # storage offset + stride, int64
      "shared_a": base, "shared_b": base[1:, 2:],  # two views of one storage
      "f16": torch.randn(7).half(),
      "bf16": torch.randn(2, 3).bfloat16(),
      "f64": torch.randn(2).double(),
      "i32": torch.tensor([1, -2, 3], dtype=torch.int32),
      "u8": torch.tensor([0, 255], dtype=torch.uint8),
      "bool": torch.tensor([True, False]),
      "param": torch.nn.Parameter(torch.randn(2, 2)),
      "scalar": torch.tensor(3.5),
      "empty": torch.zeros(0, 3),
  }


def _expected(t: torch.Tensor) -> np.ndarray:
  t = t.detach()
  if t.dtype in (torch.float16, torch.bfloat16):
    t = t.float()
  return t.numpy()


@FORMATS
def test_round_trip_dtypes_and_views(tmp_path, zip_format):
  tensors = _tensors()
  path = tmp_path / "t.pth"
  torch.save(tensors, path, _use_new_zipfile_serialization=zip_format)
  got = read_torch_checkpoint(path)
  assert list(got) == list(tensors)
  for k, t in tensors.items():
    want = _expected(t)
    assert got[k].dtype == want.dtype and got[k].shape == want.shape, k
    np.testing.assert_array_equal(got[k], want, err_msg=k)
  assert got["bf16"].dtype == np.float32 and got["f16"].dtype == np.float32


@FORMATS
def test_wrappers_and_module_prefix(tmp_path, zip_format):
  sd = collections.OrderedDict([("module.conv.weight", torch.ones(2, 1, 3, 3)),
                                ("module.bn.num_batches_tracked", torch.tensor(5))])
  path = tmp_path / "w.pth"
  torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, "state_dict": sd}, path,
             _use_new_zipfile_serialization=zip_format)
  got = read_torch_checkpoint(path)
  assert list(got) == ["conv.weight", "bn.num_batches_tracked"]
  torch.save({"model": {"a.b": torch.zeros(1)}}, path, _use_new_zipfile_serialization=zip_format)
  assert list(read_torch_checkpoint(path)) == ["a.b"]


def test_reads_shipped_lite0_legacy_file():
  assert not zipfile.is_zipfile(LITE0_PATH)  # legacy format
  with open(LITE0_PATH, "rb") as f:
    assert f.read(2) == b"\x80\x02"
  got = read_torch_checkpoint(LITE0_PATH)
  ref = torch.load(LITE0_PATH, weights_only=True)
  assert list(got) == list(ref)
  for k, v in ref.items():
    np.testing.assert_array_equal(got[k], v.numpy(), err_msg=k)


def test_safetensors_round_trip(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  sd = {"a.weight": np.random.randn(3, 2).astype(np.float32), "b": np.arange(4)}
  path = str(tmp_path / "x.safetensors")
  save_file(sd, path, metadata={"k": "v"})
  got = read_torch_checkpoint(path)
  assert list(got) == list(sd)
  for k in sd:
    np.testing.assert_array_equal(got[k], sd[k])
  assert torch_reader.read_safetensors(path)[1] == {"k": "v"}


# ------------------------------------------------------------------ safety --
class _Evil:
  """Pickles as a call to os.system (what a malicious checkpoint would do)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


class _EvalEvil:

  def __reduce__(self):
    return (eval, ("__import__('os').getcwd()",))


@FORMATS
def test_refuses_code_execution(tmp_path, zip_format):
  marker = tmp_path / "pwned_marker"
  path = tmp_path / "evil.pth"
  payload = {"_conv_stem.weight": torch.zeros(2), "evil": _Evil(marker)}
  torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
  with pytest.raises(UnsafeCheckpointError, match=r"refusing to load global 'posix\.system'"):
    read_torch_checkpoint(path)
  with pytest.raises(UnsafeCheckpointError, match=r"'posix\.system'"):
    backbones.load("efficientnet_lite0", str(path))
  assert not marker.exists()
  torch.save({"w": torch.zeros(1), "e": _EvalEvil()}, path,
             _use_new_zipfile_serialization=zip_format)
  with pytest.raises(UnsafeCheckpointError, match=r"'builtins\.eval'"):
    read_torch_checkpoint(path)


def test_refuses_payload_in_legacy_header(tmp_path):
  marker = tmp_path / "pwned_marker"
  path = tmp_path / "evil_header.pth"
  with open(path, "wb") as f:
    pickle.dump(_Evil(marker), f, protocol=2)  # where the magic number should be
  with pytest.raises(UnsafeCheckpointError, match="posix.system"):
    read_torch_checkpoint(path)
  assert not marker.exists()


def _write_zip(path, obj, storages: dict[str, bytes]):
  """Writes a zip checkpoint by hand; tensors come from _FakeTensor objects."""
  buf = io.BytesIO()

  class Pickler(pickle.Pickler):

    def persistent_id(self, o):
      return o.pid if isinstance(o, _FakeStorage) else None

  Pickler(buf, protocol=2).dump(obj)
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", buf.getvalue())
    for key, data in storages.items():
      zf.writestr(f"archive/data/{key}", data)


class _FakeStorage:

  def __init__(self, key, numel):
    self.pid = ("storage", torch.FloatStorage, key, "cpu", numel)


class _FakeTensor:

  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, size, stride, False, collections.OrderedDict())

  def __reduce__(self):
    return (torch._utils._rebuild_tensor_v2, self.args)  # pylint: disable=protected-access


def test_hand_written_zip_and_out_of_bounds_views(tmp_path):
  path = tmp_path / "hand.pth"
  data = np.arange(6, dtype="<f4").tobytes()
  _write_zip(path, {"w": _FakeTensor(_FakeStorage("0", 6), 1, (2, 2), (1, 2))}, {"0": data})
  np.testing.assert_array_equal(read_torch_checkpoint(path)["w"], [[1, 3], [2, 4]])
  _write_zip(path, {"w": _FakeTensor(_FakeStorage("0", 6), 0, (10,), (1,))}, {"0": data})
  with pytest.raises(CheckpointFormatError, match="reads element 9 of storage '0'"):
    read_torch_checkpoint(path)
  _write_zip(path, {"w": _FakeTensor(_FakeStorage("0", 100), 0, (2,), (1,))}, {"0": data})
  with pytest.raises(CheckpointFormatError, match="has 24 bytes, expected 400"):
    read_torch_checkpoint(path)
  _write_zip(path, {"w": _FakeTensor(_FakeStorage("1", 6), 0, (2,), (1,))}, {"0": data})
  with pytest.raises(CheckpointFormatError, match="missing storage record"):
    read_torch_checkpoint(path)


def test_garbage_and_truncated_files(tmp_path):
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(os.urandom(1000).replace(b"\x80", b"\x00"))
  with pytest.raises(CheckpointFormatError, match="garbage.pth"):
    read_torch_checkpoint(garbage)
  empty = tmp_path / "empty.pth"
  empty.write_bytes(b"")
  with pytest.raises(CheckpointFormatError, match="empty.pth"):
    read_torch_checkpoint(empty)
  raw = open(LITE0_PATH, "rb").read()
  for cut in (50, 20_000, len(raw) // 2, len(raw) - 3):
    trunc = tmp_path / f"trunc_{cut}.pth"
    trunc.write_bytes(raw[:cut])
    with pytest.raises(CheckpointFormatError, match=f"trunc_{cut}.pth"):
      read_torch_checkpoint(trunc)
  zpath = tmp_path / "z.pth"
  torch.save({"a": torch.zeros(1000)}, zpath)
  zraw = zpath.read_bytes()
  ztrunc = tmp_path / "ztrunc.pth"
  ztrunc.write_bytes(zraw[: len(zraw) // 2])
  with pytest.raises(CheckpointFormatError, match="ztrunc.pth"):
    read_torch_checkpoint(ztrunc)
  bad_st = tmp_path / "bad.safetensors"
  bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
  with pytest.raises(CheckpointFormatError, match="bad.safetensors"):
    read_torch_checkpoint(bad_st)
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    read_torch_checkpoint(tmp_path / "missing.pth")


def test_non_tensor_checkpoint_is_rejected(tmp_path):
  path = tmp_path / "no_tensors.pth"
  torch.save({"epoch": 3, "name": "x"}, path)
  with pytest.raises(CheckpointFormatError, match="no tensors found"):
    read_torch_checkpoint(path)


def test_pickle_cannot_modify_emulated_globals(tmp_path):
  header = b"".join(pickle.dumps(o, protocol=2) for o in (
      torch_reader.LEGACY_MAGIC_NUMBER, torch_reader.LEGACY_PROTOCOL_VERSION,
      {"protocol_version": 1001, "little_endian": True}))
  # GLOBAL _rebuild_tensor_v2; BUILD with slot state {"fn": None}: tries setattr.
  build_slots = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x02\x00\x00\x00fnNs\x86b."
  path = tmp_path / "build.pth"
  path.write_bytes(header + build_slots)
  with pytest.raises(UnsafeCheckpointError, match="tried to set attribute 'fn'"):
    read_torch_checkpoint(path)
  # BUILD with a plain dict state: the stand-ins have no __dict__.
  path.write_bytes(header + b"\x80\x02ctorch\nFloatStorage\n}X\x01\x00\x00\x00aNsb.")
  with pytest.raises(CheckpointFormatError):
    read_torch_checkpoint(path)


@FORMATS
def test_training_checkpoint_metadata_is_plain_data(tmp_path, zip_format):
  """args (an argparse.Namespace), optimizer, scaler and epoch read as plain data."""
  model = torch.nn.Linear(3, 2)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.02)
  model(torch.randn(4, 3)).sum().backward()
  opt.step()
  args = argparse.Namespace(batch_size=256, lr=1e-5, config="c.yaml", distributed=False,
                            resume="", layers=[1, 2], none=None)
  scaler = {"scale": 65536.0, "growth_factor": 2.0, "growth_interval": 2000,
            "_growth_tracker": 0}
  path = tmp_path / "train.pth"
  torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 7,
              "scaler": scaler, "args": args}, path, _use_new_zipfile_serialization=zip_format)
  got = torch_reader.load_torch_object(path)
  assert type(got["args"]) is dict and got["args"] == vars(args)
  assert got["epoch"] == 7 and got["scaler"] == scaler
  want = opt.state_dict()
  assert got["optimizer"]["param_groups"] == want["param_groups"]
  np.testing.assert_array_equal(got["optimizer"]["state"][0]["exp_avg"],
                                want["state"][0]["exp_avg"].numpy())
  assert list(read_torch_checkpoint(path)) == ["weight", "bias"]


def test_namespace_stand_in_cannot_run_code(tmp_path):
  header = b"".join(pickle.dumps(o, protocol=2) for o in (
      torch_reader.LEGACY_MAGIC_NUMBER, torch_reader.LEGACY_PROTOCOL_VERSION,
      {"protocol_version": 1001, "little_endian": True}))
  path = tmp_path / "ns.pth"
  marker = tmp_path / "pwned_marker"
  torch.save({"args": argparse.Namespace(lr=1.0, hook=_Evil(marker))}, path)
  with pytest.raises(UnsafeCheckpointError, match=r"'posix\.system'"):
    torch_reader.load_torch_object(path)
  assert not marker.exists()
  # REDUCE: argparse.Namespace called with arguments.
  path.write_bytes(header + b"\x80\x02cargparse\nNamespace\nX\x01\x00\x00\x00a\x85R.")
  with pytest.raises(UnsafeCheckpointError, match="called argparse.Namespace with arguments"):
    torch_reader.load_torch_object(path)
  # BUILD on the class itself, and BUILD with a non-dict state.
  path.write_bytes(header + b"\x80\x02cargparse\nNamespace\n}X\x01\x00\x00\x00aNsb.")
  with pytest.raises(CheckpointFormatError):
    torch_reader.load_torch_object(path)
  path.write_bytes(header + b"\x80\x02cargparse\nNamespace\n)\x81K\x01b.")
  with pytest.raises(CheckpointFormatError, match="must be a dict of attributes"):
    torch_reader.load_torch_object(path)

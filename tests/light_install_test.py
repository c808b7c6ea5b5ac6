"""The light install: metrics without TensorBoard, missing extras named, a quiet console.

A missing extra is simulated with `sys.modules[name] = None` (what Python does for a module
that cannot be imported), so these tests run in the full test environment too.
"""

import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from dlsr_jax import cli, extras, logs
from dlsr_jax.data import sources
from dlsr_jax.training import metrics_writer
from experiments import build, launch, validate
from experiments.configs import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_tensorboard(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorboard", None)


@pytest.fixture
def no_tfds(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _events(path):
  """The Event protos of a TFRecord event file, each record's two CRCs checked."""
  from tensorboard.compat.proto import event_pb2
  from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
  with open(path, "rb") as f:
    data = f.read()
  out, i = [], 0
  while i < len(data):
    header = data[i:i + 8]
    (n,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", data[i + 8:i + 12])[0] == masked_crc32c(header)
    body = data[i + 12:i + 12 + n]
    assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == masked_crc32c(body)
    out.append(event_pb2.Event.FromString(body))
    i += 16 + n
  return out


# ------------------------------------------------------------- metrics writer --
def test_metrics_jsonl_is_written_without_tensorboard(tmp_path, no_tensorboard):
  assert not extras.installed("tensorboard")
  with metrics_writer.MetricsWriter(str(tmp_path), tensorboard="auto") as w:
    w.write_scalars(10, {"loss": np.float32(0.5), "grad_norm": 2})
    w.write_scalars(20, {"loss": float("nan")})
    assert w.event_file is None
  rows = _jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == [10, 20]
  assert rows[0]["loss"] == 0.5 and rows[0]["grad_norm"] == 2.0 and rows[1]["loss"] is None
  assert os.listdir(tmp_path) == ["metrics.jsonl"]
  with metrics_writer.MetricsWriter(str(tmp_path)) as w:   # a resumed run appends
    w.write_scalars(30, {"loss": 0.25})
  assert [r["step"] for r in _jsonl(tmp_path / "metrics.jsonl")] == [10, 20, 30]


def test_tensorboard_on_without_the_extra_fails_before_writing(tmp_path, no_tensorboard):
  with pytest.raises(extras.MissingExtra, match=r"pip install 'dlsr_jax\[tensorboard\]'"):
    metrics_writer.MetricsWriter(str(tmp_path / "run"), tensorboard="on")
  assert not (tmp_path / "run").exists()
  with pytest.raises(extras.MissingExtra, match=r"--tensorboard=on"):
    metrics_writer.set_tensorboard("on")
  assert metrics_writer.get_tensorboard() == "auto"   # unchanged by the failed call
  with pytest.raises(ValueError, match="one of"):
    metrics_writer.check_mode("yes")


def test_tensorboard_auto_and_on_write_events_off_does_not(tmp_path):
  for mode in ("auto", "on"):
    with metrics_writer.MetricsWriter(str(tmp_path / mode), tensorboard=mode) as w:
      w.write_scalars(5, {"loss": 0.125, "lr": 0.01})
      path = w.event_file
    events = _events(path)
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 5
    assert {v.tag: v.simple_value for v in events[1].summary.value} == pytest.approx(
        {"loss": 0.125, "lr": 0.01})
  with metrics_writer.MetricsWriter(str(tmp_path / "off"), tensorboard="off") as w:
    w.write_scalars(5, {"loss": 0.125})
  assert os.listdir(tmp_path / "off") == ["metrics.jsonl"]
  with metrics_writer.MetricsWriter(str(tmp_path / "restored"), tensorboard="on"):
    pass   # a finished run restored, nothing trained: no empty event file
  assert os.listdir(tmp_path / "restored") == ["metrics.jsonl"]


def test_event_file_writer_does_not_import_tensorflow(tmp_path):
  code = textwrap.dedent(f"""
      import sys
      from dlsr_jax.training import metrics_writer
      with metrics_writer.MetricsWriter({str(tmp_path)!r}, tensorboard="on") as w:
        w.write_scalars(1, {{"loss": 1.0}})
      print(sorted(m for m in ("tensorflow", "clu") if m in sys.modules))
  """)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, check=True).stdout
  assert out.strip() == "[]"
  assert len([f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]) == 1


def test_a_disabled_writer_writes_nothing(tmp_path):
  w = metrics_writer.MetricsWriter(str(tmp_path / "p1"), tensorboard="on", enabled=False)
  w.write_scalars(1, {"loss": 1.0})
  w.close()
  assert not (tmp_path / "p1").exists()


def test_cli_tensorboard_on_without_the_extra_exits_1_naming_it(monkeypatch, capsys,
                                                                no_tensorboard):
  monkeypatch.setattr(launch, "_TENSORBOARD", types.SimpleNamespace(value="on"))
  with pytest.raises(SystemExit) as exit_info:
    launch.check_tensorboard()
  assert exit_info.value.code == cli.FAILED_EXIT_CODE
  err = capsys.readouterr().err
  assert err.startswith("FAILED (MissingExtra): --tensorboard=on") and \
      "pip install 'dlsr_jax[tensorboard]'" in err


# -------------------------------------------------------------------- tfds extra --
def test_tfds_source_without_the_extra_names_it(no_tfds):
  with pytest.raises(extras.MissingExtra, match=r"'tfds:cifar10:test'.*dlsr_jax\[tfds\]"):
    sources.load_images("tfds:cifar10:test")
  with pytest.raises(extras.MissingExtra, match=r"dlsr_jax\[tfds\]"):
    sources.count_images("tfds:mnist:train")


def test_config_with_tfds_sources_fails_validation_without_the_extra(no_tfds):
  c = quickstart.get_config("tiny")
  settings = build.config_record(c)
  assert not any("tfds" in p for p in validate.problems(settings))   # offline: no extra needed
  with c.unlocked():
    c.data.ood.mnist = "tfds:mnist:test"
    c.data.extra_ood = "svhn=tfds:svhn_cropped:test"
  found = [p for p in validate.problems(build.config_record(c)) if "dlsr_jax[tfds]" in p]
  assert sorted(p.split("=")[0] for p in found) == ["--config.data.extra_ood",
                                                    "--config.data.ood.mnist"], found
  with pytest.raises(ValueError, match=r"--config.data.ood.mnist='tfds:mnist:test'"):
    build.validate_config(c)


# ------------------------------------------------------------------ quiet console --
_SCRIPT = textwrap.dedent("""
    import logging, sys
    from absl import app, logging as absl_logging
    from dlsr_jax import logs

    def main(_):
      logs.route(sys.argv[1], to_console=sys.argv[2] == "1", process_index=0)
      absl_logging.info("third-party absl info")             # this file is not the project's
      logging.getLogger("orbax.checkpoint").info("orbax info line")
      logging.getLogger("dlsr_jax.stage").info("our stage line")
      absl_logging.warning("a third-party warning")
      print("the table")

    app.run(main)
""")


@pytest.mark.parametrize("to_console", [False, True])
def test_third_party_info_goes_to_log_txt_not_the_console(tmp_path, to_console):
  script = tmp_path / "fake_cli.py"
  script.write_text(_SCRIPT)
  proc = subprocess.run([sys.executable, str(script), str(tmp_path / "wd"),
                         "1" if to_console else "0"], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=ROOT), timeout=120, check=True)
  console = proc.stdout + proc.stderr
  log = (tmp_path / "wd" / "log.txt").read_text()
  for line in ("third-party absl info", "orbax info line", "our stage line",
               "a third-party warning"):
    assert line in log
  assert "our stage line" in console and "a third-party warning" in console
  assert "the table" in proc.stdout
  for line in ("third-party absl info", "orbax info line"):
    assert (line in console) == to_console, console


def test_console_filter_keeps_project_records_by_path_or_name():
  f = logs.ConsoleFilter()

  def record(name, path, level=logging.INFO):
    return logging.LogRecord(name, level, path, 1, "msg", None, None)

  inside = os.path.join(ROOT, "dlsr_jax", "cache.py")
  orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert f.filter(record("absl", inside))
  assert f.filter(record("absl", os.path.join(ROOT, "experiments", "runner.py")))
  assert f.filter(record("dlsr_jax.x", orbax))
  assert not f.filter(record("absl", orbax))
  assert not f.filter(record("jax._src.xla_bridge", "/site-packages/jax/_src/xla_bridge.py"))
  assert f.filter(record("absl", orbax, logging.WARNING))
  assert logs.log_path("/w", 2) == "/w/log.2.txt"


_ROUTE_SCRIPT = textwrap.dedent("""
    import logging, sys
    from absl import app, flags
    from experiments import launch

    flags.DEFINE_string("workdir", None, "")
    flags.DEFINE_string("outdir", None, "")

    def main(_):
      launch.route_logs(0)
      logging.getLogger("orbax.checkpoint").info("orbax info line")
      print("done")

    app.run(main)
""")


@pytest.mark.parametrize("with_outdir", [False, True])
def test_logs_go_to_the_outdir_when_given_so_evaluate_writes_nothing_into_the_workdir(
    tmp_path, with_outdir):
  script = tmp_path / "fake_evaluate.py"
  script.write_text(_ROUTE_SCRIPT)
  wd, out = tmp_path / "wd", tmp_path / "out"
  wd.mkdir()
  args = [f"--workdir={wd}"] + ([f"--outdir={out}"] if with_outdir else [])
  subprocess.run([sys.executable, str(script), *args], cwd=ROOT, capture_output=True,
                 text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120, check=True)
  assert (out / "log.txt").is_file() == with_outdir
  assert sorted(os.listdir(wd)) == ([] if with_outdir else ["log.txt"])
  if with_outdir:
    assert "orbax info line" in (out / "log.txt").read_text()


def test_a_log_folder_that_cannot_be_made_leaves_the_logs_on_the_console(tmp_path):
  script = tmp_path / "fake_evaluate.py"
  script.write_text(_ROUTE_SCRIPT)
  (tmp_path / "a_file").write_text("x")
  proc = subprocess.run([sys.executable, str(script), f"--workdir={tmp_path / 'a_file' / 'wd'}"],
                        cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=ROOT), timeout=120, check=True)
  assert "no log file in" in proc.stderr and "orbax info line" in proc.stderr, proc.stderr
  assert "done" in proc.stdout

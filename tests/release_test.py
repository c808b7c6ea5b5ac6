"""The official release's trained checkpoints load into our LFDN and workdir."""

import argparse
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from dlsr_jax import lfdn, release, schedule  # noqa: E402
from dlsr_jax.weights.torch_reader import (CheckpointFormatError,  # noqa: E402
                                           UnsafeCheckpointError)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C, W, E, N = 12, 16, 8, 2
FORMATS = pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])


# A torch LFDN written here with the release's module names (written for this test, not
# the release's code): the state-dict keys and the computation our LFDN must reproduce.
class _Block(nn.Module):

  def __init__(self, width, mid, embed):
    super().__init__()
    self.in_layers = nn.Sequential(nn.GroupNorm(1, width), nn.SiLU(), nn.Linear(width, mid))
    self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(embed, mid))
    self.out_layers = nn.Sequential(nn.GroupNorm(1, mid), nn.SiLU(), nn.Dropout(0.0),
                                    nn.Linear(mid, width))

  def forward(self, x, emb):
    return x + self.out_layers(self.in_layers(x) + self.emb_layers(emb))


class _TorchLFDN(nn.Module):

  def __init__(self, c=C, width=W, embed=E, blocks=N, mid=None):
    super().__init__()
    self.width = width
    self.input_proj = nn.Sequential(nn.SiLU(), nn.Linear(c, width))
    self.time_embed = nn.Sequential(nn.Linear(width, embed), nn.SiLU(), nn.Linear(embed, embed))
    self.res_blocks = nn.ModuleList([_Block(width, mid or width, embed) for _ in range(blocks)])
    self.out = nn.Sequential(nn.GroupNorm(1, width), nn.SiLU(), nn.Linear(width, c))

  def forward(self, x, t):
    half = self.width // 2
    freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = self.time_embed(torch.cat([torch.cos(args), torch.sin(args)], -1))
    h = self.input_proj(x)
    for block in self.res_blocks:
      h = block(h, emb)
    return self.out(h)


class _Wrapper(nn.Module):

  def __init__(self, net):
    super().__init__()
    self.diffusion_model = net


class _Ema(nn.Module):
  """EMA buffers named like the release's: the parameter name without dots."""

  def __init__(self, model, num_updates):
    super().__init__()
    self.register_buffer("decay", torch.tensor(0.9999))
    self.register_buffer("num_updates", torch.tensor(num_updates, dtype=torch.int))
    for name, p in model.named_parameters():
      self.register_buffer(name.replace(".", ""), p.detach() + 0.1 * torch.randn_like(p))


class _LFDM(nn.Module):
  """model (the LFDN wrapper), model_ema, a frozen 'encoder', an embedder, schedule buffers."""

  def __init__(self, seed, num_updates, **kw):
    super().__init__()
    torch.manual_seed(seed)
    self.model = _Wrapper(_TorchLFDN(**kw))
    for p in self.model.parameters():  # random weights (the release zero-inits two layers)
      nn.init.normal_(p, 0.0, 0.3)
    self.model_ema = _Ema(self.model, num_updates)
    self.pretrained_encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    self.cond_stage_model = nn.Embedding(1, 8)
    abar = schedule.make_schedule().alphas_cumprod
    self.register_buffer("alphas_cumprod", torch.tensor(abar, dtype=torch.float32))
    self.register_buffer("betas", torch.tensor(1.0 - abar, dtype=torch.float32))


def _write(path, lfdm, epoch, zip_format=True):
  opt = torch.optim.AdamW(lfdm.parameters(), lr=1e-5, weight_decay=0.02)
  lfdm.model.diffusion_model(torch.randn(3, C), torch.tensor([1, 2, 3])).square().mean().backward()
  opt.step()
  args = argparse.Namespace(batch_size=256, lr=1e-5, weight_decay=0.02, epochs=150,
                            config="config/Config.yaml", output_dir="./output_dir",
                            distributed=False, class_cond=False, blr=1e-3, min_lr=0.0)
  ckpt = {"model": lfdm.state_dict(), "model_ema": None, "optimizer": opt.state_dict(),
          "epoch": epoch, "scaler": torch.amp.GradScaler("cpu").state_dict(), "args": args}
  torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
  return vars(args)


def _lfdn_weights(lfdm, ema=False):
  net = lfdm.model.diffusion_model
  if not ema:
    return {k: v.detach().numpy() for k, v in net.state_dict().items()}
  bufs = dict(lfdm.model_ema.named_buffers())
  return {k: bufs[("diffusion_model." + k).replace(".", "")].numpy()
          for k in net.state_dict()}


def _torch_forward(weights, x, t):
  net = _TorchLFDN()
  net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  with torch.inference_mode():
    return net(torch.from_numpy(x), torch.from_numpy(t)).numpy()


@FORMATS
def test_reads_release_checkpoint_and_matches_torch(tmp_path, zip_format):
  lfdm = _LFDM(seed=0, num_updates=1234)
  path = tmp_path / "checkpoint-149.pth"
  args = _write(path, lfdm, epoch=149, zip_format=zip_format)
  params, ema, info = release.read_release_checkpoint(path)

  assert info.config == lfdn.LFDNConfig(features=C, width=W, embed_dim=E, num_blocks=N)
  assert info.epoch == 149 and info.args == args and type(info.args) is dict
  assert info.has_ema and info.ema_num_updates == 1234
  assert info.ema_decay == pytest.approx(0.9999)
  np.testing.assert_allclose(info.alphas_cumprod, schedule.make_schedule().alphas_cumprod,
                             rtol=1e-6)
  assert info.num_ignored == len([k for k in lfdm.state_dict()
                                  if not k.startswith(("model.", "model_ema."))])
  assert info.num_ignored >= 8  # encoder conv + BN (incl. statistics), embedder, schedule

  raw_w, ema_w = _lfdn_weights(lfdm), _lfdn_weights(lfdm, ema=True)
  np.testing.assert_array_equal(params["in_proj"]["kernel"], raw_w["input_proj.1.weight"].T)
  np.testing.assert_array_equal(params["block_1"]["out_norm"]["scale"],
                                raw_w["res_blocks.1.out_layers.0.weight"])
  for p, w in ((params, raw_w), (ema, ema_w)):
    flat = {tuple(k.key for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(p)}
    assert len(flat) == len(w)
    for names, v in flat.items():
      want = w[release.torch_name(names)]
      np.testing.assert_array_equal(v, want.T if names[-1] == "kernel" else want)

  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, C)).astype(np.float32)
  t = np.array([0, 1, 3, 50, 99], np.int32)
  model = lfdn.LFDN(info.config)
  for p, w in ((params, raw_w), (ema, ema_w)):
    got = np.asarray(model.apply({"params": p}, x, t))
    want = _torch_forward(w, x, t)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(np.asarray(model.apply({"params": ema}, x, t)),
                         np.asarray(model.apply({"params": params}, x, t)))


def _save_sd(path, sd):
  torch.save({"model": sd, "epoch": 0}, path)


def test_clear_errors_for_bad_checkpoints(tmp_path):
  sd = _LFDM(seed=1, num_updates=3).state_dict()
  path = tmp_path / "bad.pth"

  bad = dict(sd)
  del bad["model.diffusion_model.res_blocks.1.emb_layers.1.bias"]
  _save_sd(path, bad)
  with pytest.raises(CheckpointFormatError, match=r"missing \['model\.diffusion_model\."
                     r"res_blocks\.1\.emb_layers\.1\.bias'\]"):
    release.read_release_checkpoint(path)

  bad = dict(sd)
  bad["model.diffusion_model.time_embed.2.weight"] = torch.zeros(E, E + 1)
  _save_sd(path, bad)
  with pytest.raises(CheckpointFormatError, match=r"time_embed\.2\.weight: \(8, 9\) \(want"):
    release.read_release_checkpoint(path)

  bad = dict(sd)
  bad["model.diffusion_model.res_blocks.0.extra.weight"] = torch.zeros(2)
  _save_sd(path, bad)
  with pytest.raises(CheckpointFormatError, match=r"unexpected .*res_blocks\.0\.extra\.weight"):
    release.read_release_checkpoint(path)

  bad = dict(sd)
  del bad["model_ema.diffusion_modelout2bias"]
  _save_sd(path, bad)
  with pytest.raises(CheckpointFormatError, match=r"EMA .*missing \['model_ema\.diffusion_m"):
    release.read_release_checkpoint(path)

  _save_sd(path, _LFDM(seed=1, num_updates=3, mid=W // 2).state_dict())
  with pytest.raises(CheckpointFormatError, match="bottleneck_channels 8 != model_channels 16"):
    release.read_release_checkpoint(path)

  _save_sd(path, {k: v for k, v in sd.items() if not k.startswith("model.")})
  with pytest.raises(CheckpointFormatError, match="no 'model.diffusion_model.*' tensors"):
    release.read_release_checkpoint(path)

  no_ema = {k: v for k, v in sd.items() if not k.startswith("model_ema.")}
  _save_sd(path, no_ema)
  params, ema, info = release.read_release_checkpoint(path)
  assert ema is None and not info.has_ema and info.ema_num_updates is None
  assert info.args == {} and info.epoch == 0


class _Evil:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_malicious_args_are_refused(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  ckpt = {"model": _LFDM(seed=2, num_updates=1).state_dict(), "epoch": 3,
          "args": argparse.Namespace(lr=1e-5, hook=_Evil(marker))}
  torch.save(ckpt, path)
  with pytest.raises(UnsafeCheckpointError, match=r"'posix\.system'"):
    release.read_release_checkpoint(path)
  assert not marker.exists()


def test_convert_command_end_to_end(tmp_path):
  # experiments.convert_release is only run as a command: importing it here would define its
  # absl flags in the test process, where other tests import other entry points.
  from experiments import build
  from experiments.configs import quickstart

  final, first = tmp_path / "checkpoint-4.pth", tmp_path / "checkpoint-0.pth"
  lfdm_final, lfdm_first = _LFDM(seed=3, num_updates=50), _LFDM(seed=4, num_updates=10)
  _write(final, lfdm_final, epoch=4)
  _write(first, lfdm_first, epoch=0, zip_format=False)
  wd = tmp_path / "wd"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.convert_release",
       "--config=experiments/configs/quickstart.py:tiny", f"--final={final}",
       f"--first={first}", f"--workdir={wd}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  assert f"C={C} W={W} E={E} N={N}" in proc.stdout
  assert "steps (10, 50)" in proc.stdout and "WARNING" not in proc.stdout
  flags = proc.stdout.split("evaluate with the same --config and: ")[1].split()
  assert "--config.eval.release_compat=True" in flags
  wd = wd / "dlsr"   # the default DLSR row's directory
  assert (wd / "config.json").exists()

  c = quickstart.get_config("tiny")  # what evaluate builds from --config and the flags
  for flag in flags:
    key, value = flag[len("--config."):].split("=")
    section, name = key.split(".")
    c[section][name] = type(c[section][name])(value == "True" if value in ("True", "False")
                                              else int(value))
  assert (c.model.width, c.model.embed_dim, c.model.num_blocks) == (W, E, N)
  assert c.train.lr_reference_steps == 10 == build.lr_reference_step(c)
  for lfdm, ref_step in ((lfdm_final, None), (lfdm_first, 10)):
    got = build.restore_ema(c, str(wd), C, reference_step=ref_step)
    want = _lfdn_weights(lfdm, ema=True)
    for path, v in jax.tree_util.tree_leaves_with_path(got):
      names = tuple(k.key for k in path)
      w = want[release.torch_name(names)]
      np.testing.assert_array_equal(np.asarray(v), w.T if names[-1] == "kernel" else w)

  # The converted release model scores (release_compat) as the release's arithmetic does,
  # run by the independent numpy reference with the torch module as the denoiser.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import release_reference as ref  # pylint: disable=g-import-not-at-top
  from dlsr_jax import diffusion, scoring, train  # pylint: disable=g-import-not-at-top
  params = build.restore_ema(c, str(wd), C)
  abar = schedule.make_schedule(build.schedule_config(c)).alphas_cumprod
  bounds = (0, 4, 8, C)
  cfg = scoring.ScoreConfig(boundaries=bounds, mfsim_skip_first=True,
                            ddim=diffusion.DDIMConfig(eta=1.0, release_compat=True))
  z0 = np.random.default_rng(5).normal(size=(6, C)).astype(np.float32)
  ids, key, k = np.arange(6, dtype=np.int32), jax.random.key(2), 3
  got = jax.jit(scoring.make_score_fn(train.lfdn_apply_fn(build.model_config(c, C)), abar,
                                      cfg))(params, z0, ids, jnp.asarray([k], jnp.int32), key)
  keys = scoring.sample_keys(key, jnp.asarray(ids))
  split = jax.vmap(jax.random.split)(jax.vmap(lambda kk: jax.random.fold_in(kk, 0))(keys))
  eps = np.asarray(jax.vmap(lambda kk: jax.random.normal(kk, (C,)))(split[:, 0]))
  steps = {t: np.asarray(jax.vmap(lambda kk: jax.random.normal(jax.random.fold_in(kk, t),
                                                                (C,)))(split[:, 1]))
           for t in range(1, k + 1)}
  weights = _lfdn_weights(lfdm_final, ema=True)
  rec = ref.release_reconstruct(lambda z, t: _torch_forward(weights, z.astype(np.float32), t),
                                z0, k, eps, abar, 1.0, steps)
  np.testing.assert_allclose(got["mse"][0], ref.mse(z0, rec), rtol=1e-4)
  np.testing.assert_allclose(got["mfsim"][0], ref.mfsim(z0, rec, bounds, True), rtol=1e-4,
                             atol=1e-6)

  again = subprocess.run(
      [sys.executable, "-m", "experiments.convert_release",
       "--config=experiments/configs/quickstart.py:tiny", f"--final={final}",
       f"--workdir={wd.parent}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode != 0 and "already has checkpoints" in again.stderr

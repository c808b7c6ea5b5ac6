"""GAN synthetic outliers: the joint confidence loss of Lee et al. (ICLR 2018).

"Training confidence-calibrated classifiers for detecting out-of-distribution
samples" trains a classifier together with a DCGAN (`models.dcgan`) whose
generator is pushed towards the boundary of the in-distribution: samples the
discriminator finds realistic but on which the classifier is unsure. With the
KL divergence to the uniform distribution U over the K classes,

  KL(U || p) = sum_k (1/K) log((1/K) / p_k) = -log K - (1/K) sum_k log p_k,

each training step does, in this order (SPEC 4.4):

  1. discriminator: BCE(D(x), 1) + BCE(D(G(z)), 0) on the real ID batch x
     (uint8 mapped to [-1, 1], not augmented) and G(z), z ~ N(0, I) [B, nz];
  2. generator: non-saturating -log sigmoid(D(G(z))) (same z, the updated D)
     + beta * KL(U || p(y | G(z))), the classifier (not yet updated) in train
     mode;
  3. classifier: CE(ID batch) + beta * KL(U || p(y | G(z'))) with fresh z' and
     the updated generator.

D and G use Adam (2e-4, betas 0.5 / 0.999) as in DCGAN; the classifier uses
the optimizer it is given. beta = 0.1 is the paper's CIFAR-10 value. The
paper's optional pull-away (entropy) term for the generator is not
implemented.

Choices:
* Images: G outputs [-1, 1]; the classifier sees G(z) as
  `net.normalise((G(z) + 1) / 2)`, the same scale as `net.preprocess` of uint8
  images (255 <-> 1), differentiably and without rounding to uint8.
* BatchNorm: all three networks run in train mode (batch statistics) within
  the step. Each network sees real and generated images in separate passes (their
  own batch statistics). Running statistics kept: the classifier's from its ID
  forward pass of step 3 only (the passes on generated images are discarded,
  so evaluation statistics describe in-distribution data); the discriminator's
  from step 1 (real, then fake); the generator's from its pass on z (steps 1
  and 2 share that one pass).
* The classifier's ID batch is augmented (random crop, pad 4, and flip) like
  `cross_entropy` unless `augment=False`; EMA of its params with `ema_decay`.

The train state is a `TrainState` of the classifier (params, opt_state,
batch_stats, ema_params) with `extra = {"gen": {"params", "batch_stats",
"opt_state"}, "disc": {...}}`. G and D are initialised from `seed`
(`models.dcgan.init_variables`), not from the loop's init key, so the state
depends on the seed alone. `export` gives the classifier's evaluation
variables; `finish` writes `gan_samples.png`, a grid of generator samples.
"""

from __future__ import annotations

import functools
import os
import zlib
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlsr_jax.models.dcgan import Discriminator, Generator, init_variables
from dlsr_jax.models.net import Net
from dlsr_jax.objectives import base, cross_entropy
from dlsr_jax.training import state as state_lib
from dlsr_jax.training.state import TrainState

GEN, DISC = "gen", "disc"
SAMPLES_FILE = "gan_samples.png"
RESOLUTION = 32
_SALT = zlib.crc32(b"gan_outliers") & 0x7FFFFFFF   # G/D init keys: apart from the loop's


# ----------------------------------------------------------------------------- losses


def kl_uniform(logits: jax.Array) -> jax.Array:
  """Mean over the batch of KL(U || softmax(logits)), U uniform over the K classes.

  Args:
    logits: [B, K].

  Returns:
    Scalar mean_b [-log K - (1/K) sum_k log p_bk] (0 for uniform predictions).
  """
  k = logits.shape[-1]
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(-jnp.log(float(k)) - jnp.mean(log_p, axis=-1))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """BCE(sigmoid(real), 1) + BCE(sigmoid(fake), 0), each a batch mean.

  Args:
    real_logits: [B] discriminator logits on real images.
    fake_logits: [B'] discriminator logits on generated images.

  Returns:
    Scalar mean(softplus(-real)) + mean(softplus(fake)) (= -log D(x) - log(1 - D(G(z)))).
  """
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def generator_loss(fake_logits: jax.Array, classifier_logits_on_fake: jax.Array,
                   beta: float) -> jax.Array:
  """Non-saturating GAN loss + beta * KL(U || classifier on G(z)).

  Args:
    fake_logits: [B] discriminator logits on G(z).
    classifier_logits_on_fake: [B, K] classifier logits on G(z).
    beta: weight of the KL term.

  Returns:
    Scalar mean(softplus(-fake_logits)) (= -log D(G(z))) + beta * kl_uniform.
  """
  return jnp.mean(jax.nn.softplus(-fake_logits)) + beta * kl_uniform(classifier_logits_on_fake)


def classifier_loss(logits_in: jax.Array, labels: jax.Array, logits_fake: jax.Array,
                    beta: float) -> jax.Array:
  """Cross-entropy on the ID batch + beta * KL(U || classifier on G(z')).

  Args:
    logits_in: [B, K] on the ID batch.
    labels: [B] int.
    logits_fake: [B', K] on generated images.
    beta: weight of the KL term.

  Returns:
    Scalar loss.
  """
  return cross_entropy.loss(logits_in, labels) + beta * kl_uniform(logits_fake)


# ----------------------------------------------------------------------------- images


def uint8_to_gan(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] in [0, 255] -> float32 in [-1, 1] (the GAN's scale)."""
  return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def gan_to_uint8(images: jax.Array) -> np.ndarray:
  """Float images in [-1, 1] -> uint8 [0, 255] on the host (rounded, clipped)."""
  x = np.asarray(jax.device_get(images), np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def sample_grid(images_uint8: np.ndarray, columns: int = 8, pad: int = 2,
                pad_value: int = 0) -> np.ndarray:
  """Tiles images into one picture, row by row.

  Args:
    images_uint8: [N, H, W, C] uint8.
    columns: images per row (at most N are used).
    pad: pixels of `pad_value` between tiles and around the grid.
    pad_value: the border's grey level.

  Returns:
    uint8 [rows * (H + pad) + pad, cols * (W + pad) + pad, C], rows = ceil(N / cols);
    empty tiles of the last row stay `pad_value`.
  """
  images = np.asarray(images_uint8)
  if images.ndim != 4 or images.dtype != np.uint8 or not len(images):
    raise ValueError(f"sample_grid expects uint8 images [N>0, H, W, C], got "
                     f"{images.dtype} {images.shape}")
  if columns < 1 or pad < 0:
    raise ValueError(f"sample_grid needs columns >= 1 and pad >= 0, got {columns}, {pad}")
  n, h, w, c = images.shape
  cols = min(columns, n)
  rows = -(-n // cols)
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, np.uint8)
  for i, image in enumerate(images):
    r, q = divmod(i, cols)
    top, left = pad + r * (h + pad), pad + q * (w + pad)
    grid[top:top + h, left:left + w] = image
  return grid


# ----------------------------------------------------------------------------- sampling


def generator_of(gen_params: dict) -> Generator:
  """The `Generator` whose params these are (nz, ngf read off the first kernel)."""
  _, _, nz, width = gen_params["deconv1"]["kernel"].shape
  return Generator(nz=int(nz), ngf=int(width) // 4)


def generate(state: Union[TrainState, dict], num: int, key: jax.Array, *,
             train: bool = False) -> jax.Array:
  """Generator samples (jitted; one compilation per `num`, `train` and G's shapes).

  Args:
    state: the objective's `TrainState`, or its `extra["gen"]` dict (params and
      batch_stats).
    num: number of samples.
    key: draws z ~ N(0, I) [num, nz].
    train: BatchNorm with the batch statistics of these samples (as in training)
      instead of the running statistics.

  Returns:
    float32 [num, 32, 32, 3] in [-1, 1] (`gan_to_uint8` for pictures).
  """
  gen = state.extra[GEN] if isinstance(state, TrainState) else state
  return _generate({"params": gen["params"], "batch_stats": gen["batch_stats"]}, key,
                   num=num, train=train)


@functools.partial(jax.jit, static_argnames=("num", "train"))
def _generate(variables: dict, key: jax.Array, *, num: int, train: bool) -> jax.Array:
  module = generator_of(variables["params"])
  z = jax.random.normal(key, (num, module.nz))
  if train:
    return module.apply(variables, z, train=True, mutable=["batch_stats"])[0]
  return module.apply(variables, z, train=False)


def write_samples(path: str, state: Union[TrainState, dict], num: int, key: jax.Array,
                  columns: int = 8) -> np.ndarray:
  """Writes a PNG grid of `num` eval-mode generator samples; returns the grid."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  gen = jax.device_get(state.extra[GEN] if isinstance(state, TrainState) else state)
  grid = sample_grid(gan_to_uint8(generate(gen, num, key)), columns)
  Image.fromarray(grid).save(path)
  return grid


# ----------------------------------------------------------------------------- objective


def _keys(seed: int) -> jax.Array:
  """Keys of G's init, D's init and `finish`'s samples: a function of `seed` alone."""
  return jax.random.split(jax.random.fold_in(jax.random.key(seed), _SALT), 3)


def _check_settings(beta, nz, ngf, ndf, gan_learning_rate, gan_b1, gan_b2, num_samples,
                    ema_decay) -> None:
  if not beta >= 0:
    raise ValueError(f"gan_outliers: beta must be >= 0, got {beta}")
  for name, value in (("nz", nz), ("ngf", ngf), ("ndf", ndf), ("num_samples", num_samples)):
    if int(value) != value or value < 1:
      raise ValueError(f"gan_outliers: {name} must be a positive int, got {value!r}")
  if not gan_learning_rate > 0:
    raise ValueError(f"gan_outliers: gan_learning_rate must be > 0, got {gan_learning_rate}")
  for name, value in (("gan_b1", gan_b1), ("gan_b2", gan_b2)):
    if not 0 <= value < 1:
      raise ValueError(f"gan_outliers: {name} must be in [0, 1), got {value}")
  if ema_decay is not None and not 0 <= ema_decay < 1:
    raise ValueError(f"gan_outliers: ema_decay must be in [0, 1) or None, got {ema_decay}")


def make(net: Net, tx: optax.GradientTransformation, *, augment: Optional[bool] = None,
         ema_decay: Optional[float] = None, seed: int = 0, beta: float = 0.1,
         nz: int = 100, ngf: int = 64, ndf: int = 64, gan_learning_rate: float = 2e-4,
         gan_b1: float = 0.5, gan_b2: float = 0.999, num_samples: int = 64
         ) -> base.Objective:
  """The joint confidence loss objective for an image classifier `net`.

  Args:
    net: the classifier on 32x32 images and its initial variables.
    tx: the classifier's optimizer.
    augment: random crop (pad 4) + flip of the classifier's ID batch (default True).
    ema_decay: keep an EMA of the classifier params; None = no EMA.
    seed: initialises G and D (and the key of `finish`'s samples).
    beta: weight of KL(U || p(y | G(z))) in the generator and classifier losses.
    nz, ngf, ndf: DCGAN latent size and widths.
    gan_learning_rate, gan_b1, gan_b2: Adam settings of G and D.
    num_samples: generator samples in `finish`'s grid (8 columns).

  Returns:
    The `Objective`; metrics "loss" (classifier), "ce", "kl_fake", "accuracy",
    "grad_norm" (classifier), "d_loss", "g_loss", "d_real" / "d_fake" (mean
    sigmoid D on the real / generated batch of step 1).
  """
  if net.resolution != RESOLUTION:
    raise ValueError(f"gan_outliers needs an image classifier on {RESOLUTION}x{RESOLUTION} "
                     f"images (the DCGAN's size); {net.name!r} has resolution "
                     f"{net.resolution}")
  _check_settings(beta, nz, ngf, ndf, gan_learning_rate, gan_b1, gan_b2, num_samples,
                  ema_decay)
  augment_fn = cross_entropy.crop_flip_in() if (augment is None or augment) else None
  gen_mod, disc_mod = Generator(nz=nz, ngf=ngf), Discriminator(ndf=ndf)
  gan_tx = optax.adam(gan_learning_rate, b1=gan_b1, b2=gan_b2)

  def fake_input(fake: jax.Array) -> jax.Array:
    return net.normalise((fake + 1.0) / 2.0)

  def init(key: jax.Array) -> TrainState:
    del key  # the classifier is `net.params`; G and D come from `seed`
    k_gen, k_disc, _ = _keys(seed)
    extra = {}
    for name, module, k in ((GEN, gen_mod, k_gen), (DISC, disc_mod, k_disc)):
      v = init_variables(module, k)
      extra[name] = {"params": v["params"], "batch_stats": v["batch_stats"],
                     "opt_state": gan_tx.init(v["params"])}
    return state_lib.create(net.params, tx.init, ema=ema_decay is not None, extra=extra)

  def disc_step(disc, real, fake):
    """Step 1: (new disc, d_loss, real logits, fake logits)."""

    def loss_of(params):
      logits_r, upd = disc_mod.apply({"params": params, "batch_stats": disc["batch_stats"]},
                                     real, train=True, mutable=["batch_stats"])
      logits_f, upd = disc_mod.apply({"params": params, **upd}, fake, train=True,
                                     mutable=["batch_stats"])
      return discriminator_loss(logits_r, logits_f), (upd["batch_stats"], logits_r, logits_f)

    (loss, (stats, logits_r, logits_f)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        disc["params"])
    updates, opt_state = gan_tx.update(grads, disc["opt_state"], disc["params"])
    new = {"params": optax.apply_updates(disc["params"], updates), "batch_stats": stats,
           "opt_state": opt_state}
    return new, loss, logits_r, logits_f

  def step(state: TrainState, batch: base.Batch, key: jax.Array):
    k_aug, k_z, k_z2, k_gc, k_in, k_fake = jax.random.split(key, 6)
    gen, real_u8 = state.extra[GEN], batch["in"]["x"]
    z = jax.random.normal(k_z, (real_u8.shape[0], nz))

    # G(z) once for steps 1 and 2: its running statistics, and its pull-back for step 2.
    def gen_forward(params):
      fake, upd = gen_mod.apply({"params": params, "batch_stats": gen["batch_stats"]}, z,
                                train=True, mutable=["batch_stats"])
      return fake, upd["batch_stats"]

    fake, gen_vjp, gen_stats = jax.vjp(gen_forward, gen["params"], has_aux=True)

    # (1) discriminator.
    disc, d_loss, logits_r, logits_f = disc_step(state.extra[DISC], uint8_to_gan(real_u8),
                                                 jax.lax.stop_gradient(fake))

    # (2) generator: the updated D; the classifier's statistics of this pass are dropped.
    def g_loss_of(images):
      d_vars = {"params": disc["params"], "batch_stats": disc["batch_stats"]}
      d_logits, _ = disc_mod.apply(d_vars, images, train=True, mutable=["batch_stats"])
      c_logits, _, _ = base.apply_train(net.module, state.variables, fake_input(images), k_gc)
      return generator_loss(d_logits, c_logits, beta)

    g_loss, d_images = jax.value_and_grad(g_loss_of)(fake)
    (g_grads,) = gen_vjp(d_images)
    g_updates, g_opt = gan_tx.update(g_grads, gen["opt_state"], gen["params"])
    gen = {"params": optax.apply_updates(gen["params"], g_updates), "batch_stats": gen_stats,
           "opt_state": g_opt}

    # (3) classifier on the (augmented) ID batch and G(z') of the updated generator.
    if augment_fn is not None:
      batch = augment_fn(k_aug, batch)
    z2 = jax.random.normal(k_z2, z.shape)
    fake2, _ = gen_mod.apply({"params": gen["params"], "batch_stats": gen["batch_stats"]}, z2,
                             train=True, mutable=["batch_stats"])
    x_fake = jax.lax.stop_gradient(fake_input(fake2))
    x_in, y = net.preprocess(batch["in"]["x"]), batch["in"]["y"]

    def c_loss_of(params):
      variables = {**state.variables, "params": params}
      logits_in, _, stats = base.apply_train(net.module, variables, x_in, k_in)
      logits_fake, _, _ = base.apply_train(net.module, variables, x_fake, k_fake)
      return classifier_loss(logits_in, y, logits_fake, beta), (stats, logits_in, logits_fake)

    (loss, (stats, logits_in, logits_fake)), grads = jax.value_and_grad(
        c_loss_of, has_aux=True)(state.params)
    new = base.apply_gradients(state, grads, tx, ema_decay=ema_decay, batch_stats=stats)
    new = new.replace(extra={GEN: gen, DISC: disc})
    metrics = {
        "loss": loss, "ce": cross_entropy.loss(logits_in, y),
        "kl_fake": kl_uniform(logits_fake),
        "accuracy": jnp.mean((jnp.argmax(logits_in, -1) == y).astype(jnp.float32)),
        "grad_norm": optax.tree.norm(grads), "d_loss": d_loss, "g_loss": g_loss,
        "d_real": jnp.mean(jax.nn.sigmoid(logits_r)),
        "d_fake": jnp.mean(jax.nn.sigmoid(logits_f))}
    return new, metrics

  def export(state: TrainState) -> dict[str, Any]:
    return state.eval_variables()

  def finish(state: TrainState, workdir: str) -> None:
    if jax.process_index() != 0:
      return
    os.makedirs(workdir, exist_ok=True)
    write_samples(os.path.join(workdir, SAMPLES_FILE), state, num_samples, _keys(seed)[2])

  return base.Objective(name="gan_outliers", streams=(), init=init, step=step, net=net,
                        export=export, finish=finish)

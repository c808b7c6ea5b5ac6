"""Defaults shared by every config. Override any key from the command line:

  python -m experiments.train --config=experiments/configs/cifar10_lite0.py \
      --workdir=wd --config.optim.learning_rate=3e-4 --config.data.ood.svhn=folder:/data/SVHN

Methods are chosen by two blocks (read only by `experiments/build.py`, which checks every
entry before any work):

  c.nets.<name> = dict(kind="classifier" | "head", model=..., weights=PATH | "",
                       init_from="<net name>" | "", epochs=..., **training keys)
      kind="classifier": a `dlsr_jax.models` image model ("cifar_resnet20", "resnet18_32x32",
        "wrn40_2", ...) on the 32x32 images; kind="head": "linear_head" / "mlp_head" on the
        cached backbone features ("features", the `c.layers` levels), trained on the ID train
        features with the ID labels. weights: a weights file to start from ("" = random init
        from `seed`); init_from: start from another configured net's trained weights.
        epochs=0: no training (the weights as loaded). The other keys are the training
        recipe of `dlsr_jax/training/classifier.py` (num_classes, batch_size, learning_rate, ...).
        `experiments.train` trains each net (in init_from order) in <workdir>/<name>/.
  c.detectors.<row> = dict(type="<module of dlsr_jax.detectors>", net="backbone" | "<net>",
                           **settings)
      type defaults to the row name; net defaults to "backbone" (the frozen pretrained
      backbone: arrays "features", "images", "labels"); a classifier or head net adds
      "logits" and "pre_logits". The settings are the keyword arguments of that module's
      `make`. DLSR is `type="dlsr"` (`dlsr_row(c, **overrides)`: its settings follow the
      c.model / c.schedule / c.optim / c.train / c.eval blocks unless overridden, e.g.
      `dlsr_row(c, use_time_embedding=False)` = the AutoEncoder ablation,
      `dlsr_row(c, levels=("level5",))` = the last-level ablation); its LFDN trains in
      <workdir>/<row>/ (<workdir>/<row>/seed_<s>/ with `seeds`).
"""

import ml_collections

from experiments.configs import methods


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # () = one training run with `seed` in --workdir. (0, 1, 2) = one run per seed in
  # <workdir>/seed_<s>/ (sharing one feature cache); evaluate reports mean +- std over them.
  c.seeds = ()

  # Backbone and features (SPEC 1.1, 1.2).
  c.backbone = "efficientnet_lite0"
  c.weights = "imagenet"        # "imagenet" | "none" (random init) | path to .pth/.safetensors
  c.resolution = 224            # input size fed to the backbone (paper: 224)
  c.layers = ()                 # level indices; () = the backbone's default levels
  c.pooling = "gap"             # "gap" (exact) | "dlsr" (release: resize to stride 16 first)
  c.feature_batch_size = 64
  c.cache_dir = ""              # "" = <workdir>/feature_cache
  c.backbone_dtype = "float32"  # "bfloat16" for bf16 compute
  # Input normalisation: "native" = the one the weights were trained with (ImageNet
  # mean/std for B0-B7 and ResNet-50, (x - 127) / 128 for Lite0-4) | "imagenet" | "inception".
  c.normalisation = "native"

  # Data sources: npz:PATH | folder:PATH | tfds:NAME:SPLIT | offline:NAME[:SPLIT].
  c.data = ml_collections.ConfigDict()
  c.data.train = "tfds:cifar10:train"
  c.data.test = "tfds:cifar10:test"
  c.data.ood = ml_collections.ConfigDict()
  # More OOD sets from the command line (a locked config cannot gain keys):
  # --config.data.extra_ood="name=SOURCE,other=SOURCE".
  c.data.extra_ood = ""
  c.data.image_size = 32        # folder sources are resized to this
  c.data.tfds_data_dir = ""     # "" = TFDS default
  c.data.limit = 0              # > 0: use only the first N images of every set
  # Named groups of OOD sets averaged together (e.g. OpenOOD near/far):
  # {group: "set1,set2"}; empty = no groups.
  c.data.groups = ml_collections.ConfigDict()
  # Validation sets, for tuning (--config.eval.tune) and the methods OpenOOD fits on ID val:
  # data.val = "holdout:FRACTION" (a fixed held-out part of data.train) or a source;
  # data.ood_val = a source that is none of the test sets. "" = none.
  c.data.val = ""
  c.data.ood_val = ""

  # The DLSR blocks start from the library's defaults (configs/methods.py, one place).
  dlsr = methods.DLSR

  # LFDN (SPEC 1.3); C comes from the features.
  c.model = ml_collections.ConfigDict()
  c.model.width = dlsr.width
  c.model.embed_dim = dlsr.embed_dim
  c.model.num_blocks = dlsr.num_blocks
  c.model.dropout = dlsr.dropout
  c.model.use_time_embedding = dlsr.use_time_embedding   # False = the AutoEncoder ablation
  c.model.dtype = dlsr.dtype

  # Diffusion schedule (SPEC 1.4).
  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = dlsr.schedule_kind
  c.schedule.num_steps = dlsr.num_steps
  c.schedule.beta_start = dlsr.beta_start
  c.schedule.beta_end = dlsr.beta_end

  # Optimiser: the paper's recipe (the release used lr 1e-5, wd 0.02, batch 256).
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = dlsr.learning_rate
  c.optim.weight_decay = dlsr.weight_decay
  c.optim.warmup_steps = dlsr.warmup_steps
  c.optim.grad_clip_norm = dlsr.grad_clip_norm  # 0 = no clipping
  c.optim.ema_decay = dlsr.ema_decay

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = dlsr.batch_size
  c.train.num_epochs = dlsr.num_epochs
  c.train.log_every_steps = dlsr.log_every_steps
  c.train.checkpoint_every_epochs = dlsr.checkpoint_every_epochs
  # > 0: also every N steps (less lost on a kill)
  c.train.checkpoint_every_steps = dlsr.checkpoint_every_steps
  # The LR score's early model: the state after this many steps, kept apart. 391 = the
  # paper's first epoch (50,000 CIFAR images, batch 128) whatever the training-set size;
  # 0 = one epoch of this training set. keep_steps: more steps kept the same way.
  c.train.lr_reference_steps = dlsr.lr_reference_steps
  c.train.keep_steps = dlsr.keep_steps

  # Scoring (SPEC 1.5).
  c.eval = ml_collections.ConfigDict()
  c.eval.ks = dlsr.ks
  c.eval.stride = dlsr.stride
  c.eval.eta = dlsr.eta
  c.eval.release_compat = dlsr.release_compat
  c.eval.num_draws = dlsr.num_draws
  c.eval.batch_size = dlsr.eval_batch_size
  # "vmap": all k in one call (K * max(k) network evaluations); "per_k": one call
  # per k with the same compile (sum of k evaluations). Same scores.
  c.eval.k_strategy = dlsr.k_strategy
  c.eval.seed = 0
  c.eval.lr = dlsr.lr              # also the LR score (needs the lr_reference_steps checkpoint)
  c.eval.lr_orientation = dlsr.lr_orientation
  c.eval.plots = True
  # Settings of the default mahalanobis and knn rows (backbone features, ID train fitted).
  # Per-layer z-scoring makes every layer's slice sum to zero, so the feature
  # covariance is singular by construction (rank <= C - number of layers): a
  # small shrinkage is needed (test features lie in the same subspace).
  c.eval.mahalanobis_shrinkage = 0.01
  c.eval.knn_k = 50
  # Which rows of c.detectors to run: "" = every row; else comma-separated row names
  # (e.g. --config.eval.rows=dlsr for DLSR alone).
  c.eval.rows = ""
  # Tune each row with a grid on data.val vs data.ood_val (dlsr_jax.evaluation.tune): adds a
  # "<row>@tuned" row beside the default one; a row's own tune=True tunes it in place.
  c.eval.tune = False
  # Trapezoidal AUPRs beside the step-wise ones (set by the openood_* protocols).
  c.eval.trapezoid_aupr = False

  # Methods (see the module docstring): classifier nets and detector rows.
  c.nets = ml_collections.ConfigDict()
  c.detectors = ml_collections.ConfigDict()
  c.detectors.dlsr = dlsr_row(c)
  c.detectors.mahalanobis = ml_collections.ConfigDict(dict(
      net="backbone", shrinkage=c.eval.get_ref("mahalanobis_shrinkage")))
  c.detectors.knn = ml_collections.ConfigDict(dict(net="backbone", k=c.eval.get_ref("knn_k")))
  return c


# DLSR setting -> (config block, key) it follows.
DLSR_REFS = {
    **{k: ("model", k) for k in ("width", "embed_dim", "num_blocks", "dropout",
                                 "use_time_embedding", "dtype")},
    "schedule_kind": ("schedule", "kind"),
    **{k: ("schedule", k) for k in ("num_steps", "beta_start", "beta_end")},
    **{k: ("optim", k) for k in ("learning_rate", "weight_decay", "warmup_steps",
                                 "grad_clip_norm", "ema_decay")},
    **{k: ("train", k) for k in ("batch_size", "num_epochs", "log_every_steps",
                                 "checkpoint_every_epochs", "checkpoint_every_steps",
                                 "lr_reference_steps", "keep_steps")},
    **{k: ("eval", k) for k in ("ks", "stride", "eta", "release_compat", "num_draws",
                                "k_strategy", "lr", "lr_orientation")},
    "eval_batch_size": ("eval", "batch_size"),
}


def dlsr_row(c: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """A DLSR detector row whose settings follow c.model/schedule/optim/train/eval.

  Each setting not in `overrides` is a reference to its block's key, so
  `--config.model.width=256` changes every DLSR row that does not override it.
  """
  row = ml_collections.ConfigDict({"type": "dlsr", "net": "backbone"})
  for name, (block, key) in DLSR_REFS.items():
    if name not in overrides:
      row[name] = c[block].get_ref(key)
  for name, value in overrides.items():
    row[name] = value
  return row

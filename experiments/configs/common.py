"""Defaults shared by every DLSR config. Override any key from the command line:

  python -m experiments.train --config=experiments/configs/cifar10_lite0.py \
      --workdir=wd --config.optim.learning_rate=3e-4 --config.data.ood.svhn=folder:/data/SVHN
"""

import ml_collections


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

  # LFDN (SPEC 1.3); C comes from the features.
  c.model = ml_collections.ConfigDict()
  c.model.width = 1440
  c.model.embed_dim = 720
  c.model.num_blocks = 16
  c.model.dropout = 0.0
  c.model.use_time_embedding = True   # False = the AutoEncoder ablation
  c.model.dtype = "float32"

  # Diffusion schedule (SPEC 1.4).
  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = "scaled_linear"
  c.schedule.num_steps = 100
  c.schedule.beta_start = 0.0015
  c.schedule.beta_end = 0.0195

  # Optimiser: the paper's recipe (the release used lr 1e-5, wd 0.02, batch 256).
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 0
  c.optim.grad_clip_norm = 0.0  # 0 = no clipping
  c.optim.ema_decay = 0.9999

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.num_epochs = 150
  c.train.log_every_steps = 100
  c.train.checkpoint_every_epochs = 1
  c.train.checkpoint_every_steps = 0   # > 0: also every N steps (less lost on a kill)
  # The LR score's early model: the state after this many steps, kept apart. 391 = the
  # paper's first epoch (50,000 CIFAR images, batch 128) whatever the training-set size;
  # 0 = one epoch of this training set. keep_steps: more steps kept the same way.
  c.train.lr_reference_steps = 391
  c.train.keep_steps = ()

  # Scoring (SPEC 1.5).
  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (3, 5, 10)
  c.eval.stride = 1
  c.eval.eta = 1.0
  c.eval.release_compat = False
  c.eval.num_draws = 1
  c.eval.batch_size = 256
  # "vmap": all k in one call (K * max(k) network evaluations); "per_k": one call
  # per k with the same compile (sum of k evaluations). Same scores.
  c.eval.k_strategy = "vmap"
  c.eval.seed = 0
  c.eval.lr = True              # also the LR score (needs the lr_reference_steps checkpoint)
  c.eval.lr_orientation = "first_minus_final"
  c.eval.plots = True
  # Feature-level baselines on the same cached features (ID train set fitted):
  # comma-separated subset of "mahalanobis,knn"; "" = none.
  c.eval.baselines = "mahalanobis,knn"
  # Per-layer z-scoring makes every layer's slice sum to zero, so the feature
  # covariance is singular by construction (rank <= C - number of layers): a
  # small shrinkage is needed (test features lie in the same subspace).
  c.eval.mahalanobis_shrinkage = 0.01
  c.eval.knn_k = 50
  return c

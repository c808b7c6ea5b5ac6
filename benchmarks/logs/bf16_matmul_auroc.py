"""AUROC of DLSR scores, fp32 vs bf16_matmul scoring, same trained (fp32) LFDN, real features.

ResNet-20 pre-logits (C=64) of CIFAR-10 train (fit) / test (ID) and far/near OOD sets.
"""
import sys, glob, time
sys.path.insert(0, sys.argv[1]); epochs = int(sys.argv[2])
import numpy as np, jax
from dlsr_jax import lfdn, schedule, scoring, trainer
from dlsr_jax.training import optim
from dlsr_jax.evaluation import metrics
A = sys.argv[3]   # e.g. /tmp/ph_full/arrays/ResNet-20_ (the posthoc cache of pre-logits)
load = lambda n: np.load(glob.glob(A + n + "_*.npz")[0])["pre_logits"].astype(np.float32)
tr = load("cifar10_train_exact"); mu, sd = tr.mean(0), tr.std(0) + 1e-6
norm = lambda x: (x - mu) / sd
sets = {n: norm(load(n)) for n in ["cifar10_test_exact", "isun", "mnist_test", "fashionmnist_test", "dtd", "cifar100_test_exact"]}
cfg = lfdn.LFDNConfig(features=64, width=256, embed_dim=128, num_blocks=4)
sched = schedule.make_schedule()
t0 = time.time()
state = trainer.fit(norm(tr), cfg, optim.AdamWConfig(), sched,
                    trainer.FitConfig(batch_size=128, num_epochs=epochs, seed=0), None, progress=False)
print(f"trained {epochs} epochs in {time.time()-t0:.0f} s")
bounds = (0, 64)
sc = scoring.ScoreConfig(boundaries=(0, 16, 32, 48, 64))
res = {}
for dt in ["float32", "bf16_matmul"]:
  c = lfdn.LFDNConfig(features=64, width=256, embed_dim=128, num_blocks=4, dtype=dt)
  fn = jax.jit(scoring.make_score_fn(lfdn.apply_fn(c), sched.alphas_cumprod, sc))
  res[dt] = {n: scoring.score_dataset(fn, state.ema_params, z, [3, 10], jax.random.key(1), 512) for n, z in sets.items()}
for st in ["mse", "mfsim"]:
  for j, k in enumerate([3, 10]):
    row = []
    for n in list(sets)[1:]:
      a = [100 * metrics.auroc(res[dt]["cifar10_test_exact"][st][j], res[dt][n][st][j]) for dt in res]
      row.append(f"{n[:8]} {a[0]:.2f}/{a[1]:.2f}")
    print(f"{st} k={k}: " + "  ".join(row))
d = max(float(np.max(np.abs(res['float32'][n]['mse'] - res['bf16_matmul'][n]['mse']) / np.abs(res['float32'][n]['mse']))) for n in sets)
print("max rel diff mse", d)

"""reslim from Python, top to bottom: one network, the quick shape sweep, the linear limit.

Run from the repository root after `pip install ./python` (and `pip install matplotlib`):

    python examples/python/quickstart.py [OUT_DIR]

It writes its figures into OUT_DIR (default runs/python-example) and takes about 15 s on
2 cores.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; drop this line in a notebook
import matplotlib.pyplot as plt
import numpy as np

import reslim

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/python-example")
out.mkdir(parents=True, exist_ok=True)
repo = Path(__file__).resolve().parents[2]

# 1. One network: L = 20 blocks of width M = 100, embedding D = 100, the papers' scaling.
run = reslim.train(L=20, M=100, D=100, steps=15, lr=1.0, preset="chizat-julia", activation="tanh", layer_stats=True)
print(f"loss {run.losses[0]:.4f} -> {run.losses[-1]:.4f}; outputs {run.outputs.shape}, h_L {run.h_last.shape}")
stats = run.layer_stats  # a DataFrame: step, layer, rms_h, rms_branch, rms_du, rms_dv
last = stats[stats.step == stats.step.max()]
print(f"RMS of h_l at the last step: {last.rms_h.min():.3f} .. {last.rms_h.max():.3f} over {len(last)} layers")

# 2. The quick sweep (192 tasks, resumable: run the script again and nothing is retrained).
sw = reslim.sweep(repo / "experiments" / "quick.toml", out=out / "quick")
print(f"sweep: {sw.summary}; report in {sw.report}")
rms = sw.errors_rms  # one row per (coupling, L, M, D, step), aggregated over repetitions
k = rms.step.max()
fig, ax = plt.subplots(figsize=(5, 4))
sel = rms[(rms.step == k) & (rms.coupling == "coupled") & ~rms.is_reference]
for m, g in sel.groupby("M"):
    g = g.sort_values("D")
    ax.loglog(g.D, g.err_h, "o-", label=f"M = {m}")
ax.set_xlabel("D")
ax.set_ylabel(f"RMS distance of h_L to the reference, step {k}")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(out / "errors_vs_D.png", dpi=120)

# 3. Linear blocks against their exact large-size limit, on the same synthetic data.
lim = reslim.linear_limit(din=5, dout=5, N=10, steps=15, lr=1.0)
sizes, dist = [16, 32, 64, 128, 256], []
for d in sizes:
    r = reslim.train(L=20, M=d, D=d, steps=15, lr=1.0, activation="linear", record_hidden=False)
    dist.append(float(np.sqrt(np.mean((r.outputs - lim.outputs) ** 2))))
slope = np.polyfit(np.log(sizes), np.log(dist), 1)[0]
print("distance of the outputs to the linear limit:", ", ".join(f"D={d}: {e:.3g}" for d, e in zip(sizes, dist)))
print(f"log-log slope {slope:.2f} (the theory's sqrt(D/(LM)) + 1/sqrt(D) give -1/2 at large D; one seed is noisy)")
fig, ax = plt.subplots(figsize=(5, 4))
ax.loglog(sizes, dist, "o-", label="finite network (L = 20, M = D)")
ax.loglog(sizes, dist[0] * (np.array(sizes) / sizes[0]) ** -0.5, "k--", label="D^(-1/2)")
ax.set_xlabel("D = M")
ax.set_ylabel("RMS |f - f_limit|")
ax.legend()
fig.tight_layout()
fig.savefig(out / "distance_to_linear_limit.png", dpi=120)
print(f"figures in {out}")

"""End-point error of the study's geodesics against the solver tolerance (tolerance.json).

    python book/data/digits/tolerance.py OUT.json

Replicate 0 of the digits study (its MAP net and posterior, from the model cache or trained),
two tangents at T = mean (scale 8) and T = sum (scale 4), bosh3 at 1e-3 ... 1e-6 against
dopri5 at 1e-8; writes one row per (temperature, tolerance).
"""

import json
import sys
import time

import torch

from rbmem_tutorial.experiments.digits_matched import DigitsMatchedConfig
from rbmem_tutorial.riemannian import exp_map

torch.set_num_threads(1)
fp = DigitsMatchedConfig().build_replicate(0).flow_posterior
objective, theta = fp.posterior.objective, fp.posterior.mean
v = fp.posterior.sample_tangent(2, torch.Generator().manual_seed(3), scale=1.0)
rows, meta = [], {"reference_travel": {}, "reference_nfe": {}}
for temperature, scale in (("mean", 8.0), ("sum", 4.0)):
    ref = exp_map(objective, theta, scale * v, temperature=temperature, method="dopri5",
                  rtol=1e-8, atol=1e-8, max_num_steps=50_000)
    moved = (ref.endpoints - theta).norm(dim=1)
    meta["reference_travel"][temperature] = (moved / (scale * v).norm(dim=1)).tolist()
    meta["reference_nfe"][temperature] = int(ref.nfe[0])
    for tol in (1e-3, 1e-4, 1e-5, 1e-6):
        start = time.perf_counter()
        out = exp_map(objective, theta, scale * v, temperature=temperature, method="bosh3",
                      rtol=tol, atol=tol, max_num_steps=50_000)
        error = ((out.endpoints - ref.endpoints).norm(dim=1) / moved).max().item()
        rows.append({"temperature": temperature, "scale": scale, "tol": tol,
                     "seconds": time.perf_counter() - start, "nfe": int(out.nfe[0]),
                     "error": error})
with open(sys.argv[1], "w") as handle:
    json.dump({"meta": meta, "solves": rows}, handle, indent=2)

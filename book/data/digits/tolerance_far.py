"""End-point error at the scales the rerun reaches (tolerance_far.json), a check of the rerun.

    python book/data/digits/tolerance_far.py OUT.json

The rerun takes the mean-loss geodesics out to α = 64, eight times the scale at which
``tolerance.py`` measured the study's tolerance. This solves the same two tangents of
replicate 0 at α = 32 and 64 by bosh3 at the study's 1e-4 and by dopri5 at 1e-8, and writes the
end-point error relative to the reference displacement, with NFE and seconds.
"""

import json
import sys
import time

import torch

from rbmem_tutorial.experiments.digits_matched import DigitsMatchedConfig
from rbmem_tutorial.riemannian import exp_map

torch.set_num_threads(1)
config = DigitsMatchedConfig()
fp = config.build_replicate(0).flow_posterior
objective, theta = fp.posterior.objective, fp.posterior.mean
v = fp.posterior.sample_tangent(2, torch.Generator().manual_seed(3), scale=1.0)
rows = []
for scale in (32.0, 64.0):
    start = time.perf_counter()
    ref = exp_map(objective, theta, scale * v, temperature="mean", method="dopri5", rtol=1e-8,
                  atol=1e-8, max_num_steps=50_000)
    ref_seconds = time.perf_counter() - start
    moved = (ref.endpoints - theta).norm(dim=1)
    start = time.perf_counter()
    out = exp_map(objective, theta, scale * v, temperature="mean", method="bosh3",
                  rtol=config.geodesic_rtol, atol=config.geodesic_rtol, max_num_steps=50_000)
    rows.append({"temperature": "mean", "scale": scale, "tol": config.geodesic_rtol,
                 "seconds": time.perf_counter() - start, "nfe": int(out.nfe[0]),
                 "error": ((out.endpoints - ref.endpoints).norm(dim=1) / moved).max().item(),
                 "travel": (moved / (scale * v).norm(dim=1)).tolist(),
                 "reference_nfe": int(ref.nfe[0]), "reference_seconds": ref_seconds})
    print(json.dumps(rows[-1]), flush=True)
with open(sys.argv[1], "w") as handle:
    json.dump({"solves": rows}, handle, indent=2)

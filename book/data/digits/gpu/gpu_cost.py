"""The cost model of a geodesic evaluation on a GPU (cost.json), measured, not assumed.

    python book/data/digits/gpu/gpu_cost.py cost.json [--device cuda]

Times the geodesic right-hand side as the solver calls it (``MongeMetric.acceleration``, the
mean loss, float64) for the digits study's MLP (65 → 128 → 128 → 128 → 64) on 80 random
frozen pairs, at batches of 1 to 256 tangents, fits ``cost_model.fit`` to the medians, and
times one batched geodesic solve of 32 tangents (bosh3 at 1e-4, α = 8) against the fit's
prediction at the solve's own NFE. Wall time with the device synchronised around each call.
"""

import argparse
import json
import time

import numpy as np
import torch

from rbmem_tutorial.experiments import cost_model
from rbmem_tutorial.flows import RegressionAdapter, VelocityMLP
from rbmem_tutorial.laplace import RegressionObjective, parameters_vector
from rbmem_tutorial.riemannian import exp_map
from rbmem_tutorial.riemannian.monge import MongeMetric

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--device", default="cuda")
args = parser.parse_args()
device = torch.device(args.device)
torch.set_num_threads(1)


def synchronise():
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call, repeats=5):
    call()  # warm-up
    times = []
    for _ in range(repeats):
        synchronise()
        start = time.perf_counter()
        call()
        synchronise()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


g = torch.Generator().manual_seed(0)
torch.manual_seed(0)
pairs = 80
z = torch.cat([torch.randn(pairs, 64, generator=g), torch.rand(pairs, 1, generator=g)], 1)
y = torch.randn(pairs, 64, generator=g)
net = VelocityMLP(64, hidden=(128, 128, 128)).to(device)
objective = RegressionObjective(RegressionAdapter(net), z.to(device), y.to(device), 1.0, 1.0)
theta = parameters_vector(objective.model).detach().to(device, torch.float64)
D = theta.numel()
metric = MongeMetric(objective, theta, temperature="mean")
rows = []
for batch in (1, 4, 16, 32, 64, 128, 256):
    v = torch.randn(batch, D, generator=g, dtype=torch.float64).to(device) * 1e-3
    seconds = timed(lambda v=v: metric.acceleration(theta + v, v))
    rows.append({"tangents": batch, "seconds": seconds,
                 "work": batch * pairs * D * cost_model.FLOPS_PER_WEIGHT})
    print(json.dumps(rows[-1]), flush=True)
try:
    fit = cost_model.fit([r["work"] for r in rows], [r["seconds"] for r in rows])
except ValueError:  # flat timings: every batch costs the fixed overhead, the rate is hidden
    fit = cost_model.overhead_bound([r["work"] for r in rows], [r["seconds"] for r in rows])
v = torch.randn(32, D, generator=g, dtype=torch.float64).to(device) * 1e-2
synchronise()
start = time.perf_counter()
solve = exp_map(objective, theta, 8.0 * v, temperature="mean", method="bosh3", rtol=1e-4,
                atol=1e-4)
synchronise()
solve_seconds = time.perf_counter() - start
nfe = int(max(solve.nfe))
result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
          "torch": torch.__version__, "weights": D, "pairs": pairs, "evaluations": rows,
          "fit": {"overhead": fit.overhead, "rate": fit.rate},
          "solve": {"tangents": 32, "scale": 8.0, "nfe": nfe, "seconds": solve_seconds,
                    "predicted_by_fit": fit.solve_seconds(nfe, 32, pairs, D)}}
print(json.dumps({k: result[k] for k in ("device", "fit", "solve")}), flush=True)
with open(args.out, "w") as handle:
    json.dump(result, handle, indent=2)

"""End-point error of the stored digits run's geodesics against the solver tolerance.

For training seed 0 of the ``cpu-digits`` profile, the first two tangents v of the Riemannian
cells at every scale α (the study's own seeded draws) are solved with bosh3 and dopri5 at
rtol = atol = 1e-3 ... 1e-6 and compared with a dopri5 solve at 1e-8:
``error = ‖c_tol(1) − c_ref(1)‖ / ‖c_ref(1) − θ*‖``. Writes ``tolerance.json``.

Run from the repository root:
``python book/data/digits/tolerance.py book/data/digits/tolerance.json``.
"""

import json
import sys
import time

import torch

from rbmem_tutorial.experiments.tradeoff import _generator, profile_config, seed_context
from rbmem_tutorial.riemannian import exp_map

TOLERANCES = (1e-3, 1e-4, 1e-5, 1e-6)
REFERENCE_TOL = 1e-8
TRAIN_SEED, SAMPLE_SEED, PER_SCALE = 0, 0, 2


def main(path: str) -> None:
    torch.set_num_threads(1)
    config = profile_config("cpu-digits", device="cpu")
    ctx = seed_context(config, TRAIN_SEED)
    posterior = ctx.flow_posterior.posterior
    theta, loss = posterior.mean, ctx.geodesic_losses["riemannian"]
    records = []
    for scale in config.scales:
        # the generator of the study's Riemannian cells: the same tangents as the stored run
        tangents = posterior.sample_tangent(config.n_param_samples,
                                            _generator(TRAIN_SEED, SAMPLE_SEED, 1), scale=scale)
        for index, v in enumerate(tangents[:PER_SCALE]):
            ref = exp_map(loss, theta, v, method="dopri5", rtol=REFERENCE_TOL, atol=REFERENCE_TOL,
                          max_num_steps=100_000)
            displacement = float((ref.endpoints - theta).norm())
            record = {"scale": scale, "sample": index, "reference_nfe": int(ref.nfe),
                      "displacement": displacement, "tangent_norm": float(v.norm()), "solves": []}
            for method in ("bosh3", "dopri5"):
                for tol in TOLERANCES:
                    start = time.perf_counter()
                    out = exp_map(loss, theta, v, method=method, rtol=tol, atol=tol,
                                  max_num_steps=100_000)
                    error = float((out.endpoints - ref.endpoints).norm()) / displacement
                    record["solves"].append({"method": method, "tol": tol, "nfe": int(out.nfe),
                                             "error": error,
                                             "seconds": time.perf_counter() - start})
            records.append(record)
            print(f"α = {scale:g}, sample {index}: done", flush=True)
    meta = {"profile": "cpu-digits", "train_seed": TRAIN_SEED, "reference": "dopri5",
            "reference_tol": REFERENCE_TOL, "tolerances": list(TOLERANCES)}
    with open(path, "w") as f:
        json.dump({"meta": meta, "geodesics": records}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])

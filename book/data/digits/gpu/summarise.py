"""The GPU run's numbers for chapter 8 (gpu.json), from the files the run left here.

    python book/data/digits/gpu/summarise.py book/data/digits/gpu

Reads ``cost.log`` (the timed evaluations of ``gpu_cost.py``), ``seeds.log`` (the wall time of
each training seed), ``env.txt`` and the two studies' ``results.csv`` and ``run.json``; writes
the evaluation timings with their overhead-bound model, the wall time per finished seed, and
each geodesic cell's seconds beside the cost model's prediction, 32 tangents × NFE × the
measured overhead (the cells solve one tangent at a time).
"""

import csv
import json
import re
import sys
from pathlib import Path

from rbmem_tutorial.experiments import cost_model
from rbmem_tutorial.experiments.resume import load_study_config

here = Path(sys.argv[1])
pairs, weights = cost_model.profile_size(load_study_config(here / "gpu-digits"))
rows = [json.loads(line) for line in (here / "cost.log").read_text().splitlines()
        if line.startswith('{"tangents"')]
model = cost_model.overhead_bound([r["work"] for r in rows], [r["seconds"] for r in rows])
seeds = {int(m[1]): int(m[3]) for m in re.finditer(r"seed (\d+): rc (\d+), (\d+) s",
                                                     (here / "seeds.log").read_text())
         if m[2] == "0"}
cells = []
for study in ("gpu-digits", "far"):
    with open(here / study / "results.csv") as handle:
        for row in csv.DictReader(handle):
            cell = {"study": study, "method": row["method"], "scale": float(row["scale"]),
                    "train_seed": int(row["train_seed"]), "seconds": float(row["seconds"])}
            if row["nfe_geodesic_mean"]:
                nfe = float(row["nfe_geodesic_mean"])
                samples = int(row["n_param_samples"])
                predicted = model.solve_seconds(nfe, 1, pairs, weights) * samples
                cell.update(nfe=nfe, predicted=predicted)
            cells.append(cell)
runs = json.loads((here / "gpu-digits" / "run.json").read_text())["runs"]
summary = {"device": runs[0]["device"], "torch": runs[0]["torch"],
           "evaluations": rows, "overhead": model.overhead, "rate_lower_bound": model.rate,
           "seed_seconds": seeds, "cells": cells}
(here / "gpu.json").write_text(json.dumps(summary, indent=1) + "\n")
geodesic = [c for c in cells if "nfe" in c]
print(f"{len(cells)} cells, seeds {seeds}, overhead {1e3 * model.overhead:.2f} ms; measured / "
      f"predicted over geodesic cells: "
      f"{min(c['seconds'] / c['predicted'] for c in geodesic):.2f}-"
      f"{max(c['seconds'] / c['predicted'] for c in geodesic):.2f}")

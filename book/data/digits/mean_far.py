"""The mean-loss posterior beyond the study's scales (mean_far.json), a check made after the run.

    python book/data/digits/mean_far.py book/data/digits/mean_far.json

In the study (scales up to 16) the mean-loss Riemannian posterior reached no level. This
solves replicate 0's 32 calibration tangents once as a path out to α = 64 and scores the
generated digits at 8 scales on the study's calibration draws, as its calibration would, with
the geodesics' travel ‖c(1) − θ*‖ / ‖v‖.
"""

import json
import sys

import torch

from rbmem_tutorial.experiments.digits_matched import DigitsMatchedConfig
from rbmem_tutorial.experiments.matched_study import Method, score, unit_tangents

torch.set_num_threads(1)
config = DigitsMatchedConfig(top_scales=(64.0, 4.0, 3.0), geodesic_path_points=9)
rep = config.build_replicate(0)
method = Method(config, rep, "riemannian-mean")
theta = rep.flow_posterior.posterior.mean
v = unit_tangents(rep, "calibration", config.weight_samples)
rows = []
for knob in method.knobs:
    end = method._geodesic(knob, "calibration", v)
    travel = ((end - theta).norm(dim=1) / (knob * v).norm(dim=1)).mean().item()
    rows.append({"scale": knob, "travel": travel, **score(method.generate(knob, "calibration"),
                                                          rep)})
    print(json.dumps(rows[-1]), flush=True)
with open(sys.argv[1], "w") as handle:
    json.dump({"geodesic_seconds": method.geodesic_seconds, "rows": rows}, handle, indent=2)

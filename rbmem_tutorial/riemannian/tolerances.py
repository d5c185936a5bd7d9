"""Default solver tolerances per metric and temperature: end points within 2% of the displacement.

The package promises that a geodesic solved at its default tolerance ends within 2% of the
sample's own displacement from a tight solve, ``‖c(1) − c_ref(1)‖ ≤ 0.02 ‖c_ref(1) − θ0‖``.
The solver controls its local error against ``atol + rtol·|θ|``, not against the displacement,
so how tight ``rtol = atol`` must be depends on how far and how curved the geodesics are, that
is on the metric and its temperature. Measured on the book's net (the chapter-1 reference
net, D = 4,546, N = 256 frozen pairs, diagonal Laplace), bosh3, two or three tangents per α,
end-point error against dopri5 at 1e-9 (``benchmarks/bench_geodesic.py`` measures it again):

==============================  =========  =====================  ======================
metric, temperature             tolerance  worst error, α = 1     worst error, α = 8
==============================  =========  =====================  ======================
Monge, ``"sum"`` (T = 1)        1e-4       0.38%                  0.14%
Monge, ``"mean"`` (T = N)       1e-4       0.06%                  0.09%
Monge, ``"data-mean"``          1e-4       (α = 4: 10.3%)         13.5%
Monge, ``"data-mean"``          3e-6       0.02% (α = 4: 0.36%)   0.39%
Fisher                          1e-4       0.04%                  0.03%
==============================  =========  =====================  ======================

The data-mean preset is the one that needs more: its loss ``L_dm`` is not stationary at θ*
(:mod:`~rbmem_tutorial.riemannian.temperature`), so every geodesic starts on a slope, and
its end points need a 30 times tighter tolerance for the same error. A number ``T`` keeps θ*
stationary and takes the Monge default. The error falls about in proportion to the
tolerance and the evaluations grow about as its cube root (bosh3 is third order), so the
tighter data-mean default costs about three times the evaluations of 1e-4.

Pass ``rtol``/``atol`` to :func:`~rbmem_tutorial.riemannian.exp_map` to override; measure a
new net's tolerance against a tight solve (chapter 8 does it on the digits net, which needed
1e-6 at T = 1).
"""

from __future__ import annotations

from rbmem_tutorial._checks import check_choice
from rbmem_tutorial.riemannian.temperature import check_temperature

__all__ = ["DEFAULT_TOLERANCES", "default_tolerance"]

DEFAULT_TOLERANCES = {"monge": 1e-4, "data-mean": 3e-6, "fisher": 1e-4}


def default_tolerance(metric: str, temperature: float | str = 1.0) -> float:
    """``rtol = atol`` of the default solve for ``metric`` at ``temperature`` (bosh3).

    Example
    -------
    >>> default_tolerance("monge", "mean"), default_tolerance("monge", "data-mean")
    (0.0001, 3e-06)
    >>> default_tolerance("fisher", 2.0)
    0.0001
    """
    check_choice("metric", metric, ("monge", "fisher"))
    temperature = check_temperature(temperature)
    if metric == "monge" and temperature == "data-mean":
        return DEFAULT_TOLERANCES["data-mean"]
    return DEFAULT_TOLERANCES[metric]

"""What the study's methods and terms mean, in one line each: the epilogue of
``rbmem tradeoff --help`` and the output of ``rbmem methods``."""

from __future__ import annotations

import textwrap

#: One line per method of :data:`.tradeoff.METHODS`.
METHODS_TEXT = {
    "map": "the MAP net θ*: the trained net, refined to a minimum of the frozen loss",
    "early-stop": "the net after --early-steps Adam steps: memorises less by fitting less",
    "isotropic": "θ* plus Gaussian weight noise of the Laplace posterior's mean variance, "
                 "times α",
    "laplace": "θ* + α Σ^½ z: draws of the Euclidean Laplace posterior N(θ*, α² Σ)",
    "riemannian": "the same draws v followed along geodesics of the loss surface (Monge "
                  "metric) from θ*: Riemannian Laplace",
    "riemannian-linearised": "the same, on the loss of the net linearised at θ*",
    "riemannian-fisher": "the same, along geodesics of the Fisher (pull-back) metric",
    "drift-control": "one net moved by gradient flow on the loss to the mean loss of the "
                     "riemannian cell: its drift without its spread",
    "drift-control-centre": "the same flow, stopped at the loss of the riemannian cell's mean "
                            "weights",
    "ensemble-centre": "the riemannian cell's mean weights alone: the common drift",
}

#: One line per term that the options and the results use.
TERMS_TEXT = {
    "MAP": "maximum a posteriori weights: the minimum of the loss plus the prior's penalty",
    "θ*": "the posterior's centre and the geodesics' start (--base-point; the refined MAP by "
          "default)",
    "α": "the posterior scale (--scales): draws are α times the posterior's spread",
    "frozen (x0, t) draws": "noise x0 and times t fixed per training point "
                            "(--draws-per-point), so the loss is a fixed regression loss",
    "L-BFGS, Newton-CG": "the optimisers that refine θ* (--refine-iterations, --newton-steps)",
    "HVP": "Hessian-vector product: second derivatives along one direction, without the "
           "Hessian",
    "Monge metric": "the metric I + ∇L∇Lᵀ/T² of the loss surface's graph; T is "
                    "--temperature",
    "structures": "full (every covariance), diag (variances only), kfac (Kronecker factors per "
                  "layer), last_layer (the last layer only)",
}


def glossary() -> str:
    """The methods and terms, one wrapped entry each.

    Example
    -------
    >>> glossary().splitlines()[0], glossary().splitlines()[3].split()[:3]
    ('methods:', ['early-stop', 'the', 'net'])
    """
    lines = []
    for title, entries in (("methods:", METHODS_TEXT), ("terms:", TERMS_TEXT)):
        lines.append(title)
        for name, text in entries.items():
            lines += textwrap.wrap(f"{name:22s} {text}", 96, initial_indent="  ",
                                   subsequent_indent=" " * 25)
    return "\n".join(lines)

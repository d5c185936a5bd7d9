"""Seconds per geodesic sample on every path of the solver, against the previous design.

Imported by ``bench_geodesic.py`` (``--paths-only`` runs this section alone). Each path solves
the same tangents at α = 1 (bosh3, the metric's default tolerance) with the current design and
with the design it replaced, side by side, in CPU seconds of this process (wall time on a
shared machine counts the waits for a core), medians of three runs that take the designs in
turn:

- fused MLP: the book's net through the fused kernel (unchanged; the previous design is the
  objective's own ``grad_and_hvp`` row by row, the generic path before batching);
- generic MLP: the same net through :mod:`rbmem_tutorial.riemannian.generic` (rows vmapped),
  against ``grad_and_hvp`` row by row;
- conv: chapter 8's convolutional net on 64 frozen pairs (320 in the chapter) through the jet
  kernel (:mod:`rbmem_tutorial.riemannian.conv_jet`: a Taylor-mode forward pass and one backward
  pass, chunks of ``JET_CHUNK`` pairs), against the design it replaced, the generic
  ``torch.func`` path (:class:`~rbmem_tutorial.riemannian.generic.RowDerivatives`: float64
  convolutions on channels-last memory, the rows one at a time, chunks of ``PAIR_CHUNK`` pairs);
- Banana: ``Banana.regression_objective()`` through the generic path (rows vmapped), against
  ``grad_and_hvp`` row by row;
- Fisher small: a 1-3-1 tanh MLP on 64 pairs (D = 10 < M = 64, the D × D system), the
  hand-written MLP passes against the per-example Jacobian route (``gram="jacobian"``);
- Fisher book-sized: the book's net (Woodbury M × M, a batch's rows solved in turn at
  M = 512), the system and its factor written into buffers kept between evaluations, against
  fresh tensors at every evaluation (``previous_designs.py``).

Then the conv net's cost per multiply-add (chapter 8's exercise, through the geodesic's own
call): one gradient-and-curvature evaluation of the conv net through the jet kernel and of an
MLP with about as many weights through the fused kernel, on the same 320 frozen pairs, each
divided by its multiply-adds per example, with the conv net's previous design (the generic path)
and the design before that (the generic path with channels-first convolutions, the rows under
one ``vmap`` and all pairs at once; ``previous_designs.py``) beside it; then the same ratio for
one forward pass alone, the share that float64 convolution kernels on a CPU cost before any
differentiation.

Last, one evaluation of the Banana objective's gradient and curvature for 4 rows against
1 row through the generic path (rows under one ``vmap``; target: within 3×), beside the
objective's own ``grad_and_hvp`` row by row.
"""

from __future__ import annotations

import statistics
import time

import torch
from previous_designs import (  # this folder's earlier designs
    PreviousConvNet,
    PreviousRowDerivatives,
    previous_fisher,
)
from torch import nn

from rbmem_tutorial.flows import RegressionAdapter, VelocityConvNet, VelocityMLP
from rbmem_tutorial.laplace import RegressionObjective, parameters_vector
from rbmem_tutorial.laplace.fast_mlp import MLPRegressionKernel
from rbmem_tutorial.riemannian import FisherMetric, MongeMetric, default_tolerance
from rbmem_tutorial.riemannian.conv_jet import ConvJetKernel
from rbmem_tutorial.riemannian.generic import RowDerivatives
from rbmem_tutorial.riemannian.solve import shoot, solver_options
from rbmem_tutorial.riemannian.toys import Banana

F64 = torch.float64


class MethodOnly:
    """Only ``grad_and_hvp``: the Monge metric then solves a batch row by row through it."""

    def __init__(self, source):
        self.grad_and_hvp = source.grad_and_hvp


class GenericOnly:
    """Only the generic path's ``grad_and_curvature``, so no fused kernel is used."""

    def __init__(self, objective, derivatives=RowDerivatives):
        self.grad_and_curvature = derivatives(objective)


def cpu_seconds_per_sample(metric, theta, tangents, *, batched=True, method="bosh3", tol=None):
    """CPU seconds per sample and NFE of one solve of ``tangents`` [S, D] from ``theta``."""
    tol = default_tolerance("monge") if tol is None else tol
    options = solver_options(method, tol, tol, 100_000)
    metric.acceleration(theta.expand_as(tangents), tangents)  # warm-up
    start = time.process_time()
    result = shoot(metric, theta, tangents, batched=batched, **options)
    return (time.process_time() - start) / len(tangents), int(result.nfe.max())


def conv_problem(pairs=64, mlp=False, previous=False):
    """Chapter 8's conv net (8×8 images, channels 16, 32) on random frozen pairs; with
    ``mlp=True`` the MLP of about as many weights (hidden 128, 96) on the same pairs; with
    ``previous=True`` the same conv net (same weights) with channels-first convolutions (the
    design before the generic path's current one)."""
    g = torch.Generator().manual_seed(1)
    z = torch.cat([torch.randn(pairs, 64, generator=g), torch.rand(pairs, 1, generator=g)], 1)
    y = torch.randn(pairs, 64, generator=g)
    torch.manual_seed(0)
    conv_net = PreviousConvNet if previous else VelocityConvNet
    net = VelocityMLP(64, hidden=(128, 96)) if mlp else conv_net((1, 8, 8), (16, 32))
    return RegressionObjective(RegressionAdapter(net), z, y, 1.0, 1.0)


def multiply_adds(model, z):
    """Multiply-adds of one forward pass for one example (a conv weight once per output pixel)."""
    counts = []

    def hook(module, _inputs, output):
        per_weight = output[0, 0].numel() if isinstance(module, nn.Conv2d) else 1
        counts.append(module.weight.numel() * per_weight)

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [layer.register_forward_hook(hook) for layer in layers]
    with torch.no_grad():
        model(z[:1].to(next(model.parameters()).dtype))
    for handle in handles:
        handle.remove()
    return sum(counts)


def cpu_ms(fn, repeats=5):
    """Median CPU milliseconds of ``fn()`` over ``repeats`` calls, after one warm-up."""
    return interleaved_cpu_ms({"": fn}, repeats)[""]


def interleaved_cpu_ms(fns: dict, repeats=5) -> dict:
    """Median CPU milliseconds of each ``fns[name]()`` over ``repeats`` rounds that call them in
    turn (after one warm-up each), so a change of load falls on all of them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append(1e3 * (time.process_time() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def conv_cost_per_multiply_add(pairs=320):
    """Print the conv net's CPU cost per multiply-add against the fused MLP's (module docstring)."""
    conv, mlp = conv_problem(pairs), conv_problem(pairs, mlp=True)
    older = PreviousRowDerivatives(conv_problem(pairs, previous=True))
    theta_c, theta_m = parameters_vector(conv.model), parameters_vector(mlp.model)
    v_c, v_m = torch.ones_like(theta_c), torch.ones_like(theta_m)
    kernel, jet = MLPRegressionKernel.from_objective(mlp), ConvJetKernel(conv)
    generic, generic_mlp = RowDerivatives(conv), RowDerivatives(mlp)
    work = multiply_adds(conv.model, conv.inputs) / multiply_adds(mlp.model, mlp.inputs)
    timed = interleaved_cpu_ms({
        "fused": lambda: kernel.grad_and_curvature(theta_m, v_m),
        "conv": lambda: jet(theta_c, v_c),
        "previous": lambda: generic(theta_c, v_c),
        "older": lambda: older(theta_c, v_c),
        "generic MLP": lambda: generic_mlp(theta_m, v_m),
    })
    fused, now, previous, older = (timed[k] for k in ("fused", "conv", "previous", "older"))
    with torch.no_grad():
        forward_c = cpu_ms(lambda: conv.predict(theta_c))
        forward_m = cpu_ms(lambda: mlp.predict(theta_m))
    print(f"\n  conv net per multiply-add ({pairs} pairs, D = {len(theta_c):,} against the MLP's "
          f"{len(theta_m):,}, {work:.1f}× the multiply-adds per example):")
    print(f"    gradient + curvature: conv jet kernel {now:.0f} ms, fused MLP {fused:.1f} ms; "
          f"conv / fused MLP per multiply-add {now / fused / work:.2f} (target ≤ 3)")
    print(f"    previous design (generic path) {previous:.0f} ms, {previous / fused / work:.2f} "
          f"(previous/now {previous / now:.2f}); the design before it {older:.0f} ms, "
          f"{older / fused / work:.2f}; generic MLP {timed['generic MLP']:.1f} ms")
    print(f"    forward pass alone: conv {forward_c:.1f} ms, MLP {forward_m:.2f} ms; conv / MLP "
          f"per multiply-add {forward_c / forward_m / work:.2f} (float64 convolution on a CPU)")


def banana_rows(repeats=20):
    """Print one generic-path evaluation of the Banana objective for 4 rows against 1 row."""
    objective = Banana().regression_objective()
    derivatives = RowDerivatives(objective)
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(4, 2, generator=generator, dtype=F64)
    v = torch.randn(4, 2, generator=generator, dtype=F64)
    timed = interleaved_cpu_ms({
        "one": lambda: derivatives(theta[:1], v[:1]),
        "four": lambda: derivatives(theta, v),
        "row by row": lambda: [objective.grad_and_hvp(t, d) for t, d in zip(theta, v, strict=True)],
    }, repeats)
    print(f"\n  Banana, one evaluation: 1 row {timed['one']:.2f} ms, 4 rows {timed['four']:.2f} ms "
          f"({timed['four'] / timed['one']:.2f}×, target ≤ 3); grad_and_hvp row by row "
          f"{timed['row by row']:.2f} ms")


def small_tanh_problem():
    """A 1-3-1 tanh MLP on 64 pairs of y = sin(2x) + noise (D = 10, M = 64)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1))
    x = torch.randn(64, 1, generator=g, dtype=F64)
    y = torch.sin(2 * x) + 0.1 * torch.randn(64, 1, generator=g, dtype=F64)
    return RegressionObjective(net, x, y, 0.1, 1.0)


def tangents_for(dim, scale, samples, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(samples, dim, generator=g, dtype=F64)


def compare_paths(objective, posterior, samples=4, repeats=3):
    """Print seconds per sample (CPU) of each path, now and in the previous design (medians of
    ``repeats`` interleaved runs)."""
    theta = posterior.mean
    book = posterior.sample_tangent(samples, torch.Generator().manual_seed(1), 1.0)
    conv = conv_problem()
    conv_theta = parameters_vector(conv.model)
    banana = Banana().regression_objective()
    small = small_tanh_problem()
    small_theta = parameters_vector(small.model)
    rows = [
        ("fused MLP (book's net)", MongeMetric(objective, theta),
         MongeMetric(MethodOnly(objective), theta), theta, book[:2], {}),
        ("generic MLP (book's net)", MongeMetric(GenericOnly(objective), theta),
         MongeMetric(MethodOnly(objective), theta), theta, book[:2], {}),
        ("conv jet kernel (chapter 8)", MongeMetric(conv, conv_theta),
         MongeMetric(GenericOnly(conv), conv_theta), conv_theta,
         tangents_for(len(conv_theta), 0.02, 2), {}),
        ("Banana", MongeMetric(banana, torch.zeros(2, dtype=F64)),
         MongeMetric(MethodOnly(banana), torch.zeros(2, dtype=F64)), torch.zeros(2, dtype=F64),
         tangents_for(2, 1.0, samples), {}),
        ("Fisher small (1-3-1 tanh, 1e-6)", FisherMetric(small),
         FisherMetric(small, gram="jacobian"), small_theta, tangents_for(10, 0.1, samples),
         {"method": "dopri5", "tol": 1e-6}),
        ("Fisher small (1-3-1 tanh, 1e-10)", FisherMetric(small),
         FisherMetric(small, gram="jacobian"), small_theta, tangents_for(10, 0.1, samples),
         {"method": "dopri5", "tol": 1e-10}),
        ("Fisher book-sized (Woodbury)", FisherMetric(objective), previous_fisher(objective),
         theta, book[:2], {}),
    ]
    print(f"\n6. paths: CPU seconds per sample, {samples} tangents (2 on the book's net and the "
          "conv net), α = 1 on the book's net, bosh3 at the default tolerance unless stated; "
          f"medians of {repeats} interleaved runs")
    print(f"  {'path':<34s} {'one by one':>10s} {'batched':>9s} {'previous':>9s} "
          f"{'prev/now':>8s} {'NFE':>5s}")
    for label, now, before, start, tangents, options in rows:
        times = []
        for _ in range(repeats):  # the three designs interleaved; medians
            single, nfe = cpu_seconds_per_sample(now, start, tangents, batched=False, **options)
            batch, _ = cpu_seconds_per_sample(now, start, tangents, **options)
            previous, _ = cpu_seconds_per_sample(before, start, tangents, batched=False, **options)
            times.append((single, batch, previous))
        single, batch, previous = (statistics.median(column) for column in zip(*times, strict=True))
        print(f"  {label:<34s} {single:10.3f} {batch:9.3f} {previous:9.3f} "
              f"{previous / min(single, batch):8.2f} {nfe:5d}")
        if label.startswith("Fisher book-sized"):
            print(f"  {'':<34s} target ≤ 0.5 s per sample at α = 1")
    conv_cost_per_multiply_add()
    banana_rows()


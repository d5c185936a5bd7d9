"""Speed and accuracy of geodesic solves for the Riemannian Laplace sampler (chapter 5).

Measures, side by side in one run, on the chapter's velocity net (3 -> 64 -> 64 -> 2 SiLU,
4,546 parameters) and its diagonal Laplace posterior:

1. milliseconds per vector-field evaluation (gradient + curvature ċᵀ∇²Lċ + acceleration) for
   five designs, against a floor made of one forward, one backward and one forward-mode pass of
   the same net on the same data;
2. seconds per sample, evaluations (NFE) and end-point error against a tight-tolerance solve,
   at scales α = 0.5 and α = 1, for solver settings and for the design of Bergamin et al.'s
   released code (scipy ``solve_ivp`` RK45, one sample at a time, NumPy round trips at every
   evaluation; re-implemented here for comparison);
3. batched against per-sample solves, and the linearised variant;
4. the loss at Euclidean and Riemannian samples;
5. the metric and its temperature at α = 1 and α = 8: the Monge metric of the summed loss
   (T = 1), of the mean loss (T = N pairs) and the poster authors' data-mean loss, and the
   Fisher (pull-back) metric when :mod:`rbmem_tutorial.riemannian.fisher` is installed:
   seconds per sample, NFE, end-point error against a tight solve of the same metric, travel
   ‖c(1) − θ*‖/‖v‖ and the loss rise ΔL against its bound T‖v‖;
6. every path of the solver (fused MLP, generic MLP, conv jet kernel, Banana, Fisher small and
   book-sized): CPU seconds per sample, one by one and batched, against the design it replaced
   (``geodesic_paths.py``).

The end-point error of a sample is ‖θ − θ_ref‖ / ‖θ_ref − θ*‖, with θ_ref from dopri5 at
rtol = atol = 1e-8. The net is the chapter-1 reference model (``rbmem_tutorial.reference``)
with the chapter-3 pipeline; without it, a net trained here on synthetic two-moons data.

Run from the repository root::

    python benchmarks/bench_geodesic.py                     # about 6-10 minutes on 2 CPU cores
    python benchmarks/bench_geodesic.py --quick             # about 4 minutes, fewer samples
    python benchmarks/bench_geodesic.py --source synthetic  # 512 pairs, λ = 2: about 20 min
    python benchmarks/bench_geodesic.py --compile           # also time torch.compile
    python benchmarks/bench_geodesic.py --metrics-only      # section 5 alone: about 4 min
    python benchmarks/bench_geodesic.py --paths-only        # section 6 alone: about 4 min

Wall times suffer when other processes share the cores; the CPU seconds of this process are
printed beside them.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from functools import partial

import numpy as np
import torch
from geodesic_paths import compare_paths  # this folder's section 6
from scipy.integrate import solve_ivp
from torch import nn
from torch.func import functional_call, jvp

from rbmem_tutorial import riemannian
from rbmem_tutorial.laplace import (
    RegressionObjective,
    fast_mlp,
    fit_laplace,
    flow_matching_regression_set,
    noise_std_from_residuals,
    parameters_vector,
    refine_map,
    unflatten,
)
from rbmem_tutorial.laplace.fast_mlp import MLPRegressionKernel
from rbmem_tutorial.riemannian import exp_map

F64 = torch.float64
DEFAULT_FIELD = "fused kernel, gradient + curvature (default)"
DEFAULT_SOLVE = "bosh3 1e-4, fused kernel (default)"


# --- the problem --------------------------------------------------------------------------------


def reference_problem():
    """Objective and diagonal Laplace posterior of the chapter-1 reference net."""
    from rbmem_tutorial.laplace import fit_flow_posterior
    from rbmem_tutorial.reference import REFERENCE, load_or_train

    flow = load_or_train(REFERENCE, progress=False)
    fitted = fit_flow_posterior(flow.model, flow.train, structure="diag")
    return fitted.objective, fitted.posterior, "chapter-1 reference net (moons, 16 points)"


def synthetic_problem(steps: int):
    """Train the chapter's net on 32 two-moons points; Laplace at λ = 2 on 512 frozen pairs."""
    from sklearn.datasets import make_moons

    points, _ = make_moons(32, noise=0.05, random_state=0)
    data = torch.as_tensor((points - points.mean(0)) / points.std(0), dtype=torch.float32)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x1 = data[torch.randint(len(data), (256,), generator=generator)]
        x0 = torch.randn(x1.shape, generator=generator)
        t = torch.rand(len(x1), 1, generator=generator)
        prediction = net(torch.cat([(1 - t) * x0 + t * x1, t], dim=1))
        loss = (prediction - (x1 - x0)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    inputs, targets = flow_matching_regression_set(data, draws_per_point=16, seed=0)
    theta_sgd = parameters_vector(net).to(F64)
    sigma = noise_std_from_residuals(net, theta_sgd, inputs, targets)
    objective = RegressionObjective(net, inputs, targets, sigma, prior_precision=2.0)
    theta_map, _ = refine_map(objective, theta_sgd)
    posterior = fit_laplace(objective, theta_map, "diag", prior_precision=2.0)
    return posterior.objective, posterior, f"synthetic moons (32 points, {steps} Adam steps)"


# --- timing helpers -----------------------------------------------------------------------------


def timed(fn):
    """Run ``fn`` once; return its result, wall seconds and CPU seconds of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def per_call_ms(designs: dict, repeats: int, calls: int) -> dict:
    """Median over ``repeats`` of the mean wall and CPU ms per call, designs interleaved."""
    samples = {name: ([], []) for name in designs}
    for fn in designs.values():
        fn()  # warm up
    for _ in range(repeats):
        for name, fn in designs.items():
            _, wall, cpu = timed(lambda fn=fn: [fn() for _ in range(calls)])
            samples[name][0].append(1e3 * wall / calls)
            samples[name][1].append(1e3 * cpu / calls)
    return {name: (statistics.median(w), statistics.median(c)) for name, (w, c) in samples.items()}


# --- designs of one vector-field evaluation ---------------------------------------------------


def field_of(loss, dim):
    """The geodesic right-hand side ``[θ̇, c̈]`` exactly as :func:`exp_map` builds it."""
    metric = riemannian.MongeMetric(loss, torch.zeros(dim, dtype=F64))

    def field(state):
        theta, velocity = state[:dim], state[dim:]
        return torch.cat([velocity, metric.acceleration(theta, velocity)])

    return field


class MethodOnly:
    """Expose only ``grad_and_hvp`` (the objective's own forward-over-reverse, or the kernel's
    full R-op HVP), so the geodesic solver cannot pick a faster path."""

    def __init__(self, source):
        self.grad_and_hvp = source.grad_and_hvp


def scipy_rhs(objective):
    """Right-hand side in the style of the released reference code: NumPy in, NumPy out,
    gradient and HVP by autograd double backward at every call."""
    dim = objective.num_params

    def rhs(_t, y):
        state = torch.from_numpy(y)
        theta = state[:dim].clone().requires_grad_(True)
        velocity = state[dim:]
        (grad,) = torch.autograd.grad(objective.value(theta), theta, create_graph=True)
        (hvp,) = torch.autograd.grad(grad, theta, grad_outputs=velocity)
        grad = grad.detach()
        acceleration = -grad * (velocity @ hvp) / (1 + grad @ grad)
        return torch.cat([velocity, acceleration]).numpy()

    return rhs


def floor_passes(objective, theta, v):
    """One forward + backward of the loss, and one forward-mode pass (JVP) of the net.

    The net is the bare ``nn.Sequential`` on its (precomputed) input features, so the floor
    carries no wrapper overhead.
    """
    model = copy.deepcopy(fast_mlp._sequential(objective.model))
    inputs = fast_mlp._network_inputs(objective.model, objective.inputs)
    targets, scale = objective.targets, 0.5 / objective.noise_std**2
    torch.nn.utils.vector_to_parameters(theta, model.parameters())
    tangents = unflatten(model, v)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def forward_backward():
        model.zero_grad(set_to_none=True)
        (scale * (model(inputs) - targets).square().sum()).backward()

    def forward_mode():
        return jvp(lambda p: functional_call(model, p, (inputs,)), (params,), (tangents,))

    return forward_backward, forward_mode


# --- solves -----------------------------------------------------------------------------------


def relative_errors(endpoints, reference, theta_star):
    return ((endpoints - reference).norm(dim=-1) / (reference - theta_star).norm(dim=-1)).tolist()


def solve_rows(loss, theta_star, tangents, **options):
    """Per-sample solves; wall and CPU seconds per sample, NFE, end points, drift."""
    rows = []
    for v in tangents:
        result, wall, cpu = timed(lambda v=v: exp_map(loss, theta_star, v, **options))
        rows.append((result.endpoints, wall, cpu, int(result.nfe), float(result.speed_drift)))
    return rows


def scipy_rows(objective, theta_star, tangents, tol):
    rhs, rows = scipy_rhs(objective), []
    dim = len(theta_star)
    for v in tangents:
        y0 = torch.cat([theta_star, v]).numpy()

        def solve(y0=y0):
            return solve_ivp(rhs, (0.0, 1.0), y0, method="RK45", rtol=tol, atol=tol)

        solution, wall, cpu = timed(solve)
        end = torch.from_numpy(np.ascontiguousarray(solution.y[:dim, -1]))
        rows.append((end, wall, cpu, int(solution.nfev), float("nan")))
    return rows


def report(label, rows, reference, theta_star):
    ends = torch.stack([row[0] for row in rows])
    errors = relative_errors(ends, reference[: len(rows)], theta_star)
    walls, cpus = [row[1] for row in rows], [row[2] for row in rows]
    nfes, drifts = [row[3] for row in rows], [row[4] for row in rows]
    print(
        f"  {label:<44s} {statistics.median(walls):6.2f} s {statistics.median(cpus):6.2f} s "
        f"{statistics.median(nfes):6.0f}  {100 * statistics.median(errors):6.2f}% "
        f"{100 * max(errors):6.2f}%  {statistics.median(drifts):8.2g}"
    )
    return statistics.median(walls), statistics.median(cpus), max(errors)


def time_evaluations(objective, posterior, quick, compile_kernel):
    """Section 1: ms per vector-field evaluation of each design, and the floor."""
    theta_star, dim = posterior.mean, objective.num_params
    tangent = posterior.sample_tangent(1, torch.Generator().manual_seed(0), scale=0.5)[0]
    state = torch.cat([theta_star, tangent])
    forward_backward, forward_mode = floor_passes(objective, theta_star, tangent)
    designs = {
        "floor: forward + backward": forward_backward,
        "floor: forward-mode pass (JVP)": forward_mode,
        DEFAULT_FIELD: partial(field_of(objective, dim), state),
        "fused kernel, gradient + full HVP (R-op)": partial(
            field_of(MethodOnly(MLPRegressionKernel.from_objective(objective)), dim), state
        ),
        "autograd double backward (prototype)": partial(field_of(objective.value, dim), state),
        "torch.func jvp(grad) (objective's own)": partial(
            field_of(MethodOnly(objective), dim), state
        ),
        "scipy + NumPy round trip (reference code)": partial(
            scipy_rhs(objective), 0.0, state.numpy()
        ),
    }
    if compile_kernel:
        kernel = MLPRegressionKernel.from_objective(objective)
        compiled, seconds, _ = timed(lambda: torch.compile(kernel.grad_and_hvp, dynamic=False))
        _, seconds_first, _ = timed(lambda: compiled(theta_star, tangent))
        print(f"torch.compile of the kernel: {seconds + seconds_first:.0f} s to compile")
        designs["torch.compile(fused kernel), grad+HVP only"] = partial(
            compiled, theta_star, tangent
        )
    times = per_call_ms(designs, repeats=5 if quick else 9, calls=10)
    floor = [sum(pair) for pair in zip(*list(times.values())[:2], strict=True)]
    print("\n1. one vector-field evaluation                 ms wall   ms CPU   × floor (CPU)")
    print(f"  {'floor (forward + backward + JVP)':<44s} {floor[0]:6.2f}  {floor[1]:6.2f}    1.00")
    for name, (wall, cpu) in list(times.items())[2:]:
        print(f"  {name:<44s} {wall:6.2f}  {cpu:6.2f}  {cpu / floor[1]:6.2f}")
    return times[DEFAULT_FIELD][1] / floor[1]


def compare_solves(objective, posterior, alpha, samples, quick):
    """Sections 2-4 at one α; (wall, CPU, worst error) per sample, one by one and batched."""
    theta_star = posterior.mean
    tangents = posterior.sample_tangent(samples, torch.Generator().manual_seed(1), alpha)
    tight = {"method": "dopri5", "rtol": 1e-8, "atol": 1e-8, "max_num_steps": 100_000}
    ref_rows, seconds, _ = timed(lambda: solve_rows(objective, theta_star, tangents, **tight))
    reference = torch.stack([row[0] for row in ref_rows])
    print(f"\n2. α = {alpha}: {samples} samples; reference dopri5 1e-8 "
          f"({statistics.median(row[3] for row in ref_rows):.0f} NFE, {seconds:.0f} s)")
    print(f"  {'design':<44s} {'s/sample':>8s} {'CPU s':>8s} {'NFE':>6s} "
          f"{'err med':>7s} {'err max':>7s} {'drift':>8s}")
    few = tangents[:1] if quick else tangents[:2]
    configs = [
        ("prototype: dopri5 1e-4, double backward", objective.value, "dopri5", 1e-4, few),
        ("dopri5 1e-4, fused kernel", objective, "dopri5", 1e-4, tangents),
        ("dopri5 1e-3, fused kernel", objective, "dopri5", 1e-3, tangents),
        (DEFAULT_SOLVE, objective, "bosh3", 1e-4, tangents),
        ("bosh3 3e-4, fused kernel", objective, "bosh3", 3e-4, tangents),
    ]
    for label, loss, method, tol, rows_in in configs:
        rows = solve_rows(loss, theta_star, rows_in, method=method, rtol=tol, atol=tol,
                          max_num_steps=10_000)
        measured = report(label, rows, reference, theta_star)
        if label == DEFAULT_SOLVE:
            default, riemann = measured, torch.stack([row[0] for row in rows])
    rows = scipy_rows(objective, theta_star, few, 1e-4)
    report("reference code: scipy RK45 1e-4, NumPy", rows, reference, theta_star)

    batch, wall, cpu = timed(
        lambda: exp_map(objective, theta_star, tangents, method="bosh3", batched=True)
    )
    errors = relative_errors(batch.endpoints, reference, theta_star)
    batched = (wall / samples, cpu / samples, max(errors))
    print(f"  {f'bosh3 1e-4, batched ×{samples} (one shared solve)':<44s} "
          f"{wall / samples:6.2f} s {cpu / samples:6.2f} s {int(batch.nfe[0]):6d}  "
          f"{100 * statistics.median(errors):6.2f}% {100 * max(errors):6.2f}%  "
          f"{float(batch.speed_drift.median()):8.2g}")
    linear = riemannian.linearised_objective(objective, theta_star)
    rows = solve_rows(linear, theta_star, few, method="bosh3", rtol=1e-4, atol=1e-4)
    report("linearised, bosh3 1e-4 (err: vs full ref)", rows, reference, theta_star)

    loss_at = statistics.median(float(objective.value(theta)) for theta in riemann)
    euclid = statistics.median(float(objective.value(theta_star + v)) for v in tangents)
    print(f"  loss (medians): θ* {float(objective.value(theta_star)):.1f}, "
          f"Euclidean θ* + v {euclid:.1f}, Riemannian {loss_at:.1f}")
    return default, batched


METRIC_DESIGNS = (
    ("Monge, T = 1 (summed loss)", "monge", 1.0),
    ("Monge, T = N (mean loss)", "monge", "mean"),
    ("Monge, data-mean (authors' default)", "monge", "data-mean"),
    ("Fisher (pull-back of the outputs)", "fisher", 1.0),
)
FISHER = METRIC_DESIGNS[-1][0]


def fisher_available() -> bool:
    try:
        import rbmem_tutorial.riemannian.fisher  # noqa: F401
    except ImportError:
        return False
    return True


def compare_metrics(objective, posterior, alphas, samples):
    """Section 5: each metric at each α, bosh3 at its default tolerance one by one against
    dopri5 1e-8 of the same metric; returns {(label, α): (wall, CPU, worst error)} per sample."""
    theta_star = posterior.mean
    designs = [row for row in METRIC_DESIGNS if row[1] != "fisher" or fisher_available()]
    if len(designs) < len(METRIC_DESIGNS):
        print("\n(the Fisher metric is not installed here: its rows are left out)")
    tight = {"method": "dopri5", "rtol": 1e-8, "atol": 1e-8, "max_num_steps": 100_000}
    default = {"method": "bosh3", "max_num_steps": 10_000}  # each metric's default tolerance
    print(f"\n5. metric and temperature: {samples} samples per α, bosh3 at the metric's default "
          "tolerance (riemannian.default_tolerance), one by one; "
          f"error against dopri5 1e-8 of the same metric (N = {objective.num_examples} pairs)")
    print(f"  {'metric':<38s} {'α':>3s} {'s/sample':>8s} {'CPU s':>7s} {'NFE':>5s} "
          f"{'ref NFE':>7s} {'err med':>7s} {'err max':>7s} {'travel':>6s} {'ΔL':>9s} "
          f"{'bound':>9s}")
    measured = {}
    for alpha in alphas:
        tangents = posterior.sample_tangent(samples, torch.Generator().manual_seed(1), alpha)
        for label, metric, temperature in designs:
            geometry = {"metric": metric, "temperature": temperature}
            refs = [exp_map(objective, theta_star, v, **geometry, **tight) for v in tangents]
            runs = [timed(lambda v=v, g=geometry: exp_map(objective, theta_star, v, **g, **default))
                    for v in tangents]
            ends = torch.stack([result.endpoints for result, _, _ in runs])
            errors = relative_errors(ends, torch.stack([r.endpoints for r in refs]), theta_star)
            walls, cpus = [run[1] for run in runs], [run[2] for run in runs]
            results = [run[0] for run in runs]
            rise = statistics.median(float(r.loss_rise) for r in results)
            bound = ("n/a" if results[0].bound is None
                     else f"{statistics.median(float(r.bound) for r in results):9.1f}")
            print(f"  {label:<38s} {alpha:3g} {statistics.median(walls):8.2f} "
                  f"{statistics.median(cpus):7.2f} "
                  f"{statistics.median(int(r.nfe) for r in results):5.0f} "
                  f"{statistics.median(int(r.nfe) for r in refs):7.0f} "
                  f"{100 * statistics.median(errors):6.2f}% {100 * max(errors):6.2f}% "
                  f"{statistics.median(float(r.travel) for r in results):6.3f} "
                  f"{rise:9.1f} {bound:>9s}")
            measured[label, alpha] = (statistics.median(walls), statistics.median(cpus),
                                      max(errors))
    summed = METRIC_DESIGNS[0][0]
    for label, _, _ in designs[1:]:
        ratios = [measured[label, a][1] / measured[summed, a][1] for a in alphas]
        print(f"  CPU time per sample, {label} / T = 1: "
              + ", ".join(f"{ratio:.2f} at α = {a:g}" for ratio, a in zip(ratios, alphas,
                                                                          strict=True)))
    if (FISHER, 1.0) in measured:
        wall, cpu, worst = measured[FISHER, 1.0]
        print(f"  target, Fisher at α = 1: {wall:.2f} s wall, {cpu:.2f} s CPU per sample "
              f"(≤ 2 s), worst end-point error {100 * worst:.2f}% (≤ 2%)")
    return measured


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--source", choices=("reference", "synthetic"), default="reference")
    parser.add_argument("--metrics-only", action="store_true", help="run section 5 alone")
    parser.add_argument("--paths-only", action="store_true", help="run section 6 alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, 1 thread; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    start = time.perf_counter()
    if args.source == "reference":
        try:
            objective, posterior, what = reference_problem()
        except ImportError as err:
            print(f"chapter-1 reference not available ({err}); using synthetic data")
            args.source = "synthetic"
    if args.source == "synthetic":
        objective, posterior, what = synthetic_problem(2_000 if args.quick else 10_000)
    theta_star = posterior.mean
    print(f"problem: {what}; set-up {time.perf_counter() - start:.0f} s")
    print(f"  D = {objective.num_params}, N = {objective.num_examples} frozen pairs, "
          f"σ = {float(objective.noise_std):.3f}, λ = {objective.prior_precision:.3g}, "
          f"‖∇L(θ*)‖ = {float(objective.grad(theta_star).norm()):.2g}, "
          f"L(θ*) = {float(objective.value(theta_star)):.1f}")

    samples = 2 if args.quick else 4
    if args.paths_only:
        compare_paths(objective, posterior)
        print(f"load average {os.getloadavg()[0]:.1f} at end; "
              f"total {time.perf_counter() - start:.0f} s")
        return
    if args.metrics_only:
        compare_metrics(objective, posterior, (1.0, 8.0), 1 if args.quick else 2)
        print(f"load average {os.getloadavg()[0]:.1f} at end; "
              f"total {time.perf_counter() - start:.0f} s")
        return
    ratio = time_evaluations(objective, posterior, args.quick, args.compile)
    default = {a: compare_solves(objective, posterior, a, samples, args.quick) for a in (0.5, 1.0)}
    compare_metrics(objective, posterior, (1.0, 8.0), 1 if args.quick else 2)
    compare_paths(objective, posterior)

    print("\nTargets (full network, end-point error ≤ 2%; bosh3 1e-4 with the fused kernel):")
    for alpha, bound in ((0.5, 2.0), (1.0, 4.0)):
        for mode, (wall, cpu, worst) in zip(("one by one", f"batched ×{samples}"),
                                            default[alpha], strict=True):
            print(f"  α = {alpha}, {mode:<11s}: {wall:.2f} s wall, {cpu:.2f} s CPU per sample "
                  f"(target ≤ {bound} s), worst end-point error {100 * worst:.2f}%")
    print(f"  kernel evaluation {ratio:.2f} × floor (target ≤ 2)")
    print(f"load average {os.getloadavg()[0]:.1f} at end; "
          f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

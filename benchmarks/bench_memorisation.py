"""Speed, peak memory and accuracy of the exact nearest / second-nearest search.

Compares, for M generated x N training float32 points in several dimensions:

- ``nearest_two``: chunked float32 screening + exact float64 recomputation (this package);
- sklearn ``NearestNeighbors(algorithm="brute")`` with two neighbours;
- one full ``torch.cdist`` followed by ``topk`` (the whole M x N matrix at once);
- one float32 matrix product ``g @ t.T`` of the same shape: the compute floor.

Each measurement runs in a fresh Python process so that its peak resident memory
(``ru_maxrss`` after the call minus before it) is its own; the data are made from a seed in
that process. One small warm-up call precedes the timed one. The methods take turns for
``--repeats`` rounds and each one's fastest round is reported, so that load from other
processes on a shared machine falls on all of them alike. One percent of the generated
points are planted near-copies (a training point plus noise of 1e-5 per coordinate), and the
accuracy column gives the largest relative error of the ratio d1/d2 over 100 of those and 100
ordinary points, against float64 brute force.

Run ``python benchmarks/bench_memorisation.py`` (10k x 10k in 2, 64, 3072 dims) or add
``--quick`` (2k x 2k). Threads: torch's default unless ``--threads`` is given. The load
average is printed before and after, since other processes skew the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

METHODS = ("nearest_two", "sklearn", "cdist_topk", "matmul")


def make_data(n: int, dim: int):
    """Seeded float32 data; the first 1% of generated points are near-copies of training ones."""
    gen = torch.Generator().manual_seed(dim)
    train = torch.randn(n, dim, generator=gen)
    generated = torch.randn(n, dim, generator=gen)
    copies = max(1, n // 100)
    generated[:copies] = train[:copies] + 1e-5 * torch.randn(copies, dim, generator=gen)
    return generated, train


def run_method(method: str, generated: torch.Tensor, train: torch.Tensor):
    """Return (d1, d2) float64 for the search methods, None for the matmul floor."""
    if method == "nearest_two":
        from rbmem_tutorial.memorisation import nearest_two

        nt = nearest_two(generated, train)
        return nt.d1, nt.d2
    if method == "sklearn":
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(train.numpy())
        dist, _ = nn.kneighbors(generated.numpy())
        dist = torch.from_numpy(dist).double()
        return dist[:, 0], dist[:, 1]
    if method == "cdist_topk":
        dist = torch.cdist(generated, train).topk(2, dim=1, largest=False).values.double()
        return dist[:, 0], dist[:, 1]
    generated @ train.T
    return None


def ratio_error(generated, train, d1, d2) -> float:
    """Largest relative error of d1/d2 on 100 near-copies and 100 ordinary rows."""
    copies = max(1, len(generated) // 100)
    rows = torch.cat([torch.arange(min(100, copies)), torch.arange(copies, copies + 100)])
    train64 = train.double()
    truth = torch.stack(
        [(train64 - generated[i].double()).pow(2).sum(1).sqrt().topk(2, largest=False).values
         for i in rows]
    )
    exact = truth[:, 0] / truth[:, 1]
    return ((d1[rows] / d2[rows] - exact).abs() / exact).max().item()


def child(method: str, n: int, dim: int) -> None:
    """Measure one method in this process and print one JSON line."""
    generated, train = make_data(n, dim)
    run_method(method, generated[:256], train[:256])  # warm-up: thread pools, first allocations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = run_method(method, generated, train)
    seconds = time.perf_counter() - start
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    error = None if result is None else ratio_error(generated, train, *result)
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "ratio_error": error}))


def measure(method: str, n: int, dim: int, threads: int | None) -> dict:
    command = [sys.executable, __file__, "--child", method, str(n), str(dim)]
    if threads is not None:
        command += ["--threads", str(threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2k x 2k points instead of 10k")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64, 3072])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of timed calls")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child[0], *map(int, args.child[1:]))
        return
    n = 2000 if args.quick else 10_000
    print(f"{n} generated x {n} training float32 points; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, best of {args.repeats}")
    print("load average before: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    header = f"{'dim':>5} {'method':>12} {'seconds':>9} {'peak MiB':>9} {'ratio err':>10}"
    for dim in args.dims:
        print("\n" + header)
        rounds = [
            {m: measure(m, n, dim, args.threads) for m in METHODS} for _ in range(args.repeats)
        ]
        results = {m: min((r[m] for r in rounds), key=lambda x: x["seconds"]) for m in METHODS}
        for m, r in results.items():
            err = "" if r["ratio_error"] is None else f"{r['ratio_error']:.1e}"
            print(f"{dim:>5} {m:>12} {r['seconds']:>9.3f} {r['peak_mib']:>9.0f} {err:>10}")
        ours = results["nearest_two"]["seconds"]
        print(f"      nearest_two / sklearn      = {ours / results['sklearn']['seconds']:.2f}")
        print(f"      nearest_two / matmul       = {ours / results['matmul']['seconds']:.2f}")
        print(f"      cdist_topk  / matmul       = "
              f"{results['cdist_topk']['seconds'] / results['matmul']['seconds']:.2f}")
    print("\nload average after: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()

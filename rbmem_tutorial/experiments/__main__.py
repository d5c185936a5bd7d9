"""Command line of the experiment scripts: ``python -m rbmem_tutorial.experiments STUDY ...``.

Studies
-------
tradeoff
    Memorisation against quality for MAP, early stopping, isotropic weight noise, Laplace and
    Riemannian Laplace, over a sweep of posterior scales. See :mod:`.tradeoff`.
merge
    Combine the finished cells in an output folder into results and figures (after a
    multi-process run, or to look at a partial one).

Several processes: ``torchrun --nproc_per_node N -m rbmem_tutorial.experiments tradeoff ...``
shards the cells over the ranks (gloo on CPU, NCCL on GPU, one GPU per process); each rank
writes its own finished cells and rank 0 merges at the end. The unit of work is a whole cell:
its parameter samples are not split across processes. When the training seeds divide evenly
among the processes each takes whole seeds (no net is trained twice); otherwise the cells are
dealt round-robin. See ``tradeoff.shard``.

Examples
--------
One GPU:     python -m rbmem_tutorial.experiments tradeoff --profile gpu-digits --out runs/digits
Four GPUs:   torchrun --nproc_per_node 4 -m rbmem_tutorial.experiments tradeoff \
                 --profile gpu-digits --out runs/digits
Your images: python -m rbmem_tutorial.experiments tradeoff --profile gpu-digits \
                 --data-file mnist.npy --net conv --n-train 50 --out runs/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import matplotlib

from . import store
from .geodesic_cells import parse_temperature
from .tradeoff import (
    METHODS,
    PROFILES,
    TradeoffConfig,
    check_config,
    finish,
    profile_config,
    run_study,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rbmem_tutorial.experiments",
                                     description=__doc__.split("\n\n")[0])
    studies = parser.add_subparsers(dest="study", required=True)
    run = studies.add_parser("tradeoff", help="memorisation against quality, per method/scale")
    run.add_argument("--out", required=True, type=Path, help="output folder (resumable)")
    run.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                     help="preset sizes: quick (a CPU minute), cpu (about 30 min), gpu (one "
                          "GPU); cpu-digits (about 10 min) and gpu-digits for the 8x8 digits")
    run.add_argument("--quick", action="store_const", const="quick", dest="profile",
                     help="same as --profile quick")
    run.add_argument("--dataset", help="moons, eight_gaussians, checkerboard, rings or digits")
    run.add_argument("--data-file", help="your own images: .npy or .npz, N x H x W or "
                     "N x C x H x W; uint8 0..255 or floats (min/max) are scaled to [-1, 1]")
    run.add_argument("--net", help="velocity net: mlp (vectors or flattened images) or conv "
                     "(a small U-Net for images)")
    run.add_argument("--channels", type=int, nargs="+", help="channels per level of --net conv")
    run.add_argument("--n-train", type=int, help="training-set size")
    run.add_argument("--n-test", type=int, help="held-out size (default: see the docs)")
    run.add_argument("--batch-size", type=int, help="training batch size")
    run.add_argument("--lr", type=float, help="Adam learning rate")
    run.add_argument("--steps", type=int, help="SGD steps of the MAP net")
    run.add_argument("--early-steps", type=int, help="SGD steps of the early-stopped baseline")
    run.add_argument("--hidden", type=int, nargs="+", help="hidden widths of the velocity MLP")
    run.add_argument("--methods", nargs="+", metavar="METHOD", help=", ".join(METHODS))
    run.add_argument("--scales", type=float, nargs="+", help="posterior scales α (std multiplier)")
    run.add_argument("--structure", help="Laplace structure: full, diag, kfac or last_layer")
    run.add_argument("--train-seeds", type=int, nargs="+", help="seeds of the MAP training")
    run.add_argument("--sample-seeds", type=int, nargs="+", help="seeds of x0 and posterior draws")
    run.add_argument("--n-param-samples", type=int, help="parameter samples per cell")
    run.add_argument("--n-x0", type=int, help="shared starting points x0 per parameter sample")
    run.add_argument("--draws-per-point", type=int, help="frozen (x0, t) draws per training point")
    run.add_argument("--param-subset", help="weights under the posterior: all, first, last, "
                     "lastK (e.g. last2) or comma-separated name patterns")
    run.add_argument("--geodesic-batch", type=int, help="frozen pairs per geodesic gradient/HVP "
                     "(a fixed random mini-batch, scaled to be unbiased; default all)")
    run.add_argument("--geodesic-rtol", type=float, help="geodesic solver rtol = atol")
    run.add_argument("--refine-iterations", type=int, help="L-BFGS iterations refining θ*")
    run.add_argument("--newton-steps", type=int, help="Newton-CG steps refining θ*")
    run.add_argument("--prior-mean", help="prior centre: sgd (the trained weights) or zero")
    run.add_argument("--base-point", help="posterior centre and geodesic start: refined (θ*), "
                     "sgd (θ_SGD as it is, the paper's) or tilted (θ_SGD, gradient removed)")
    run.add_argument("--temperature", dest="temperatures", type=parse_temperature, nargs="+",
                     metavar="T", help="Monge-metric temperatures, several allowed: numbers, "
                     "sum (T=1), mean (T=pairs), data-mean (the authors' metric)")
    run.add_argument("--device", help="cpu or cuda")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    merge = studies.add_parser("merge", help="merge finished cells into results and figures")
    merge.add_argument("--out", required=True, type=Path)
    return parser


def _config(args) -> TradeoffConfig:
    names = ("dataset", "n_train", "steps", "early_steps", "hidden", "methods", "scales",
             "structure", "train_seeds", "sample_seeds", "n_param_samples", "n_x0",
             "draws_per_point", "device", "data_file", "net", "channels", "n_test",
             "batch_size", "lr", "param_subset", "geodesic_batch", "geodesic_rtol",
             "refine_iterations", "newton_steps", "prior_mean", "base_point", "temperatures")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    given |= {name: tuple(given[name]) for name in given if isinstance(given[name], list)}
    if "data_file" in given:
        if given.get("dataset", "file") != "file":
            raise ValueError("pass either --data-file or --dataset, not both.")
        given["dataset"] = "file"
    config = profile_config(args.profile, **given)
    check_config(config)
    return config


def _distributed(config: TradeoffConfig) -> tuple[int, int]:
    """Join the process group that torchrun set up, if any; returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    backend = "nccl" if config.device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(_local_rank())
    return dist.get_rank(), dist.get_world_size()


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def main(argv: list[str] | None = None) -> int:
    matplotlib.use("Agg")
    import torch

    args = _parser().parse_args(argv)
    if args.study == "merge":
        record = _tuples(json.loads((args.out / "config.json").read_text()))
        config = TradeoffConfig(**{**record, "device": "cpu"})  # merging needs no GPU
        rows = finish(config, args.out)
        print(f"merged {len(rows)} cells into {args.out / 'results.csv'}")
        return 0
    try:
        config = _config(args)
        out = store.check_writable(args.out)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rank, world = _distributed(config)
    torch.set_num_threads(1)
    if config.device == "cuda" and world > 1:
        config = TradeoffConfig(**{**asdict(config), "device": f"cuda:{_local_rank()}"})
    if rank == 0:
        print(json.dumps(asdict(config), indent=1))
    computed = run_study(config, out, progress=not args.no_progress, rank=rank,
                         world_size=world)
    print(f"rank {rank}: computed {len(computed)} cells")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank == 0:
        rows = finish(config, out)
        print(f"{len(rows)} cells in {out / 'results.csv'}")
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def _tuples(record: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}


if __name__ == "__main__":
    raise SystemExit(main())

"""Command line of the experiment scripts: ``rbmem STUDY ...``, the same as
``python -m rbmem_tutorial.experiments STUDY ...``.

Studies
-------
tradeoff
    Memorisation against quality for MAP, early stopping, isotropic weight noise, Laplace and
    Riemannian Laplace, over a sweep of posterior scales. See :mod:`.tradeoff`.
merge
    Combine the finished cells in an output folder into results and figures (after a
    multi-process run, or to look at a partial one).
cache
    List or clear the trained models and posteriors this package cached on disk.
methods
    What each method and each term of the options means, one line each.
matched
    Every method calibrated to the same memorised fractions on replicates with their own data,
    scored on fresh draws, with the declared primary comparisons (chapter 7). See
    :mod:`.matched_run`.

Several processes: ``torchrun --nproc_per_node N -m rbmem_tutorial.experiments tradeoff ...``
shards the cells over the ranks (gloo on CPU, NCCL on GPU, one GPU per process); each rank
writes its own finished cells and rank 0 merges at the end. The unit of work is a whole cell:
its parameter samples are not split across processes. When the training seeds divide evenly
among the processes each takes whole seeds (no net is trained twice); otherwise the cells are
dealt round-robin. See ``tradeoff.shard``.

Every user mistake is one line ``error: ...`` on stderr and exit status 2, before any work;
a cell that fails while computing (an ODE solver blow-up) is named with the fix, recorded
(``cells/<key>.failed``) and left while the other cells go on; the run then writes the tables
of the finished cells, lists the failed ones one line each and ends with exit status 1 (the
same command retries them). Ctrl-C says how many cells are finished (exit status 130), SIGTERM
the same (exit status 143), both release the cells' claims, and the same command resumes.
The ``rbmem`` entry point (the top-level ``rbmem_cli`` module) also turns a Ctrl-C during the
first imports into one line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
from dataclasses import asdict, replace
from pathlib import Path

import matplotlib

from rbmem_tutorial._version import __version__
from rbmem_tutorial.cache import check_cache_writable
from rbmem_tutorial.experiments import cache_command, resume, run_record, store
from rbmem_tutorial.experiments.cell_errors import failure_summary
from rbmem_tutorial.experiments.cost_model import GPU_MEASURED, TYPICAL_NFE, profile_prediction
from rbmem_tutorial.experiments.geodesic_cells import parse_temperature
from rbmem_tutorial.experiments.glossary import glossary
from rbmem_tutorial.experiments.tradeoff import (
    METHODS,
    PROFILES,
    TradeoffConfig,
    cells,
    check_config,
    finish,
    profile_config,
    run_study,
)

DESCRIPTION = """\
Experiments of the rbmem tutorial: memorisation against quality for MAP, early stopping and
Laplace / Riemannian Laplace posteriors of a flow-matching velocity net.

  tradeoff  run (or resume, or extend) a study into an output folder
  merge     combine the finished cells of a folder into results and figures
  cache     list or clear the trained models cached on disk
  methods   what each method and term means, one line each
"""

EXAMPLES = """\
examples:
  one GPU:      {prog} tradeoff \\
                    --profile gpu-digits --out runs/digits
  four GPUs:    torchrun --nproc_per_node 4 -m rbmem_tutorial.experiments tradeoff \\
                    --profile gpu-digits --out runs/digits
  your images:  {prog} tradeoff \\
                    --profile gpu-digits --data-file mnist.npy --net conv --n-train 50 \\
                    --out runs/mnist
  more scales:  rerun the same command with more --scales (or seeds, methods): finished
                cells are kept. Other options that change results need a new --out or --force.
"""


FLAGS = {"temperatures": "temperature"}  # fields whose command-line flag is named otherwise


def _option(name: str, value) -> str:
    shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
    return f"--{FLAGS.get(name, name).replace('_', '-')} {shown}"


def _profiles_text() -> str:
    lines = ["profiles (the options each one sets; options you give override them; steps are "
             "Adam steps):"]
    for name in sorted(PROFILES):
        text = ", ".join(_option(k, v) for k, v in PROFILES[name].items())
        lines += textwrap.wrap(f"{name}: {text}", 96, initial_indent="  ",
                               subsequent_indent="      ", break_on_hyphens=False)
    gpu = profile_config("gpu-digits", device="cpu")
    each, batch = (profile_prediction(replace(gpu, geodesic_solve=solve), GPU_MEASURED,
                                      TYPICAL_NFE) for solve in ("each", "batched"))
    lines += textwrap.wrap(
        f"gpu-digits on one GPU: about {each / 60:.0f} min of geodesic solves expected, "
        f"{batch:.0f} s with --geodesic-solve batched (cost model: {TYPICAL_NFE} evaluations "
        f"per solve, {GPU_MEASURED.overhead * 1e3:.1f} ms per evaluation as measured on one "
        "H200, where kernel launches, not arithmetic, are the cost; "
        "rbmem_tutorial.experiments.cost_model). Measured there: about 130 s per training seed "
        "with scales up to 8, one at a time (book/data/digits/gpu in the repository).", 96,
        initial_indent="  ", subsequent_indent="      ")
    defaults = TradeoffConfig()
    lines.append("  unset options take the defaults of TradeoffConfig, e.g. "
                 f"{_option('steps', defaults.steps)}, {_option('hidden', defaults.hidden)}.")
    return "\n".join(lines)


def _prog() -> str:
    name = Path(sys.argv[0]).name
    return "rbmem" if name == "rbmem" else "python -m rbmem_tutorial.experiments"


def _parser() -> argparse.ArgumentParser:
    prog = _prog()
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=raw,
                                     epilog=EXAMPLES.format(prog=prog))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    studies = parser.add_subparsers(dest="study", required=True)
    run = studies.add_parser("tradeoff", help="memorisation against quality, per method/scale",
                             description="Run, resume or extend a trade-off study.",
                             epilog="\n\n".join((_profiles_text(), glossary(),
                                                 EXAMPLES.format(prog=prog))),
                             formatter_class=raw)
    run.add_argument("--out", required=True, type=_folder,
                     help="output folder; rerunning resumes it (retrying failed cells), and "
                          "more seeds, scales or methods extend it")
    run.add_argument("--force", action="store_true",
                     help="when --out holds a study with other options, delete its cells "
                          "(finished and failed) and recompute with these options")
    run.add_argument("--allow-nonempty", action="store_true",
                     help="write the study into a folder that holds other files but no study "
                          "(files named like the study's, e.g. results.csv, are replaced)")
    profile = run.add_mutually_exclusive_group()
    profile.add_argument("--profile", choices=sorted(PROFILES),
                         help="preset sizes (default cpu, said before it starts; see the list "
                              "below): quick (a CPU minute), cpu (about 30 min), gpu (one GPU); "
                              "cpu-digits (mostly its 6 geodesic cells, several minutes each on "
                              "one CPU core) and gpu-digits (about 25 min on one H200) for the "
                              "8x8 digits")
    profile.add_argument("--quick", action="store_const", const="quick", dest="profile",
                         help="same as --profile quick")
    run.add_argument("--dataset", help="moons, eight_gaussians, checkerboard, rings or digits")
    run.add_argument("--data-file", help="your own data: .npy or .npz holding images N x H x W "
                     "or N x C x H x W, or points N x d; uint8 0..255 or numbers "
                     "(min/max) are scaled to [-1, 1]; default none: a built-in --dataset")
    run.add_argument("--net", help="velocity net: mlp (vectors or flattened images) or conv "
                     "(a small U-Net for images)")
    run.add_argument("--channels", type=int, nargs="+", help="channels per level of --net conv")
    run.add_argument("--n-train", type=int, help="training-set size")
    run.add_argument("--n-test", type=int, help="held-out size (default: the rest of a finite "
                     "data set; for the toy sets max(2000, generated samples))")
    run.add_argument("--batch-size", type=int, help="training batch size")
    run.add_argument("--lr", type=float, help="Adam learning rate")
    run.add_argument("--steps", type=int, help="Adam steps of the MAP net")
    run.add_argument("--early-steps", type=int,
                     help="Adam steps of the early-stopped baseline (fewer than --steps)")
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
                     "lastK (e.g. last2) or comma-separated name patterns (default all)")
    run.add_argument("--geodesic-batch", type=int, help="frozen pairs per geodesic gradient/HVP "
                     "(a fixed random mini-batch, scaled to be unbiased; default all)")
    run.add_argument("--geodesic-rtol", type=float, help="geodesic solver rtol = atol (default: "
                     "each metric's default tolerance, riemannian.default_tolerance)")
    run.add_argument("--geodesic-solve", help="each (a cell's geodesics one at a time) or batched "
                     "(as one batch: on a GPU about --n-param-samples times faster)")
    run.add_argument("--refine-iterations", type=int, help="L-BFGS iterations refining θ*")
    run.add_argument("--newton-steps", type=int, help="Newton-CG steps refining θ*")
    run.add_argument("--prior-mean", help="prior centre: sgd (the trained weights) or zero")
    run.add_argument("--base-point", help="posterior centre and geodesic start: refined (θ*), "
                     "sgd (θ_SGD as it is, the paper's) or tilted (θ_SGD, gradient removed)")
    run.add_argument("--temperature", dest="temperatures", type=parse_temperature, nargs="+",
                     metavar="T", help="Monge-metric temperatures, several allowed: numbers, "
                     "sum (T=1), mean (T=pairs), data-mean (the authors' metric)")
    run.add_argument("--device", help="cpu or cuda")
    run.add_argument("--no-progress", action="store_true", help="hide the progress lines")
    _show_defaults(run)
    studies.add_parser("methods", help="what each method and term means",
                       description="What each method of the trade-off study and each term of "
                                   "its options means.")
    merge = studies.add_parser("merge", help="merge finished cells into results and figures",
                               description="Merge the finished cells of a study folder into "
                                           "results.csv, results.json and figures; failed.json "
                                           "lists the cells that failed.")
    merge.add_argument("--out", required=True, type=_folder, help="the study folder")
    cache_command.add_parser(studies)
    studies.add_parser("matched", add_help=False,
                       help="every method calibrated to the same memorised fraction "
                            "(rbmem matched --help)")
    return parser


def _show_defaults(run: argparse.ArgumentParser) -> None:
    """Append its default to the help of every option that sets a field of the study: the
    value without a profile, which a profile may change."""
    defaults = {k: v for k, v in asdict(profile_config("cpu")).items()
                if v is not None and k != "profile"}
    for action in run._actions:
        name = action.dest
        if name not in defaults or action.help is None or "default" in action.help:
            continue
        value = defaults[name]
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
        action.help += f" (default {shown}" + (", or as the profile sets it)"
                                               if any(name in p for p in PROFILES.values())
                                               else ")")


def _folder(text: str) -> Path:
    """A folder argument, with a leading ``~`` expanded also when the shell left it quoted."""
    return Path(text).expanduser()


def _config(args) -> TradeoffConfig:
    names = ("dataset", "n_train", "steps", "early_steps", "hidden", "methods", "scales",
             "structure", "train_seeds", "sample_seeds", "n_param_samples", "n_x0",
             "draws_per_point", "device", "data_file", "net", "channels", "n_test",
             "batch_size", "lr", "param_subset", "geodesic_batch", "geodesic_rtol",
             "refine_iterations", "newton_steps", "prior_mean", "base_point", "temperatures",
             "geodesic_solve")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    given |= {name: tuple(given[name]) for name in given if isinstance(given[name], list)}
    if "data_file" in given:
        if given.get("dataset", "file") != "file":
            raise ValueError("pass either --data-file or --dataset, not both.")
        given["dataset"] = "file"
        given["data_file"] = str(Path(given["data_file"]).expanduser().resolve())
    config = profile_config(args.profile or "cpu", **given)
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
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    matplotlib.use("Agg")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["matched"]:
        from rbmem_tutorial.experiments.matched_run import main as matched

        return matched(argv[1:])
    args = _parser().parse_args(argv)
    if args.study == "cache":
        return cache_command.run(args)
    if args.study == "methods":
        print(glossary())
        return 0
    if args.study == "merge":
        return _merge(args.out)
    return _tradeoff(args, argv)


def _error(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2


def _merge(out: Path) -> int:
    try:
        config = resume.load_study_config(out)
        if not _finished(out):  # keep the results of a folder shipped without its cells
            raise FileNotFoundError(f"{out / 'cells'} holds no finished cell, so there is "
                                    "nothing to merge; run the tradeoff command first.")
        rows = finish(config, out)
    except (ValueError, TypeError, FileNotFoundError) as err:
        return _error(err)
    print(f"merged {len(rows)} cells into {out / 'results.csv'}")
    return 0


def _finished(out: Path) -> int:
    return len(list((out / "cells").glob("*.json")))


class TerminatedError(BaseException):
    """SIGTERM arrived: stop like an interruption (claims released, run record updated)."""


def _terminate(signum, frame):
    raise TerminatedError


def _checked_study(args):
    """Every check before any work: the configuration, the folders, the saved study."""
    config = _config(args)
    out = store.check_writable(args.out)
    check_cache_writable()
    resume.check_study_folder(out, args.allow_nonempty)
    return resume.study_config(config, out, args.force), out


def _tradeoff(args, argv) -> int:
    import torch

    try:
        config, out = _checked_study(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        return _error(err)
    rank, world = _distributed(config)
    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, _terminate)
    if config.device == "cuda" and world > 1:
        config = TradeoffConfig(**{**asdict(config), "device": f"cuda:{_local_rank()}"})
    record, status, computed, failed = None, "failed", [], []
    if rank == 0:
        try:  # --force deletes the old cells before any rank starts
            config = resume.prepare(config, out, force=args.force)
        except (ValueError, OSError) as err:
            return _error(err)
        if args.profile is None:
            print("note: no --profile given, so this runs the 'cpu' profile (about 30 minutes "
                  "on a CPU); --quick runs in about a minute.", file=sys.stderr)
        print(json.dumps(asdict(config), indent=1))
        command = [_prog(), *(sys.argv[1:] if argv is None else argv)]
        record = run_record.start_run(config, out, command, world)
    record = _shared(record, world)
    try:
        run_study(config, out, progress=not args.no_progress, rank=rank, world_size=world,
                  computed=computed, failed=failed)
        status = "finished"
    except (KeyboardInterrupt, TerminatedError) as stop:
        status = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        print(f"\n{status}: {_finished(out)} of {len(cells(config))} cells of this study are "
              f"finished in {out}; run the same command again to resume.", file=sys.stderr)
        return 130 if status == "interrupted" else 143
    finally:
        run_record.end_run(out, record, status if rank == 0 or status != "finished" else None,
                           len(computed), rank, len(failed))
    print(f"rank {rank}: computed {len(computed)} cells" + (f", {len(failed)} failed"
                                                            if failed else ""))
    if world > 1:
        torch.distributed.barrier()
    failures = []
    if rank == 0:  # the failures of every rank, from the folder
        rows = finish(config, out)
        print(f"{len(rows)} cells in {out / 'results.csv'}")
        failures = store.failures(out)
    if world > 1:
        torch.distributed.destroy_process_group()
    if failures:  # only rank 0 exits 1: torchrun stops the others when one rank fails
        print(failure_summary(failures, len(cells(config)), out / resume.FAILED_FILE),
              file=sys.stderr)
        return 1
    return 0


def _shared(record: dict | None, world: int) -> dict:
    """Rank 0's run record on every rank (after rank 0 prepared the folder)."""
    if world == 1:
        return record
    import torch.distributed as dist

    shared = [record]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


if __name__ == "__main__":
    raise SystemExit(main())

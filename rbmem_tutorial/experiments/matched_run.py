"""Running the matched study (:mod:`.matched_study`): resumable cells, several processes.

``rbmem matched --out DIR`` (or ``python -m rbmem_tutorial.experiments.matched_run``) computes
every unfinished cell;
a second process started with ``--reverse`` on the same folder works from the other end, and
the two share the cells through claim files (:mod:`.store`). A finished cell is never
recomputed, an interrupted one is recomputed from the start, and ``--finish`` writes the
tables (:mod:`.matched_stats`) from whatever cells exist.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rbmem_tutorial.experiments import store
from rbmem_tutorial.experiments.matched_study import (
    METHODS,
    MatchedConfig,
    cell_key,
    failed_cell,
    run_cell,
)
from rbmem_tutorial.riemannian import GeodesicSolveError


def prepare(config: MatchedConfig, out: Path) -> None:
    """Save ``config`` in ``out``, or check that it equals the saved one (``ValueError``
    naming the differing options otherwise)."""
    path = out / "config.json"
    saved = json.loads(path.read_text()) if path.exists() else None
    mine = json.loads(json.dumps(asdict(config)))
    if saved is not None and saved != mine:
        changed = sorted(k for k in mine if saved.get(k) != mine[k])
        raise ValueError(f"{out} holds a matched study with other options "
                         f"({', '.join(changed)}); use another --out, or the saved options.")
    if saved is None:
        store.write_json(path, mine)


def run(config: MatchedConfig, out, *, reverse: bool = False, log=print) -> list[str]:
    """Compute this process's unfinished cells; returns the keys it computed."""
    out = store.check_writable(Path(out))
    (out / "cells").mkdir(exist_ok=True)
    prepare(config, out)
    todo = config.cells()[::-1] if reverse else config.cells()
    current, done = None, []
    for index, method in todo:
        key = cell_key(index, method)
        if store.read_cell(out, key, dims=3) is not None or not store.claim(out, key):
            continue
        try:
            if store.is_done(out, key):
                continue
            if current is None or current.index != index:
                start = time.perf_counter()
                current = config.build_replicate(index)
                log(f"replicate {index}: nets and posterior ready in "
                    f"{time.perf_counter() - start:.0f} s (floor {current.floor:.3f})")
            start = time.perf_counter()
            try:
                row, samples = run_cell(config, current, method)
            except (GeodesicSolveError, RuntimeError, ValueError) as err:  # named in the row
                row, samples = failed_cell(config, current, method, err), np.zeros((0, 0, 2))
            store.save_cell(out, key, row, samples=samples)
        finally:
            store.release(out, key)
        done.append(key)
        log(f"{key}: {row['status']} in {time.perf_counter() - start:.0f} s")
    return done


def study_config(study: str, replicates=None, costly_replicates=None,
                 methods=None) -> MatchedConfig:
    """The design of ``study`` (``"moons"`` or ``"digits"``) with the options given."""
    options = {k: tuple(v) for k, v in (("replicates", replicates),
                                        ("costly_replicates", costly_replicates),
                                        ("methods", methods)) if v is not None}
    if min(options.get("replicates", ()) + options.get("costly_replicates", ()), default=0) < 0:
        raise ValueError("replicate indices are data and training seeds and must be 0 or "
                         "more; pass e.g. --replicates 0 1 2.")
    if study == "digits":
        from rbmem_tutorial.experiments.digits_matched import DigitsMatchedConfig

        return DigitsMatchedConfig(**options)
    return MatchedConfig(**options)


def saved_config(out) -> MatchedConfig:
    """The design saved in ``out/config.json`` (moons or digits, told apart by its fields)."""
    from rbmem_tutorial.experiments.digits_matched import DigitsMatchedConfig

    saved = json.loads((Path(out) / "config.json").read_text())
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    return DigitsMatchedConfig(**saved) if "n_train" in saved else MatchedConfig(**saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rbmem matched", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="study folder (created)")
    parser.add_argument("--study", choices=("moons", "digits"), default="moons",
                        help="moons: chapter 7's design (MatchedConfig); digits: chapter 8's "
                             "(DigitsMatchedConfig: 8x8 digits, the cpu-digits profile's "
                             "temperature and geodesic tolerance)")
    parser.add_argument("--replicates", type=int, nargs="+",
                        help="replicate indices, each its own data and seed (default: the "
                             "study's, 0-9 for moons, 0-5 for digits)")
    parser.add_argument("--costly-replicates", type=int, nargs="+",
                        help="replicates that also run the costly geodesic methods "
                             "(default: the study's, 0-4 for moons, all for digits)")
    parser.add_argument("--methods", nargs="+", choices=METHODS,
                        help="methods (default: all of the study's)")
    parser.add_argument("--reverse", action="store_true",
                        help="work from the last cell (a second process on the same --out)")
    parser.add_argument("--finish", action="store_true",
                        help="only write the tables and figures from the finished cells")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out).expanduser()
    if args.finish and not (out / "config.json").exists():
        print(f"error: {out} holds no matched study; run rbmem matched --out {out} first.",
              file=sys.stderr)
        return 2
    if not args.finish:
        try:
            config = study_config(args.study, args.replicates, args.costly_replicates,
                                  args.methods)
            prepare(config, store.check_writable(out))
        except (ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        run(config, out, reverse=args.reverse,
            log=lambda text: print(text, file=sys.stderr, flush=True))
    from rbmem_tutorial.experiments.matched_stats import write_tables

    write_tables(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

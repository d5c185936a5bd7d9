"""``rbmem cache list|clear``: what the model cache holds, and deleting it.

``list`` prints one line per file of this package in the cache folder (``$RBMEM_CACHE``, else
``~/.cache/rbmem_tutorial``): its kind, a summary of what it holds, its size and date.
``clear`` deletes this package's files only (never anything else in the folder), optionally
only those of one kind or older than some days, and asks nothing.
"""

from __future__ import annotations

import argparse
import time

from rbmem_tutorial.cache import KINDS, cache_dir
from rbmem_tutorial.cache_listing import clear, entries


def add_parser(studies) -> None:
    """Add the ``cache`` command to the sub-command parsers ``studies``."""
    cache = studies.add_parser("cache", help="list or clear the trained models cached on disk",
                               description=__doc__.split("\n\n")[0].replace("``", ""))
    actions = cache.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="kind, summary, size and date of each file")
    remove = actions.add_parser("clear", help="delete this package's cached files (no prompt)")
    for command in (listing, remove):
        command.add_argument("--kind", choices=sorted(KINDS),
                             help="only files of this kind: flow (the book's trained nets), "
                                  "study-flow (nets of a study's own data or conv net), "
                                  "posterior (refined MAP and prior precision)")
    remove.add_argument("--older-than", type=float, metavar="DAYS",
                        help="only files last written more than DAYS days ago")


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def _date(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def run(args: argparse.Namespace) -> int:
    """Carry out ``cache list`` or ``cache clear``; returns the exit status."""
    if args.action == "clear":
        if args.older_than is not None and args.older_than < 0:
            print(f"error: --older-than must be at least 0 days, got {args.older_than}.")
            return 2
        deleted = clear(args.kind, args.older_than)
        freed = sum(entry.size for entry in deleted)
        print(f"deleted {len(deleted)} file(s), {_size(freed)}, from {cache_dir()}")
        return 0
    found = entries(args.kind)
    print(f"{cache_dir()}: {len(found)} file(s), {_size(sum(e.size for e in found))}")
    for entry in found:
        print(f"{entry.kind:10s} {_size(entry.size):>10s}  {_date(entry.modified)}  "
              f"{entry.path.name}\n{'':12s}{entry.summary}")
    return 0

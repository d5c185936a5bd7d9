"""The ``rbmem`` command: :func:`rbmem_tutorial.experiments.__main__.main`, with Ctrl-C handled
from the first moment, also while torch is imported (the first second or two), which happens
before any code of the package can catch it."""

import os
import sys


def main() -> int:
    """Run ``rbmem`` with ``sys.argv``; returns the exit status (130 after Ctrl-C)."""
    try:
        from rbmem_tutorial.experiments.__main__ import main as run

        return run()
    except KeyboardInterrupt:
        print("\ninterrupted; files are written whole or not at all, so run the same command "
              "again to go on.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of the output (e.g. head) stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

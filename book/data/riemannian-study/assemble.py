"""Assemble the sweep's run folders into one folder per study, ready for ``merge``.

Usage: ``python assemble.py RUN`` with RUN the folder that ``regenerate.sh`` wrote. The main
study's cells were computed in four folders (one per group of methods and scales, so that no
folder extends every method to every scale); their cells are copied into ``RUN/final/main``
with a ``config.json`` holding the union of their cell options (seeds, scales, methods,
temperatures). The paper's setting is one folder, copied to ``RUN/final/paper``.
"""

import json
import shutil
import sys
from pathlib import Path

CELL_FIELDS = ("train_seeds", "sample_seeds", "scales", "methods", "temperatures")
GROUPS = {"main": ["main", "main-riemannian", "main-riemannian-large", "main-fisher-small"],
          "paper": ["paper"]}


def assemble(run: Path) -> None:
    for name, parts in GROUPS.items():
        out = run / "final" / name
        shutil.rmtree(out, ignore_errors=True)
        (out / "cells").mkdir(parents=True)
        config, runs = None, []
        for part in parts:
            folder = run / part
            saved = json.loads((folder / "config.json").read_text())
            if config is None:
                config = saved
            for field in CELL_FIELDS:
                config[field] += [v for v in saved[field] if v not in config[field]]
            for row in (folder / "cells").glob("*.json"):
                for path in (row, row.with_suffix(".npz")):
                    shutil.copy(path, out / "cells" / path.name)
            if (folder / "run.json").exists():
                runs.append({"folder": part, **json.loads((folder / "run.json").read_text())})
        config["scales"] = sorted(config["scales"])
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (out / "runs.json").write_text(json.dumps(runs, indent=1) + "\n")
        print(f"{name}: {len(list((out / 'cells').glob('*.json')))} cells in {out}")


if __name__ == "__main__":
    assemble(Path(sys.argv[1]))

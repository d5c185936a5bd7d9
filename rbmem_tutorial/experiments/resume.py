"""Resuming a study in an existing output folder without mixing results of other options.

A folder's ``config.json`` records the options of its cells. A rerun into the same folder is
compared field by field with it (every field of :class:`~.config.TradeoffConfig`, so fields
added later are compared too): options in :data:`CELL_FIELDS` only add cells, and the study
is extended to the union of the saved and the new values; any other difference would change
the numbers of the cells already there, so the rerun is refused with the differing fields
named, unless ``force`` asks to recompute the study from scratch in that folder.

A study on a user's data file is identified by the file's contents, not its path: the
SHA-256 of the file is saved as ``data_sha256`` in ``config.json`` and compared on every
rerun and merge. A folder that holds files but no study is refused as ``--out`` unless asked
for (:func:`check_study_folder`), so that no user file is overwritten.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path

from rbmem_tutorial.experiments import run_record, store
from rbmem_tutorial.experiments.config import TradeoffConfig
from rbmem_tutorial.experiments.flows import study_images

#: Fields whose values index cells: new values add cells, the finished ones stay valid.
CELL_FIELDS = ("train_seeds", "sample_seeds", "scales", "methods", "temperatures")
#: Fields that label a study without changing any number.
LABEL_FIELDS = ("profile",)
#: The key of ``config.json`` that holds the SHA-256 of the data file.
DATA_HASH = "data_sha256"
#: The files of a cells folder: rows, samples, claims, failure records, unfinished writes.
CELL_SUFFIXES = (".json", ".npz", ".claim", ".failed", ".tmp")
#: The list of failed cells written beside the tables (by ``tradeoff.finish``).
FAILED_FILE = "failed.json"
#: The files a study writes beside its cells (``--force`` deletes the results among them).
RESULT_FILES = ("results.csv", "results.json", FAILED_FILE, "preview.npz", "frontier.png",
                "samples.png")


class StudyMismatchError(ValueError):
    """A rerun asks for options that change the results already in its output folder."""


def saved_record(out) -> dict | None:
    """The ``config.json`` of folder ``out`` as a dict, or ``None`` when there is none."""
    path = Path(out) / "config.json"
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is unreadable ({err}); move it away or pass --force to "
                         "recompute the study in this folder.") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} does not hold a study configuration; move it away.")
    return record


def _default(field):
    if field.default is not MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not MISSING else None


def _plain(value):
    """JSON form of a value (tuples become lists), so saved and new values compare alike."""
    return json.loads(json.dumps(value))


def differences(saved: dict, config) -> list[str]:
    """The fields of ``config`` that differ from the ``saved`` record and change results, as
    ``"name (saved A, now B)"``; a field missing from the record counts as its default."""
    found = []
    for field in fields(config):
        if field.name in CELL_FIELDS or field.name in LABEL_FIELDS:
            continue
        old = _plain(saved.get(field.name, _default(field)))
        new = _plain(getattr(config, field.name))
        if field.name == "device":  # a rank's own GPU (cuda:1) is not an option of the study
            old, new = str(old).split(":")[0], str(new).split(":")[0]
        if field.name == "n_test" and old != new:  # the default's size, given, is the same
            old, new = _held_out(config, old), _held_out(config, new)
        if old != new:
            found.append(f"{field.name} (saved {old}, now {new})")
    return found


def _held_out(config, n_test: int | None) -> int:
    """The held-out size that ``n_test`` gives in ``config`` (``None``: the default rule)."""
    if n_test is not None:
        return n_test
    images = study_images(config)
    return replace(config, n_test=None).held_out_size(None if images is None else len(images))


def study_config(config, out, force: bool = False):
    """The configuration to run in folder ``out``: ``config`` itself for a new folder or with
    ``force``; otherwise ``config`` with every cell field extended by the saved values.

    Raises
    ------
    StudyMismatchError
        When a field that changes results differs from the folder's ``config.json``.

    Example
    -------
    >>> import tempfile
    >>> from rbmem_tutorial.experiments import store, tradeoff
    >>> out = Path(tempfile.mkdtemp())
    >>> store.write_json(out / "config.json", config_record(tradeoff.TradeoffConfig(scales=(0.5,))))
    >>> study_config(tradeoff.TradeoffConfig(scales=(1.0,)), out).scales
    (0.5, 1.0)
    >>> study_config(tradeoff.TradeoffConfig(n_x0=99), out)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rbmem_tutorial.experiments.resume.StudyMismatchError: ...n_x0 (saved 250, now 99)...
    """
    saved = None if force else saved_record(out)
    if saved is None:
        return config
    changed = differences(saved, config) + data_change(saved, config, out)
    if changed:
        raise StudyMismatchError(
            f"--out {out} holds a study made with other options: {'; '.join(changed)}. "
            "These change the cells already computed: choose a new --out, or add --force to "
            "recompute the whole study in this folder (its cells are deleted).")
    names = {field.name for field in fields(config)}
    extended = {}
    for name in CELL_FIELDS:
        if name in names and name in saved:
            new = tuple(getattr(config, name))
            extended[name] = tuple(saved[name]) + tuple(v for v in new if v not in saved[name])
    try:
        return replace(config, **extended)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{Path(out) / 'config.json'} holds a value this version refuses "
                         f"({err}); add --force to recompute the study with the options "
                         "given, or choose a new --out.") from None


def data_hash(config) -> str | None:
    """SHA-256 of the study's data file (``None`` for a built-in data set)."""
    return None if config.data_file is None else run_record.sha256(config.data_file)


def _saved_hash(saved: dict, out) -> str | None:
    """The data hash of a study: its ``config.json``, else (folders of older versions) the
    first run record that holds one."""
    if saved.get(DATA_HASH):
        return saved[DATA_HASH]
    return next((run[DATA_HASH] for run in run_record.read_runs(out)
                 if isinstance(run, dict) and run.get(DATA_HASH)), None)


def data_change(saved: dict, config, out) -> list[str]:
    """``["data_sha256 (saved A, now B)"]`` when the data file's contents differ from those
    the study in ``out`` was computed on (the same path with other contents), else ``[]``."""
    before = _saved_hash(saved, out) if config.data_file is not None else None
    now = data_hash(config) if before is not None else None
    if before == now:
        return []
    return [f"{DATA_HASH} (the contents of --data-file {config.data_file} changed: saved "
            f"{before[:12]}..., now {now[:12]}...)"]


def config_record(config) -> dict:
    """The ``config.json`` record: every field, the device without a rank's own GPU suffix
    (``cuda:1``), so that any machine can resume or merge the study, and the SHA-256 of the
    data file (``data_sha256``) when there is one."""
    record = asdict(replace(config, device=config.device.split(":")[0]))
    return record | ({DATA_HASH: data_hash(config)} if config.data_file is not None else {})


def check_study_folder(out, allow_nonempty: bool = False) -> None:
    """Refuse ``out`` when it holds files but no study (no ``config.json``): the study would
    overwrite files of the same names. Hidden files do not count; ``allow_nonempty`` allows it.

    Example
    -------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> check_study_folder(out)  # empty: fine
    >>> _ = (out / "results.csv").write_text("mine")
    >>> check_study_folder(out)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --out ... holds files but no study (results.csv); ...
    """
    out = Path(out)
    if allow_nonempty or (out / "config.json").exists() or not out.is_dir():
        return
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(f"--out {out} holds files but no study ({shown}); the study would "
                         "write over files of the same names: choose a new or empty folder, "
                         "or add --allow-nonempty to write the study there.")


def prepare(config, out, force: bool = False):
    """Check ``config`` against folder ``out`` (:func:`study_config`), delete the old study
    with ``force``, and save the configuration to run; returns it."""
    config = study_config(config, out, force)
    if force:
        clear_study(out)
    store.write_json(Path(out) / "config.json", config_record(config))
    return config


def clear_study(out) -> None:
    """Delete the cells (finished and failed) and merged results of folder ``out``
    (``--force``). A ``cells`` folder
    that is a link keeps its link and loses its cells; anything that cannot be deleted is one
    ``ValueError`` naming it, so no old cell is mistaken for a new one."""
    out = Path(out)
    cells = out / "cells"
    try:
        if cells.is_symlink():
            for path in cells.iterdir():
                if path.suffix in CELL_SUFFIXES and not path.is_dir():
                    path.unlink()
        elif cells.exists():
            shutil.rmtree(cells)
        for name in RESULT_FILES:
            (out / name).unlink(missing_ok=True)
    except OSError as err:
        raise ValueError(f"--force could not delete the old study in {out} ({err.strerror}: "
                         f"{err.filename}); delete its cells yourself or choose a new "
                         "--out.") from None


def load_study_config(out):
    """The :class:`~.config.TradeoffConfig` saved in folder ``out`` (for ``merge``), on the
    CPU, with a relative data path resolved against the folder; fields this version does not
    know are named in the error."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"--out {out} is not a folder; pass the folder of a study.")
    record = saved_record(out)
    if record is None:
        raise FileNotFoundError(f"{out} holds no config.json, so it is not a study folder; "
                                "pass the --out folder of a tradeoff run.")
    saved_hash = record.pop(DATA_HASH, None)
    known = {field.name for field in fields(TradeoffConfig)}
    unknown = sorted(set(record) - known)
    if unknown:
        raise ValueError(f"{out / 'config.json'} has fields {unknown} that this version of "
                         "rbmem_tutorial does not know; merge with the version that ran it.")
    data_file = record.get("data_file")  # folders of older versions kept relative paths
    if data_file is not None and not Path(data_file).exists() and (out / data_file).exists():
        record["data_file"] = str((out / data_file).resolve())
    config = config_from_record(record, device="cpu")  # merging needs no GPU
    if config.data_file is not None and Path(config.data_file).is_file():
        changed = data_change({DATA_HASH: saved_hash}, config, out)
        if changed:
            raise ValueError(f"the study in {out} was computed on other data: {changed[0]}; "
                             "restore that file to merge.")
    return config


def config_from_record(record: dict, **overrides):
    """The :class:`~.config.TradeoffConfig` of a ``config.json`` record (JSON lists become
    tuples; the data hash is not a field), with ``overrides`` replacing fields."""
    record = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()
              if k != DATA_HASH}
    return TradeoffConfig(**{**record, **overrides})

"""Files that a fitted model can be shared as.

A saved file is a ``torch.save`` dictionary of plain tensors, numbers, strings, lists and dicts
(no pickled classes), so ``torch.load(path, weights_only=True)`` reads it without running
code from the file. Each file names its ``kind`` and ``format`` version and holds a SHA-256
``checksum`` of the rest (:func:`with_checksum`); reading a file of another kind or version,
one whose checksum fails (a flipped bit, a changed value), or one whose contents do not
rebuild (:func:`rebuilt`: a missing or extra key, wrong shapes) is a one-line ``ValueError``.
Files written before checksums were stored are read without that check.

Velocity nets are stored as their architecture (a small dict, :func:`net_architecture`) and
their ``state_dict``; :func:`build_net` rebuilds them. The book's
:class:`~rbmem_tutorial.flows.nets.VelocityMLP` and
:class:`~rbmem_tutorial.flows.image_nets.VelocityConvNet` are supported.

Cache entries, which are not meant to be shared, are read by
:func:`rbmem_tutorial.cache.load_cached`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rbmem_tutorial.cache import digest
from rbmem_tutorial.flows.image_nets import VelocityConvNet
from rbmem_tutorial.flows.nets import ACTIVATIONS, VelocityMLP

__all__ = ["build_net", "net_architecture", "read_saved", "rebuilt", "with_checksum"]


def _activation_name(module: nn.Module) -> str:
    for name, cls in ACTIVATIONS.items():
        if isinstance(module, cls):
            return name
    raise TypeError(f"activation {type(module).__name__} has no name in {list(ACTIVATIONS)}.")


def net_architecture(net: nn.Module) -> dict:
    """The constructor arguments of a velocity net, as a plain dict (see :func:`build_net`).

    Example
    -------
    >>> net_architecture(VelocityMLP(2, hidden=(8, 4), activation="tanh"))
    {'class': 'VelocityMLP', 'dim': 2, 'hidden': [8, 4], 'activation': 'tanh', 'time_features': 0}
    """
    if type(net) is VelocityMLP:
        layers = [m for m in net.net if isinstance(m, nn.Linear)]
        activations = [m for m in net.net if not isinstance(m, nn.Linear)]
        return {"class": "VelocityMLP", "dim": net.dim,
                "hidden": [layer.out_features for layer in layers[:-1]],
                "activation": _activation_name(activations[0]) if activations else "silu",
                "time_features": int(net.frequencies.numel())}
    if type(net) is VelocityConvNet:
        channels = [net.inp.out_channels, *(conv.out_channels for conv in net.down)]
        return {"class": "VelocityConvNet", "image_shape": list(net.image_shape),
                "channels": channels, "activation": _activation_name(net.act),
                "time_features": int(net.frequencies.numel()),
                "time_width": net.time_embedding.out_features}
    raise TypeError(f"saving supports VelocityMLP and VelocityConvNet nets, got "
                    f"{type(net).__name__}; save its state_dict yourself.")


def build_net(architecture: dict, state_dict: dict | None = None) -> nn.Module:
    """The untrained net of ``architecture`` (:func:`net_architecture`), with ``state_dict``
    loaded strictly when given; in eval mode.

    Example
    -------
    >>> net = VelocityMLP(2, hidden=(8,))
    >>> copy = build_net(net_architecture(net), net.state_dict())
    >>> all(torch.equal(a, b) for a, b in zip(net.parameters(), copy.parameters()))
    True
    """
    spec = dict(architecture)
    kind = spec.pop("class", None)
    if kind == "VelocityMLP":
        net = VelocityMLP(spec["dim"], tuple(spec["hidden"]), spec["activation"],
                          spec["time_features"])
    elif kind == "VelocityConvNet":
        net = VelocityConvNet(tuple(spec["image_shape"]), tuple(spec["channels"]),
                              spec["activation"], spec["time_features"], spec["time_width"])
    else:
        raise ValueError(f"unknown net class {kind!r} in the saved architecture; expected "
                         "'VelocityMLP' or 'VelocityConvNet'.")
    if state_dict is not None:
        net.load_state_dict(state_dict)
    return net.eval()


def read_saved(path, kind: str, version: int) -> dict:
    """The record saved at ``path``, checked to be a ``kind`` file of format ``version``.

    Raises a one-line ``ValueError`` for a file that is unreadable, of another kind, or of
    another format version, and ``FileNotFoundError`` for a missing one.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "net.pt"
    >>> torch.save({"kind": "net", "format": 1, "weights": torch.zeros(2)}, path)
    >>> read_saved(path, "net", 1)["weights"]
    tensor([0., 0.])
    >>> read_saved(path, "net", 2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...net.pt is a net file of format 1; this version of the package reads format 2.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}.")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        problem = type(error).__name__
        raise ValueError(f"{path} is not a readable {kind} file ({problem}).") from None
    found = record.get("kind") if isinstance(record, dict) else None
    if found != kind:
        raise ValueError(f"{path} holds {found or 'no known kind'!s}, not a {kind}; load it with "
                         "the matching class.")
    if record.get("format") != version:
        raise ValueError(f"{path} is a {kind} file of format {record.get('format')}; this version "
                         f"of the package reads format {version}.")
    if "checksum" in record and record.pop("checksum") != _checksum(record):
        raise ValueError(f"{path} fails its checksum: the file is damaged or was changed "
                         "after it was saved; save it again from the original.")
    return record


def _checksum(record: dict) -> str | None:
    try:
        return digest({k: v for k, v in record.items() if k != "checksum"})
    except (TypeError, ValueError):  # contents no saved file holds
        return None


def with_checksum(record: dict) -> dict:
    """``record`` with a ``checksum`` of its contents, which :func:`read_saved` verifies.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "net.pt"
    >>> torch.save(with_checksum({"kind": "net", "format": 1, "w": torch.ones(2)}), path)
    >>> read_saved(path, "net", 1)["w"]
    tensor([1., 1.])
    """
    return {**record, "checksum": _checksum(record)}


def rebuilt(path, kind: str, build):
    """``build()``, with any error of a record that does not fit (a missing or extra key,
    wrong shapes or types) turned into one ``ValueError`` naming ``path``.

    Example
    -------
    >>> rebuilt("net.pt", "net", lambda: {}["state_dict"])
    Traceback (most recent call last):
    ...
    ValueError: net.pt is not a usable net file (KeyError: 'state_dict'); save it again.
    """
    try:
        return build()
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"{path} is not a usable {kind} file ({type(err).__name__}: "
                         f"{first}); save it again.") from None

"""Explorers: one drawing function, a live slider in Jupyter and a player in the web book.

A slider driven by a Python callback needs a running kernel, so an explorer is built twice from
the same drawing function ``draw(ax, value)``:

- :func:`slider` returns an ``ipywidgets`` slider that redraws live in Jupyter;
- :func:`animation_html` precomputes one frame per value and returns a JavaScript player
  (``matplotlib.animation.FuncAnimation.to_jshtml``) that runs in the built book, no kernel needed.

:func:`explorer` is the call the chapters use: it returns one displayable object whose single
output carries both renderings in one mime bundle, the widget view
(``application/vnd.jupyter.widget-view+json``) and the player (``text/html``). A front end
shows the richest type it can render: JupyterLab, Notebook 7 and VS Code rank the widget view
first, so the reader gets the live slider; the book's ``_config.yml`` ranks ``text/html`` above
the widget view for the ``html`` builder (myst-nb's ``nb_mime_priority_overrides``), so the
built page shows the player alone.

Example
-------
>>> import numpy as np
>>> def draw(ax, a):
...     x = np.linspace(0, 1, 50)
...     ax.plot(x, x**a)
>>> shown = explorer(draw, [1.0, 2.0], label="a")  # the last expression of a notebook cell
>>> sorted(shown._repr_mimebundle_())
['application/vnd.jupyter.widget-view+json', 'text/html', 'text/plain']
>>> "<script" in animation_html(draw, [1.0, 2.0], label="a").data
True
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from contextlib import nullcontext, redirect_stdout
from dataclasses import dataclass

import matplotlib.pyplot as plt
from IPython.core.interactiveshell import InteractiveShell
from matplotlib import animation


def _check_values(values: Sequence[float]) -> list[float]:
    values = list(values)
    if not values:
        raise ValueError("values must hold at least one slider position, e.g. [0.0, 0.5, 1.0].")
    return values


def slider(
    draw: Callable, values: Sequence[float], *, label: str = "value", figsize=(5.0, 4.0)
):
    """Live ipywidgets explorer: a selection slider over ``values`` that calls ``draw(ax, value)``.

    Parameters
    ----------
    draw : callable
        ``draw(ax, value)`` draws one frame on a fresh matplotlib axes.
    values : sequence of float
        The slider positions.
    label : str
        The slider's description.
    figsize : tuple
        Size of each redrawn figure.

    Returns
    -------
    ipywidgets.interactive
        Display it (it is the last expression of a cell) to get the slider.
    """
    import ipywidgets

    values = _check_values(values)

    def redraw(value):
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        draw(ax, value)
        plt.show()

    control = ipywidgets.SelectionSlider(
        options=[(f"{v:g}", v) for v in values], value=values[0], description=label,
        continuous_update=False, style={"description_width": "initial"},  # the whole label
        layout=ipywidgets.Layout(width="auto"),
    )
    # The first frame is drawn at construction. Outside IPython (a script, a doctest) the
    # widget's clear_output would print terminal escape codes; there is nothing to clear.
    quiet = nullcontext() if InteractiveShell.initialized() else redirect_stdout(io.StringIO())
    with quiet:
        return ipywidgets.interactive(redraw, value=control)


def animation_html(
    draw: Callable, values: Sequence[float], *, label: str = "value", figsize=(5.0, 4.0),
    interval_ms: int = 600,
):
    """Kernel-free explorer: one precomputed frame per value, played by a JavaScript slider.

    Parameters
    ----------
    draw, values, label, figsize
        As in :func:`slider`; each frame's title gets ``label = value`` appended.
    interval_ms : int
        Delay between frames when playing.

    Returns
    -------
    IPython.display.HTML
        The player; it works in Jupyter and in the static book.
    """
    from IPython.display import HTML

    values = _check_values(values)
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")

    def frame(i):
        ax.clear()
        draw(ax, values[i])
        title = ax.get_title()
        ax.set_title(f"{title}  ({label} = {values[i]:g})" if title else f"{label} = {values[i]:g}")
        return []

    anim = animation.FuncAnimation(fig, frame, frames=len(values), interval=interval_ms)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return HTML(html)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@dataclass(frozen=True, repr=False)
class Explorer:
    """One explorer shown as one output: the live widget and the kernel-free player.

    Attributes
    ----------
    live : ipywidgets.interactive
        The slider of :func:`slider`.
    player : str
        The HTML of :func:`animation_html`'s player.
    """

    live: object
    player: str

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = dict(self.live._repr_mimebundle_())
        bundle["text/html"] = self.player
        return bundle


def explorer(
    draw: Callable, values: Sequence[float], *, label: str = "value", figsize=(5.0, 4.0),
    interval_ms: int = 600,
) -> Explorer:
    """An explorer from one call: the live slider in Jupyter, the player in the built book.

    Both renderings come from ``draw(ax, value)`` over the same ``values`` and go out in one
    mime bundle; which one a reader sees is the front end's choice (see the module docstring).

    Parameters
    ----------
    draw : callable
        ``draw(ax, value)`` draws one frame on a fresh matplotlib axes.
    values : sequence of float
        The slider positions, one precomputed player frame each.
    label : str
        The slider's description and the name in each player frame's title.
    figsize : tuple
        Size of the live figure and of the player's frames.
    interval_ms : int
        Delay between player frames when playing.

    Returns
    -------
    Explorer
        Make it the last expression of a cell (or pass it to ``display``).

    Example
    -------
    >>> def draw(ax, a):
    ...     ax.plot([0.0, 1.0], [0.0, a])
    >>> shown = explorer(draw, [0.5, 1.0, 2.0], label="slope")
    >>> [v for _, v in shown.live.children[0].options]
    [0.5, 1.0, 2.0]
    >>> shown.player.count("<img") > 0
    True
    """
    values = _check_values(values)
    if not callable(draw):
        raise TypeError(f"draw must be a function draw(ax, value), got {type(draw).__name__}.")
    live = slider(draw, values, label=label, figsize=figsize)
    player = animation_html(draw, values, label=label, figsize=figsize, interval_ms=interval_ms)
    return Explorer(live=live, player=player.data)
